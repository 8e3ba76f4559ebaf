"""Tool-call ids through the relay: a request to a Moonshot host gets Kimi-form ids, and the
answer Kimi gives — streamed event by event, or one JSON body — reaches an OpenAI client with
the client's own ids and tool names. The relay runs for real (aiohttp), the Moonshot endpoint is
a FakeUpstream the planned targets are pointed at."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import aiohttp

from kimi_intercept.commands.simulator import FakeUpstream, Reply
from kimi_intercept.config.settings import load_config
from kimi_intercept.relay.intake import TOKEN_HEADER
from kimi_intercept.relay.server import Relay
from kimi_intercept.routing.plan import plan_route

ENV = {"MOONSHOT_API_KEY": "sk-moon", "DEEPSEEK_API_KEY": "sk-deep"}
HISTORY = [
    {"role": "user", "content": "list files"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_Xy1", "type": "function", "function": {"name": "sh.run", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "call_Xy1", "content": "a.py"},
]  # fmt: skip
TOOLS = [{"type": "function", "function": {"name": "sh.run", "parameters": {"type": "object"}}}]
KIMI_CALL = {"index": 0, "id": "functions.sh_run:0", "type": "function",
             "function": {"name": "sh_run", "arguments": "{}"}}  # fmt: skip


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


STREAM = b"".join([
    _sse({"id": "k1", "object": "chat.completion.chunk", "model": "kimi-k2.6", "choices": [
        {"index": 0, "delta": {"role": "assistant", "tool_calls": [KIMI_CALL]}}]}),
    _sse({"id": "k1", "object": "chat.completion.chunk", "model": "kimi-k2.6", "choices": [
        {"index": 0, "delta": {}, "finish_reason": "tool_calls",
         "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}}]}),
    b"data: [DONE]\n\n",
])  # fmt: skip
ANSWER = {"id": "k2", "object": "chat.completion", "model": "kimi-k2.6", "choices": [
    {"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{k: v for k, v in KIMI_CALL.items() if k != "index"}]}}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}}  # fmt: skip


def _run(stream: bool, fake: FakeUpstream) -> bytes:
    cfg = load_config(None, env=ENV)  # the shipped kimi provider: https://api.moonshot.ai/v1
    body = {"model": "gpt-4o", "stream": stream, "messages": HISTORY, "tools": TOOLS}

    def to_fake(targets):
        return [dataclasses.replace(t, url=fake.url + "/v1/chat/completions") for t in targets]

    async def run() -> bytes:
        relay = Relay(cfg, lambda *a: None)
        port = await relay.start()
        try:
            plan = plan_route(
                cfg, method="POST", url="https://api.openai.com/v1/chat/completions",
                host="api.openai.com", path="/v1/chat/completions", headers=[],
                body=json.dumps(body).encode(), roll=0.0,
            )  # fmt: skip
            plan.targets = to_fake(plan.targets[:1])
            if plan.rebuild is not None:
                rebuild = plan.rebuild
                plan.rebuild = lambda *a, **k: to_fake(rebuild(*a, **k)[:1])
            relay._plan = lambda call: plan  # planned above, its targets on the fake
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    headers={TOKEN_HEADER: relay.token},
                ) as r:
                    assert r.status == 200
                    data = await r.read()
            await asyncio.gather(*relay._tasks)
            return data
        finally:
            await relay.stop()

    return asyncio.run(run())


def test_streamed_and_non_streamed_answers_carry_the_clients_ids_and_names():
    with FakeUpstream() as fake:
        fake.enqueue(Reply.sse_file(STREAM), Reply.json(ANSWER))
        streamed = _run(True, fake)
        whole = _run(False, fake)
        sent = [r.json for r in fake.received]

    # what Kimi received: Kimi-form ids and names, on both requests
    for body in sent:
        assert body["messages"][1]["tool_calls"][0]["id"] == "functions.sh_run:0"
        assert body["messages"][2]["tool_call_id"] == "functions.sh_run:0"
        assert body["tools"][0]["function"]["name"] == "sh_run"

    # what the client sees: its own id and tool name
    events = [json.loads(e[6:]) for e in streamed.split(b"\n\n") if e.startswith(b"data: {")]
    calls = [c for e in events for ch in e["choices"] for c in ch["delta"].get("tool_calls", [])]
    assert [(c.get("id"), c["function"]["name"]) for c in calls] == [("call_Xy1", "sh.run")]
    assert streamed.rstrip().endswith(b"data: [DONE]")
    answer = json.loads(whole)
    [call] = answer["choices"][0]["message"]["tool_calls"]
    assert (call["id"], call["function"]["name"]) == ("call_Xy1", "sh.run")
    assert answer["usage"]["total_tokens"] == 25
