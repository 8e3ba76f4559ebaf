"""Usage of OpenAI Responses API answers, read as they pass (captured streams in tests/wire/)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kimi_intercept.accounting.usage import Usage
from kimi_intercept.dialects.responses import StreamMeter, meter_json

WIRE = Path(__file__).resolve().parents[1] / "wire"


def fed(data: bytes, seed: int) -> StreamMeter:
    rng, meter, i = random.Random(seed), StreamMeter(), 0
    while i < len(data):
        n = rng.randint(1, 40)
        meter.feed(data[i : i + n])
        i += n
    meter.finish()
    return meter


@pytest.mark.parametrize("seed", range(5))
def test_text_stream_usage_at_any_chunking(seed):
    m = fed((WIRE / "captured_openai_responses_stream.sse").read_bytes(), seed)
    assert m.usage == Usage(prompt_tokens=20, completion_tokens=3, cached_tokens=0,
                            reasoning_tokens=0)  # fmt: skip
    assert (m.answer_text, m.model, m.finish_reason) == ("Olá!", "gpt-4o-2024-08-06", "completed")
    assert m.response_id.startswith("resp_") and not m.saw_tool_calls


def test_tool_stream_sees_the_call_and_its_usage():
    data = (WIRE / "captured_openai_responses_tool_stream.sse").read_bytes()
    final = [json.loads(line[6:]) for line in data.decode().splitlines()
             if line.startswith("data: ") and '"response.completed"' in line][-1]  # fmt: skip
    u = final["response"]["usage"]
    m = fed(data, 7)
    assert m.saw_tool_calls
    assert (m.usage.prompt_tokens, m.usage.completion_tokens) == (
        u["input_tokens"], u["output_tokens"],
    )  # fmt: skip


def test_non_streamed_body():
    body = {"id": "resp_1", "model": "gpt-4o", "status": "completed",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}],
            "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 4},
                      "output_tokens": 5,
                      "output_tokens_details": {"reasoning_tokens": 2}}}  # fmt: skip
    m = meter_json(json.dumps(body).encode())
    assert m.usage == Usage(12, 5, 4, 2) and m.completion_text == "hi"
    assert meter_json(b"\xff not json").usage is None
