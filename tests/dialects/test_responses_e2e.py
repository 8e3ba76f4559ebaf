"""The Responses API end to end: the real `openai` SDK's ``client.responses.create`` through a
real mitmdump + addon, answered by a chat-completions Kimi fake replaying Moonshot's documented
streams (``tests/wire/documented/``), translated both ways; and Codex's WebSocket attempt on
``/v1/responses`` refused at once.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp
import httpx
import openai
import pytest
from proxyproc import rows, wait_rows

from kimi_intercept.commands.simulator import Reply, kimi_completion
from kimi_intercept.routing.websocket import is_responses_websocket, refusal_body

WIRE = Path(__file__).resolve().parents[1] / "wire"
TOOL_STREAM = (WIRE / "documented" / "moonshot_tool_calls_stream.sse").read_bytes()
KIMI_STREAM = (WIRE / "documented" / "moonshot_stream.sse").read_bytes()
TOOL_USAGE = {"prompt_tokens": 213, "completion_tokens": 99, "reasoning_tokens": 46}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def config(db: Path, kimi_url: str, drop: bool = False) -> str:
    return f"""
[intercept]
hosts = ["api.openai.com"]
[routing]
primary = "kimi"
fallbacks = []
max_retries = 0
[storage]
database = "{db}"
[dialects.responses]
drop_builtin_tools = {"true" if drop else "false"}
[providers.kimi]
base_url = "{kimi_url}/v1"
api_key = "${{MOONSHOT_API_KEY}}"
model = "kimi-k2.6"
"""


@pytest.fixture
def proxied(tmp_path, fake_upstream, start_proxy, openai_client):
    def make(drop: bool = False):
        kimi = fake_upstream()
        db = tmp_path / "kimi.db"
        proxy = start_proxy(config(db, kimi.url, drop))
        return kimi, proxy, openai_client(proxy), db

    return make


def tokens(row) -> dict:
    return {k: row[k] for k in ("prompt_tokens", "completion_tokens", "reasoning_tokens")}


def test_streamed_tool_call_then_previous_response_id_follow_up(proxied):
    kimi, _, client, db = proxied()
    kimi.enqueue(Reply.sse_file(TOOL_STREAM, gap_s=0.02), Reply.sse_file(KIMI_STREAM))
    stream = client.responses.create(
        model="gpt-5", instructions="Be brief.", input="Weather in Paris?", tools=[WEATHER],
        stream=True,
    )  # fmt: skip
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "response.reasoning_summary_text.delta" in kinds
    assert "response.function_call_arguments.delta" in kinds
    done = events[-1].response
    [call] = [item for item in done.output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments), call.call_id) == (
        "get_weather", {"city": "Paris"}, "get_weather_0",
    )  # fmt: skip
    assert (done.usage.input_tokens, done.usage.output_tokens) == (213, 99)
    assert done.usage.output_tokens_details.reasoning_tokens == 46
    assert done.usage.input_tokens_details.cached_tokens == 0
    sent = kimi.received[0].json
    assert sent["messages"][:2] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    assert sent["tools"][0]["function"]["name"] == "get_weather"

    with client.responses.stream(
        model="gpt-5",
        previous_response_id=done.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18°C"}],
    ) as follow_stream:
        follow = follow_stream.get_final_response()
    assert follow.output_text == "OK"
    assert (follow.usage.input_tokens, follow.usage.input_tokens_details.cached_tokens) == (90, 64)
    history = kimi.received[1].json["messages"]
    assert history[0] == {"role": "user", "content": "Weather in Paris?"}  # no instructions
    assert history[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert history[-1]["role"] == "tool" and history[-1]["content"] == "18°C"
    first, second = wait_rows(db, 2)
    assert (first["route"], first["dialect"], first["provider"]) == ("reroute", "responses", "kimi")
    assert tokens(first) == TOOL_USAGE
    assert tokens(second) == {"prompt_tokens": 90, "completion_tokens": 50, "reasoning_tokens": 33}
    assert second["cached_tokens"] == 64


def test_non_streamed_with_full_input_follow_up(proxied):
    kimi, _, client, db = proxied()
    usage = {"prompt_tokens": 57, "completion_tokens": 12, "total_tokens": 69,
             "prompt_tokens_details": {"cached_tokens": 32}}  # fmt: skip
    answer = kimi_completion("kimi-k2.6", usage, "")
    answer["choices"][0]["message"] = {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "get_weather:0", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}],
    }  # fmt: skip
    answer["choices"][0]["finish_reason"] = "tool_calls"
    kimi.enqueue(Reply.json(answer), Reply.json(kimi_completion("kimi-k2.6", usage, "Sunny.")))
    first = client.responses.create(model="gpt-5", input="Weather in Rome?", tools=[WEATHER])
    [call] = first.output
    assert (call.type, call.name, call.arguments) == (
        "function_call",
        "get_weather",
        '{"city":"Rome"}',
    )
    assert (first.usage.input_tokens, first.usage.output_tokens) == (57, 12)
    again = client.responses.create(
        model="gpt-5",
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "Weather in Rome?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )  # fmt: skip
    assert again.output_text == "Sunny." and again.status == "completed"
    sent = kimi.received[1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[2]["tool_call_id"] == sent[1]["tool_calls"][0]["id"]
    a, b = wait_rows(db, 2)
    assert (a["prompt_tokens"], a["completion_tokens"], a["cached_tokens"]) == (57, 12, 32)
    assert (b["prompt_tokens"], b["stream"]) == (57, 0)


def test_unknown_previous_response_id_gets_the_apis_own_error(proxied):
    kimi, _, client, db = proxied()
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-5", previous_response_id="resp_nope", input="hi")
    assert e.value.status_code == 400
    assert e.value.code == "previous_response_not_found"
    assert "resp_nope" in e.value.message
    assert kimi.received == []
    [row] = wait_rows(db, 1)
    assert (row["status_code"], row["outcome"], row["dialect"]) == (400, "rejected", "responses")


def test_builtin_tool_is_refused_by_name_or_dropped(proxied):
    kimi, _, client, _ = proxied()
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(
            model="gpt-5", input="news?", tools=[{"type": "web_search"}, WEATHER]
        )
    assert "'web_search'" in e.value.message and "drop_builtin_tools" in e.value.message
    assert kimi.received == []


def test_builtin_tool_dropped_when_configured(proxied):
    kimi, proxy, client, _ = proxied(drop=True)
    usage = {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}
    kimi.enqueue(Reply.json(kimi_completion("kimi-k2.6", usage, "OK")))
    answer = client.responses.create(
        model="gpt-5", input="news?", tools=[{"type": "web_search"}, WEATHER]
    )
    assert answer.output_text == "OK"
    assert [t["function"]["name"] for t in kimi.received[0].json["tools"]] == ["get_weather"]
    assert "dropped the built-in Responses tool 'web_search'" in proxy.log_text()


def test_websocket_upgrade_on_responses_is_refused_at_once(proxied, tmp_path):
    """Codex first tries ``wss://api.openai.com/v1/responses``; the proxy answers the upgrade
    with 426 itself (nothing reaches the host) so the client falls back to HTTPS."""
    kimi, proxy, _, db = proxied()
    env = proxy.client_env()
    ctx = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])

    async def connect() -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(
                    "wss://api.openai.com/v1/responses",
                    proxy=env["HTTPS_PROXY"],
                    ssl=ctx,
                    headers={"authorization": "Bearer sk-client"},
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                ):
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    assert asyncio.run(asyncio.wait_for(connect(), 20)) == 426
    assert kimi.received == []
    assert rows(db, "requests") == []


def test_a_stream_broken_mid_answer_ends_with_response_failed(proxied):
    kimi, _, client, db = proxied()
    reply = Reply.sse_file(KIMI_STREAM, gap_s=0.05)
    reply.abort_after_chunks = 5  # after the first text delta, no finish and no usage
    kimi.enqueue(reply)
    seen = []
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for event in client.responses.create(model="gpt-5", input="hi", stream=True):
            seen.append(event)
    kinds = [e.type for e in seen]
    assert "response.output_text.delta" in kinds and kinds[-2:] == ["error", "response.failed"]
    assert seen[-1].response.status == "failed" and seen[-1].response.error.code
    [row] = wait_rows(db, 1)
    assert (row["dialect"], row["outcome"]) == ("responses", "incomplete")


def test_only_a_websocket_upgrade_of_the_responses_endpoint_is_refused():
    upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
    assert is_responses_websocket("GET", "/v1/responses", upgrade)
    assert is_responses_websocket("GET", "/v1/responses?x=1", upgrade)
    assert not is_responses_websocket("GET", "/v1/responses", [])
    assert not is_responses_websocket("GET", "/v1/responses/resp_1", upgrade)
    assert not is_responses_websocket("POST", "/v1/responses", upgrade)
    assert json.loads(refusal_body())["error"]["code"] == "websocket_not_supported"
