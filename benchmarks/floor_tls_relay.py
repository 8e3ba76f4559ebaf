"""The floor's reroute with the relay design kimi-intercept uses, and nothing else: mitmproxy
passes the client's TLS through, unread, to a relay process that decrypts it itself.

For measuring only (``overhead.py --hop``, ``concurrency.py --hop``: the default ``HOP_SCRIPT``).
Run as ``mitmdump -s benchmarks/floor_tls_relay.py --set connection_strategy=lazy`` with
``FLOOR_UPSTREAM=http://127.0.0.1:<port>``. Like kimi-intercept with ``[proxy] relay_tls``
(``kimi_intercept.relay.direct``): the ``tls_clienthello`` hook marks a connection to
``api.openai.com`` as not to be intercepted and points it at a child process, which serves
TLS with a certificate for that host from mitmproxy's own CA, made as kimi-intercept makes
its own (``write_cert``: the client's trust is the same), through aiohttp's low-level server,
and forwards each call to the upstream with an aiohttp client, streaming the answer back chunk
by chunk — without planning, fallbacks, metering or rows. ``floor_relay.py`` is the hop
kimi-intercept used before (mitmproxy decrypts, then forwards over plain HTTP:
``HOP_SCRIPT=floor_relay.py``).
Run as a script (``HOP_CERT=PEM python benchmarks/floor_tls_relay.py``) it serves the relay
alone and prints its port.
"""

import asyncio
import os
import shutil
import ssl
import sys
import tempfile
from pathlib import Path

import aiohttp
import floor_relay  # mitmproxy puts a script's folder on sys.path, as Python does for a script
from aiohttp import web

HOST = "api.openai.com"


class TlsRelayHop:
    def __init__(self):
        self.port = None
        self.child = None
        self.folder = None

    async def running(self):
        from mitmproxy import ctx

        from kimi_intercept.relay.direct import write_cert

        store = ctx.master.addons.get("tlsconfig").certstore
        self.folder = Path(tempfile.mkdtemp())
        pem = write_cert(self.folder, HOST, store.default_ca.to_pem(), store.default_privatekey)
        self.child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "HOP_CERT": str(pem)},
        )  # fmt: skip
        self.port = int(await self.child.stdout.readline())

    def tls_clienthello(self, data):
        if data.client_hello.sni == HOST and self.port:
            data.ignore_connection = True
            data.context.server.address = ("127.0.0.1", self.port)

    def done(self):
        if self.child is not None and self.child.returncode is None:
            self.child.terminate()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class Relay(floor_relay.HopRelay):
    """``floor_relay``'s relay (the same handler), served with TLS."""

    async def start(self):
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(os.environ["HOP_CERT"])
        tls.set_alpn_protocols(["http/1.1"])
        runner = web.ServerRunner(web.Server(self.handle, access_log=None), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        self.session = aiohttp.ClientSession(
            auto_decompress=False, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
        )
        return site._server.sockets[0].getsockname()[1]


addons = [TlsRelayHop()]


async def _serve_alone():
    print(await Relay().start(), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve_alone())
