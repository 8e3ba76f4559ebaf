"""The floor plus an in-process relay hop, and nothing else: what the relay design itself costs.

Run as ``mitmdump -s benchmarks/floor_relay.py --set connection_strategy=lazy`` with
``FLOOR_UPSTREAM=http://127.0.0.1:<port>``. Like ``floor.py`` it reroutes calls to
``api.openai.com``, but through aiohttp's low-level server (``web.Server``, as the relay uses)
on mitmproxy's own loop, which forwards each call to the upstream with an aiohttp client and
streams the answer back chunk by chunk — the shape of kimi-intercept's relay (shared notes
``mitmproxy.md`` §3 (d)) without planning, fallbacks, metering or rows.
``benchmarks/overhead.py --hop`` measures it next to the floor and kimi-intercept: floor → hop
is the second hop's cost, hop → kimi is kimi-intercept's own work.

``HOP_WORK_MS`` (default 0) adds that many ms of CPU-bound Python work to each call, half before
the upstream call and half after the answer (in a callback of its own, as a row is built): a
stand-in for kimi-intercept's own work, to compare where such work runs
(``floor_relay_process.py`` runs this same relay in a process of its own). Run as a script
(``python benchmarks/floor_relay.py``), it serves the relay alone and prints its port.
"""

import asyncio
import os
import time

import aiohttp
from aiohttp import web

UPSTREAM = os.environ["FLOOR_UPSTREAM"]
_DROP = {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
WORK_S = float(os.environ.get("HOP_WORK_MS", "0")) / 2e3  # per half


def busy(seconds):
    """Burn ``seconds`` of this thread's CPU time in Python bytecode."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


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
        if WORK_S:
            busy(WORK_S)
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
        if WORK_S:  # like a row: after the answer, off the handler
            asyncio.get_running_loop().call_soon(busy, WORK_S)
        return out


addons = [HopRelay()]


async def _serve_alone():
    hop = HopRelay()
    await hop.running()
    print(hop.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve_alone())
