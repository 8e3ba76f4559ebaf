"""Calls that reach the relay with their TLS: the relay's second listener ("TLS at the relay").

With ``[proxy] relay_tls`` (the default), mitmproxy does not decrypt a local client's
connection to an LLM host: it passes the TLS bytes through, unread, to this listener on
``127.0.0.1`` (the addon's ``tls_clienthello`` hook), and the relay decrypts them with a
certificate for that host from the same mitmproxy CA the client already trusts. mitmproxy's
HTTP layer and its hooks then run once per connection instead of once per call, which was most
of the proxy's latency and CPU (docs/performance.md, "TLS at the relay"). Every request on
such a connection reaches the relay: LLM calls are planned as usual, anything else on the host
(``GET /v1/models``, OAuth, a WebSocket) is sent on unchanged (:mod:`.intake`, :func:`websocket`).

Like the proxy's own port, the listener takes connections from any process on this machine; it
serves only the hosts it holds a certificate for (:func:`gate`), so it is no open proxy to
anything else; its certificates' keys are readable by this user only, like the CA's own.

The certificates are made when the proxy starts (:func:`write_cert`, called by the addon with
mitmproxy's CA): one PEM file per host, ``<dir>/<host>.pem``, holding a certificate signed by
that CA and its own fresh key (never the CA's key, which mitmproxy uses for its own leaf
certificates), in a folder only this user can read, removed when the proxy stops; the relay
loads them as clients ask for them (:class:`Certificates`). The listener speaks HTTP/1.1
(ALPN ``http/1.1``; a client that offers ``h2`` too uses HTTP/1.1, RFC 7301 §3.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import re
import ssl
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from kimi_intercept.dialects import text_of
from kimi_intercept.dialects.bridge import openai_error_body
from kimi_intercept.relay.intake import authorized, direct_host
from kimi_intercept.routing.websocket import REFUSAL_STATUS, is_responses_websocket, refusal_body

log = logging.getLogger(__name__)

_HOST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")
_HOST_NAME_IS_IP = re.compile(r"[0-9.]+")  # IPv6 has colons: _HOST_NAME refuses it already
# Not forwarded on a WebSocket handshake: aiohttp makes its own (RFC 6455 §4.1), and these
# describe one connection (RFC 9110 §7.6.1).
_WS_OWN = frozenset(
    {"connection", "upgrade", "host", "content-length", "sec-websocket-key",
     "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
     "sec-websocket-accept", "keep-alive", "proxy-authorization", "proxy-connection", "te",
     "transfer-encoding"}
)  # fmt: skip


def cert_path(certs_dir: Path, host: str) -> Path | None:
    """The PEM file of ``host`` in ``certs_dir``, or ``None`` for a name that is not a plain DNS
    host name, which never gets one: a pattern, an IP address (a client names no IP address in
    SNI, RFC 6066 §3). Case does not matter."""
    host = host.lower()
    if not _HOST_NAME.fullmatch(host) or ".." in host or _HOST_NAME_IS_IP.fullmatch(host):
        return None
    return certs_dir / f"{host}.pem"


def write_cert(
    certs_dir: Path, host: str, ca_pem: bytes, ca_key: Any, chain_pem: bytes = b""
) -> Path | None:
    """Write ``<certs_dir>/<host>.pem`` unless it exists: a server certificate for ``host``
    (its DNS name as the subject alternative name, ``serverAuth``, valid from a day ago for
    397 days, the longest browsers accept: CA/B Forum BR §6.3.2) signed by the CA ``ca_pem``
    with ``ca_key`` (a ``cryptography`` private key), then ``chain_pem`` (default: the CA
    certificate), then the certificate's own new P-256 key; mode 0600, written whole or not
    at all. Returns the path, ``None`` for a name :func:`cert_path` refuses."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    path = cert_path(certs_dir, host)
    if path is None or path.is_file():
        return path
    no_digest = (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)  # they sign the message itself
    ca = x509.load_pem_x509_certificate(ca_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host.lower())]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=397))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host.lower())]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False
        )
        .sign(ca_key, None if isinstance(ca_key, no_digest) else hashes.SHA256())
    )
    own_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = cert.public_bytes(serialization.Encoding.PEM) + (chain_pem or ca_pem) + own_key
    part = path.with_suffix(".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    part.replace(path)  # the relay never reads half a file
    return path


def has_cert(certs_dir: Path, host: str) -> bool:
    """Whether the addon wrote a certificate for ``host`` (served by this listener)."""
    path = cert_path(certs_dir, host)
    return path is not None and path.is_file()


class Certificates:
    """The addon's certificate folder as the listener uses it: each host's TLS context is loaded
    the first time a handshake or a request names the host, then kept (the addon never removes
    a file while the proxy runs), so a request costs no file lookup."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._contexts: dict[str, ssl.SSLContext] = {}

    def context(self, host: str) -> ssl.SSLContext | None:
        """The server context of ``host`` (lower case), ``None`` without a certificate."""
        ctx = self._contexts.get(host)
        if ctx is None and has_cert(self.folder, host):
            ctx = self._contexts[host] = _context()
            ctx.load_cert_chain(self.folder / f"{host}.pem")
        return ctx


def server_context(certs: Certificates) -> ssl.SSLContext:
    """A TLS server context that picks each connection's certificate by its SNI from ``certs``.
    A client without SNI, or naming a host without a certificate, gets the ``unrecognized_name``
    alert (RFC 6066 §3)."""

    def pick(sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        ctx = certs.context((server_name or "").lower())
        if ctx is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = ctx
        return None

    outer = _context()
    outer.sni_callback = pick
    return outer


async def listen(runner: web.BaseRunner, certs: Certificates) -> int:
    """Serve ``runner``'s server with TLS (:func:`server_context`) on ``127.0.0.1`` too, on an
    ephemeral port; return it."""
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(certs))
    await site.start()
    return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


def _context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def is_websocket(request: web.BaseRequest) -> bool:
    """A WebSocket opening handshake (RFC 6455 §4.1: ``Upgrade: websocket``)."""
    return request.headers.get("upgrade", "").lower() == "websocket"


async def gate(
    request: web.BaseRequest, token: str, certs: Certificates | None, session: aiohttp.ClientSession
) -> web.StreamResponse | None:
    """What a request gets before planning, if anything; ``None``: plan it.

    On the hop from mitmproxy, a 404 without this run's ``token`` (:func:`.intake.authorized`).
    On the TLS listener: 421 for a host without a certificate here (RFC 9110 §15.5.20: never
    sent on, so never back to this listener), the Responses WebSocket refusal (as the addon
    gives it: Codex then falls back to HTTPS), any other WebSocket relayed unchanged
    (:func:`websocket`)."""
    if not request.secure:
        if authorized(request, token):
            return None
        body = openai_error_body("not a call from this proxy", "not_found")
        return web.json_response(body, status=404)
    host, authority = direct_host(request)
    if certs is None or certs.context(host) is None:
        return web.Response(status=421, text=f"{host or 'no Host'}: not served here")
    if not is_websocket(request):
        return None
    if is_responses_websocket(request.method, request.path, request.headers.items()):
        log.info("kimi-intercept: refused a Responses WebSocket upgrade (https://%s%s)",
                 text_of(host), text_of(request.path))  # fmt: skip
        return web.Response(status=REFUSAL_STATUS, body=refusal_body(),
                            content_type="application/json")  # fmt: skip
    return await websocket(session, request, f"wss://{authority}{request.raw_path}")


async def websocket(
    session: aiohttp.ClientSession, request: web.BaseRequest, url: str
) -> web.StreamResponse:
    """Relay a WebSocket on an intercepted host unchanged: the handshake goes to ``url``
    (``wss://…``) with the client's headers and subprotocols; once both sides are open every
    message is passed on as it comes, in both directions, until either side closes (with its
    close code). If the host refuses the handshake, the client gets its status and body
    (a 502 with the reason when it cannot be reached)."""
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _WS_OWN]
    offered = request.headers.get("sec-websocket-protocol", "")
    protocols = tuple(p.strip() for p in offered.split(",") if p.strip())
    try:
        upstream = await session.ws_connect(
            url, headers=headers, protocols=protocols, autoping=False, max_msg_size=0
        )
    except aiohttp.WSServerHandshakeError as e:
        return web.Response(status=e.status or 502, text=str(e.message))
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        return web.Response(status=502, text=f"cannot reach {url}: {type(e).__name__}: {e}")
    client = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        autoping=False,
        max_msg_size=0,
    )
    async with upstream:
        await client.prepare(request)
        pumps = [
            asyncio.ensure_future(_pump(client, upstream)),
            asyncio.ensure_future(_pump(upstream, client)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for p in pumps:
                p.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pumps, return_exceptions=True)
        code = upstream.close_code or client.close_code or aiohttp.WSCloseCode.OK
        await client.close(code=code)
    return client


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    """Pass ``source``'s messages to ``sink`` until ``source`` closes (then close ``sink`` with
    the same code)."""
    async for msg in source:
        if msg.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type is aiohttp.WSMsgType.PING:
            await sink.ping(msg.data)
        elif msg.type is aiohttp.WSMsgType.PONG:
            await sink.pong(msg.data)
    await sink.close(code=source.close_code or aiohttp.WSCloseCode.OK)
