"""A bug of ours inside the relay (before an answer began) is a 500 in the client's dialect
with the reason, and a row — never aiohttp's bare text page."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from kimi_intercept.config.settings import load_config
from kimi_intercept.relay.intake import HOST_HEADER, TOKEN_HEADER, URL_HEADER
from kimi_intercept.relay.server import Relay

URL, HOST = "https://api.anthropic.com/v1/messages", "api.anthropic.com"
ENV = {"MOONSHOT_API_KEY": "sk-moon", "DEEPSEEK_API_KEY": "sk-deep"}


def test_a_bug_in_the_relay_answers_500_in_the_clients_dialect_and_records_it(monkeypatch):
    cfg = load_config(None, env=ENV)
    recorded: list[dict] = []
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip

    async def run() -> tuple[int, dict]:
        relay = Relay(cfg, lambda row, attempts, *extra: recorded.append(row))
        port = await relay.start()
        try:
            assert cfg.routing.share == 100  # every call rerouted

            def broken(_plan):
                raise RuntimeError("bug in prepare")

            monkeypatch.setattr(relay.preparer, "prepare", broken)
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    f"http://127.0.0.1:{port}/v1/messages",
                    headers={TOKEN_HEADER: relay.token, URL_HEADER: URL, HOST_HEADER: HOST},
                    data=json.dumps(body).encode(),  # as the addon forwards it: the relay plans
                ) as r:
                    answer = (r.status, await r.json())
            await asyncio.gather(*relay._tasks)
            return answer
        finally:
            await relay.stop()

    status, answer = asyncio.run(run())
    message = (
        "kimi-intercept could not handle this request (a bug; please report it): "
        "RuntimeError: bug in prepare"
    )
    assert (status, answer) == (
        500,
        {"type": "error", "error": {"type": "api_error", "message": message}},
    )
    [row] = recorded
    assert (row["outcome"], row["status_code"], row["error"], row["dialect"]) == (
        "error",
        500,
        message,
        "anthropic",
    )
