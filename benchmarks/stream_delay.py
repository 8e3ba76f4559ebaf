"""Per-event forwarding delay of a streamed answer: direct vs the floor vs kimi-intercept.

Usage: python benchmarks/stream_delay.py [--events 200] [--gap-ms 5] [--rounds 5] [--requests 4]
                                         [--json FILE]

Upstream: a tiny aiohttp SSE server on loopback, in this process (not the shared fake), that
answers ``POST …/chat/completions`` with ``--events`` OpenAI chat-completion chunk events,
``--gap-ms`` apart, then a ``finish_reason: "stop"`` chunk, a usage chunk (``"choices": []``,
sent when the request has ``stream_options.include_usage``) and ``data: [DONE]``. Byte format:
https://platform.openai.com/docs/api-reference/chat-streaming (each event ``data: <JSON of a
chat.completion.chunk>`` and a blank line). Each chunk's ``delta.content`` is its send time,
``time.time()`` with 6 decimals and a ``|``: kimi-intercept re-serializes events but keeps the
content text.

Setups (``benchmarks/harness.py``, ``setups_at(upstream_url=…)``): ``direct`` to that server,
the ``floor`` (``mitmdump -s benchmarks/floor.py``) and ``kimi`` (``mitmdump -s addons/kimi.py``)
routed to it. The client is a separate process with one keep-alive ``httpx.Client`` per setup
(one warm-up call first); it reads the raw body as it arrives, splits it into SSE events, and
records for each content event receive time − send time (ms; same machine clock). Per round
each setup in turn (the order rotates) makes ``--requests`` calls. Printed per setup: median,
p90 and p99 delay per event, events received / expected; then the median added over direct and
kimi − floor (target ≤ 0.5 ms). A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import HEADERS, Setup, chat_body, machine, pct, run_client, setups_at, ssl_context


class TimestampUpstream:
    """An SSE chat-completions server on ``127.0.0.1:<ephemeral>`` in a background thread whose
    content deltas carry their send time; ``with TimestampUpstream(200, 5.0) as up: up.url``."""

    def __init__(self, events: int, gap_ms: float) -> None:
        self.events, self.gap_s = events, gap_ms / 1e3
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TimestampUpstream:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve())
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="TimestampUpstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("TimestampUpstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)

    async def _serve(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _handle(self, request):
        from aiohttp import web

        req = await request.json()
        usage_wanted = (req.get("stream_options") or {}).get("include_usage") is True
        head = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": req.get("model") or "gpt-4o",
            "system_fingerprint": "fp_bench",
        }

        def event(choices: list, **extra) -> bytes:
            if usage_wanted and "usage" not in extra:
                extra["usage"] = None
            obj = {**head, "choices": choices, **extra}
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

        sse = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        resp = web.StreamResponse(headers=sse)
        await resp.prepare(request)
        try:
            for i in range(self.events):
                if i and self.gap_s:
                    await asyncio.sleep(self.gap_s)
                delta = {"content": f"{time.time():.6f}|"}
                if i == 0:
                    delta = {"role": "assistant", **delta}
                await resp.write(
                    event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
                )
            await resp.write(
                event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
            )
            if usage_wanted:
                n = self.events
                usage = {"prompt_tokens": 30, "completion_tokens": n, "total_tokens": 30 + n}
                await resp.write(event([], usage=usage))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:  # the client went away
            pass
        return resp


def _delays(client, s: Setup, body: bytes) -> list[float]:
    """One streamed call: receive − send (ms) of each content event, in arrival order."""
    out: list[float] = []
    buf = b""
    with client.stream("POST", s.url, content=body, headers=HEADERS) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{s.name}: HTTP {r.status_code}: {r.read()[:300]!r}")
        for chunk in r.iter_raw():
            now = time.time()
            buf += chunk.replace(b"\r\n", b"\n")
            *events, buf = buf.split(b"\n\n")
            for ev in events:
                for line in ev.split(b"\n"):
                    if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                        continue
                    obj = json.loads(line[5:])
                    for choice in obj.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        out += [(now - float(t)) * 1e3 for t in text.split("|") if t]
    return out


def client(spec: dict) -> dict:
    import httpx

    setups = {n: Setup(**s) for n, s in spec["setups"].items()}
    body = chat_body(True)
    names = list(setups)
    out = {n: {"delays": [], "calls": 0} for n in names}
    clients = {
        n: httpx.Client(timeout=120, trust_env=False, proxy=s.proxy, verify=ssl_context(s) or True)
        for n, s in setups.items()
    }
    try:
        for n, s in setups.items():
            _delays(clients[n], s, body)  # warm-up: the connection, TLS, first-call caches
        for rnd in range(spec["rounds"]):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for n in order:
                for _ in range(spec["requests"]):
                    out[n]["delays"] += _delays(clients[n], setups[n], body)
                    out[n]["calls"] += 1
    finally:
        for c in clients.values():
            c.close()
    return {
        n: {
            "events": len(r["delays"]),
            "expected": r["calls"] * spec["events"],
            "median": statistics.median(r["delays"]),
            "p90": pct(r["delays"], 0.90),
            "p99": pct(r["delays"], 0.99),
            "max": max(r["delays"]),
        }
        for n, r in out.items()
    }


def report(res: dict, args: argparse.Namespace) -> dict:
    """Print the table and kimi − floor; return the differences."""
    print(
        f"kimi-intercept per-event delay — {time.strftime('%Y-%m-%d %H:%M')}, {machine()}\n"
        f"{args.rounds} interleaved rounds × {args.requests} streamed calls per setup, "
        f"{args.events} events {args.gap_ms:g} ms apart per call\n"
        "ms from the upstream's write to the client's read of each event\n"
    )
    print(f"{'setup':8} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8} {'events':>13}")
    for n, r in res.items():
        print(
            f"{n:8} {r['median']:8.3f} {r['p90']:8.3f} {r['p99']:8.3f} {r['max']:8.2f} "
            f"{r['events']:>6}/{r['expected']:<6}"
        )
    out: dict = {}
    if "direct" in res:
        d = res["direct"]["median"]
        added = {n: r["median"] - d for n, r in res.items() if n != "direct"}
        print("\nmedian added over direct: " + "  ".join(f"{n} {a:+.3f}" for n, a in added.items()))
        out["added"] = added
    if {"floor", "kimi"} <= res.keys():
        diff = res["kimi"]["median"] - res["floor"]["median"]
        out["kimi_minus_floor"] = diff
        print(
            f"kimi − floor median: {diff:+.3f} ms (target ≤ 0.5 ms: "
            f"{'met' if diff <= 0.5 else 'NOT met'}); p99: "
            f"{res['kimi']['p99'] - res['floor']['p99']:+.3f} ms"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200, help="content events per answer")
    ap.add_argument("--gap-ms", type=float, default=5.0, help="ms between events")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--requests", type=int, default=4, help="calls per setup per round")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--client-spec", help=argparse.SUPPRESS)  # internal: run as the client
    args = ap.parse_args()
    if args.client_spec:
        print(json.dumps(client(json.loads(args.client_spec))))
        return
    with tempfile.TemporaryDirectory(prefix="kimi-stream-delay-") as tmp:
        with TimestampUpstream(args.events, args.gap_ms) as up:
            with setups_at(Path(tmp), upstream_url=up.url) as (setups, _fake, _db):
                spec = {
                    "setups": {n: s.as_dict() for n, s in setups.items()},
                    "rounds": args.rounds,
                    "requests": args.requests,
                    "events": args.events,
                }
                res = run_client(__file__, spec)
    out = report(res, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": res, "summary": out}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
