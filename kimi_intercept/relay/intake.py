"""What reaches the relay process: an intercepted call as the client sent it, and the few
facts mitmproxy knew about it — or, over the relay's TLS listener (:mod:`.direct`), the
client's own request, whose facts the relay finds itself.

The addon forwards an intercepted LLM call to the relay unchanged — method, path, every header
(the client's key included), the body still in its ``Content-Encoding`` — over loopback, and
adds the :data:`META` headers: the relay's per-run token (the relay answers nothing without it,
so it is not an open proxy to anything on the machine), the original absolute URL and host, the
client's address and when mitmproxy had the whole request. :func:`received` reads them back;
the relay then plans the call itself (:func:`~kimi_intercept.routing.unplanned.plan_received`).

:func:`forward_unchanged` sends a call to its original host exactly as the client sent it and
streams the answer back as it comes: a call that cannot be planned under ``[routing]
on_plan_error = "passthrough"``, and a call the relay's config no longer intercepts (a
``:set kimi_config`` between the addon's look and the relay's).
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

TOKEN_HEADER = "x-kimi-intercept-token"
URL_HEADER = "x-kimi-intercept-url"
HOST_HEADER = "x-kimi-intercept-host"
CLIENT_HEADER = "x-kimi-intercept-client"
STARTED_HEADER = "x-kimi-intercept-started"
#: The headers the addon adds (lower case); none of them travels upstream.
META = (TOKEN_HEADER, URL_HEADER, HOST_HEADER, CLIENT_HEADER, STARTED_HEADER)

# Not forwarded as they are: they describe one connection (RFC 9110 §7.6.1), or aiohttp sets
# them from the URL and the body it sends.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
     "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host",
     "content-length"}
)  # fmt: skip


# Headers aiohttp would add when the client sent none: the call goes on as the client sent it.
_NOT_ADDED = ("User-Agent", "Accept-Encoding", "Content-Type")


@dataclass(frozen=True)
class Received:
    """One intercepted call: ``url`` the original absolute URL (query included), ``host`` as
    mitmproxy named it, ``path`` with its query, ``headers`` the client's (original case,
    without :data:`META`), ``body`` as sent, ``client_host`` the client's address, ``started``
    when mitmproxy had the whole request (``time.time()`` seconds)."""

    method: str
    url: str
    host: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    client_host: str | None
    started: float | None


def authorized(request: web.BaseRequest, token: str) -> bool:
    """Whether ``request`` carries this run's token (compared in constant time)."""
    return hmac.compare_digest(request.headers.get(TOKEN_HEADER, "").encode(), token.encode())


def direct_host(request: web.BaseRequest) -> tuple[str, str]:
    """``(host, authority)`` of a request on the TLS listener: its ``Host`` header without and
    with the port (mitmproxy's ``pretty_host``; RFC 9110 §7.2), lower case; empty without one."""
    authority = request.headers.get("host", "").strip().lower()
    if authority.startswith("["):  # an IP literal: never a certificate of ours (direct.py)
        return authority.partition("]")[0] + "]", authority
    return authority.rpartition(":")[0] if ":" in authority else authority, authority


async def received(request: web.BaseRequest) -> Received:
    """The call behind ``request`` (reads its whole body, whatever its size: the limit is
    ``[proxy] max_body_mb``, applied by planning). A request on the TLS listener
    (``request.secure``) is the client's own: its URL is ``https://`` + its ``Host`` + its
    path, the client is the listener's peer (mitmproxy, on this machine: it passes the TLS
    through only for clients on this machine), and it started when its headers were read."""
    if request.secure:
        started = time.time()
        host, authority = direct_host(request)
        return Received(
            method=request.method,
            url=f"https://{authority}{request.raw_path}",
            host=host,
            path=request.raw_path,
            headers=[(k, v) for k, v in request.headers.items() if k.lower() not in META],
            body=await request.content.read(),
            client_host=request.remote,
            started=started,
        )
    h = request.headers
    try:
        started: float | None = float(h.get(STARTED_HEADER, ""))
    except ValueError:
        started = None
    url = h.get(URL_HEADER, "")
    # the path as the client sent it, query included (the hop's own has none)
    split = urlsplit(url)
    path = (split.path + (f"?{split.query}" if split.query else "")) if url else request.raw_path
    return Received(
        method=request.method,
        url=url,
        host=h.get(HOST_HEADER, ""),
        path=path,
        headers=[(k, v) for k, v in h.items() if k.lower() not in META],
        body=await request.content.read(),  # not request.read(): it stops at 1 MiB
        client_host=h.get(CLIENT_HEADER) or None,
        started=started,
    )


async def forward_unchanged(
    session: aiohttp.ClientSession, request: web.BaseRequest, call: Received
) -> tuple[web.StreamResponse, int | None, str | None]:
    """Send ``call`` to ``call.url`` as the client sent it and stream the answer back.

    Returns ``(response, status, error)``: the upstream's status, or ``None`` and a
    description when it could not be reached (the client then gets a 502 with it) or broke
    off mid-answer (the client's connection is cut)."""
    headers = [(k, v) for k, v in call.headers if k.lower() not in _HOP_BY_HOP]
    try:
        upstream = await session.request(
            call.method, call.url, headers=headers, data=call.body, allow_redirects=False,
            skip_auto_headers=_NOT_ADDED,
        )  # fmt: skip
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        message = f"cannot reach {call.host}: {type(e).__name__}: {e}"
        return web.Response(status=502, text=message), None, message
    async with upstream:
        answer = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for k, v in upstream.headers.items():
            if k.lower() not in _HOP_BY_HOP:
                answer.headers.add(k, v)
        await answer.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await answer.write(chunk)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            if request.transport is not None:
                request.transport.abort()  # no clean end: the client sees a broken body
            return answer, upstream.status, f"the answer broke off: {type(e).__name__}: {e}"
        await answer.write_eof()
    return answer, upstream.status, None
