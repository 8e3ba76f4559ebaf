"""Money truth end to end: provider streams replayed through a real mitmdump + addon, and the
stored token columns and cost compared with values computed by hand (to 1e-8 USD).

- Anthropic cache writes, 5-minute and 1-hour (``usage.cache_creation``; captured stream
  ``tests/wire/captured_anthropic_stream.sse`` with its usage numbers changed; prices from
  https://docs.claude.com/en/docs/build-with-claude/prompt-caching#pricing: writes 1.25× and
  2× the input price, reads 0.1×);
- an Azure OpenAI-style stream whose first chunk (content-filter results) has ``"id": ""`` and
  ``"model": ""`` (https://learn.microsoft.com/azure/ai-foundry/openai/concepts/content-filter);
- xAI-style usage, ``total_tokens = prompt + completion + reasoning``
  (https://docs.x.ai/docs/guides/reasoning);
- a provider skipped for a capability reason is not a fallback.
"""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import openai
import pytest
from proxyproc import CLIENT_KEY, rows, wait_rows

from kimi_intercept.commands.simulator import Reply

WIRE = Path(__file__).resolve().parents[1] / "wire"
INPUT, OUTPUT = 3.0, 15.0  # USD per million tokens (Claude Sonnet's list prices)


def config(db: Path, kimi_url: str, deepseek_url: str, kimi_dialect: str = "openai") -> str:
    base = f"{kimi_url}/anthropic" if kimi_dialect == "anthropic" else f"{kimi_url}/v1"
    return f"""
[intercept]
hosts = ["api.anthropic.com", "api.openai.com"]
[routing]
primary = "kimi"
fallbacks = ["deepseek"]
max_retries = 0
[storage]
database = "{db}"
[providers.kimi]
base_url = "{base}"
dialect = "{kimi_dialect}"
api_key = "${{MOONSHOT_API_KEY}}"
model = "kimi-k2.6"
[providers.kimi.models."kimi-k2.6"]
context_window = 262144
input_per_mtok = {INPUT}
cached_input_per_mtok = 0.3
output_per_mtok = {OUTPUT}
[providers.deepseek]
base_url = "{deepseek_url}/v1"
api_key = "${{DEEPSEEK_API_KEY}}"
model = "deepseek-chat"
[providers.deepseek.models."deepseek-chat"]
input_per_mtok = 0.28
cached_input_per_mtok = 0.028
output_per_mtok = 0.42
"""


@pytest.fixture
def proxied(tmp_path, fake_upstream, start_proxy, monkeypatch):
    def make(kimi_dialect: str = "openai"):
        kimi, deepseek = fake_upstream(), fake_upstream()
        db = tmp_path / "kimi.db"
        proxy = start_proxy(config(db, kimi.url, deepseek.url, kimi_dialect))
        for name, value in proxy.client_env().items():
            monkeypatch.setenv(name, value)
        for name in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"):
            monkeypatch.delenv(name, raising=False)
        return kimi, deepseek, db

    return make


def anthropic_stream(read: int, write_5m: int, write_1h: int, fresh: int, output: int) -> bytes:
    """The captured Anthropic stream with these usage numbers in ``message_start`` and
    ``message_delta`` (the current API repeats input and cache counts there)."""
    raw = (WIRE / "captured_anthropic_stream.sse").read_text("utf-8")
    start_usage = (
        '"input_tokens":16,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,'
        '"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0}'
    )
    delta_usage = '"input_tokens":16,"cache_creation_input_tokens":0,"cache_read_input_tokens":0'
    usage = (
        f'"input_tokens":{fresh},"cache_creation_input_tokens":{write_5m + write_1h},'
        f'"cache_read_input_tokens":{read}'
    )
    creation = (
        f'"cache_creation":{{"ephemeral_5m_input_tokens":{write_5m},'
        f'"ephemeral_1h_input_tokens":{write_1h}}}'
    )
    assert raw.count(start_usage) == 1 and raw.count(delta_usage) == 2
    raw = raw.replace(start_usage, f"{usage},{creation}")
    raw = raw.replace(delta_usage, usage).replace('"output_tokens":38', f'"output_tokens":{output}')
    return raw.encode("utf-8")


@pytest.mark.parametrize(
    ("write_5m", "write_1h"), [(1200, 0), (0, 2500), (700, 1800)], ids=["5m", "1h", "both"]
)
def test_anthropic_cache_writes_are_stored_and_billed_at_their_prices(proxied, write_5m, write_1h):
    kimi, _, db = proxied(kimi_dialect="anthropic")
    kimi.enqueue(Reply.sse_file(anthropic_stream(5000, write_5m, write_1h, 300, 40)))
    client = anthropic.Anthropic(api_key="sk-ant-client-key", max_retries=0)
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        message = stream.get_final_message()
    assert message.usage.cache_creation_input_tokens == write_5m + write_1h
    [row] = wait_rows(db, 1)
    prompt = 300 + 5000 + write_5m + write_1h
    assert {k: row[k] for k in ("prompt_tokens", "cached_tokens", "completion_tokens",
                                "cache_write_tokens", "cache_write_1h_tokens")} == {
        "prompt_tokens": prompt, "cached_tokens": 5000, "completion_tokens": 40,
        "cache_write_tokens": write_5m + write_1h, "cache_write_1h_tokens": write_1h,
    }  # fmt: skip
    by_hand = (
        300 * INPUT + 5000 * 0.3 + write_5m * INPUT * 1.25 + write_1h * INPUT * 2 + 40 * OUTPUT
    ) / 1e6
    assert row["cost_usd"] == pytest.approx(by_hand, abs=1e-8)


def azure_stream(response_id: str) -> bytes:
    filter_chunk = {
        "choices": [], "created": 0, "id": "", "model": "", "object": "",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    }  # fmt: skip
    base = {"id": response_id, "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-2024-11-20"}  # fmt: skip
    chunks = [
        filter_chunk,
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3,
                                          "total_tokens": 15}},
    ]  # fmt: skip
    events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]
    return b"".join(events)


def test_an_empty_id_in_the_first_chunk_does_not_make_later_answers_duplicates(proxied):
    kimi, _, db = proxied()
    client = openai.OpenAI(api_key=CLIENT_KEY, max_retries=0)
    for n in (1, 2):
        kimi.enqueue(Reply.sse_file(azure_stream(f"chatcmpl-azure-{n}")))
        stream = client.chat.completions.create(
            model="gpt-4o", stream=True, messages=[{"role": "user", "content": f"hi {n}"}]
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hi"
    stored = wait_rows(db, 2)
    assert [(r["response_id"], r["model"], r["duplicate_of"]) for r in stored] == [
        ("chatcmpl-azure-1", "gpt-4o-2024-11-20", None),
        ("chatcmpl-azure-2", "gpt-4o-2024-11-20", None),
    ]


def test_reasoning_reported_outside_completion_is_added_to_it(proxied):
    kimi, _, db = proxied()
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 420,
             "completion_tokens_details": {"reasoning_tokens": 300}}  # fmt: skip
    body = {"id": "xai-1", "object": "chat.completion", "model": "grok-4",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}], "usage": usage}  # fmt: skip
    kimi.enqueue(Reply.json(body))
    client = openai.OpenAI(api_key=CLIENT_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "?"}])
    [row] = wait_rows(db, 1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["reasoning_tokens"]) == (
        100, 320, 300,
    )  # fmt: skip
    assert row["cost_usd"] == pytest.approx((100 * INPUT + 320 * OUTPUT) / 1e6, abs=1e-8)
    assert json.loads(row["details"])["raw_usage"] == usage


def test_a_provider_skipped_for_its_dialect_is_not_a_fallback(proxied):
    """An OpenAI client with an Anthropic-dialect primary: the primary cannot be spoken to,
    so DeepSeek answers first time — one attempt, no fallback, the skip still recorded."""
    kimi, deepseek, db = proxied(kimi_dialect="anthropic")
    client = openai.OpenAI(api_key=CLIENT_KEY, max_retries=0)
    answer = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello"}]
    )
    assert answer.choices[0].message.content == "Hello from the fake Kimi upstream."
    assert (len(kimi.received), len(deepseek.received)) == (0, 1)
    [row] = wait_rows(db, 1)
    assert (row["provider"], row["attempts"], row["fallback_used"]) == ("deepseek", 1, 0)
    attempts = rows(db, "attempts")
    assert [(a["provider"], (a["error"] or "")[:9]) for a in attempts] == [
        ("kimi", "skipped: "),
        ("deepseek", ""),
    ]
