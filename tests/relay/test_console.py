"""The proxy's console: one line per finished LLM call, and no mitmproxy flow or connection
lines for intercepted calls unless ``--set kimi_verbose=true``.

End to end with a real mitmdump + addon, the openai SDK over HTTPS_PROXY and fake providers
replaying the documented Moonshot/DeepSeek streams (``tests/wire/documented``).
"""

from __future__ import annotations

import re
from pathlib import Path

import openai
import pytest
from proxyproc import render_config, wait_rows

from kimi_intercept.commands.simulator import Reply
from kimi_intercept.relay.console import console_line

WIRE = Path(__file__).parents[1] / "wire" / "documented"
MOONSHOT_STREAM = (WIRE / "moonshot_stream.sse").read_bytes()
DEEPSEEK_STREAM = (WIRE / "deepseek_stream.sse").read_bytes()
RATE_LIMITED = {"error": {"message": "request reached TPM rate limit", "type": "rate_limit"}}
MESSAGES = [{"role": "user", "content": "Say OK."}]
# What mitmdump prints for a flow (flow_detail 1) and for a connection.
FLOW_LINE = re.compile(r"POST http://127\.0\.0\.1:\d+/v1/chat/completions|<< \d{3}")
CONNECTION_LINE = re.compile(r"client connect|server connect|Streaming response from")


def _our_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " OpenAI/Python " in line]


@pytest.fixture
def proxied(tmp_path, fake_upstream, start_proxy, openai_client):
    def make(extra_args=(), config_extra=""):
        kimi, deepseek = fake_upstream(), fake_upstream()
        db = tmp_path / "kimi.db"
        proxy = start_proxy(render_config(db, kimi.url, deepseek.url) + config_extra, extra_args)
        return kimi, deepseek, proxy, openai_client(proxy), db

    return make


def test_each_call_prints_one_line_and_no_flow_lines(proxied):
    kimi, deepseek, proxy, client, db = proxied()
    # 1: streamed by kimi; 2: kimi rate-limited, deepseek answers; 3: every provider fails
    kimi.enqueue(
        Reply.sse_file(MOONSHOT_STREAM, gap_s=0.05),
        Reply.error(429, RATE_LIMITED),
        Reply.error(429, RATE_LIMITED),
    )
    deepseek.enqueue(Reply.sse_file(DEEPSEEK_STREAM), Reply.error(429, RATE_LIMITED))
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    wait_rows(db, 1)
    assert proxy.wait_for_log("kimi/kimi-k2.6")
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    wait_rows(db, 2)
    assert proxy.wait_for_log("deepseek/deepseek-reasoner")
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    wait_rows(db, 3)
    assert proxy.wait_for_log("FAILED 429")

    log = proxy.log_text()
    streamed, failed_over, failed = _our_lines(log)
    # the documented Moonshot stream: 90 prompt tokens (64 cached), 50 out, priced
    assert re.search(
        r'\] \d\d:\d\d:\d\d OpenAI/Python conv [0-9a-f]{6} "Say OK\." kimi/kimi-k2\.6 '
        r"\(asked gpt-4o\) in 90 \(64 cached\) out 50 \$0\.00023 ttft [\d.]+ m?s [\d.]+ m?s$",
        streamed,
    ), streamed
    assert "deepseek/deepseek-reasoner (asked gpt-4o) in 10 out 128" in failed_over
    assert failed_over.endswith("fallback after kimi 429"), failed_over
    assert "FAILED 429: kimi-intercept: every provider failed" in failed
    assert not FLOW_LINE.search(log), log
    assert not CONNECTION_LINE.search(log), log


def test_kimi_verbose_brings_mitmproxy_lines_back(proxied):
    """For the calls mitmproxy decrypts itself (``relay_tls = false`` here; with it, a local
    client's calls never reach mitmproxy's HTTP layer: ``test_relay_tls_e2e.py``)."""
    kimi, deepseek, proxy, client, db = proxied(
        ["--set", "kimi_verbose=true"], "\n[proxy]\nrelay_tls = false\n"
    )
    kimi.enqueue(Reply.sse_file(MOONSHOT_STREAM))
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    wait_rows(db, 1)
    assert proxy.wait_for_log("<< 200")
    assert proxy.wait_for_log("kimi/kimi-k2.6")
    log = proxy.log_text()
    assert FLOW_LINE.search(log) and CONNECTION_LINE.search(log)
    assert len(_our_lines(log)) == 1


ROW = {
    "started_at": "2026-11-21T23:54:42.123Z",
    "client": "claude-cli/2.1.3",
    "client_model": "claude-sonnet-4-5",
    "provider": "kimi",
    "model": "kimi-k2.6",
    "status_code": 200,
    "outcome": "ok",
    "fallback_used": 0,
    "ttft_ms": 410.2,
    "duration_ms": 3210.0,
    "prompt_tokens": 12340,
    "completion_tokens": 512,
    "cached_tokens": 11200,
    "usage_source": "provider",
    "cost_usd": 0.00421,
    "route": "reroute",
    "conversation_id": "3f2a9c" + "0" * 58,
    "conversation_title": "Fix   the failing test in tests/test_parser.py, then run it",
    "tokens_before_sanitize": 14170,
    "tokens_after_sanitize": 12340,
}


def test_line_from_a_row():
    line = console_line(ROW)
    assert line.split(" ", 1)[1] == (
        'claude-cli conv 3f2a9c "Fix the failing test in tests/t…" kimi/kimi-k2.6 '
        "(asked claude-sonnet-4-5) in 12,340 (11,200 cached) out 512 $0.00421 ttft 410 ms "
        "3.2 s masked 1,830"
    )


def test_line_of_an_estimated_incomplete_call_after_a_skip():
    row = {
        **ROW,
        "usage_source": "estimate",
        "cached_tokens": None,
        "cost_usd": None,
        "outcome": "incomplete",
        "error": "upstream stalled",
        "fallback_used": 1,
        "tokens_before_sanitize": None,
    }
    attempts = [
        {"provider": "kimi", "status_code": None, "error": "skipped: circuit open"},
        {"provider": "deepseek", "status_code": 200, "error": None},
    ]
    line = console_line(row, attempts)
    assert line.endswith(
        "in ~12,340 out ~512 unpriced ttft 410 ms 3.2 s fallback after kimi skipped "
        "INCOMPLETE: upstream stalled"
    ), line


def test_the_users_own_dumper_filter_is_kept():
    from mitmproxy.addons.dumper import Dumper
    from mitmproxy.test import taddons

    from kimi_intercept.addon import KimiIntercept

    addon = KimiIntercept()
    with taddons.context(Dumper(), addon) as tctx:
        tctx.options.update(dumper_filter="~d example.com")
        assert tctx.options.dumper_filter == "(~d example.com) & !~marker kimi-intercept"
        tctx.options.update(kimi_verbose=True)
        assert tctx.options.dumper_filter == "~d example.com"
        tctx.options.update(kimi_verbose=False, dumper_filter=None)
        assert tctx.options.dumper_filter == "!~marker kimi-intercept"
