"""The relay receives intercepted calls as the client sent them (:mod:`kimi_intercept.relay.
intake`): without this run's token nothing is planned or sent; a call that cannot be planned is
answered in its dialect and recorded, or (``on_plan_error = "passthrough"``) sent to its
original host byte for byte and recorded. A real Relay (aiohttp) on loopback, a FakeUpstream as
the original host."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import logging
from typing import Any

import aiohttp
import pytest

from kimi_intercept.commands.simulator import FakeUpstream, Reply
from kimi_intercept.config.settings import load_config
from kimi_intercept.relay.intake import HOST_HEADER, TOKEN_HEADER, URL_HEADER
from kimi_intercept.relay.server import Relay
from kimi_intercept.routing import unplanned as unplanned_mod

ENV = {"MOONSHOT_API_KEY": "sk-moon", "DEEPSEEK_API_KEY": "sk-deep"}
PATH = "/v1/chat/completions"


def post(
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    token: str | None = None,
    original: str = "https://api.openai.com",
    passthrough: bool = False,
) -> tuple[int, bytes, list[dict[str, Any]]]:
    """POST ``body`` to a fresh relay as the addon forwards a call to ``original``; returns
    the status, the answer and the rows recorded."""
    cfg = load_config(None, env=ENV)
    if passthrough:
        cfg = dataclasses.replace(
            cfg, routing=dataclasses.replace(cfg.routing, on_plan_error="passthrough")
        )
    recorded: list[dict[str, Any]] = []

    async def run() -> tuple[int, bytes]:
        relay = Relay(cfg, lambda row, attempts, *extra: recorded.append(row))
        port = await relay.start()
        sent = {
            TOKEN_HEADER: relay.token if token is None else token,
            URL_HEADER: original + PATH,
            HOST_HEADER: "api.openai.com",
            "authorization": "Bearer sk-client",
            **(headers or {}),
        }
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as session:
                async with session.post(
                    f"http://127.0.0.1:{port}{PATH}", headers=sent, data=body
                ) as r:
                    answer = (r.status, await r.read())
            await asyncio.gather(*relay._tasks)
            return answer
        finally:
            await relay.stop()

    status, answer = asyncio.run(run())
    return status, answer, recorded


def test_without_this_runs_token_nothing_is_planned_or_recorded():
    for token in ("", "guessed"):
        status, answer, recorded = post(b'{"model": "m", "messages": []}', token=token)
        assert status == 404 and b"not a call from this proxy" in answer
        assert recorded == []


def test_a_body_that_is_not_json_is_answered_in_the_dialect_and_recorded():
    status, answer, [row] = post(b"\x00\xffnot json")
    assert status == 400
    assert json.loads(answer)["error"]["message"].startswith("the request body is not JSON")
    assert (row["outcome"], row["status_code"], row["route"]) == ("rejected", 400, "rejected")


def test_a_gzip_body_is_decoded_before_planning():
    status, answer, [row] = post(gzip.compress(b"[1, 2]"), {"content-encoding": "gzip"})
    assert status == 400
    message = json.loads(answer)["error"]["message"]
    assert message == "the request body is a JSON list, not an object"  # the decoded bytes
    assert row["outcome"] == "rejected"


def test_a_body_that_does_not_decode_is_a_400_naming_the_encoding():
    status, answer, [row] = post(b"not gzip at all", {"content-encoding": "gzip"})
    assert status == 400
    assert "Content-Encoding: gzip" in json.loads(answer)["error"]["message"]
    assert row["status_code"] == 400


def test_a_bug_in_planning_is_a_500_in_the_dialect_and_a_row(monkeypatch, caplog):
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("bug in the planner")

    monkeypatch.setattr(unplanned_mod, "plan_route", broken)
    with caplog.at_level(logging.ERROR):
        status, answer, [row] = post(b'{"model": "gpt-4o", "messages": []}')
    assert status == 500
    assert json.loads(answer)["error"]["message"] == (
        "kimi-intercept could not handle this request (a bug; please report it): "
        "RuntimeError: bug in the planner"
    )
    assert (row["outcome"], row["status_code"], row["route"]) == ("error", 500, "rejected")
    assert "bug in the planner" in caplog.text


@pytest.mark.parametrize("answer_status", [200, 400])
def test_on_plan_error_passthrough_sends_the_call_unchanged(answer_status):
    with FakeUpstream() as original:
        original.enqueue(Reply(status=answer_status, headers={"x-from": "original"},
                               chunks=[b"as the ", b"original answered"]))  # fmt: skip
        body = gzip.compress(b"not json")
        status, answer, [row] = post(
            body, {"content-encoding": "gzip"}, original=original.url, passthrough=True
        )
        [got] = original.received
    assert (status, answer) == (answer_status, b"as the original answered")
    # still gzip on the way (the fake's aiohttp server undoes it as it reads)
    assert got.headers["content-encoding"] == "gzip" and got.body == b"not json"
    assert got.headers["content-length"] == str(len(body))
    assert got.headers["authorization"] == "Bearer sk-client"
    assert not any(k.startswith("x-kimi-intercept") for k in got.headers)
    assert row["route"] == "passthrough" and row["status_code"] == answer_status
    assert row["outcome"] == ("ok" if answer_status == 200 else "error")
    assert json.loads(row["details"])["plan_error"].startswith("the request body is not JSON")
