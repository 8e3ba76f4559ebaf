"""Added latency and CPU per request: direct vs the floor vs kimi-intercept (vs LiteLLM).

Usage: python benchmarks/overhead.py [--rounds 5] [--requests 100] [--cold 20] [--hop]
                                     [--litellm PATH] [--json FILE]

Setups (``benchmarks/harness.py``): ``direct`` to one fake upstream on loopback, the ``floor``
(``mitmdump -s benchmarks/floor.py``: a 3-line reroute, HTTPS interception included) and
``kimi`` (``mitmdump -s addons/kimi.py``, routed to the same fake through its relay, one SQLite
row per call), optionally ``hop`` (``--hop``: the floor's reroute through a bare relay reached
the way kimi-intercept's is, ``benchmarks/floor_tls_relay.py``) and ``litellm``. The client is
a separate process with a keep-alive ``httpx.Client`` posting a ~256 B chat request; the fake
answers ~250 B of JSON, or 9 SSE events sent at once.

Per round, each setup in turn (the order rotates every round): 10 warm-up calls, then
``--requests`` JSON calls and ``--requests`` streamed calls on one connection (warm), with the
proxy's CPU time (utime + stime) read around them, then ``--cold`` streamed calls each on a new
connection (CONNECT + TLS). TTFT is the time to the first token (``harness.FirstToken``: the
first SSE event with content — the role-only opening event carries none), as a user sees it.
Printed per setup: the median of the per-round medians with
[min..max] across rounds, the p90 of every sample, and the ratios kimi/floor of the latency
*added* over direct (targets: warm ≤ 1.3×) and of the CPU per request (target ≤ 1.5×).
A script that prints numbers, not a test.
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
    Setup,
    chat_body,
    cpu_seconds,
    machine,
    pct,
    run_client,
    side_by_side,
    timed,
)

WARMUP = 10
METRICS = ("json", "ttft", "cold_ttft")


def client(spec: dict) -> dict:
    import httpx

    setups = {n: Setup(**s) for n, s in spec["setups"].items()}
    json_body, sse_body = chat_body(False), chat_body(True)
    out = {n: {m: [] for m in (*METRICS, "cpu_ms")} for n in setups}
    samples = {n: {m: [] for m in METRICS} for n in setups}
    names = list(setups)
    for rnd in range(spec["rounds"]):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            s, res, all_ = setups[name], out[name], samples[name]
            with httpx.Client(timeout=60, **s.client_kwargs()) as c:
                for i in range(WARMUP):
                    timed(c, s.url, sse_body if i % 2 else json_body)
                cpu0 = cpu_seconds(s.pid) if s.pid else 0.0
                js = [timed(c, s.url, json_body)[1] for _ in range(spec["requests"])]
                tt = [timed(c, s.url, sse_body)[0] for _ in range(spec["requests"])]
                cpu1 = cpu_seconds(s.pid) if s.pid else 0.0
            cold = []
            for _ in range(spec["cold"]):
                with httpx.Client(timeout=60, **s.client_kwargs()) as c:
                    cold.append(timed(c, s.url, sse_body)[0])
            for metric, values in (("json", js), ("ttft", tt), ("cold_ttft", cold)):
                if values:
                    res[metric].append(statistics.median(values))
                    all_[metric].extend(values)
            if s.pid:
                res["cpu_ms"].append((cpu1 - cpu0) * 1e3 / (2 * spec["requests"]))
    for name in names:
        for metric in METRICS:
            vals = samples[name][metric]
            out[name][metric + "_p90"] = pct(vals, 0.9) if vals else None
    return out


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.median(values):.2f} [{min(values):.2f}..{max(values):.2f}]"


def report(res: dict, args: argparse.Namespace) -> dict:
    """Print the table and the ratios; return them (for ``--json``)."""
    print(
        f"kimi-intercept overhead — {time.strftime('%Y-%m-%d %H:%M')}, {machine()}\n"
        f"{args.rounds} interleaved rounds × {args.requests} warm JSON + {args.requests} warm "
        f"streamed + {args.cold} cold streamed calls per setup\n"
        "ms: median of per-round medians [min..max across rounds]; p90 over all samples\n"
    )
    head = f"{'setup':8} {'warm JSON':>22} {'p90':>6} {'warm TTFT':>22} {'p90':>6} "
    print(head + f"{'cold TTFT':>22} {'p90':>6} {'CPU ms/call':>22}")
    for name, r in res.items():
        print(
            f"{name:8} {_cell(r['json']):>22} {r['json_p90']:6.2f} {_cell(r['ttft']):>22} "
            f"{r['ttft_p90']:6.2f} {_cell(r['cold_ttft']):>22} {r['cold_ttft_p90']:6.2f} "
            f"{_cell(r['cpu_ms']):>22}"
        )
    ratios: dict[str, float] = {}
    if {"direct", "floor", "kimi"} <= res.keys():
        print("\nadded over direct (median ms) and kimi/floor ratios:")
        for metric, label, target in (
            ("json", "warm JSON", 1.3),
            ("ttft", "warm TTFT", 1.3),
            ("cold_ttft", "cold TTFT", None),
        ):
            d = statistics.median(res["direct"][metric])
            added = {n: statistics.median(res[n][metric]) - d for n in res if n != "direct"}
            ratio = added["kimi"] / added["floor"] if added["floor"] > 0 else float("inf")
            ratios[metric] = ratio
            others = "  ".join(f"{n} {a:+.2f}" for n, a in added.items())
            goal = ""
            if target is not None:
                goal = f"  (target ≤ {target}×: {'met' if ratio <= target else 'NOT met'})"
            hop = ""
            if "hop" in added and added["floor"] > 0:
                ratios[metric + "_hop"] = added["hop"] / added["floor"]
                hop = f" (hop alone {added['hop'] / added['floor']:.2f}×)"
            print(f"  {label:10} {others}  ratio {ratio:.2f}×{hop}{goal}")
        cpu = statistics.median(res["kimi"]["cpu_ms"]) / statistics.median(res["floor"]["cpu_ms"])
        ratios["cpu"] = cpu
        verdict = "met" if cpu <= 1.5 else "NOT met"
        hop = ""
        if "hop" in res:
            ratios["cpu_hop"] = statistics.median(res["hop"]["cpu_ms"]) / statistics.median(
                res["floor"]["cpu_ms"]
            )
            hop = f" (hop alone {ratios['cpu_hop']:.2f}×)"
        print(f"  CPU/call   ratio {cpu:.2f}×{hop}  (target ≤ 1.5×: {verdict})")
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--requests", type=int, default=100, help="warm calls of each kind per round")
    ap.add_argument("--cold", type=int, default=20, help="new-connection calls per round")
    ap.add_argument("--litellm", metavar="PATH", help="also measure LiteLLM's proxy (executable)")
    ap.add_argument("--hop", action="store_true", help="also a bare relay, reached as kimi's")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--client-spec", help=argparse.SUPPRESS)  # internal: run as the client
    args = ap.parse_args()
    if args.client_spec:
        print(json.dumps(client(json.loads(args.client_spec))))
        return
    with tempfile.TemporaryDirectory(prefix="kimi-overhead-") as tmp:
        names = ("direct", "floor", "hop", "kimi") if args.hop else ("direct", "floor", "kimi")
        with side_by_side(Path(tmp), names, litellm=args.litellm) as (setups, _fake, _db):
            spec = {
                "setups": {n: s.as_dict() for n, s in setups.items()},
                "rounds": args.rounds,
                "requests": args.requests,
                "cold": args.cold,
            }
            res = run_client(__file__, spec)
    ratios = report(res, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": res, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
