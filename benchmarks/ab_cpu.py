"""CPU per streamed call of one setup under N concurrent clients, for comparing two versions.

Usage: BENCH_PIN=1 python benchmarks/ab_cpu.py [--setup kimi] [--clients 50] [--seconds 8] [--reps 3]

Starts only that setup (``benchmarks/harness.py``), then ``--reps`` times drives it with
``--clients`` streaming clients for ``--seconds`` (``concurrency.py``'s client) and prints the
calls per second and the proxy's CPU (utime + stime) per completed call. A script that prints
numbers, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from harness import Setup, chat_body, cpu_seconds, run_client, setups_at


def client(spec: dict) -> dict:
    import asyncio

    from concurrency import _level

    got = asyncio.run(_level(Setup(**spec["setup"]), spec["clients"], spec["seconds"], chat_body(True)))
    return {"calls": len(got["ttft"]), "elapsed": got["elapsed"], "errors": len(got["errors"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setup", choices=("kimi", "floor", "hop"), default="kimi")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--client-spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client_spec:
        print(json.dumps(client(json.loads(args.client_spec))))
        return
    with tempfile.TemporaryDirectory(prefix="kimi-ab-") as tmp:
        with setups_at(Path(tmp), (args.setup,)) as (setups, _f, _db):
            s = setups[args.setup]
            spec = {"setup": s.as_dict(), "clients": args.clients, "seconds": 2}
            run_client(__file__, spec)  # warm-up
            rows = []
            for _ in range(args.reps):
                cpu0 = cpu_seconds(s.pid)
                got = run_client(__file__, {**spec, "seconds": args.seconds})
                cpu = cpu_seconds(s.pid) - cpu0
                rows.append((got["calls"] / got["elapsed"], 1e3 * cpu / got["calls"]))
                print(f"  {rows[-1][0]:7.1f} calls/s  {rows[-1][1]:.3f} ms CPU/call  "
                      f"errors {got['errors']}", flush=True)  # fmt: skip
    print(f"{args.setup}: median {statistics.median(r[0] for r in rows):.1f} calls/s, "
          f"{statistics.median(r[1] for r in rows):.3f} ms CPU/call")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
