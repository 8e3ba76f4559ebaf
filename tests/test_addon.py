"""The addon's hooks, called directly through mitmproxy's test harness (no network)."""

from __future__ import annotations

import json

import pytest
from mitmproxy import exceptions, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow, tutils

from kimi_intercept.addon import KimiIntercept
from kimi_intercept.commands.relay_process import RelayProcess
from kimi_intercept.relay.intake import HOST_HEADER, STARTED_HEADER, TOKEN_HEADER, URL_HEADER


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
        a.relay = RelayProcess(lambda line: None, lambda *record: None)
        a.relay.port = 5555  # not started: the hooks only point flows at it
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


def test_request_forwards_the_call_unchanged_to_the_relay_process(configured):
    a, _ = configured
    body = b'{"model": "gpt-4o", "messages": []}'
    f = chat_flow(body)
    f.request.path = "/v1/chat/completions?trace=1"
    f.request.headers["x-kimi-intercept-token"] = "guessed"  # a client's own: dropped
    a.request(f)
    assert f.request.url == "http://127.0.0.1:5555/v1/chat/completions"  # no query on the hop
    assert f.request.content == body
    assert f.request.headers["authorization"] == "Bearer sk-client-secret"
    assert f.request.headers.get_all(TOKEN_HEADER) == [a.relay.token]
    assert f.request.headers[URL_HEADER] == "https://api.openai.com/v1/chat/completions?trace=1"
    assert f.request.headers[HOST_HEADER] == "api.openai.com"
    assert float(f.request.headers[STARTED_HEADER]) == f.request.timestamp_start
    assert f.marked == "kimi-intercept"
    f.response = tutils.tresp(content=None)
    a.responseheaders(f)
    assert f.response.stream is True


def test_calls_that_are_not_llm_calls_are_left_to_mitmproxy(configured):
    a, _ = configured
    f = chat_flow()
    f.request.method = "GET"
    a.request(f)
    other = chat_flow()
    other.request.host = "example.com"
    a.request(other)
    for flow in (f, other):
        assert flow.response is None and flow.request.port == 443
        assert TOKEN_HEADER not in flow.request.headers


def test_without_a_relay_process_an_llm_call_gets_a_503_in_its_dialect(configured):
    """Never sent to its original host: the relay is restarting or the proxy shuts down."""
    a, _ = configured
    a.relay.port = None
    f = chat_flow()
    f.request.path = "/v1/messages"
    a.request(f)
    assert f.response is not None and f.response.status_code == 503
    assert f.response.headers["retry-after"] == "5"
    error = json.loads(f.response.content)
    assert error["type"] == "error" and "relay is not running" in error["error"]["message"]
    assert f.request.host == "api.openai.com" and TOKEN_HEADER not in f.request.headers
