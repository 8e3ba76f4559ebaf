"""The floor plus an in-process relay hop, and nothing else: what the relay design itself costs.

Run as ``mitmdump -s benchmarks/floor_relay.py --set connection_strategy=lazy`` with
``FLOOR_UPSTREAM=http://127.0.0.1:<port>``. Like ``floor.py`` it reroutes calls to
``api.openai.com``, but through aiohttp's low-level server (``web.Server``, as the relay uses)
on mitmproxy's own loop, which forwards each call to the upstream with an aiohttp client and
streams the answer back chunk by chunk — the shape of kimi-intercept's relay (shared notes
``mitmproxy.md`` §3 (d)) without planning, fallbacks, metering or rows.
``benchmarks/overhead.py --hop`` measures it next to the floor and kimi-intercept: floor → hop
is the second hop's cost, hop → kimi is kimi-intercept's own work.
"""

import os

import aiohttp
from aiohttp import web

UPSTREAM = os.environ["FLOOR_UPSTREAM"]
_DROP = {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}


class HopRelay:
    def __init__(self):
        self.port = None
        self.session = None

    async def running(self):
        server = web.Server(self.handle, access_log=None)
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.session = aiohttp.ClientSession(
            auto_decompress=False, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
        )

    def request(self, flow):
        if flow.request.pretty_host == "api.openai.com" and self.port:
            flow.request.url = f"http://127.0.0.1:{self.port}{flow.request.path}"

    def responseheaders(self, flow):
        flow.response.stream = True

    async def handle(self, request):
        body = await request.read()
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        async with self.session.post(UPSTREAM + request.path, data=body, headers=headers) as up:
            out = web.StreamResponse(status=up.status)
            for k, v in up.headers.items():
                if k.lower() not in _DROP:
                    out.headers.add(k, v)
            if up.content_length is not None:
                out.content_length = up.content_length
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out


addons = [HopRelay()]
