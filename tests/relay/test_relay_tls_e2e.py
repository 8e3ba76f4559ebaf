"""TLS at the relay (``[proxy] relay_tls``, the default), end to end through a real mitmdump.

A local client's TLS to an intercepted host is passed through by mitmproxy, unread, to the relay
process's TLS listener (:mod:`kimi_intercept.relay.direct`). The client trusts only the
mitmproxy CA (``SSL_CERT_FILE``), so every call that succeeds here was decrypted with a
certificate of that CA; mitmproxy's own flow log (``kimi_verbose``) shows whether it was
mitmproxy that decrypted it. The original host here is an aiohttp server on ``localhost`` with
its own test CA (trustme), which the proxy trusts as mitmproxy's users tell it to:
``--set ssl_verify_upstream_trusted_ca=PEM``.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
import trustme
from aiohttp import web
from proxyproc import CLIENT_KEY, ProxyProcess, clean_env, render_config, rows, wait_rows

from kimi_intercept.commands.mitmdump import start_proxy_process

MESSAGES = [{"role": "user", "content": "hi"}]


class Origin:
    """An HTTPS + WebSocket server on ``localhost`` (a background thread): ``GET /v1/models``
    answers JSON, ``/ws`` echoes every message back with ``echo: `` before it, ``POST /v1/...``
    answers 418 with the body it got."""

    def __init__(self, ca: trustme.CA) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost").configure_cert(self.ctx)
        self.seen: list[tuple[str, str, str | None]] = []  # method, path with query, auth
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/ws", self._ws)
        app.router.add_post("/v1/files", self._post)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ctx)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def _note(self, request: web.Request) -> None:
        self.seen.append((request.method, request.path_qs, request.headers.get("authorization")))

    async def _models(self, request: web.Request) -> web.Response:
        self._note(request)
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]})

    async def _post(self, request: web.Request) -> web.Response:
        self._note(request)
        return web.Response(status=418, body=await request.read())

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        self._note(request)
        ws = web.WebSocketResponse(protocols=("echo.v1",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"echo: {msg.data}")
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(b"echo: " + msg.data)
        return ws

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[Origin, Path]]:
    ca = trustme.CA()
    bundle = tmp_path / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    server = Origin(ca)
    yield server, bundle
    server.stop()


@pytest.fixture
def proxy_for(tmp_path: Path, fake_upstream) -> Iterator:
    """``proxy_for(hosts, relay_tls=True, ca_bundle=None)`` -> (proxy, db, kimi fake), with
    ``kimi_verbose`` on (mitmproxy prints a flow line for every flow it decrypted)."""
    procs: list[ProxyProcess] = []

    def start(hosts, relay_tls: bool = True, ca_bundle: Path | None = None):
        kimi, deepseek = fake_upstream(), fake_upstream()
        db = tmp_path / f"kimi-{len(procs)}.db"
        text = render_config(db, kimi.url, deepseek.url, hosts=hosts)
        text += f"\n[proxy]\nrelay_tls = {str(relay_tls).lower()}\n"
        config = tmp_path / f"config-{len(procs)}.toml"
        config.write_text(text)
        confdir = tmp_path / "confdir"
        confdir.mkdir(exist_ok=True)
        args = ["--set", "kimi_verbose=true"]
        if ca_bundle:
            args += ["--set", f"ssl_verify_upstream_trusted_ca={ca_bundle}"]
        proc = start_proxy_process(config, confdir, args, env=clean_env(), cwd=tmp_path)
        procs.append(proc)
        return proc, db, kimi

    yield start
    for p in procs:
        p.stop()


def _client(proxy: ProxyProcess) -> httpx.Client:
    return httpx.Client(proxy=proxy.proxy_url, verify=ssl.create_default_context(
        cafile=str(proxy.ca_path)), trust_env=False)  # fmt: skip


@pytest.mark.parametrize("relay_tls", [True, False], ids=["relay_tls", "mitmproxy decrypts"])
def test_a_streamed_call_is_answered_and_counted_either_way(proxy_for, relay_tls):
    proxy, db, kimi = proxy_for(["api.openai.com"], relay_tls=relay_tls)
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    with _client(proxy) as client:
        with client.stream("POST", "https://api.openai.com/v1/chat/completions", json=body,
                           headers={"authorization": f"Bearer {CLIENT_KEY}"}) as r:  # fmt: skip
            assert r.status_code == 200
            text = r.read().decode()
    assert "data: [DONE]" in text and len(kimi.received) == 1
    [row] = wait_rows(db, 1)
    assert (row["outcome"], row["provider"], row["host"]) == ("ok", "kimi", "api.openai.com")
    assert row["completion_tokens"] > 0
    assert proxy.wait_for_log("<< 200", timeout=2) is (not relay_tls)  # mitmproxy's flow line


def test_other_requests_on_an_intercepted_host_pass_through_the_relay_unchanged(proxy_for, origin):
    server, bundle = origin
    proxy, db, kimi = proxy_for(["localhost"], ca_bundle=bundle)
    base = f"https://localhost:{server.port}"
    with _client(proxy) as client:
        models = client.get(f"{base}/v1/models?limit=5", headers={"authorization": "Bearer sk-u"})
        posted = client.post(f"{base}/v1/files", content=b"\x00raw bytes")
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "gpt-4o"
    assert (posted.status_code, posted.content) == (418, b"\x00raw bytes")
    assert server.seen == [
        ("GET", "/v1/models?limit=5", "Bearer sk-u"),
        ("POST", "/v1/files", None),
    ]
    assert kimi.received == [] and rows(db) == []  # not LLM calls: no row
    assert not proxy.wait_for_log("<< 200", timeout=1)  # mitmproxy never saw them


def test_a_websocket_on_an_intercepted_host_is_relayed(proxy_for, origin):
    server, bundle = origin
    proxy, _db, _kimi = proxy_for(["localhost"], ca_bundle=bundle)
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))

    async def talk() -> tuple[list[object], str | None]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(
                f"wss://localhost:{server.port}/ws", proxy=proxy.proxy_url, ssl=ctx,
                protocols=("echo.v1",),
            ) as ws:  # fmt: skip
                await ws.send_str("hello")
                text = await ws.receive_str(timeout=5)
                await ws.send_bytes(b"\x01\x02")
                data = await ws.receive_bytes(timeout=5)
                return [text, data], ws.protocol

    got, protocol = asyncio.run(talk())
    assert got == ["echo: hello", b"echo: \x01\x02"] and protocol == "echo.v1"
    assert [s[:2] for s in server.seen] == [("GET", "/ws")]


def test_the_responses_websocket_is_refused_at_the_relay(proxy_for):
    proxy, _db, _kimi = proxy_for(["api.openai.com"])
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))

    async def upgrade() -> aiohttp.WSServerHandshakeError:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await session.ws_connect("wss://api.openai.com/v1/responses",
                                         proxy=proxy.proxy_url, ssl=ctx)  # fmt: skip
            return e.value

    refused = asyncio.run(upgrade())
    assert refused.status == 426  # Codex then sends the turn as POST /v1/responses
    assert proxy.wait_for_log("refused a Responses WebSocket upgrade")


def test_a_host_header_naming_another_host_is_not_sent_anywhere(proxy_for):
    proxy, db, kimi = proxy_for(["api.openai.com"])
    with _client(proxy) as client:
        r = client.get("https://api.openai.com/v1/models", headers={"host": "localhost:9"})
    assert r.status_code == 421 and "not served here" in r.text
    assert kimi.received == [] and rows(db) == []
