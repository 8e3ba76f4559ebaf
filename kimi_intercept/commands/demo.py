"""``kimi-intercept demo``: the whole path on this machine, without any API key.

It starts two simulated upstreams speaking Moonshot's documented wire format
(:mod:`.simulator`) — one stands in for Kimi, one for DeepSeek — a real ``mitmdump`` with the
addon, and makes real ``openai`` SDK calls to ``https://api.openai.com/v1`` through it,
configured only with ``HTTPS_PROXY`` and ``SSL_CERT_FILE``: one streamed, one not, and one that
Kimi refuses with a 429 so it falls back to DeepSeek. Then it writes the HTML report.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kimi_intercept.commands.mitmdump import ProxyProcess, clean_env, start_proxy_process
from kimi_intercept.commands.simulator import FakeUpstream, Reply
from kimi_intercept.reports.pages import write_report
from kimi_intercept.routing.plan import iso_utc

# Stand-ins for real keys: the simulators accept anything, and the demo shows they are swapped.
_DEMO_KEYS = {"MOONSHOT_API_KEY": "sk-demo-kimi", "DEEPSEEK_API_KEY": "sk-demo-deepseek"}

# Moonshot's documented TPM rate-limit 429 (platform.kimi.ai/docs/api/errors). It states no
# wait, so the proxy falls back at once (a short stated wait would be waited out and retried).
_KIMI_429 = {
    "error": {
        "message": "Your account demo<ak-demo> request reached TPM rate limit, "
        "current:120000, limit:100000",
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
    with (
        tempfile.TemporaryDirectory(prefix="kimi-demo-") as tmp,
        FakeUpstream(default_gap_s=0.05) as kimi,
        FakeUpstream(default_gap_s=0.05) as deepseek,
    ):
        config = Path(tmp) / "config.toml"
        config.write_text(demo_config(db_path, kimi.url, deepseek.url), encoding="utf-8")
        echo("kimi-intercept demo — everything runs on 127.0.0.1, no API key needed")
        echo(f"  simulated Kimi     {kimi.url}/v1")
        echo(f"  simulated DeepSeek {deepseek.url}/v1")
        proxy = start_proxy_process(config, Path(tmp) / "confdir", env=clean_env(_DEMO_KEYS))
        since = iso_utc(time.time() - 1)
        try:
            echo(f"  mitmdump + addon   {proxy.proxy_url} (CA {proxy.ca_path})")
            _calls(proxy, kimi, echo)
        finally:
            proxy.stop()  # the addon flushes its writer on the way out
    _print_rows(db_path, since, echo)
    report = write_report(db_path, out_dir)
    echo(f"Report written to {report.resolve()}")
    return report


def _calls(proxy: ProxyProcess, kimi: FakeUpstream, echo: Callable[[str], None]) -> None:
    import openai

    messages = [{"role": "user", "content": "Say hello from Kimi."}]
    with _client_env(proxy):  # an unmodified SDK reads these when the client is built
        client = openai.OpenAI(api_key="sk-demo-client-key", max_retries=0)

    echo("\n1) streamed call to api.openai.com (model gpt-4o) — answered by Kimi:")
    stream = client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices]
    pieces = [p for p in pieces if p]
    echo(f"   {''.join(pieces)!r}  ({len(pieces)} chunks, as they arrived)")

    echo("2) non-streamed call:")
    r = client.chat.completions.create(model="gpt-4o", messages=messages)
    echo(f"   {r.choices[0].message.content!r}  model={r.model}")

    echo("3) Kimi answers 429 (rate limit) — the proxy falls back to DeepSeek, still streaming:")
    kimi.enqueue(Reply.error(429, _KIMI_429))
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    echo(f"   {text!r}  served by {raw.headers.get('x-kimi-intercept-provider')}")
    client.close()


def _print_rows(db_path: Path, since: str, echo: Callable[[str], None]) -> None:
    """What the proxy recorded for the demo's calls (read back from SQLite)."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        found = con.execute(
            "select provider, model, stream, fallback_used, prompt_tokens, completion_tokens,"
            " cached_tokens, usage_source, cost_usd, ttft_ms from requests"
            " where started_at >= ? order by started_at",
            (since,),
        ).fetchall()
    finally:
        con.close()
    echo(f"\nRecorded in {db_path}:")
    echo(
        "  provider  model          stream fallback prompt completion cached source"
        "   cost USD  TTFT ms"
    )
    for prov, model, stream, fb, p, c, cached, src, cost, ttft in found:
        price = "unpriced" if cost is None else f"{cost:.7f}"
        echo(
            f"  {prov:<9} {model:<14} {stream:>6} {fb:>8} {p:>6} {c:>10} {cached or 0:>6}"
            f" {src:<8} {price:>9} {ttft or 0:>8.1f}"
        )


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
