"""The floor plus the cheapest possible relay hop: a bare ``asyncio.Protocol`` HTTP/1.1 server.

For measuring only (``HOP_SCRIPT=floor_rawhop.py python benchmarks/overhead.py --hop``): like
``floor_relay.py`` it reroutes calls to ``api.openai.com`` through an in-process server that
forwards each call to ``FLOOR_UPSTREAM`` with an aiohttp client and streams the answer back,
but the server side is a few lines of hand-written HTTP/1.1 (Content-Length requests, one at a
time per connection, no error handling) instead of aiohttp's server: the least a second hop
can cost, against which aiohttp's low-level server (what the relay uses) is compared in
``docs/performance.md``. Not a server to use for anything else.
"""

import asyncio
import os

import aiohttp
from floor_relay import HopRelay  # mitmproxy puts a script's folder on sys.path

UPSTREAM = os.environ["FLOOR_UPSTREAM"]
_DROP = {b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"date", b"server"}
_SESSION: aiohttp.ClientSession | None = None


class Hop(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf, self.busy = transport, bytearray(), False

    def data_received(self, data):
        self.buf += data
        self._next()

    def _next(self):
        i = self.buf.find(b"\r\n\r\n")
        if self.busy or i < 0:
            return
        lines = bytes(self.buf[:i]).split(b"\r\n")
        path = lines[0].split(b" ")[1].decode()
        length, ctype = 0, "application/json"
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"content-type":
                ctype = v.strip().decode()
        if len(self.buf) < i + 4 + length:
            return
        body = bytes(self.buf[i + 4 : i + 4 + length])
        del self.buf[: i + 4 + length]
        self.busy = True
        asyncio.get_running_loop().create_task(self.handle(path, ctype, body))

    async def handle(self, path, ctype, body):
        write = self.transport.write
        async with _SESSION.post(UPSTREAM + path, data=body, headers={"content-type": ctype}) as up:
            head = [b"HTTP/1.1 %d %s\r\n" % (up.status, (up.reason or "").encode())]
            head += [k + b": " + v + b"\r\n" for k, v in up.raw_headers if k.lower() not in _DROP]
            chunked = up.content_length is None
            if chunked:
                head.append(b"transfer-encoding: chunked\r\n\r\n")
            else:
                head.append(b"content-length: %d\r\n\r\n" % up.content_length)
            pending = b"".join(head)  # sent with the first chunk, in one write
            async for chunk in up.content.iter_any():
                write(pending + (b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk))
                pending = b""
            write(pending + (b"0\r\n\r\n" if chunked else b""))
        self.busy = False
        self._next()


class RawHopRelay(HopRelay):
    """``floor_relay.HopRelay``'s reroute and streaming hooks, with :class:`Hop` serving."""

    async def running(self):
        global _SESSION
        server = await asyncio.get_running_loop().create_server(Hop, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        _SESSION = self.session = aiohttp.ClientSession(
            auto_decompress=False, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
        )


addons = [RawHopRelay()]
