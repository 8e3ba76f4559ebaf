"""``kimi-intercept demo``: the whole path on this machine, without any API key.

It starts two simulated upstreams speaking Moonshot's documented wire format
(:mod:`.simulator`) — one stands in for Kimi, one for DeepSeek — a real ``mitmdump`` with the
addon, and makes real ``openai`` SDK calls to ``https://api.openai.com/v1`` through it,
configured only with ``HTTPS_PROXY`` and ``SSL_CERT_FILE``: one streamed, one not, and one that
Kimi refuses with a 429 so it falls back to DeepSeek. Then it writes the HTML report.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .mitmdump import ProxyProcess, demo_env, start_proxy_process
from .report import write_report
from .simulator import FakeUpstream, Reply

# Moonshot's documented 429 body (platform.kimi.ai/docs/api/errors, "requset" sic).
_KIMI_429 = {
    "error": {
        "message": "Your account demo<ak-demo> request reached max requset: 3, "
        "please try again after 1 seconds",
        "type": "rate_limit_reached_error",
    }
}


def demo_config(db_path: Path, kimi_url: str, deepseek_url: str) -> str:
    """The config the demo proxy runs with: both providers point at the simulators."""
    return f"""\
[routing]
primary = "kimi"
fallbacks = ["deepseek"]

[storage]
database = "{db_path.as_posix()}"

[providers.kimi]
base_url = "{kimi_url}/v1"

[providers.deepseek]
base_url = "{deepseek_url}/v1"
"""


def run_demo(db_path: Path, out_dir: Path, echo: Callable[[str], None] = print) -> Path:
    """Run the demo, append its rows to ``db_path``, write the report; return its path."""
    db_path = db_path.resolve()
    with tempfile.TemporaryDirectory(prefix="kimi-demo-") as tmp, FakeUpstream(
        default_gap_s=0.05
    ) as kimi, FakeUpstream(default_gap_s=0.05) as deepseek:
        config = Path(tmp) / "config.toml"
        config.write_text(demo_config(db_path, kimi.url, deepseek.url), encoding="utf-8")
        echo("kimi-intercept demo — everything runs on 127.0.0.1, no API key needed")
        echo(f"  simulated Kimi     {kimi.url}/v1")
        echo(f"  simulated DeepSeek {deepseek.url}/v1")
        proxy = start_proxy_process(config, Path(tmp) / "confdir", env=demo_env())
        try:
            echo(f"  mitmdump + addon   {proxy.proxy_url} (CA {proxy.ca_path})")
            _calls(proxy, kimi, echo)
        finally:
            proxy.stop()
    report = write_report(db_path, out_dir)
    echo(f"\nRows recorded in {db_path}")
    echo(f"Report written to {report.resolve()}")
    return report


def _calls(proxy: ProxyProcess, kimi: FakeUpstream, echo: Callable[[str], None]) -> None:
    import openai

    messages = [{"role": "user", "content": "Say hello from Kimi."}]
    with _client_env(proxy):
        client = openai.OpenAI(api_key="sk-demo-client-key", max_retries=0)

    echo("\n1) streamed call to api.openai.com (model gpt-4o) — answered by Kimi:")
    t0 = time.perf_counter()
    first = None
    with _client_env(proxy):
        stream = client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)
        pieces = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                pieces.append(chunk.choices[0].delta.content)
    ttft = (first - t0) * 1000 if first else float("nan")
    echo(f"   {''.join(pieces)!r}  ({len(pieces)} chunks, first after {ttft:.0f} ms)")

    echo("2) non-streamed call:")
    with _client_env(proxy):
        r = client.chat.completions.create(model="gpt-4o", messages=messages)
    echo(f"   {r.choices[0].message.content!r}  model={r.model} usage={r.usage.total_tokens} tokens")

    echo("3) Kimi answers 429 (rate limit) — the proxy falls back to DeepSeek, still streaming:")
    kimi.enqueue(Reply.error(429, _KIMI_429))
    with _client_env(proxy):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=messages, stream=True
        )
        served_by = raw.headers.get("x-kimi-intercept-provider")
        text = "".join(
            c.choices[0].delta.content or "" for c in raw.parse() if c.choices
        )
    echo(f"   {text!r}  served by {served_by}")


@contextmanager
def _client_env(proxy: ProxyProcess) -> Iterator[None]:
    """What a user sets for an unmodified client: the proxy and trust in the mitmproxy CA."""
    saved = {k: os.environ.get(k) for k in ("HTTPS_PROXY", "SSL_CERT_FILE", "NO_PROXY")}
    os.environ.update(HTTPS_PROXY=proxy.proxy_url, SSL_CERT_FILE=str(proxy.ca_path), NO_PROXY="")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
