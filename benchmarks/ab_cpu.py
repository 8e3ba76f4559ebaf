"""CPU per streamed call of one setup under N concurrent clients, for comparing two versions.

Usage: BENCH_PIN=1 python benchmarks/ab_cpu.py [--setup kimi] [--clients 50] [--seconds 8]
                                             [--reps 3] [--against DIR]

Starts only that setup (``benchmarks/harness.py``), then ``--reps`` times drives it with
``--clients`` streaming clients for ``--seconds`` (``concurrency.py``'s client) and prints the
calls per second, the proxy's CPU (utime + stime) per completed call and the median time to the
first token (``--clients 1``: one call at a time, the latency a single agent sees). With
``--against DIR`` (another checkout, e.g. a ``git worktree`` of the version before a change), a
second kimi-intercept runs that checkout's package on the same fake, the two take turns rep by
rep, and the ratio of their medians is printed: the machine's drift hits both alike. A script
that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from harness import (
    Setup,
    chat_body,
    clean_env,
    cpu_seconds,
    pin,
    render_config,
    run_client,
    setups_at,
)

from kimi_intercept.commands.mitmdump import start_proxy_process


def client(spec: dict) -> dict:
    import asyncio

    from concurrency import _level

    s = Setup(**spec["setup"])
    got = asyncio.run(_level(s, spec["clients"], spec["seconds"], chat_body(True)))
    return {
        "calls": len(got["ttft"]),
        "elapsed": got["elapsed"],
        "errors": len(got["errors"]),
        "ttft_p50": statistics.median(got["ttft"]) if got["ttft"] else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setup", choices=("kimi", "floor", "hop"), default="kimi")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--against", metavar="DIR", help="another checkout to compare with")
    ap.add_argument("--client-spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client_spec:
        print(json.dumps(client(json.loads(args.client_spec))))
        return
    with tempfile.TemporaryDirectory(prefix="kimi-ab-") as tmp_name:
        tmp = Path(tmp_name)
        with setups_at(tmp, (args.setup,)) as (setups, fake, _db), ExitStack() as stack:
            runs = {args.setup: setups[args.setup]}
            if args.against:
                assert fake is not None and args.setup == "kimi"
                root = tmp / "b"
                root.mkdir()
                (root / "confdir").mkdir()
                config = root / "config.toml"
                config.write_text(render_config(root / "kimi.db", fake.url, fake.url))
                env = clean_env({"PYTHONPATH": str(Path(args.against).resolve())})
                b = start_proxy_process(
                    config,
                    root / "confdir",
                    ["--set", "connection_strategy=lazy"],
                    env=env,
                    cwd=root,
                )
                stack.callback(b.stop)
                pin(b.proc.pid, proxy=True)
                runs["against"] = Setup("against", setups["kimi"].url, b.proxy_url,
                                        str(b.ca_path), b.proc.pid)  # fmt: skip
            results = _measure(runs, args)
    for name, rows in results.items():
        print(f"{name}: median {statistics.median(r[0] for r in rows):.1f} calls/s, "
              f"{statistics.median(r[1] for r in rows):.3f} ms CPU/call, "
              f"TTFT p50 {statistics.median(r[2] for r in rows):.2f} ms")  # fmt: skip
    if len(results) == 2:
        a, b_ = (statistics.median(r[1] for r in rows) for rows in results.values())
        print(f"CPU per call, this checkout / --against: {a / b_:.3f}")


def _measure(runs: dict[str, Setup], args: argparse.Namespace) -> dict[str, list]:
    results: dict[str, list] = {name: [] for name in runs}
    for s in runs.values():
        run_client(__file__, {"setup": s.as_dict(), "clients": args.clients, "seconds": 2})
    for rep in range(args.reps):
        order = list(runs.items()) if rep % 2 == 0 else list(runs.items())[::-1]
        for name, s in order:
            spec = {"setup": s.as_dict(), "clients": args.clients, "seconds": args.seconds}
            cpu0 = cpu_seconds(s.pid)
            got = run_client(__file__, spec)
            cpu = cpu_seconds(s.pid) - cpu0
            res = (got["calls"] / got["elapsed"], 1e3 * cpu / got["calls"], got["ttft_p50"])
            results[name].append(res)
            print(
                f"  {name:8} {res[0]:7.1f} calls/s  {res[1]:.3f} ms CPU/call  "
                f"TTFT p50 {res[2]:.2f} ms  errors {got['errors']}",
                flush=True,
            )
    return results


if __name__ == "__main__":
    sys.exit(main())
