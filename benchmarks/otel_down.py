"""Request latency with OpenTelemetry export off, on with a collector up, and on with the
collector down (connection refused, and an endpoint that never answers).

Usage: python benchmarks/otel_down.py [--requests N]

Each scenario runs the real ``mitmdump -s addons/kimi.py`` with kimi pointed at a fake upstream on
loopback and sends N streamed requests through it with a keep-alive httpx client; printed are the
median, p95 and max of the whole request time. A script that prints numbers, not a test: the
export runs in its own threads, so the three "on" rows should match the "off" row.
"""

from __future__ import annotations

import argparse
import http.server
import json
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared test config

from proxyproc import clean_env, render_config  # noqa: E402

from kimi_intercept.commands.mitmdump import start_proxy_process  # noqa: E402
from kimi_intercept.commands.simulator import FakeUpstream, closed_port  # noqa: E402

BODY = json.dumps(
    {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
).encode()


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def run(n: int) -> None:
    import httpx

    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    blackhole = socket.socket()  # accepts connections (backlog) and never answers
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)
    scenarios = [
        ("export off", None),
        ("collector up", f"http://127.0.0.1:{sink.server_address[1]}"),
        ("collector down (refused)", f"http://127.0.0.1:{closed_port()}"),
        ("collector hangs", f"http://127.0.0.1:{blackhole.getsockname()[1]}"),
    ]
    print(f"{'scenario':<28} {'median ms':>10} {'p95 ms':>10} {'max ms':>10}")
    for name, endpoint in scenarios:
        with tempfile.TemporaryDirectory() as tmp, FakeUpstream() as kimi, FakeUpstream() as deep:
            text = render_config(Path(tmp) / "b.db", kimi.url, deep.url)
            if endpoint:
                text += "\n[otel]\nenabled = true\n"
            config = Path(tmp) / "c.toml"
            config.write_text(text)
            env = clean_env(
                {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
                if endpoint
                else {}
            )
            proxy = start_proxy_process(config, Path(tmp) / "confdir", env=env)
            try:
                time.sleep(2)  # let the addon load its tokenizer before timing
                ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
                times = []
                with httpx.Client(proxy=proxy.proxy_url, verify=ctx, trust_env=False) as c:
                    for j in range(n + 2):
                        t0 = time.perf_counter()
                        r = c.post(
                            "https://api.openai.com/v1/chat/completions",
                            content=BODY,
                            headers={"authorization": "Bearer sk-bench"},
                        )
                        r.read()
                        if j >= 2:  # the first two open the connection (CONNECT + TLS)
                            times.append((time.perf_counter() - t0) * 1e3)
            finally:
                proxy.stop()
        times.sort()
        p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
        print(f"{name:<28} {statistics.median(times):>10.1f} {p95:>10.1f} {times[-1]:>10.1f}")
    sink.shutdown()
    blackhole.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=50)
    run(ap.parse_args().requests)


if __name__ == "__main__":
    main()
