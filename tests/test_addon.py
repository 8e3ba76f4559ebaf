"""The addon's hooks, called directly through mitmproxy's test harness (no network)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from mitmproxy import exceptions, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow, tutils

from kimi_intercept import addon as addon_mod
from kimi_intercept.addon import KimiIntercept
from kimi_intercept.relay.server import ROUTE_HEADER, Relay


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


def test_our_bug_leaves_the_request_untouched_and_logs_it(configured, monkeypatch, caplog):
    a, _ = configured

    def broken(*args, **kwargs):
        raise RuntimeError("bug in the planner")

    monkeypatch.setattr(addon_mod, "plan_route", broken)
    f = chat_flow()
    before = f.request.copy()
    with caplog.at_level(logging.ERROR):
        asyncio.run(a.request(f))
    assert f.request.url == before.url and f.request.content == before.content
    assert f.request.headers["authorization"] == "Bearer sk-client-secret"
    assert "goes to its original host untouched" in caplog.text


def test_non_json_body_is_left_for_mitmproxy(configured):
    a, _ = configured
    f = chat_flow(body=b"\x00\xffnot json")
    asyncio.run(a.request(f))
    assert f.request.host == "api.openai.com" and ROUTE_HEADER not in f.request.headers
    assert f.request.headers["authorization"] == "Bearer sk-client-secret"
