"""Dialects end to end: the real `anthropic` SDK and a Gemini-style httpx client through a real
mitmdump + addon, answered by an OpenAI-dialect Kimi fake (translated both ways) or a Kimi
Anthropic-endpoint fake (native), with exact token counts in `requests`.

Streams replayed: Moonshot's tool-call stream (usage in the finish chunk and a trailing
``choices: []`` chunk) and Anthropic's captured stream (``message_start`` input/cache usage,
cumulative ``message_delta`` output), provenance in ``tests/wire/README.md``.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import anthropic
import httpx
import pytest
from proxyproc import rows, wait_rows

from kimi_intercept.commands.simulator import Reply

WIRE = Path(__file__).resolve().parents[1] / "wire"
TOOL_STREAM = (WIRE / "documented" / "moonshot_tool_calls_stream.sse").read_bytes()
KIMI_STREAM = (WIRE / "documented" / "moonshot_stream.sse").read_bytes()
ANTHROPIC_STREAM = (WIRE / "captured_anthropic_stream.sse").read_bytes()
GEMINI_KEY = "AIzaSyFakeClientKey0000000000000000000"  # in the query, as some clients send it
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def config(db: Path, kimi_url: str, deepseek_url: str, kimi_dialect: str = "openai") -> str:
    kimi_base = f"{kimi_url}/anthropic" if kimi_dialect == "anthropic" else f"{kimi_url}/v1"
    return f"""
[intercept]
hosts = ["api.anthropic.com", "generativelanguage.googleapis.com", "api.openai.com"]
[routing]
primary = "kimi"
fallbacks = ["deepseek"]
max_retries = 0
[storage]
database = "{db}"
[models]
"claude-*" = "kimi-k2.6"
[providers.kimi]
base_url = "{kimi_base}"
dialect = "{kimi_dialect}"
api_key = "${{MOONSHOT_API_KEY}}"
model = "kimi-k2.6"
[providers.deepseek]
base_url = "{deepseek_url}/v1"
api_key = "${{DEEPSEEK_API_KEY}}"
model = "deepseek-chat"
"""


@pytest.fixture
def proxied(tmp_path, fake_upstream, start_proxy, monkeypatch):
    def make(kimi_dialect: str = "openai"):
        kimi, deepseek = fake_upstream(), fake_upstream()
        db = tmp_path / "kimi.db"
        proxy = start_proxy(config(db, kimi.url, deepseek.url, kimi_dialect))
        for name, value in proxy.client_env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
        client = anthropic.Anthropic(api_key="sk-ant-client-key", max_retries=0)
        return kimi, deepseek, proxy, client, db

    return make


def test_anthropic_sdk_streams_a_tool_call_from_an_openai_dialect_kimi(proxied):
    kimi, _, _, client, db = proxied()
    kimi.enqueue(Reply.sse_file(TOOL_STREAM, gap_s=0.05))
    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        message = stream.get_final_message()
    tool_use = [b for b in message.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in tool_use] == [("get_weather", {"city": "Paris"})]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (213, 99)

    sent = kimi.received[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test-moonshot-provider-key"
    assert sent.json["model"] == "kimi-k2.6"
    assert sent.json["tools"][0]["function"]["name"] == "get_weather"
    assert sent.json["stream_options"] == {"include_usage": True}

    [row] = wait_rows(db, 1)
    assert {k: row[k] for k in ("dialect", "provider", "model", "client_model", "outcome")} == {
        "dialect": "anthropic", "provider": "kimi", "model": "kimi-k2.6",
        "client_model": "claude-sonnet-4-5", "outcome": "ok",
    }  # fmt: skip
    assert (row["prompt_tokens"], row["completion_tokens"], row["reasoning_tokens"]) == (
        213, 99, 46,
    )  # fmt: skip


def test_anthropic_sdk_non_streamed_through_the_openai_fallback(proxied):
    kimi, deepseek, _, client, db = proxied()
    kimi.enqueue(Reply.error(503, {"error": {"message": "down", "type": "server_error"}}))
    message = client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=256,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Say hello."}],
    )
    assert message.content[0].text == "Hello from the fake Kimi upstream."
    assert message.stop_reason == "end_turn"
    assert deepseek.received[0].json["messages"][0] == {"role": "system", "content": "Be brief."}
    [row] = wait_rows(db, 1)
    assert (row["provider"], row["fallback_used"], row["dialect"]) == ("deepseek", 1, "anthropic")
    usage = deepseek.last_usage
    assert message.usage.input_tokens == usage["prompt_tokens"] - usage["cached_tokens"]
    assert row["prompt_tokens"] == usage["prompt_tokens"]


def test_anthropic_sdk_against_kimis_anthropic_endpoint_is_passed_natively(proxied):
    kimi, _, _, client, db = proxied(kimi_dialect="anthropic")
    kimi.enqueue(Reply.sse_file(ANTHROPIC_STREAM))
    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "Hi"}],
    ) as stream:
        message = stream.get_final_message()
    sent = kimi.received[0]
    assert sent.path == "/anthropic/v1/messages"
    assert sent.headers["x-api-key"] == "sk-test-moonshot-provider-key"
    assert "authorization" not in sent.headers
    assert sent.json["model"] == "kimi-k2.6"
    [row] = wait_rows(db, 1)
    start = json.loads(ANTHROPIC_STREAM.split(b"data: ", 2)[1].split(b"\n", 1)[0])
    u = start["message"]["usage"]
    prompt = u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        prompt, message.usage.output_tokens,
    )  # fmt: skip
    assert (row["dialect"], row["usage_source"]) == ("anthropic", "provider")


def test_anthropic_count_tokens_is_answered_locally(proxied):
    kimi, _, _, client, db = proxied()
    counted = client.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert 3 < counted.input_tokens < 30
    assert kimi.received == []


def test_anthropic_error_comes_back_in_anthropics_shape(proxied):
    kimi, deepseek, _, client, db = proxied()
    limit = {
        "error": {"message": "request reached TPM rate limit", "type": "rate_limit_reached_error"}
    }
    kimi.enqueue(Reply.error(429, limit))
    deepseek.enqueue(Reply.error(429, limit))
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "rate_limit_error"


def test_gemini_stream_through_httpx_is_translated_with_crlf_events(proxied):
    kimi, _, proxy, _, db = proxied()
    kimi.enqueue(Reply.sse_file(KIMI_STREAM, gap_s=0.05))
    body = {
        "contents": [{"role": "user", "parts": [{"text": "Say OK"}]}],
        "generationConfig": {"maxOutputTokens": 64},
    }
    url = (
        "https://generativelanguage.googleapis.com/v1beta/models/"
        "gemini-2.5-flash:streamGenerateContent?alt=sse&key=" + GEMINI_KEY
    )
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
    with httpx.Client(proxy=proxy.proxy_url, verify=ctx, trust_env=False) as c:
        r = c.post(url, json=body)
    assert r.status_code == 200
    events = [json.loads(e[len("data: ") :]) for e in r.text.split("\r\n\r\n") if e]
    text = "".join(
        p.get("text", "")
        for e in events
        for p in e["candidates"][0]["content"]["parts"]
        if not p.get("thought")
    )
    assert text == "OK"
    final = events[-1]
    assert final["candidates"][0]["finishReason"] == "STOP"
    assert final["usageMetadata"]["promptTokenCount"] == 90
    assert kimi.received[0].json["max_tokens"] == 64
    assert "x-goog-api-key" not in kimi.received[0].headers
    assert GEMINI_KEY not in kimi.received[0].path and GEMINI_KEY not in proxy.log_text()
    [row] = wait_rows(db, 1)
    assert (row["dialect"], row["client_model"], row["prompt_tokens"], row["cached_tokens"]) == (
        "gemini", "gemini-2.5-flash", 90, 64,
    )  # fmt: skip
    assert rows(db, "attempts")[0]["provider"] == "kimi"


def test_openai_responses_api_passes_through_and_is_counted(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    """/v1/responses outside the rerouted share (``share = 0``) passes through: the original
    host answers (here a local fake standing in for it) with the client's key, and the usage in
    `response.completed` is recorded. (Rerouted: tests/dialects/test_responses_e2e.py.)"""
    original, kimi, deepseek = fake_upstream(), fake_upstream(), fake_upstream()
    original.enqueue(Reply.sse_file((WIRE / "captured_openai_responses_stream.sse").read_bytes()))
    db = tmp_path / "kimi.db"
    proxy = start_proxy(
        config(db, kimi.url, deepseek.url)
        .replace('hosts = ["api.anthropic.com"', 'hosts = ["localhost", "api.anthropic.com"')
        .replace("max_retries = 0", "max_retries = 0\nshare = 0")
    )
    port = original.url.rsplit(":", 1)[1]
    client = openai_client(proxy, base_url=f"http://localhost:{port}/v1")
    stream = client.responses.create(model="gpt-4o", input="Say hi in Portuguese", stream=True)
    done = [e for e in stream if e.type == "response.completed"]
    assert done and done[0].response.output_text == "Olá!"
    assert kimi.received == [] and len(original.received) == 1
    assert original.received[0].headers["authorization"].startswith("Bearer sk-client")
    [row] = wait_rows(db, 1)
    assert {k: row[k] for k in ("route", "dialect", "prompt_tokens", "completion_tokens",
                                "cached_tokens", "usage_source", "model")} == {
        "route": "passthrough", "dialect": "responses", "prompt_tokens": 20,
        "completion_tokens": 3, "cached_tokens": 0, "usage_source": "provider",
        "model": "gpt-4o-2024-08-06",
    }  # fmt: skip


def test_anthropic_client_sees_the_prompt_estimate_first_and_the_exact_count_last(proxied):
    """Anthropic sends the input count in ``message_start``; through translation the client
    gets our estimate there (not 0) and the provider's exact counts in ``message_delta``."""
    kimi, _, _, client, db = proxied()
    kimi.enqueue(Reply.sse_file(KIMI_STREAM))
    events = list(
        client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=64,
            stream=True,
            messages=[{"role": "user", "content": "Reply with one word, please: " + "ok " * 40}],
        )
    )
    start = next(e for e in events if e.type == "message_start")
    delta = next(e for e in events if e.type == "message_delta")
    [row] = wait_rows(db, 1)
    assert start.message.usage.input_tokens == row["prompt_tokens_estimate"] > 40
    exact = row["prompt_tokens"] - row["cached_tokens"]
    assert (delta.usage.input_tokens, delta.usage.output_tokens) == (
        exact,
        row["completion_tokens"],
    )
