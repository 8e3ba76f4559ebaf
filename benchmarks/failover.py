"""Time to fail over: how long until the client's first byte when the primary fails.

Usage: python benchmarks/failover.py [--requests N]

Each scenario runs the real ``mitmdump -s addons/kimi.py`` with kimi and deepseek pointed at
fake upstreams on loopback (``kimi_intercept.commands.simulator``) and sends N streamed requests to
``https://api.openai.com/v1/chat/completions`` through it with a keep-alive httpx client. The
primary fails the way the scenario says and the fallback answers at once; printed are the median
and [min..max] time to first byte, and which provider served. A script that prints numbers,
not a test.
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared test config

from proxyproc import clean_env, render_config  # noqa: E402

from kimi_intercept.commands.mitmdump import start_proxy_process  # noqa: E402
from kimi_intercept.commands.simulator import FakeUpstream, Reply, closed_port  # noqa: E402

BODY = json.dumps(
    {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
).encode()
TPM_429 = {
    "error": {
        "message": "Your account x<ak-x> request reached TPM rate limit, current:2, limit:1",
        "type": "rate_limit_reached_error",
    }
}


def scenarios() -> list[tuple[str, dict, Callable[[FakeUpstream], None]]]:
    """(name, extra [routing] keys (``_kimi``: kimi's URL), what to script on kimi per request)"""

    def hang(kimi: FakeUpstream) -> None:
        r = Reply.sse_file(b"data: [DONE]\n\n")
        r.delay_before_headers_s = 10
        kimi.enqueue(r)

    def rate_limited(kimi: FakeUpstream) -> None:
        # Retry-After: 0 so the provider is not marked rate-limited: every request fails over
        kimi.enqueue(Reply.json(TPM_429, 429, headers={"Retry-After": "0"}))

    def down(kimi: FakeUpstream) -> None:
        kimi.enqueue(Reply.error(503, {"error": {"message": "down", "type": "server_error"}}))

    refused = f"http://127.0.0.1:{closed_port()}"
    return [
        ("primary healthy (baseline)", {}, lambda kimi: None),
        ("connect refused, max_retries=0", {"max_retries": 0, "_kimi": refused}, lambda k: None),
        ("connect refused, max_retries=1", {"max_retries": 1, "_kimi": refused}, lambda k: None),
        ("429, max_retries=0", {"max_retries": 0}, rate_limited),
        ("503 then 200 on the retry", {"max_retries": 1}, down),
        ("first-byte timeout 1 s", {"max_retries": 0, "first_byte_timeout_s": 1}, hang),
    ]


def run(n: int) -> None:
    import httpx

    print(f"{'scenario':<32} {'TTFB median ms':>15} {'[min..max]':>20}  served by")
    for name, routing, script in scenarios():
        with tempfile.TemporaryDirectory() as tmp, FakeUpstream() as kimi, FakeUpstream() as deep:
            kimi_url = routing.pop("_kimi", kimi.url)
            text = render_config(Path(tmp) / "b.db", kimi_url, deep.url)
            extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in routing.items())
            extra += "failures_to_open = 1000\n"  # keep the breaker out of these timings
            config = Path(tmp) / "c.toml"
            config.write_text(text.replace("share = 100\n", "share = 100\n" + extra))
            proxy = start_proxy_process(config, Path(tmp) / "confdir", env=clean_env())
            try:
                time.sleep(2)  # let the addon load its tokenizer before timing
                ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
                times, served = [], set()
                with httpx.Client(proxy=proxy.proxy_url, verify=ctx, trust_env=False) as c:
                    for j in range(n + 2):
                        if j >= 2:  # the first two open the connection (CONNECT + TLS)
                            script(kimi)
                        t0 = time.perf_counter()
                        with c.stream(
                            "POST",
                            "https://api.openai.com/v1/chat/completions",
                            content=BODY,
                            headers={"authorization": "Bearer sk-bench"},
                        ) as r:
                            ttfb = None
                            for _ in r.iter_raw():
                                ttfb = ttfb or (time.perf_counter() - t0) * 1e3
                            if j >= 2:
                                served.add(r.headers.get("x-kimi-intercept-provider"))
                        if j >= 2:
                            times.append(ttfb)
            finally:
                proxy.stop()
        print(
            f"{name:<32} {statistics.median(times):>15.1f} "
            f"{f'[{min(times):.1f}..{max(times):.1f}]':>20}  {', '.join(sorted(served))}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20)
    run(ap.parse_args().requests)


if __name__ == "__main__":
    main()
