"""End to end: real mitmdump + addon, real openai SDK through HTTPS_PROXY, fake providers.

The fakes replay the providers' documented byte formats from ``tests/wire/`` (provenance in
``tests/wire/README.md``): Moonshot's stream with usage in ``choices[0].usage`` *and* a trailing
``choices: []`` chunk (platform.kimi.ai chat API; live k3 captures), DeepSeek's stream with
usage on the finish chunk (api-docs.deepseek.com), Moonshot's 429 body
(platform.kimi.ai/docs/api/errors).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner
from proxyproc import CLIENT_KEY, PROVIDER_ENV, render_config, rows, wait_rows

from kimi_intercept.accounting import tokens
from kimi_intercept.commands.cli import main as cli_main
from kimi_intercept.commands.simulator import Reply, closed_port

WIRE = Path(__file__).parent / "wire" / "documented"
MOONSHOT_STREAM = (WIRE / "moonshot_stream.sse").read_bytes()
DEEPSEEK_STREAM = (WIRE / "deepseek_stream.sse").read_bytes()
# Moonshot's TPM rate-limit 429 (platform.kimi.ai/docs/api/errors table): unlike the RPM one it
# states no wait, so the proxy falls back at once instead of waiting it out.
MOONSHOT_429 = {
    "error": {
        "message": "Your account demo<ak-demo> request reached TPM rate limit, current:120000, "
        "limit:100000",
        "type": "rate_limit_reached_error",
    }
}
MESSAGES = [{"role": "user", "content": "Say OK."}]


@pytest.fixture
def setup(tmp_path, fake_upstream, start_proxy, openai_client):
    """kimi + deepseek fakes, a proxy routing api.openai.com to kimi, and an SDK client."""

    def make(kimi_url: str | None = None, share: int = 100, kimi_gap: float = 0.0):
        kimi, deepseek = fake_upstream(kimi_gap), fake_upstream()
        db = tmp_path / "kimi.db"
        proxy = start_proxy(render_config(db, kimi_url or kimi.url, deepseek.url, share=share))
        return kimi, deepseek, proxy, openai_client(proxy), db

    return make


def test_streamed_call_is_rerouted_counted_and_not_buffered(setup):
    kimi, deepseek, proxy, client, db = setup()
    kimi.enqueue(Reply.sse_file(MOONSHOT_STREAM, gap_s=0.2))

    t0 = time.perf_counter()
    arrivals, text = [], []
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    for chunk in stream:
        arrivals.append(time.perf_counter() - t0)
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)

    assert "".join(text) == "OK"
    # 8 events 200 ms apart: a buffering proxy would deliver them all at once at the end.
    assert len(arrivals) == 8
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    # The role chunk (no content yet) is held until the first content token so that an empty
    # answer can still fall back; it arrives together with it. Then the events come one by one
    # (a loaded machine may delay the client now and then: most gaps, not all, are checked).
    assert sum(g > 0.1 for g in gaps) >= len(gaps) - 2, gaps
    assert arrivals[-1] - arrivals[0] > 1.0  # the first chunk came long before the last

    sent = kimi.received[0]
    assert sent.headers["authorization"] == f"Bearer {PROVIDER_ENV['MOONSHOT_API_KEY']}"
    assert sent.json["model"] == "kimi-k2.6"
    assert sent.json["messages"] == MESSAGES
    assert sent.headers["user-agent"].startswith("OpenAI/Python")
    assert deepseek.received == []

    [row] = wait_rows(db, 1)
    assert {
        k: row[k]
        for k in (
            "client_model",
            "provider",
            "model",
            "status_code",
            "outcome",
            "attempts",
            "fallback_used",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "reasoning_tokens",
            "usage_source",
            "route",
            "stream",
            "host",
            "response_id",
        )
    } == {
        "client_model": "gpt-4o",
        "provider": "kimi",
        "model": "kimi-k2.6",
        "status_code": 200,
        "outcome": "ok",
        "attempts": 1,
        "fallback_used": 0,
        # The documented stream repeats usage (choice + trailing chunk): counted once.
        "prompt_tokens": 90,
        "completion_tokens": 50,
        "cached_tokens": 64,
        "reasoning_tokens": 33,
        "usage_source": "provider",
        "route": "reroute",
        "stream": 1,
        "host": "api.openai.com",
        "response_id": "chatcmpl-6a1f0c2e-58b1-9d3e-a7c4-1b2c3d4e5f60",
    }
    # kimi-k2.6: 26 uncached × $0.95 + 64 cached × $0.16 + 50 × $4.00, per million tokens
    assert row["cost_usd"] == pytest.approx((26 * 0.95 + 64 * 0.16 + 50 * 4.00) / 1e6)
    assert row["client"].startswith("OpenAI/Python")
    assert 0 < row["ttft_ms"] < row["duration_ms"]
    assert row["duration_ms"] > 1300


def test_non_streamed_call_is_counted(setup):
    kimi, _, proxy, client, db = setup()
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert r.choices[0].message.content == "Hello from the fake Kimi upstream."
    [row] = wait_rows(db, 1)
    sent_usage = kimi.last_usage
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
        sent_usage["prompt_tokens"],
        sent_usage["completion_tokens"],
        sent_usage["cached_tokens"],
    )
    assert (row["stream"], row["outcome"], row["usage_source"]) == (0, "ok", "provider")


def test_429_falls_back_to_deepseek_and_still_streams(setup):
    kimi, deepseek, proxy, client, db = setup()
    kimi.enqueue(Reply.error(429, MOONSHOT_429))
    deepseek.enqueue(Reply.sse_file(DEEPSEEK_STREAM, gap_s=0.2))

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    )
    assert raw.headers["x-kimi-intercept-provider"] == "deepseek"
    t0 = time.perf_counter()
    arrivals = []
    for _ in raw.parse():
        arrivals.append(time.perf_counter() - t0)
    assert len(arrivals) == 6  # 7 events minus the ': keep-alive' comment… and [DONE]
    assert arrivals[-1] - arrivals[0] > 0.6  # streamed, not one buffered blob

    assert deepseek.received[0].headers["authorization"] == (
        f"Bearer {PROVIDER_ENV['DEEPSEEK_API_KEY']}"
    )
    assert deepseek.received[0].json["model"] == "deepseek-chat"
    [row] = wait_rows(db, 1)
    assert (row["provider"], row["fallback_used"], row["attempts"], row["outcome"]) == (
        "deepseek",
        1,
        2,
        "ok",
    )
    # DeepSeek reports cache hits as prompt_cache_hit_tokens; prompt 10, completion 128.
    assert (row["prompt_tokens"], row["completion_tokens"], row["reasoning_tokens"]) == (
        10,
        128,
        94,
    )
    attempts = rows(db, "attempts")
    assert [(a["provider"], a["status_code"]) for a in attempts] == [
        ("kimi", 429),
        ("deepseek", 200),
    ]
    assert "TPM rate limit" in attempts[0]["error"]


def test_refused_connection_falls_back(setup):
    kimi, deepseek, proxy, client, db = setup(kimi_url=f"http://127.0.0.1:{closed_port()}")
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert chunks and len(deepseek.received) == 1
    [row] = wait_rows(db, 1)
    assert (row["provider"], row["fallback_used"]) == ("deepseek", 1)
    first = rows(db, "attempts")[0]
    assert first["provider"] == "kimi" and first["status_code"] is None
    assert "Connect" in first["error"] or "refused" in first["error"].lower()


def test_every_provider_failing_gives_the_client_an_openai_error(setup):
    kimi, deepseek, proxy, client, db = setup()
    down = Reply.error(503, {"error": {"message": "down", "type": "server_error"}})
    kimi.enqueue(down, down)  # the first try and its one retry
    deepseek.enqueue(Reply.error(429, MOONSHOT_429))
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert e.value.status_code == 429
    body = e.value.body
    assert body["code"] == "all_providers_failed"
    assert "TPM rate limit" in body["message"] and "deepseek" in body["message"]
    [row] = wait_rows(db, 1)
    assert (row["outcome"], row["status_code"], row["attempts"]) == ("error", 429, 3)


def test_client_error_is_returned_unchanged_without_fallback(setup):
    kimi, deepseek, proxy, client, db = setup()
    bad = {
        "error": {
            "message": "invalid temperature: only 0.6 is allowed for this model",
            "type": "invalid_request_error",
        }
    }
    kimi.enqueue(Reply.error(400, bad))
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, temperature=0.2)
    assert e.value.body == bad["error"]
    assert deepseek.received == []
    [row] = wait_rows(db, 1)
    assert (row["outcome"], row["status_code"], row["fallback_used"]) == ("error", 400, 0)


def test_stream_without_usage_is_estimated(setup):
    kimi, _, proxy, client, db = setup()
    events = [e for e in MOONSHOT_STREAM.split(b"\n\n") if e and b'"usage"' not in e]
    kimi.enqueue(Reply.sse_file(b"\n\n".join(events) + b"\n\n"))
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    [row] = wait_rows(db, 1)
    assert row["usage_source"] == "estimate"
    assert row["prompt_tokens"] == tokens.estimate_prompt_tokens(kimi.received[0].json)
    # what streamed: reasoning "The user wants a one-word reply." + content "OK"
    assert row["completion_tokens"] == tokens.estimate_completion_tokens(
        "The user wants a one-word reply.OK"
    )
    assert row["cost_usd"] is not None


def test_upstream_cut_mid_stream_is_an_error_for_the_client_and_incomplete_in_the_row(setup):
    kimi, _, proxy, client, db = setup()
    reply = Reply.sse_file(MOONSHOT_STREAM, gap_s=0.05)
    reply.abort_after_chunks = 4
    kimi.enqueue(reply)
    with pytest.raises((openai.APIError, Exception)) as e:
        for _ in client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
            pass
    assert not isinstance(e.value, StopIteration)
    [row] = wait_rows(db, 1)
    assert row["outcome"] == "incomplete"
    assert "broke off" in row["error"]


def test_client_disconnect_mid_stream_is_recorded(setup):
    kimi, _, proxy, client, db = setup()
    kimi.enqueue(Reply.sse_file(MOONSHOT_STREAM, gap_s=0.3))
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    next(iter(stream))
    stream.close()
    [row] = wait_rows(db, 1, timeout=15)
    assert row["outcome"] == "client_abort"


def test_share_zero_passes_through_with_the_clients_key(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    """share = 0: the original provider gets the request unchanged, and it is still counted."""
    original, kimi, deepseek = fake_upstream(), fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    proxy = start_proxy(render_config(db, kimi.url, deepseek.url, hosts=["localhost"], share=0))
    port = original.url.rsplit(":", 1)[1]
    client = openai_client(proxy, base_url=f"http://localhost:{port}/v1")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert kimi.received == [] and len(original.received) == 1
    assert original.received[0].headers["authorization"] == f"Bearer {CLIENT_KEY}"
    assert original.received[0].json["model"] == "gpt-4o-mini"
    [row] = wait_rows(db, 1)
    assert (row["route"], row["provider"], row["model"], row["host"]) == (
        "passthrough",
        "localhost",
        "gpt-4o-mini",
        "localhost",
    )  # priced from the shipped [providers.openai.models."gpt-4o-mini"] table
    assert row["cost_usd"] == pytest.approx(
        ((row["prompt_tokens"] * 0.15) + row["completion_tokens"] * 0.60) / 1e6
    )


def test_no_key_reaches_the_database_or_the_log(setup):
    kimi, deepseek, proxy, client, db = setup()
    kimi.enqueue(
        Reply.error(
            401,
            {
                "error": {
                    "message": f"Incorrect API key provided: {PROVIDER_ENV['MOONSHOT_API_KEY']}",
                    "type": "invalid_authentication_error",
                }
            },
        )
    )
    # 401 puts kimi in cooldown; deepseek answers both calls.
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    wait_rows(db, 2)
    proxy.stop()
    blobs = [p.read_bytes() for p in db.parent.glob("kimi.db*")]
    for secret in (CLIENT_KEY, *PROVIDER_ENV.values()):
        assert all(secret.encode() not in b for b in blobs), secret
        assert secret not in proxy.log_text(), secret


def test_report_shows_what_was_recorded(setup, tmp_path):
    kimi, deepseek, proxy, client, db = setup()
    kimi.enqueue(Reply.sse_file(MOONSHOT_STREAM), Reply.error(429, MOONSHOT_429))
    deepseek.enqueue(Reply.sse_file(DEEPSEEK_STREAM))
    for _ in range(2):
        list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    wait_rows(db, 2)
    out = tmp_path / "report"
    result = CliRunner().invoke(cli_main, ["report", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = (out / "index.html").read_text()
    assert "<svg" in html
    total_tokens = 90 + 50 + 10 + 128
    assert f"{total_tokens:,}" in html or str(total_tokens) in html
    assert "deepseek" in html and "kimi-k2.6" in html


def test_slow_first_byte_falls_back_at_the_timeout(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    kimi, deepseek = fake_upstream(), fake_upstream()
    slow = Reply.sse_file(MOONSHOT_STREAM)
    slow.delay_before_headers_s = 5.0
    kimi.enqueue(slow)
    db = tmp_path / "kimi.db"
    text = render_config(db, kimi.url, deepseek.url).replace(
        "share = 100", "share = 100\nfirst_byte_timeout_s = 0.5\nmax_retries = 0"
    )
    client = openai_client(start_proxy(text))
    t0 = time.perf_counter()
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    elapsed = time.perf_counter() - t0
    assert chunks and 0.5 <= elapsed < 3.0
    [row] = wait_rows(db, 1)
    assert (row["provider"], row["fallback_used"]) == ("deepseek", 1)
    assert "within 0.5 s" in rows(db, "attempts")[0]["error"]


def test_a_locked_database_delays_the_row_not_the_answer(setup):
    kimi, _, proxy, client, db = setup()
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # creates the tables
    wait_rows(db, 1)
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.perf_counter()
        r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert time.perf_counter() - t0 < 1.0
        assert r.choices[0].message.content
        time.sleep(0.5)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert len(wait_rows(db, 2, timeout=15)) == 2


def test_large_prompt_arrives_intact(setup):
    kimi, _, proxy, client, db = setup()
    big = "log line with ünïcödé 🚀\n" * 15_000  # ~420 KB, ~150k tokens (fits kimi-k2.6)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": big}])
    assert kimi.received[0].json["messages"][0]["content"] == big
    [row] = wait_rows(db, 1)
    assert row["outcome"] == "ok"


def test_relay_refuses_calls_without_the_runs_token(setup):
    """The relay process listens on loopback: anything else on the machine that finds its port
    gets a 404 unless it carries this run's token — nothing is planned, sent or recorded."""
    import re

    import httpx

    kimi, _, proxy, client, db = setup()
    port = int(re.search(r"relay on 127\.0\.0\.1:(\d+)", proxy.log_text()).group(1))
    with httpx.Client(trust_env=False) as direct:
        for token in ({}, {"x-kimi-intercept-token": "guessed"}):
            r = direct.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": "gpt-4o", "messages": MESSAGES},
                headers={
                    "x-kimi-intercept-url": "https://api.openai.com/v1/chat/completions",
                    "x-kimi-intercept-host": "api.openai.com",
                    **token,
                },
            )
            assert r.status_code == 404
    assert kimi.received == []
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices
    assert len(wait_rows(db, 1)) == 1  # only the proxied call has a row


def test_passthrough_answers_are_not_validated(tmp_path, fake_upstream, start_proxy, openai_client):
    """The passed-through share goes to the original provider unchanged — its answer too, even
    an empty one (answer validation is for rerouted requests)."""
    original, kimi, deepseek = fake_upstream(), fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    proxy = start_proxy(render_config(db, kimi.url, deepseek.url, hosts=["localhost"], share=0))
    events = MOONSHOT_STREAM.split(b"\n\n")
    empty = [events[0], events[-3], events[-2]]  # role, usage, [DONE]
    original.enqueue(Reply.sse_file(b"\n\n".join(empty) + b"\n\n"))
    port = original.url.rsplit(":", 1)[1]
    client = openai_client(proxy, base_url=f"http://localhost:{port}/v1")
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert len(chunks) == 2 and kimi.received == [] and deepseek.received == []  # role, usage
    [row] = wait_rows(db, 1)
    assert (row["route"], row["outcome"]) == ("passthrough", "ok")
