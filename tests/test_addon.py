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


def hello(sni: str, peer: str = "127.0.0.1", connect: str | None = None, mode: str = "regular"):
    """The ``tls_clienthello`` data of a client at ``peer`` that sent ``CONNECT connect:443``
    (default: ``sni``), then a ClientHello naming ``sni``."""
    from types import SimpleNamespace

    from mitmproxy import connection, tls
    from mitmproxy.options import Options
    from mitmproxy.proxy.context import Context
    from mitmproxy.proxy.mode_specs import ProxyMode

    client = connection.Client(
        peername=(peer, 50000), sockname=("127.0.0.1", 8080), proxy_mode=ProxyMode.parse(mode)
    )
    context = Context(client, Options())
    context.server = connection.Server(address=(connect or sni, 443))
    return tls.ClientHelloData(context, SimpleNamespace(sni=sni))  # only .sni is read


@pytest.fixture
def tls_ready(tmp_path, monkeypatch):
    """The addon as ``running`` leaves it: certificates written (mitmproxy's CA in
    ``tmp_path/confdir``), a relay with a TLS port."""
    from mitmproxy.addons.tlsconfig import TlsConfig

    monkeypatch.setenv("MOONSHOT_API_KEY", "sk-moon")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\ndatabase = "{tmp_path / "k.db"}"\n')
    a, tlsconfig = KimiIntercept(), TlsConfig()
    with taddons.context(Proxyserver(), tlsconfig, a) as tctx:
        tctx.configure(tlsconfig, confdir=str(tmp_path / "confdir"))
        tctx.configure(a, kimi_config=str(cfg))
        a.relay = RelayProcess(lambda line: None, lambda *record: None)
        a.certs_dir = tmp_path / "certs"
        a.certs_dir.mkdir()
        a._tls_hosts()
        a.relay.tls_port = 6666
        yield a


def test_a_local_clients_tls_to_an_llm_host_goes_to_the_relays_tls_listener(tls_ready):
    data = hello("api.openai.com")
    tls_ready.tls_clienthello(data)
    assert data.ignore_connection  # mitmproxy passes the bytes through, unread
    assert data.context.server.address == ("127.0.0.1", 6666)
    path = tls_ready.certs_dir / "api.openai.com.pem"
    assert path.stat().st_mode & 0o077 == 0  # only this user reads the key


def test_the_relays_certificates_are_the_mitmproxy_cas_with_keys_of_their_own(tls_ready, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = (tls_ready.certs_dir / "api.openai.com.pem").read_bytes()
    leaf, ca = x509.load_pem_x509_certificates(pem)[:2]
    ca_file = (tmp_path / "confdir" / "mitmproxy-ca-cert.pem").read_bytes()
    assert ca == x509.load_pem_x509_certificate(ca_file)
    leaf.verify_directly_issued_by(ca)  # raises if it is not the CA's signature
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["api.openai.com"]
    key = serialization.load_pem_private_key(pem[pem.index(b"-----BEGIN PRIVATE KEY") :], None)
    own = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert key.public_key().public_bytes(der, own) == leaf.public_key().public_bytes(der, own)
    assert ca.public_key().public_bytes(der, own) != leaf.public_key().public_bytes(der, own)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(hello("example.com"), id="a host not intercepted"),
        pytest.param(hello("api.openai.com", peer="192.0.2.7"), id="a client elsewhere"),
        pytest.param(hello("api.openai.com", connect="api.anthropic.com"), id="CONNECT elsewhere"),
        pytest.param(hello("api.openai.com", mode="transparent"), id="transparent mode"),
    ],
)
def test_other_tls_is_left_to_mitmproxy(tls_ready, data):
    tls_ready.tls_clienthello(data)
    assert not data.ignore_connection
    assert data.context.server.address[1] == 443


def test_relay_tls_false_leaves_every_call_to_mitmproxy(tls_ready, tmp_path):
    cfg = tmp_path / "off.toml"
    cfg.write_text(f'[storage]\ndatabase = "{tmp_path / "k.db"}"\n[proxy]\nrelay_tls = false\n')
    from mitmproxy import ctx

    ctx.options.update(kimi_config=str(cfg))  # a reload while running
    data = hello("api.openai.com")
    tls_ready.tls_clienthello(data)
    assert not data.ignore_connection


def test_no_relay_process_no_pass_through(tls_ready):
    tls_ready.relay.tls_port = None  # restarting: mitmproxy decrypts, the call gets its 503
    data = hello("api.openai.com")
    tls_ready.tls_clienthello(data)
    assert not data.ignore_connection


def test_a_host_added_by_a_reload_gets_its_certificate_and_goes_to_the_relay(tls_ready, tmp_path):
    from mitmproxy import ctx

    cfg = tmp_path / "more.toml"
    cfg.write_text(
        f'[storage]\ndatabase = "{tmp_path / "k.db"}"\n'
        '[intercept]\nhosts = ["api.openai.com", "llm.example.dev", "10.0.0.7"]\n'
    )
    ctx.options.update(kimi_config=str(cfg))  # :set kimi_config=… while running
    assert (tls_ready.certs_dir / "llm.example.dev.pem").is_file()
    assert tls_ready.tls_hosts == {"api.openai.com", "llm.example.dev"}  # no IP address
    data = hello("llm.example.dev")
    tls_ready.tls_clienthello(data)
    assert data.ignore_connection and data.context.server.address == ("127.0.0.1", 6666)
