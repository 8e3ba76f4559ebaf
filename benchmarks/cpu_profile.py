"""Where the proxy's CPU goes: py-spy samples of the floor or kimi-intercept under steady load.

Usage: python benchmarks/cpu_profile.py [--setup kimi|floor|hop] [--seconds 15] [--clients N]
                                        [--top 12] [--raw FILE]

Starts the setup (``benchmarks/harness.py``), drives it from a client process with a keep-alive
``httpx.Client`` alternating JSON and streamed calls (or, with ``--clients N``, N concurrent
streaming clients as ``concurrency.py`` runs them), and records the mitmdump process with
``py-spy record --format raw --threads --gil --subprocesses`` (kimi-intercept's relay process too;
only samples holding the GIL: Python work,
not waits; py-spy must be installed: ``pip install py-spy``;
sampling another process needs ptrace rights, e.g. root). Printed: busy samples per thread, and
the functions with the most samples inclusive (on the stack) and self (at the top). A script
that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import Setup, chat_body, run_client, side_by_side, timed


def client(spec: dict) -> dict:
    import httpx

    s = Setup(**spec["setup"])
    if spec.get("clients"):
        import asyncio

        from concurrency import _level

        got = asyncio.run(_level(s, spec["clients"], spec["seconds"], chat_body(True)))
        return {"calls": len(got["ttft"])}
    bodies = (chat_body(False), chat_body(True))
    n = 0
    deadline = time.monotonic() + spec["seconds"]
    with httpx.Client(timeout=60, **s.client_kwargs()) as c:
        while time.monotonic() < deadline:
            timed(c, s.url, bodies[n % 2])
            n += 1
    return {"calls": n}


def summarize(raw: Path, top: int) -> None:
    threads: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[frames[0]] += n
        for f in set(frames[1:]):
            inclusive[f] += n
        self_[frames[-1]] += n
    print(f"{total} busy samples")
    print("\nby thread:")
    for name, n in threads.most_common(6):
        print(f"  {100 * n / total:5.1f}%  {name}")
    for title, counter in (("inclusive (on the stack)", inclusive), ("self (at the top)", self_)):
        print(f"\ntop {top} functions, {title}:")
        for name, n in counter.most_common(top):
            print(f"  {100 * n / total:5.1f}%  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setup", choices=("kimi", "floor", "hop"), default="kimi")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--clients", type=int, default=0, help="N concurrent streaming clients")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--raw", metavar="FILE", help="keep py-spy's raw (collapsed) stacks here")
    ap.add_argument("--client-spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client_spec:
        print(json.dumps(client(json.loads(args.client_spec))))
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory(prefix="kimi-profile-") as tmp_name:
        tmp = Path(tmp_name)
        raw = Path(args.raw) if args.raw else tmp / "raw.txt"
        with side_by_side(tmp, names=(args.setup,)) as (setups, _fake, _db):
            s = setups[args.setup]
            run_client(__file__, {"setup": s.as_dict(), "seconds": 2})  # warm-up
            rec = subprocess.Popen(
                [spy, "record", "--pid", str(s.pid), "--duration", str(int(args.seconds)),
                 "--rate", "250", "--format", "raw", "--threads", "--gil", "--nonblocking",
                 "--subprocesses",
                 "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            res = run_client(
                __file__,
                {"setup": s.as_dict(), "seconds": args.seconds + 1, "clients": args.clients},
            )
            _, err = rec.communicate(timeout=args.seconds + 60)
            if rec.returncode != 0:
                sys.exit(f"py-spy failed: {err.strip()[-2000:]}")
        print(f"{args.setup}: {res['calls']} calls in {args.seconds:g} s")
        summarize(raw, args.top)


if __name__ == "__main__":
    main()
