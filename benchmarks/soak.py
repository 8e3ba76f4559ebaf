"""Memory growth over a long run, rows written and bytes per row: the floor vs kimi-intercept.

Usage: python benchmarks/soak.py [--requests 10000] [--clients 4] [--trace] [--json FILE]

Setups (``benchmarks/harness.py``): the ``floor`` (``mitmdump -s benchmarks/floor.py``) and
``kimi`` (``mitmdump -s addons/kimi.py``), both against one fake upstream on loopback (its
default answer: 9 SSE events at once) and both with ``benchmarks/probe.py`` loaded.

Method: the client is a separate process (asyncio + aiohttp) with ``--clients`` virtual
clients per setup, each holding one keep-alive connection through the proxy, posting streamed
chat calls back to back. The run is cut at 10 %, 25 %, 50 %, 75 % and 100 % of ``--requests``;
between two cuts each setup in turn (the order rotates) makes its share of calls, so both see
the same machine load over time. At each cut the client reads the proxy's RSS through the proxy
(``GET http://probe.invalid/rss``: after ``gc.collect()`` and ``malloc_trim(0)``). Printed: RSS
at each cut, the growth from 10 % (request 1,000 of 10,000) to the end, per request, and kimi's
growth minus the floor's (target < 2 MB; mitmproxy and the allocator alone grow a few MB, hence
the comparison with the floor). For kimi, once its writer is idle (the ``requests`` count stable
for 3 s): rows in ``requests`` against calls made, and on-disk bytes per row (SQLite's
``dbstat``, else the file size after a WAL checkpoint; the method is printed) of ``requests``
and of ``attempts`` (each with its indexes) and of the whole database per ``requests`` row
(target ≤ 800 B).

``--trace``: both mitmdumps run with ``PROBE_TRACEMALLOC=1`` (tracemalloc, 6 frames); at the
10 % cut the client calls ``/trace/start`` instead of ``/rss`` and at the end ``/trace/diff``,
and the retained allocation sites that grew most are printed per setup (tracemalloc's own
memory then inflates RSS: compare RSS only from runs without ``--trace``). A script that prints
numbers, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    HEADERS,
    Setup,
    bytes_per_table,
    chat_body,
    machine,
    run_client,
    settled_count,
    setups_at,
    ssl_context,
)

CUTS = (0.10, 0.25, 0.50, 0.75, 1.0)


async def _call(session, s: Setup, body: bytes, ssl_ctx) -> None:
    async with session.post(s.url, data=body, headers=HEADERS, proxy=s.proxy, ssl=ssl_ctx) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
        async for _ in r.content.iter_any():
            pass


async def _probe(session, s: Setup, path: str) -> dict:
    async with session.get("http://probe.invalid" + path, proxy=s.proxy) as r:
        if r.status != 200:
            raise RuntimeError(f"probe {path}: HTTP {r.status}")
        return await r.json(content_type=None)


async def _run(spec: dict) -> dict:
    import asyncio

    import aiohttp

    setups = {n: Setup(**s) for n, s in spec["setups"].items()}
    names = list(setups)
    body = chat_body(True)
    timeout = aiohttp.ClientTimeout(total=300)
    sessions = {
        n: [
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1), timeout=timeout, trust_env=False
            )
            for _ in range(spec["clients"])
        ]
        for n in names
    }
    probe = aiohttp.ClientSession(timeout=timeout, trust_env=False)
    out = {n: {"calls": 0, "errors": 0, "first_errors": [], "rss_kb": {}, "seconds": 0.0}
           for n in names}  # fmt: skip
    cuts = [max(1, round(spec["requests"] * c)) for c in CUTS]
    # one TLS context per setup for the whole run: aiohttp pools connections by it, so each
    # client keeps its one connection from cut to cut, as an agent keeps its own
    contexts = {n: ssl_context(s) for n, s in setups.items()}
    try:
        done_before = 0
        for i, cut in enumerate(cuts):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                s, r = setups[name], out[name]
                ssl_ctx = contexts[name]
                left = [cut - done_before]

                async def worker(session, s=s, r=r, ssl_ctx=ssl_ctx, left=left) -> None:
                    while left[0] > 0:
                        left[0] -= 1
                        try:
                            await _call(session, s, body, ssl_ctx)
                        except Exception as e:  # counted; the run goes on
                            r["errors"] += 1
                            r["first_errors"] = (r["first_errors"] + [repr(e)[:200]])[:3]
                        r["calls"] += 1

                t0 = time.perf_counter()
                await asyncio.gather(*(worker(ss) for ss in sessions[name]))
                r["seconds"] += time.perf_counter() - t0
                path = "/rss"
                if spec["trace"] and i == 0:
                    path = "/trace/start"
                got = await _probe(probe, s, path)
                if spec["trace"] and cut == cuts[-1]:
                    got = await _probe(probe, s, "/trace/diff")
                    r["top"] = got.get("top", [])
                r["rss_kb"][str(cut)] = got["rss_kb"]
            done_before = cut
    finally:
        for ss in [*sum(sessions.values(), []), probe]:
            await ss.close()
    return out


def client(spec: dict) -> dict:
    import asyncio

    return asyncio.run(_run(spec))


def report(res: dict, db: dict | None, args: argparse.Namespace) -> dict:
    """Print the RSS table, the growth difference and kimi's database figures; return them."""
    print(
        f"kimi-intercept soak — {time.strftime('%Y-%m-%d %H:%M')}, {machine()}\n"
        f"{args.requests} streamed calls per setup, {args.clients} concurrent clients, "
        f"interleaved between cuts{'; tracemalloc ON (RSS inflated)' if args.trace else ''}\n"
        "RSS in MB after gc.collect() + malloc_trim(0), read through the proxy\n"
    )
    cuts = list(next(iter(res.values()))["rss_kb"])
    head = f"{'setup':8} " + " ".join(f"{'@' + c:>8}" for c in cuts)
    print(head + f" {'growth':>8} {'B/call':>7} {'calls/s':>8} {'errors':>7}")
    summary: dict = {}
    for name, r in res.items():
        rss = [r["rss_kb"][c] for c in cuts]
        growth_kb = rss[-1] - rss[0]
        per_call = growth_kb * 1024 / max(1, int(cuts[-1]) - int(cuts[0]))
        summary[name] = {"growth_mb": growth_kb / 1024, "bytes_per_call": per_call}
        print(
            f"{name:8} " + " ".join(f"{v / 1024:8.1f}" for v in rss)
            + f" {growth_kb / 1024:+8.2f} {per_call:7.0f} {r['calls'] / r['seconds']:8.1f} "
            f"{r['errors']:>7}"
        )  # fmt: skip
        for e in r["first_errors"]:
            print(f"    error: {e}")
    if {"floor", "kimi"} <= res.keys():
        diff = summary["kimi"]["growth_mb"] - summary["floor"]["growth_mb"]
        summary["kimi_minus_floor_mb"] = diff
        print(
            f"\ngrowth @{cuts[0]}→@{cuts[-1]}: kimi − floor = {diff:+.2f} MB "
            f"(target < 2 MB: {'met' if diff < 2 else 'NOT met'})"
        )
    if db:
        print(
            f"\nkimi database: {db['rows']} rows in requests for {db['calls']} calls made "
            f"({'equal' if db['rows'] == db['calls'] else 'NOT equal'}); "
            f"{db['attempt_rows']} attempts rows"
        )
        print(f"bytes on disk ({db['method']}):")
        for label, value in db["per_row"].items():
            print(f"  {label:38} {value:8.0f} B/row")
        whole = db["per_row"].get("whole database per requests row")
        if whole is not None:
            print(f"  target ≤ 800 B per request row: {'met' if whole <= 800 else 'NOT met'}")
        summary["db"] = db
    for name, r in res.items():
        if r.get("top"):
            print(f"\n{name}: top retained allocation sites since @{cuts[0]} (tracemalloc)")
            for t in r["top"]:
                print(f"  {t['kb']:+9.1f} KB {t['count']:+7d} blocks")
                for line in t["where"]:
                    print(f"      {line}")
    return summary


def _db_figures(db_path: Path, calls: int) -> dict:
    rows = settled_count(db_path)
    method, sizes, counts = bytes_per_table(db_path)
    per_row: dict[str, float] = {}
    if "requests" in sizes and counts.get("requests"):
        per_row["requests (table + indexes)"] = sizes["requests"] / counts["requests"]
    if "attempts" in sizes and counts.get("attempts"):
        per_row["attempts (table + indexes)"] = sizes["attempts"] / counts["attempts"]
    if rows:
        per_row["whole database per requests row"] = sizes["*"] / rows
    return {
        "rows": rows,
        "calls": calls,
        "attempt_rows": counts.get("attempts", 0),
        "method": method,
        "bytes": sizes,
        "per_row": per_row,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10000, help="streamed calls per setup")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients per setup")
    ap.add_argument("--trace", action="store_true", help="tracemalloc diff from the 10 %% cut")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--client-spec", help=argparse.SUPPRESS)  # internal: run as the client
    args = ap.parse_args()
    if args.client_spec:
        print(json.dumps(client(json.loads(args.client_spec))))
        return
    env = {"PROBE_TRACEMALLOC": "1"} if args.trace else None
    with tempfile.TemporaryDirectory(prefix="kimi-soak-") as tmp:
        with setups_at(Path(tmp), ("floor", "kimi"), probe=True, proxy_env=env) as (
            setups,
            _fake,
            db_path,
        ):
            spec = {
                "setups": {n: s.as_dict() for n, s in setups.items()},
                "requests": args.requests,
                "clients": args.clients,
                "trace": args.trace,
            }
            res = run_client(__file__, spec, timeout=4 * 3600)
            db = _db_figures(db_path, res["kimi"]["calls"]) if "kimi" in res else None
    summary = report(res, db, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": res, "summary": summary}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
