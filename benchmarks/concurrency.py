"""Throughput and TTFT under concurrent streaming clients: direct vs the floor vs kimi-intercept.

Usage: python benchmarks/concurrency.py [--clients 1,10,50,100] [--seconds 10] [--rounds 2]
                                        [--gap-ms 0] [--hop] [--litellm PATH] [--json FILE]

Setups (``benchmarks/harness.py``): ``direct`` to one fake upstream on loopback, the ``floor``
(``mitmdump -s benchmarks/floor.py``, HTTPS interception included), ``kimi``
(``mitmdump -s addons/kimi.py``), optionally ``hop`` (``--hop``: the floor's reroute through a
bare relay reached the way kimi-intercept's is, ``benchmarks/floor_tls_relay.py``) and
``litellm``. The fake streams its default answer
(9 SSE events plus ``[DONE]``, ``--gap-ms`` apart; 0 = all at once).

Method: the client is a separate process running asyncio + aiohttp. For each level of
``--clients`` N and each round, every setup in turn (the order rotates every round) gets N
virtual clients, each with its own ``aiohttp.ClientSession`` holding one keep-alive connection
(through the proxy: CONNECT + TLS trusting that proxy's CA), which makes one warm-up call and
then posts streamed chat calls back to back for ``--seconds / --rounds`` seconds. Per call:
TTFT = ms to the first token (the first SSE event with content), total = ms to the end of the
body; a non-200 or an exception is an error. Printed per level and setup: completed calls/s
(calls / the time from the window's start to the last call's end, summed over rounds), TTFT p50
and p99, total p50, errors, new
connections opened (N per round when keep-alive works); then per level the kimi/floor
throughput ratio (target at 50 clients: ≥ 90 %) and TTFT p99 ratio (target at 50: ≤ 1.5×).
The client shares the machine's CPUs with the proxies: at high levels it can be part of the
limit, for every setup alike. A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    HEADERS,
    FirstToken,
    Setup,
    chat_body,
    machine,
    pct,
    run_client,
    setups_at,
    ssl_context,
)


async def _one_call(session, s: Setup, body: bytes, ssl_ctx) -> tuple[float, float]:
    """``(TTFT ms, total ms)`` of one streamed POST (TTFT: its first token,
    :class:`~harness.FirstToken`); raises on a non-200."""
    t0 = time.perf_counter()
    ttft = None
    first = FirstToken()
    async with session.post(
        s.url, data=body, headers=HEADERS, proxy=s.proxy, ssl=ssl_ctx if ssl_ctx else True
    ) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
        async for chunk in r.content.iter_any():
            if ttft is None and first.feed(chunk):
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total) * 1e3, total * 1e3


async def _level(s: Setup, n: int, seconds: float, body: bytes) -> dict:
    """N virtual clients on setup ``s`` for ``seconds``: their samples and counts."""
    import asyncio

    import aiohttp

    ssl_ctx = ssl_context(s)
    conns = [0]

    async def on_conn(_session, _ctx, _params) -> None:
        conns[0] += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_conn)
    ttft: list[float] = []
    total: list[float] = []
    errors: list[str] = []
    ends: list[float] = []
    timeout = aiohttp.ClientTimeout(total=60)
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, force_close=False),
            timeout=timeout,
            trace_configs=[trace],
            trust_env=False,
        )
        for _ in range(n)
    ]
    try:
        # one warm-up call per virtual client opens its connection (CONNECT + TLS)
        warm = await asyncio.gather(
            *(_one_call(ss, s, body, ssl_ctx) for ss in sessions), return_exceptions=True
        )
        errors += [repr(w)[:200] for w in warm if isinstance(w, BaseException)]
        start = time.perf_counter()
        stop_at = start + seconds

        async def loop(session) -> None:
            while time.perf_counter() < stop_at:
                try:
                    a, b = await _one_call(session, s, body, ssl_ctx)
                except Exception as e:  # counted, and the virtual client goes on
                    errors.append(repr(e)[:200])
                    await asyncio.sleep(0.05)
                    continue
                ttft.append(a)
                total.append(b)
                ends.append(time.perf_counter())

        await asyncio.gather(*(loop(ss) for ss in sessions))
        elapsed = (max(ends) if ends else time.perf_counter()) - start
    finally:
        await asyncio.gather(*(ss.close() for ss in sessions))
    return {
        "ttft": ttft, "total": total, "errors": errors, "elapsed": elapsed, "conns": conns[0]
    }  # fmt: skip


def client(spec: dict) -> dict:
    import asyncio

    setups = {n: Setup(**s) for n, s in spec["setups"].items()}
    body = chat_body(True)
    names = list(setups)
    slice_s = spec["seconds"] / spec["rounds"]
    out: dict = {}
    k = 0
    for n in spec["clients"]:
        res = {
            name: {"ttft": [], "total": [], "errors": 0, "elapsed": 0.0, "conns": 0,
                   "first_errors": []}
            for name in names
        }  # fmt: skip
        for _ in range(spec["rounds"]):
            order = names[k % len(names) :] + names[: k % len(names)]
            k += 1
            for name in order:
                got = asyncio.run(_level(setups[name], n, slice_s, body))
                r = res[name]
                r["ttft"] += got["ttft"]
                r["total"] += got["total"]
                r["errors"] += len(got["errors"])
                r["first_errors"] = (r["first_errors"] + got["errors"])[:3]
                r["elapsed"] += got["elapsed"]
                r["conns"] += got["conns"]
        out[str(n)] = {
            name: {
                "calls": len(r["ttft"]),
                "rps": len(r["ttft"]) / r["elapsed"] if r["elapsed"] else 0.0,
                "ttft_p50": statistics.median(r["ttft"]) if r["ttft"] else None,
                "ttft_p99": pct(r["ttft"], 0.99) if r["ttft"] else None,
                "total_p50": statistics.median(r["total"]) if r["total"] else None,
                "errors": r["errors"],
                "first_errors": r["first_errors"],
                "conns": r["conns"],
            }
            for name, r in res.items()
        }
    return out


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def report(res: dict, args: argparse.Namespace) -> dict:
    """Print one table per level and the kimi/floor ratios; return the ratios."""
    print(
        f"kimi-intercept concurrency — {time.strftime('%Y-%m-%d %H:%M')}, {machine()}\n"
        f"streamed calls back to back, {args.seconds:g} s per setup and level in {args.rounds} "
        f"interleaved rounds, upstream gap {args.gap_ms:g} ms\n"
    )
    ratios: dict = {}
    for level, by_setup in res.items():
        print(f"{level} concurrent clients")
        print(f"  {'setup':8} {'calls/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} "
              f"{'total p50':>10} {'errors':>7} {'conns':>6}")  # fmt: skip
        for name, r in by_setup.items():
            print(
                f"  {name:8} {r['rps']:8.1f} {_ms(r['ttft_p50']):>9} {_ms(r['ttft_p99']):>9} "
                f"{_ms(r['total_p50']):>10} {r['errors']:>7} {r['conns']:>6}"
            )
            for e in r["first_errors"]:
                print(f"    error: {e}")
        f, k = by_setup.get("floor"), by_setup.get("kimi")
        if f and k and f["rps"] and f["ttft_p99"] and k["ttft_p99"]:
            thr = k["rps"] / f["rps"]
            p99 = k["ttft_p99"] / f["ttft_p99"]
            ratios[level] = {"throughput": thr, "ttft_p99": p99}
            goal = ""
            if level == "50":
                goal = (
                    f"  (targets ≥ 90 %: {'met' if thr >= 0.9 else 'NOT met'}; "
                    f"≤ 1.5×: {'met' if p99 <= 1.5 else 'NOT met'})"
                )
            print(f"  kimi/floor: throughput {thr * 100:.0f} %, TTFT p99 {p99:.2f}×{goal}")
        h = by_setup.get("hop")
        if f and h and f["rps"] and f["ttft_p99"] and h["ttft_p99"]:
            thr, p99 = h["rps"] / f["rps"], h["ttft_p99"] / f["ttft_p99"]
            ratios.setdefault(level, {}).update({"throughput_hop": thr, "ttft_p99_hop": p99})
            print(f"  hop/floor:  throughput {thr * 100:.0f} %, TTFT p99 {p99:.2f}×")
        print()
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,10,50,100", help="comma-separated concurrency levels")
    ap.add_argument("--seconds", type=float, default=10, help="seconds per setup and level")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per level")
    ap.add_argument("--gap-ms", type=float, default=0.0, help="fake upstream's gap between events")
    ap.add_argument("--hop", action="store_true", help="also a bare relay, reached as kimi's")
    ap.add_argument("--litellm", metavar="PATH", help="also measure LiteLLM's proxy (executable)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--client-spec", help=argparse.SUPPRESS)  # internal: run as the client
    args = ap.parse_args()
    if args.client_spec:
        print(json.dumps(client(json.loads(args.client_spec))))
        return
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="kimi-concurrency-") as tmp:
        names = ("direct", "floor", "hop", "kimi") if args.hop else ("direct", "floor", "kimi")
        with setups_at(Path(tmp), names, gap_ms=args.gap_ms, litellm=args.litellm) as (
            setups,
            _f,
            _db,
        ):
            spec = {
                "setups": {n: s.as_dict() for n, s in setups.items()},
                "clients": levels,
                "seconds": args.seconds,
                "rounds": args.rounds,
            }
            res = run_client(__file__, spec)
    ratios = report(res, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": res, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
