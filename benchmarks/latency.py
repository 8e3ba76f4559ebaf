"""Time to first byte (TTFT) and total latency: direct to a fake upstream vs through the proxy.

Usage: python benchmarks/latency.py [--requests N] [--rounds R] [--cold C] [--gap-ms G]

Method (../shared/notes/mitmproxy.md §5): one FakeUpstream on loopback serves the default Kimi
stream (9 SSE events: the first at once, then one every ``--gap-ms``); the real ``mitmdump -s
addons/kimi.py`` runs as a subprocess (``tests/proxyproc.py``); the client is a separate process
with a keep-alive ``httpx.Client`` posting a ~256 B chat request.

- direct: ``http://127.0.0.1:<fake>/v1/chat/completions``.
- proxy: ``https://api.openai.com/v1/chat/completions`` through the proxy, trusting its CA; the
  addon reroutes it through its relay to the same fake (and records it in SQLite).

Per round, after a warm-up, N warm requests per path, then C cold ones (a new client, so a new
connection: CONNECT + TLS through the proxy). Rounds interleave the two paths, alternating which
goes first. Printed: median of the per-round medians, with [min..max] across rounds, and the
mitmdump CPU time per proxied request. A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared proc starter

from proxyproc import clean_env, render_config, start_proxy_process  # noqa: E402

from kimi_intercept.commands.simulator import FakeUpstream  # noqa: E402

PROXIED_URL = "https://api.openai.com/v1/chat/completions"
WARMUP = 10


def request_body() -> bytes:
    body = {
        "model": "gpt-4o",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Reply with one short sentence about latency. " * 3},
        ],
    }
    return json.dumps(body).encode()


# -- client process ---------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(client, url: str, body: bytes, headers: dict[str, str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    ttft = None
    with client.stream("POST", url, content=body, headers=headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.read()[:300]!r}")
        for chunk in r.iter_raw():
            if ttft is None and chunk:
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total) * 1e3, total * 1e3


def run_client(spec: dict) -> dict:
    import httpx

    body = request_body()
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench-client"}
    ctx = ssl.create_default_context(cafile=spec["ca"])
    paths = {
        "direct": (spec["direct_url"], {"trust_env": False}),
        "proxy": (PROXIED_URL, {"trust_env": False, "proxy": spec["proxy"], "verify": ctx}),
    }
    out: dict = {
        name: {"ttft": [], "total": [], "cold_ttft": [], "cold_total": [], "cpu_ms_per_req": []}
        for name in paths
    }
    for rnd in range(spec["rounds"]):
        order = list(paths) if rnd % 2 == 0 else list(reversed(paths))
        for name in order:
            url, kw = paths[name]
            res = out[name]
            with httpx.Client(timeout=30, **kw) as client:
                for _ in range(WARMUP):
                    _timed(client, url, body, headers)
                cpu0 = _cpu_seconds(spec["mitm_pid"])
                samples = [_timed(client, url, body, headers) for _ in range(spec["requests"])]
                cpu1 = _cpu_seconds(spec["mitm_pid"])
            res["ttft"].append(statistics.median(s[0] for s in samples))
            res["total"].append(statistics.median(s[1] for s in samples))
            res["cpu_ms_per_req"].append((cpu1 - cpu0) * 1e3 / spec["requests"])
            cold = []
            for _ in range(spec["cold"]):
                with httpx.Client(timeout=30, **kw) as client:
                    cold.append(_timed(client, url, body, headers))
            if cold:
                res["cold_ttft"].append(statistics.median(s[0] for s in cold))
                res["cold_total"].append(statistics.median(s[1] for s in cold))
    return out


# -- orchestration ----------------------------------------------------------------------------


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.median(values):6.2f} [{min(values):.2f}..{max(values):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100, help="warm requests per path per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--cold", type=int, default=20, help="new-connection requests per round")
    ap.add_argument("--gap-ms", type=float, default=1.0, help="gap between the SSE events")
    ap.add_argument("--client-spec", help=argparse.SUPPRESS)  # internal: run as the client
    args = ap.parse_args()
    if args.client_spec:
        print(json.dumps(run_client(json.loads(args.client_spec))))
        return

    with (
        tempfile.TemporaryDirectory(prefix="kimi-bench-") as tmp_name,
        FakeUpstream(default_gap_s=args.gap_ms / 1e3) as kimi,
        FakeUpstream() as deepseek,
    ):
        tmp = Path(tmp_name)
        config = tmp / "config.toml"
        config.write_text(render_config(tmp / "kimi.db", kimi.url, deepseek.url))
        (tmp / "confdir").mkdir()
        proxy = start_proxy_process(config, tmp / "confdir", env=clean_env(), cwd=tmp)
        try:
            spec = {
                "direct_url": kimi.url + "/v1/chat/completions",
                "proxy": proxy.proxy_url,
                "ca": str(proxy.ca_path),
                "mitm_pid": proxy.proc.pid,
                "requests": args.requests,
                "rounds": args.rounds,
                "cold": args.cold,
            }
            before = len(kimi.received)
            done = subprocess.run(
                [sys.executable, __file__, "--client-spec", json.dumps(spec)],
                env=clean_env(),
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                sys.exit(
                    f"client failed:\n{done.stderr}\n--- mitmdump log ---\n"
                    f"{proxy.log_text()[-4000:]}"
                )
            res = json.loads(done.stdout)
            served = len(kimi.received) - before
        finally:
            proxy.stop()

    per_path = args.rounds * (WARMUP + args.requests + args.cold)
    print(
        f"kimi-intercept latency: {args.rounds} interleaved rounds × {args.requests} warm "
        f"+ {args.cold} cold requests per path; SSE reply of 9 events, {args.gap_ms:g} ms apart"
    )
    print(
        f"fake upstream served {served} requests (expected {2 * per_path}); "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print("values: median of per-round medians [min..max across rounds], milliseconds\n")
    print(
        f"{'path':8} {'warm TTFT':>22} {'warm total':>22} {'cold TTFT':>22} "
        f"{'cold total':>22} {'mitmdump CPU/req':>18}"
    )
    for name, label in (("direct", "direct"), ("proxy", "proxy")):
        r = res[name]
        cpu = _fmt(r["cpu_ms_per_req"]) if name == "proxy" else "–"
        print(
            f"{label:8} {_fmt(r['ttft']):>22} {_fmt(r['total']):>22} "
            f"{_fmt(r['cold_ttft']):>22} {_fmt(r['cold_total']):>22} {cpu:>18}"
        )

    def added(key: str) -> str:
        d, p = res["direct"][key], res["proxy"][key]
        if not d or not p:
            return "–"
        return f"{statistics.median(p) - statistics.median(d):+.2f} ms"

    print(
        f"\nadded by the proxy (median): warm TTFT {added('ttft')}, warm total "
        f"{added('total')}, cold TTFT {added('cold_ttft')}, cold total {added('cold_total')}"
    )


if __name__ == "__main__":
    main()
