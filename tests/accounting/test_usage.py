from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from kimi_intercept.accounting.usage import (
    ChatStreamMeter,
    JsonMeter,
    Usage,
    meter_chat_json,
    trusted,
    usage_from_openai,
)

WIRE = Path(__file__).resolve().parents[1] / "wire"


def meter(chunks: list[bytes]) -> ChatStreamMeter:
    m = ChatStreamMeter()
    for chunk in chunks:
        m.feed(chunk)
    m.finish()
    return m


def random_chunks(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        size = rng.randint(1, 64)
        out.append(data[pos : pos + size])
        pos += size
    return out


# --- usage_from_openai ------------------------------------------------------------------------


def test_usage_moonshot_shape():
    u = {
        "prompt_tokens": 101,
        "completion_tokens": 32,
        "total_tokens": 133,
        "cached_tokens": 101,
        "completion_tokens_details": {"reasoning_tokens": 16},
        "prompt_tokens_details": {"cached_tokens": 101},
    }
    assert usage_from_openai(u) == Usage(101, 32, 101, 16)


def test_usage_cached_preference_order():
    both = {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 5}, "cached_tokens": 7}
    assert usage_from_openai(both).cached_tokens == 5
    moonshot_k2 = {"prompt_tokens": 8, "completion_tokens": 11, "cached_tokens": 8}
    assert usage_from_openai(moonshot_k2) == Usage(8, 11, 8, None)
    deepseek = {"prompt_tokens": 10, "prompt_cache_hit_tokens": 4, "prompt_cache_miss_tokens": 6}
    assert usage_from_openai(deepseek).cached_tokens == 4
    bad_details = {"prompt_tokens_details": {"cached_tokens": "5"}, "cached_tokens": 3}
    assert usage_from_openai(bad_details).cached_tokens == 3


@pytest.mark.parametrize(
    ("u", "flagged"),
    [
        ({}, False),
        (None, False),
        ([], False),
        ("usage", False),
        ({"prompt_tokens": "90", "completion_tokens": None, "cached_tokens": 1.5}, True),
        ({"prompt_tokens": True, "completion_tokens": -1, "prompt_tokens_details": []}, True),
        ({"completion_tokens_details": "x", "prompt_tokens_details": None}, False),
    ],
)
def test_usage_wrong_types_are_none(u, flagged):
    """Wrong types read as None; a count that is present but not a count is flagged."""
    got = usage_from_openai(u)
    assert dataclasses.replace(got, problem=None) == Usage()
    assert (got.problem is not None) == flagged, got.problem


@pytest.mark.parametrize(
    ("u", "why"),
    [
        ({"prompt_tokens": 1e30, "completion_tokens": 5}, "usage.prompt_tokens = 1e+30"),
        ({"prompt_tokens": 10**30, "completion_tokens": 5}, "usage.prompt_tokens = 1000000"),
        (
            {"prompt_tokens": 2**53, "completion_tokens": 5},
            "usage.prompt_tokens = 9007199254740992",
        ),
        ({"prompt_tokens": 3, "completion_tokens": -2}, "usage.completion_tokens = -2"),
        ({"prompt_tokens": 3, "completion_tokens": "7"}, 'usage.completion_tokens = "7"'),
        (
            {
                "prompt_tokens": 3,
                "completion_tokens": 4,
                "prompt_tokens_details": {"cached_tokens": -1},
            },
            "usage.prompt_tokens_details.cached_tokens = -1",
        ),
    ],
)
def test_absurd_usage_is_not_trusted(u, why):
    """Counts must be integers in 0 <= n < 2**53; anything else is no provider usage at all."""
    got = usage_from_openai(u)
    assert got.problem is not None and got.problem.startswith(why), got.problem
    assert trusted(got) == (None, got.problem)


def test_trusted_usage():
    assert trusted(None) == (None, None)
    good = Usage(prompt_tokens=2**53 - 1, completion_tokens=0)
    assert trusted(good) == (good, None)
    assert trusted(Usage(cached_tokens=3)) == (
        None,
        "the usage object held no prompt or completion token count",
    )
    assert trusted(Usage(prompt_tokens=2**60, completion_tokens=1)) == (
        None,
        f"a token count of {2**60} is out of range",
    )  # e.g. a sum of counts that were each in range


# --- ChatStreamMeter over provider streams ----------------------------------------------------


def test_moonshot_stream_split_at_every_offset():
    raw = (WIRE / "documented" / "moonshot_stream.sse").read_bytes()
    for cut in range(len(raw) + 1):
        m = meter([raw[:cut], raw[cut:]])
        assert m.usage == Usage(
            prompt_tokens=90, completion_tokens=50, cached_tokens=64, reasoning_tokens=33
        ), cut
        assert m.completion_text == "The user wants a one-word reply.OK"
        assert m.saw_done and not m.truncated
        assert m.events == 9 and m.malformed_events == 0
    assert m.response_id == "chatcmpl-6a1f0c2e-58b1-9d3e-a7c4-1b2c3d4e5f60"
    assert m.model == "kimi-k2.6"
    assert m.finish_reason == "stop"
    assert m.error is None


def test_moonshot_stream_one_byte_at_a_time():
    raw = (WIRE / "documented" / "moonshot_stream.sse").read_bytes()
    m = meter([raw[i : i + 1] for i in range(len(raw))])
    assert m.usage == Usage(90, 50, 64, 33)


def test_moonshot_legacy_chinese_split_at_every_offset():
    raw = (WIRE / "documented" / "moonshot_stream_legacy_docs.sse").read_bytes()
    for cut in range(len(raw) + 1):
        m = meter([raw[:cut], raw[cut:]])
        assert m.completion_text == "你好，李雷！1+1等于2。", cut
        assert m.usage == Usage(prompt_tokens=19, completion_tokens=13)
    assert m.model == "moonshot-v1-8k"


@pytest.mark.parametrize("seed", range(20))
def test_moonshot_tool_calls(seed: int):
    raw = (WIRE / "documented" / "moonshot_tool_calls_stream.sse").read_bytes()
    m = meter(random_chunks(raw, seed))
    assert m.usage == Usage(213, 99, 0, 46)
    assert m.finish_reason == "tool_calls"
    assert m.completion_text == 'Need to call get_weather for Paris.get_weather{"city": "Paris"}'


@pytest.mark.parametrize("seed", range(20))
def test_openai_include_usage_capture(seed: int):
    raw = (WIRE / "captured_openai_stream_include_usage.sse").read_bytes()
    m = meter(random_chunks(raw, seed))
    assert m.usage == Usage(
        prompt_tokens=20, completion_tokens=2, cached_tokens=0, reasoning_tokens=0
    )
    assert m.completion_text == "Olá!"
    assert m.response_id == "chatcmpl-DuLdCoxuLDs8HRMlOuz0Bi4wgi4XJ"
    assert m.model == "gpt-4o-2024-08-06"
    assert m.finish_reason == "stop" and m.saw_done


@pytest.mark.parametrize("seed", range(20))
def test_openai_tool_calls_capture(seed: int):
    raw = (WIRE / "captured_openai_tool_calls_stream.sse").read_bytes()
    m = meter(random_chunks(raw, seed))
    assert m.usage == Usage(61, 16, 0, 0)
    assert m.completion_text == 'weather{"location":"Florence, Italy"}'
    assert m.finish_reason == "tool_calls"


@pytest.mark.parametrize("seed", range(20))
def test_groq_three_copies_not_summed(seed: int):
    raw = (WIRE / "captured_groq_stream.sse").read_bytes()
    assert raw.count(b'"prompt_tokens":20') == 3
    m = meter(random_chunks(raw, seed))
    assert m.usage == Usage(prompt_tokens=20, completion_tokens=4)
    # "Ol" and "á" arrive as two deltas in this capture
    assert m.completion_text == "Olá!"
    assert m.model == "moonshotai/kimi-k2-instruct-0905"


def test_groq_documented_variant():
    raw = (WIRE / "documented" / "groq_stream.sse").read_bytes()
    m = meter(random_chunks(raw, 3))
    assert m.usage == Usage(prompt_tokens=20, completion_tokens=4)
    assert m.completion_text == "Olá!"


@pytest.mark.parametrize("seed", range(10))
def test_groq_tool_calls_capture(seed: int):
    raw = (WIRE / "captured_groq_tool_calls_stream.sse").read_bytes()
    m = meter(random_chunks(raw, seed))
    assert m.usage == Usage(prompt_tokens=93, completion_tokens=32)
    assert m.completion_text == (
        'I\'ll check the weather in Florence, Italy for you.weather{"location":"Florence,Italy"}'
    )
    assert m.finish_reason == "tool_calls"


@pytest.mark.parametrize("seed", range(20))
def test_deepseek_keep_alive_and_reasoning(seed: int):
    raw = (WIRE / "documented" / "deepseek_stream.sse").read_bytes()
    assert raw.startswith(b": keep-alive\n")
    m = meter(random_chunks(raw, seed))
    assert m.usage == Usage(
        prompt_tokens=10, completion_tokens=128, cached_tokens=0, reasoning_tokens=94
    )
    assert m.completion_text == "用户在打招呼。你好！"
    assert m.response_id == "d9aa97c0-7dd0-4877-bbaf-551034cd4a59"
    assert m.events == 7 and m.malformed_events == 0


# --- framing and failure cases ----------------------------------------------------------------


def test_crlf_framing():
    raw = (WIRE / "documented" / "moonshot_stream.sse").read_bytes().replace(b"\n", b"\r\n")
    for cut in range(0, len(raw) + 1, 7):
        m = meter([raw[:cut], raw[cut:]])
        assert m.usage == Usage(90, 50, 64, 33)
        assert m.events == 9


def test_malformed_event_in_the_middle_is_counted_and_skipped():
    raw = (WIRE / "documented" / "moonshot_stream.sse").read_bytes()
    first_end = raw.index(b"\n\n") + 2
    broken = raw[:first_end] + b'data: {"id": oops\n\ndata: [1, 2]\n\n' + raw[first_end:]
    m = meter(random_chunks(broken, 1))
    assert m.malformed_events == 2
    assert m.events == 11
    assert m.usage == Usage(90, 50, 64, 33)
    assert m.completion_text == "The user wants a one-word reply.OK"


def test_in_stream_error_captured():
    # providers.md §1.5: a data line {"error": ...} after content (vercel/ai stream-error fixture)
    stream = (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","model":"kimi-k2.6",'
        b'"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n'
        b'data: {"error":{"message":"Stream failed","type":"server_error",'
        b'"code":"stream_failure"}}\n\n'
    )
    m = meter(random_chunks(stream, 5))
    assert m.error == {"message": "Stream failed", "type": "server_error", "code": "stream_failure"}
    assert m.usage is None
    assert m.completion_text == "Hel"
    assert not m.saw_done and not m.truncated


def test_truncated_stream():
    raw = (WIRE / "documented" / "moonshot_stream.sse").read_bytes()
    cut = raw.index(b'"choices":[]')  # inside the trailing usage chunk
    m = meter([raw[:cut]])
    assert m.truncated and not m.saw_done
    assert m.usage == Usage(90, 50, 64, 33)  # the finish-chunk copy already arrived


def test_no_usage_stream():
    stream = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
    m = meter([stream])
    assert m.usage is None and m.completion_text == "hi" and m.saw_done


def test_null_usage_on_every_chunk_keeps_last_real_one():
    stream = (
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"usage":null}],"usage":null}\n\n'
    )
    assert meter([stream]).usage == Usage(5, 1)


def test_cumulative_usage_takes_last_not_sum():
    # NVIDIA-style cumulative usage on each chunk
    stream = b"".join(
        b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":%d}}\n\n' % n
        for n in (1, 2, 3)
    )
    assert meter([stream]).usage == Usage(7, 3)


def test_completion_text_is_capped(monkeypatch):
    import kimi_intercept.accounting.usage as usage_mod

    monkeypatch.setattr(usage_mod, "MAX_COMPLETION_TEXT_CHARS", 10)
    stream = b"".join(
        b'data: {"choices":[{"index":0,"delta":{"content":"abcdef"}}]}\n\n' for _ in range(5)
    )
    m = meter([stream])
    assert m.completion_text == "abcdefabcd"
    assert m.text_truncated


# --- meter_chat_json --------------------------------------------------------------------------


def test_json_kimi_k3_response():
    # providers.md §1.4, real kimi-k3 non-stream response (vercel/ai fixture issue-19311)
    body = (
        b'{"id":"chatcmpl-a76c8fb3-ac3d-977e-86d6-9926695dda1d","object":"chat.completion",'
        b'"created":1787593184,"model":"kimi-k3","choices":[{"index":0,"message":{"role":'
        b'"assistant","content":"323","reasoning_content":"17*19=323."},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":101,"completion_tokens":32,"total_tokens":133,'
        b'"cached_tokens":101,"completion_tokens_details":{"reasoning_tokens":16},'
        b'"prompt_tokens_details":{"cached_tokens":101}}}'
    )
    assert meter_chat_json(body) == JsonMeter(
        usage=Usage(101, 32, 101, 16),
        response_id="chatcmpl-a76c8fb3-ac3d-977e-86d6-9926695dda1d",
        model="kimi-k3",
        finish_reason="stop",
        completion_text="32317*19=323.",
        error=None,
    )


def test_json_tool_calls_message():
    body = (
        b'{"choices":[{"message":{"content":null,"tool_calls":[{"id":"get_weather_0",'
        b'"type":"function","function":{"name":"get_weather","arguments":"{\\"city\\": 1}"}}]},'
        b'"finish_reason":"tool_calls"}]}'
    )
    m = meter_chat_json(body)
    assert m.completion_text == 'get_weather{"city": 1}'
    assert m.finish_reason == "tool_calls" and m.usage is None


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "moonshot_error_429_engine_overloaded.json",
            {
                "message": "The engine is currently overloaded, please try again later",
                "type": "engine_overloaded_error",
            },
        ),
        (
            "openai_error_400_context_length.json",
            {
                "message": "This model's maximum context length is 128000 tokens. However, your "
                "messages resulted in 130536 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            },
        ),
    ],
)
def test_json_error_bodies(name: str, expected: dict):
    m = meter_chat_json((WIRE / "documented" / name).read_bytes())
    assert m == JsonMeter(error=expected)


@pytest.mark.parametrize(
    "body", [b"", b"{not json", b"\xff\xfe\x00garbage", b"[1,2]", b"null", b"[" * 100_000]
)
def test_json_malformed_never_raises(body: bytes):
    assert meter_chat_json(body) == JsonMeter()
