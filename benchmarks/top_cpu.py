"""CPU used by ``kimi-intercept top``: idle, then while requests flow through the proxy.

Usage: python benchmarks/top_cpu.py [--seconds 60] [--rate 20]

Runs the real ``mitmdump -s addons/kimi.py`` with kimi pointed at a fake upstream on loopback
(``kimi_intercept.commands.simulator``), and ``kimi-intercept top`` on an 80×24 pseudo-terminal
reading the proxy's database. For ``--seconds`` with no traffic, then for ``--seconds`` with
``--rate`` streamed requests a second (keep-alive httpx clients over the proxy), it reads top's
user+system CPU time from ``/proc/<pid>/stat`` and prints it as a share of one core. Linux
only. A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import ssl
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared test config

from harness import cpu_seconds  # noqa: E402
from proxyproc import clean_env, render_config  # noqa: E402

from kimi_intercept.commands.mitmdump import start_proxy_process  # noqa: E402
from kimi_intercept.commands.simulator import FakeUpstream  # noqa: E402

CLI = Path(sys.executable).with_name("kimi-intercept")


def start_top(db: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``kimi-intercept top`` on a fresh 80×24 pty; the master side is drained by a thread."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(
        [str(CLI), "top", "--db", str(db)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**clean_env(), "TERM": "xterm-256color"},
        start_new_session=True,
    )
    os.close(slave)

    def drain() -> None:
        try:
            while os.read(master, 65536):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    return proc, master


def load(proxy_url: str, ca: Path, rate: float, stop: threading.Event, sent: list[int]) -> None:
    """About ``rate`` streamed requests a second, over 4 keep-alive clients."""
    import httpx

    body = json.dumps(
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    ctx = ssl.create_default_context(cafile=str(ca))

    def worker() -> None:
        with httpx.Client(proxy=proxy_url, verify=ctx, trust_env=False) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                with c.stream(
                    "POST",
                    "https://api.openai.com/v1/chat/completions",
                    content=body,
                    headers={"authorization": "Bearer sk-bench"},
                ) as r:
                    for _ in r.iter_raw():
                        pass
                sent.append(1)
                time.sleep(max(0.0, 4 / rate - (time.perf_counter() - t0)))

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def measure(pid: int, seconds: float) -> float:
    """Share of one core used by ``pid`` over ``seconds``."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rate", type=float, default=20, help="requests per second under load")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeUpstream() as kimi, FakeUpstream() as deep:
        db = Path(tmp) / "bench.db"
        config = Path(tmp) / "c.toml"
        config.write_text(render_config(db, kimi.url, deep.url))
        proxy = start_proxy_process(config, Path(tmp) / "confdir", env=clean_env())
        top, master = start_top(db)
        stop, sent = threading.Event(), []
        loader = threading.Thread(
            target=load, args=(proxy.proxy_url, proxy.ca_path, args.rate, stop, sent)
        )
        try:
            time.sleep(3)  # top's start-up (imports, first screen) is not what is measured
            idle = measure(top.pid, args.seconds)
            print(f"idle          {100 * idle:5.1f} % of a core over {args.seconds:.0f} s")
            loader.start()
            time.sleep(2)
            before = len(sent)
            busy = measure(top.pid, args.seconds)
            rate = (len(sent) - before) / args.seconds
            print(
                f"under load    {100 * busy:5.1f} % of a core over {args.seconds:.0f} s "
                f"({rate:.1f} req/s through the proxy)"
            )
        finally:
            stop.set()
            if loader.is_alive():
                loader.join(30)
            top.terminate()
            top.wait(10)
            os.close(master)
            proxy.stop()


if __name__ == "__main__":
    main()
