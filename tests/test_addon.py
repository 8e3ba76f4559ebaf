"""The addon's hooks, called directly through mitmproxy's test harness (no network)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import pytest
from mitmproxy import exceptions, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow, tutils

from kimi_intercept.addon import KimiIntercept
from kimi_intercept.relay.server import ROUTE_HEADER, Relay
from kimi_intercept.routing import unplanned as unplanned_mod


def chat_flow(body: bytes = b'{"model": "gpt-4o", "messages": []}') -> http.HTTPFlow:
    req = tutils.treq(
        host="api.openai.com",
        port=443,
        scheme=b"https",
        authority=b"api.openai.com",
        method=b"POST",
        path=b"/v1/chat/completions",
        headers=http.Headers(host="api.openai.com", authorization="Bearer sk-client-secret"),
        content=body,
    )
    return tflow.tflow(req=req)


@pytest.fixture
def configured(tmp_path, monkeypatch):
    monkeypatch.setenv("MOONSHOT_API_KEY", "sk-moon")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\ndatabase = "{tmp_path / "k.db"}"\n')
    a = KimiIntercept()
    with taddons.context(Proxyserver(), a) as tctx:  # Proxyserver owns connection_strategy
        tctx.configure(a, kimi_config=str(cfg))
        a.relay = Relay(a.cfg, lambda row, attempts: None)
        a.relay.port = 5555  # not started: the hooks only park plans
        yield a, tctx


def test_configure_sets_allow_hosts_lazy_and_loopback(configured):
    a, tctx = configured
    assert tctx.options.connection_strategy == "lazy"
    assert tctx.options.listen_host == "127.0.0.1"
    assert r"^api\.openai\.com:\d+$" in tctx.options.allow_hosts


def test_a_bad_config_is_rejected_with_its_message(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[routing]\nshare = 400\n")
    a = KimiIntercept()
    with taddons.context(Proxyserver(), a) as tctx:
        with pytest.raises(exceptions.OptionsError, match="routing.share must be a number"):
            tctx.configure(a, kimi_config=str(bad))


def test_request_points_the_flow_at_the_relay_without_body_or_key(configured):
    a, _ = configured
    f = chat_flow()
    asyncio.run(a.request(f))
    assert f.request.url == "http://127.0.0.1:5555/v1/chat/completions"
    assert f.request.content == b""
    assert "authorization" not in f.request.headers
    route_id = f.request.headers[ROUTE_HEADER]
    assert route_id in a.relay._routes
    f.response = tutils.tresp(content=None)
    a.responseheaders(f)
    assert f.response.stream is True


def test_error_before_the_relay_drops_the_parked_plan(configured):
    a, _ = configured
    f = chat_flow()
    asyncio.run(a.request(f))
    a.error(f)
    assert a.relay._routes == {}


def test_our_bug_answers_500_in_the_clients_dialect_and_records_it(configured, monkeypatch, caplog):
    """A bug in planning never sends the request to its original host silently."""
    a, _ = configured
    recorded = []
    a.relay.record = lambda row, attempts, *extra: recorded.append(row)

    def broken(*args, **kwargs):
        raise RuntimeError("bug in the planner")

    monkeypatch.setattr(unplanned_mod, "plan_route", broken)
    f = chat_flow()

    async def run():
        await a.request(f)
        await asyncio.gather(*a.relay._tasks)

    with caplog.at_level(logging.ERROR):
        asyncio.run(run())
    assert f.response is not None and f.response.status_code == 500
    assert json.loads(f.response.content) == {
        "error": {
            "message": "kimi-intercept could not handle this request (a bug; please report it): "
            "RuntimeError: bug in the planner",
            "type": "kimi_intercept_error",
            "param": None,
            "code": "internal_error",
        }
    }
    [row] = recorded
    assert (row["outcome"], row["status_code"], row["route"], row["dialect"]) == (
        "error",
        500,
        "rejected",
        "openai",
    )
    assert "RuntimeError: bug in the planner" in row["error"]
    assert "bug in the planner" in caplog.text


def test_non_json_body_gets_a_400_and_a_row(configured):
    a, _ = configured
    recorded = []
    a.relay.record = lambda row, attempts, *extra: recorded.append(row)
    f = chat_flow(body=b"\x00\xffnot json")

    async def run():
        await a.request(f)
        await asyncio.gather(*a.relay._tasks)

    asyncio.run(run())
    assert f.response.status_code == 400
    assert json.loads(f.response.content)["error"]["message"].startswith(
        "the request body is not JSON"
    )
    assert f.request.host == "api.openai.com" and ROUTE_HEADER not in f.request.headers
    [row] = recorded
    assert (row["outcome"], row["status_code"]) == ("rejected", 400)


def test_on_plan_error_passthrough_leaves_the_flow_and_records_it(configured):
    a, _ = configured
    a.cfg = dataclasses.replace(
        a.cfg, routing=dataclasses.replace(a.cfg.routing, on_plan_error="passthrough")
    )
    recorded = []
    a.relay.record = lambda row, attempts, *extra: recorded.append(row)
    f = chat_flow(body=b"not json")

    async def run():
        await a.request(f)
        assert f.response is None  # goes to its original host, as the user chose
        f.response = tutils.tresp(status_code=200)
        a.response(f)
        await asyncio.gather(*a.relay._tasks)

    asyncio.run(run())
    assert f.request.headers["authorization"] == "Bearer sk-client-secret"
    [row] = recorded
    assert (row["route"], row["outcome"], row["status_code"]) == ("passthrough", "ok", 200)
    assert json.loads(row["details"])["plan_error"].startswith("the request body is not JSON")
