"""TLS to a host that is not in ``[intercept] hosts`` is tunnelled, not decrypted.

The addon turns ``[intercept] hosts`` into mitmproxy's ``allow_hosts``; every other CONNECT is
relayed as raw TCP (mitmproxy.md §4, "Intercept only LLM hosts"). Proof: a client that trusts
*only* the local server's own CA (trustme) gets 200 through the proxy, and one that trusts only
the mitmproxy CA is refused by that same server certificate. The listed host is still intercepted.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest
import trustme
from proxyproc import CLIENT_KEY, ProxyProcess, render_config

from kimi_intercept.commands.simulator import DEFAULT_ANSWER_DELTAS, FakeUpstream

BODY = b"passthrough-ok"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_server(tls_ca: trustme.CA) -> Iterator[ThreadingHTTPServer]:
    """An HTTPS server on localhost whose certificate only ``tls_ca`` vouches for."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.paths = []  # type: ignore[attr-defined]
    # Handshake in the handler thread, so a refused handshake cannot stall accept().
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def proxy(
    tmp_path: Path,
    fake_upstream: Callable[..., FakeUpstream],
    start_proxy: Callable[..., ProxyProcess],
) -> ProxyProcess:
    kimi, deepseek = fake_upstream(), fake_upstream()
    proc = start_proxy(
        render_config(tmp_path / "kimi.db", kimi.url, deepseek.url, hosts=["api.openai.com"])
    )
    proc.kimi = kimi  # type: ignore[attr-defined]
    return proc


def _trusting(cafile: Path | None = None, ca: trustme.CA | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no default roots: trusts only what is added
    if cafile is not None:
        ctx.load_verify_locations(cafile=str(cafile))
    if ca is not None:
        ca.configure_trust(ctx)
    return ctx


def test_unlisted_tls_host_is_tunnelled(
    proxy: ProxyProcess, https_server: ThreadingHTTPServer, tls_ca: trustme.CA
) -> None:
    url = f"https://localhost:{https_server.server_address[1]}/hello"

    with httpx.Client(
        proxy=proxy.proxy_url, verify=_trusting(ca=tls_ca), trust_env=False, timeout=10
    ) as client:
        r = client.get(url)

    assert (r.status_code, r.content) == (200, BODY)
    assert https_server.paths == ["/hello"]  # type: ignore[attr-defined]


def test_unlisted_tls_host_is_not_signed_by_the_mitm_ca(
    proxy: ProxyProcess, https_server: ThreadingHTTPServer
) -> None:
    url = f"https://localhost:{https_server.server_address[1]}/hello"

    with httpx.Client(
        proxy=proxy.proxy_url, verify=_trusting(cafile=proxy.ca_path), trust_env=False, timeout=10
    ) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get(url)

    assert https_server.paths == []  # type: ignore[attr-defined]


def test_listed_host_is_still_intercepted(
    proxy: ProxyProcess, openai_client: Callable[..., openai.OpenAI]
) -> None:
    client = openai_client(proxy)

    reply = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )

    assert reply.choices[0].message.content == "".join(DEFAULT_ANSWER_DELTAS)
    (req,) = proxy.kimi.received  # type: ignore[attr-defined]
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test-moonshot-provider-key"
    assert CLIENT_KEY not in repr(req.headers)
    assert req.json["model"] == "kimi-k2.6"
