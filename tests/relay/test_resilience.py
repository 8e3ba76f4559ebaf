"""The fault matrix, end to end: real mitmdump + addon, the openai SDK through HTTPS_PROXY,
fake providers replaying each provider's documented error bodies and stream breaks.

Error bodies: ``tests/wire/documented/*error*.json`` (provenance in ``tests/wire/README.md``).
Every test checks what the client sees, which provider served, the ``attempts`` rows and the
``outcome``, and that one client request is one ``requests`` row.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner
from proxyproc import render_config, rows, wait_rows

from kimi_intercept.commands.cli import main as cli_main
from kimi_intercept.commands.simulator import Reply, closed_port

WIRE = Path(__file__).resolve().parents[1] / "wire" / "documented"
MOONSHOT_STREAM = (WIRE / "moonshot_stream.sse").read_bytes()
MESSAGES = [{"role": "user", "content": "Say OK."}]


def body(name: str) -> dict[str, Any]:
    return json.loads((WIRE / name).read_text())


def attempts(db: Path) -> list[tuple[str, int | None]]:
    return [(a["provider"], a["status_code"]) for a in rows(db, "attempts")]


@pytest.fixture
def proxy_with(tmp_path, fake_upstream, start_proxy, openai_client):
    """``proxy_with(**routing)`` → kimi and deepseek fakes, a client, and the db path.

    Routing keys given here are added to ``[routing]``; tests keep timeouts and backoff short.
    """

    def make(kimi_url: str | None = None, gap: float = 0.0, **routing: Any):
        kimi, deepseek = fake_upstream(gap), fake_upstream()
        db = tmp_path / "kimi.db"
        text = render_config(db, kimi_url or kimi.url, deepseek.url)
        extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in routing.items())
        text = text.replace("share = 100\n", "share = 100\n" + extra)
        return kimi, deepseek, openai_client(start_proxy(text)), db

    return make


# --- before the first byte: the error table -------------------------------------------------


def test_5xx_is_retried_on_the_same_provider_then_served(proxy_with):
    kimi, deepseek, client, db = proxy_with(max_retries=1)
    kimi.enqueue(Reply.error(503, {"error": {"message": "busy", "type": "server_error"}}))
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert r.choices[0].message.content
    assert deepseek.received == [] and len(kimi.received) == 2
    [row] = wait_rows(db, 1)
    assert (row["provider"], row["attempts"], row["fallback_used"]) == ("kimi", 2, 0)
    assert attempts(db) == [("kimi", 503), ("kimi", 200)]


def test_engine_overloaded_429_is_a_transient_error_retried_then_falls_back(proxy_with):
    kimi, deepseek, client, db = proxy_with(max_retries=1)
    overloaded = body("moonshot_error_429_engine_overloaded.json")
    kimi.enqueue(Reply.error(429, overloaded), Reply.error(429, overloaded))
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [row] = wait_rows(db, 1)
    assert row["provider"] == "deepseek"
    assert attempts(db) == [("kimi", 429), ("kimi", 429), ("deepseek", 200)]


def test_529_overloaded_falls_back_after_retries(proxy_with):
    kimi, deepseek, client, db = proxy_with(max_retries=0)
    kimi.enqueue(Reply.error(529, body("anthropic_error_529_overloaded.json")))
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    wait_rows(db, 1)
    assert attempts(db) == [("kimi", 529), ("deepseek", 200)]


def test_rate_limit_with_a_short_retry_after_is_waited_out(proxy_with):
    kimi, deepseek, client, db = proxy_with(max_retries=1, retry_max_wait_s=2)
    # Moonshot states the wait in the message: "please try again after 1 seconds".
    kimi.enqueue(Reply.error(429, body("moonshot_error_429_rate_limit_rpm.json")))
    t0 = time.perf_counter()
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert time.perf_counter() - t0 >= 0.9
    wait_rows(db, 1)
    assert attempts(db) == [("kimi", 429), ("kimi", 200)]


def test_rate_limit_with_a_long_retry_after_falls_back_at_once(proxy_with):
    kimi, deepseek, client, db = proxy_with(max_retries=1, retry_max_wait_s=2)
    kimi.enqueue(
        Reply.json(body("openai_error_429_rate_limit.json"), 429, headers={"Retry-After": "30"})
    )
    t0 = time.perf_counter()
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert time.perf_counter() - t0 < 2.0
    wait_rows(db, 1)
    assert attempts(db) == [("kimi", 429), ("deepseek", 200)]
    # …and kimi is marked rate-limited: the next request goes straight to deepseek.
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    wait_rows(db, 2)
    assert len(kimi.received) == 1
    skipped = rows(db, "attempts")[2]
    assert (skipped["provider"], skipped["status_code"]) == ("kimi", None)
    assert skipped["error"].startswith("skipped: rate-limited after rate_limit 429: Rate limit")
    # `kimi-intercept status` reads the running proxy's published state.
    out = CliRunner().invoke(cli_main, ["status", "--db", str(db)]).output
    assert "Running proxy (pid" in out
    live, recent = out.split("Last hour")
    [kimi_live] = [line for line in live.splitlines() if line.strip().startswith("kimi ")]
    assert "rate_limited until" in kimi_live
    [kimi_recent] = [line for line in recent.splitlines() if line.strip().startswith("kimi ")]
    assert kimi_recent.split()[1:4] == ["1", "1", "1"]  # tried once, failed once, skipped once


def test_invalid_key_is_not_retried_and_the_provider_cools_down(proxy_with):
    kimi, deepseek, client, db = proxy_with(max_retries=2)
    kimi.enqueue(Reply.error(401, body("moonshot_error_401_invalid_authentication.json")))
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    got = wait_rows(db, 2)
    assert [r["provider"] for r in got] == ["deepseek", "deepseek"]
    assert len(kimi.received) == 1  # no retry, and skipped while cooling down


def test_quota_exhausted_cools_down(proxy_with):
    kimi, deepseek, client, db = proxy_with(max_retries=2)
    kimi.enqueue(Reply.error(429, body("moonshot_error_429_quota.json")))
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    wait_rows(db, 1)
    assert attempts(db) == [("kimi", 429), ("deepseek", 200)]


def test_context_length_is_not_resent_and_smaller_windows_are_skipped(proxy_with):
    # deepseek-chat's window (131,072) is smaller than kimi-k2.6's (262,144): nothing fits.
    kimi, deepseek, client, db = proxy_with()
    kimi.enqueue(Reply.error(400, body("moonshot_error_400_token_limit.json")))
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "exceeded model token limit" in e.value.message
    assert len(kimi.received) == 1 and deepseek.received == []
    [row] = wait_rows(db, 1)
    assert (row["outcome"], row["status_code"]) == ("error", 400)
    assert "context window" in rows(db, "attempts")[1]["error"]


def test_a_prompt_larger_than_a_window_skips_that_provider_before_sending(proxy_with):
    kimi, deepseek, client, db = proxy_with(max_retries=0)
    big = "word " * 150_000  # ~150k tokens: over deepseek-chat's 131,072, under kimi's window
    kimi.enqueue(Reply.error(503, {"error": {"message": "down", "type": "server_error"}}))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": big}], max_tokens=1000
        )
    assert deepseek.received == []
    wait_rows(db, 1)
    skipped = rows(db, "attempts")[-1]
    assert skipped["provider"] == "deepseek" and "exceeds the context window" in skipped["error"]


def test_other_4xx_is_the_clients_error(proxy_with):
    kimi, deepseek, client, db = proxy_with(max_retries=2)
    kimi.enqueue(Reply.error(404, body("moonshot_error_404_model.json")))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert deepseek.received == [] and len(kimi.received) == 1


def test_refused_connection_is_retried_then_falls_back(proxy_with):
    kimi, deepseek, client, db = proxy_with(
        kimi_url=f"http://127.0.0.1:{closed_port()}", max_retries=1
    )
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    wait_rows(db, 1)
    assert attempts(db) == [("kimi", None), ("kimi", None), ("deepseek", 200)]


def test_reset_before_headers_falls_back(proxy_with):
    kimi, deepseek, client, db = proxy_with(max_retries=0)
    kimi.enqueue(Reply(reset_before_headers=True))
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    wait_rows(db, 1)
    assert attempts(db) == [("kimi", None), ("deepseek", 200)]


def test_hang_before_headers_falls_back_at_the_first_byte_timeout(proxy_with):
    kimi, deepseek, client, db = proxy_with(max_retries=0, first_byte_timeout_s=0.5)
    hang = Reply.sse_file(MOONSHOT_STREAM)
    hang.delay_before_headers_s = 5
    kimi.enqueue(hang)
    t0 = time.perf_counter()
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert 0.5 <= time.perf_counter() - t0 < 3
    wait_rows(db, 1)
    assert attempts(db) == [("kimi", None), ("deepseek", 200)]


def test_the_response_says_who_answered_and_what_the_proxy_added(proxy_with):
    kimi, deepseek, client, db = proxy_with()
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers["x-kimi-intercept-provider"] == "kimi"
    assert raw.headers["x-kimi-intercept-attempts"] == "1"
    assert 0 <= float(raw.headers["x-kimi-intercept-overhead-ms"]) < 1000


# --- after the first byte: an honest answer when a stream breaks ----------------------------


def stream_all(client: openai.OpenAI) -> tuple[str, BaseException | None]:
    text = []
    try:
        for c in client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
            if c.choices and c.choices[0].delta.content:
                text.append(c.choices[0].delta.content)
    except Exception as e:  # noqa: BLE001 - what the SDK raises is what the IDE sees
        return "".join(text), e
    return "".join(text), None


def test_a_stall_mid_stream_is_cut_with_an_error_not_a_clean_end(proxy_with):
    kimi, _, client, db = proxy_with(stall_timeout_s=0.5)
    events = Reply.sse_file(MOONSHOT_STREAM).chunks
    # the role chunk and the first reasoning delta at once (content: committed), then a stall
    kimi.enqueue(Reply(headers={"Content-Type": "text/event-stream"},
                       chunks=[events[0] + events[1], *events[2:]], gap_s=3))  # fmt: skip
    t0 = time.perf_counter()
    _, error = stream_all(client)
    assert error is not None
    assert time.perf_counter() - t0 < 3
    [row] = wait_rows(db, 1)
    assert row["outcome"] == "incomplete" and "stalled" in row["error"]


def test_a_malformed_sse_line_ends_the_stream_with_an_in_band_error(proxy_with):
    kimi, _, client, db = proxy_with()
    events = MOONSHOT_STREAM.split(b"\n\n")
    broken = b"\n\n".join(events[:5] + [b"data: {not json"] + events[5:])
    kimi.enqueue(Reply.sse_file(broken))
    _, error = stream_all(client)
    assert isinstance(error, openai.APIError)
    assert "malformed SSE" in str(error)
    [row] = wait_rows(db, 1)
    assert row["outcome"] == "incomplete"


def test_a_provider_error_event_mid_stream_is_incomplete(proxy_with):
    kimi, _, client, db = proxy_with()
    events = MOONSHOT_STREAM.split(b"\n\n")
    err = (
        b'data: {"error":{"message":"Stream failed","type":"server_error","code":"stream_failure"}}'
    )
    kimi.enqueue(Reply.sse_file(b"\n\n".join(events[:5] + [err] + events[5:]), gap_s=0.05))
    _, error = stream_all(client)
    assert isinstance(error, openai.APIError) and "Stream failed" in str(error)
    [row] = wait_rows(db, 1)
    assert row["outcome"] == "incomplete" and row["completion_tokens"] is not None


def test_client_abort_closes_the_upstream_at_once(proxy_with):
    kimi, _, client, db = proxy_with()
    kimi.enqueue(Reply.sse_file(MOONSHOT_STREAM, gap_s=1.0))
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    next(iter(stream))
    t0 = time.perf_counter()
    stream.close()
    [row] = wait_rows(db, 1)
    assert row["outcome"] == "client_abort"
    assert time.perf_counter() - t0 < 1.5  # not after the upstream's remaining ~7 s


# --- circuit breaker, sticky share, concurrency ---------------------------------------------


def test_circuit_breaker_skips_a_failing_provider_then_probes_it(proxy_with):
    kimi, deepseek, client, db = proxy_with(
        max_retries=0, failures_to_open=2, breaker_window_s=60, cooldown_s=1
    )
    down = Reply.error(500, {"error": {"message": "down", "type": "server_error"}})
    kimi.enqueue(down, down)
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert len(kimi.received) == 2  # the third request did not touch kimi: breaker open
    time.sleep(1.2)
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # the half-open probe
    got = wait_rows(db, 4)
    assert [r["provider"] for r in got] == ["deepseek", "deepseek", "deepseek", "kimi"]


def test_share_is_sticky_per_conversation(tmp_path, fake_upstream, start_proxy, openai_client):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    proxy = start_proxy(render_config(db, kimi.url, deepseek.url, share=50, hosts=["localhost"]))
    original = fake_upstream()
    port = original.url.rsplit(":", 1)[1]
    client = openai_client(proxy, base_url=f"http://localhost:{port}/v1")
    sides = []
    for conversation in range(12):
        first = {"role": "user", "content": f"task number {conversation}"}
        history = [first]
        for turn in range(3):
            client.chat.completions.create(model="gpt-4o", messages=history)
            history = history + [
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": f"turn {turn}"},
            ]
        got = wait_rows(db, 3 * (conversation + 1))
        sides.append({r["route"] for r in got[-3:]})
    assert all(len(s) == 1 for s in sides)  # each conversation stayed on one side
    assert {next(iter(s)) for s in sides} == {"reroute", "passthrough"}


def test_fifty_concurrent_streams_while_the_primary_flaps(proxy_with):
    kimi, deepseek, client, db = proxy_with(max_retries=0, failures_to_open=1000, gap=0.05)
    for _ in range(25):
        kimi.enqueue(
            Reply.error(503, {"error": {"message": "flap", "type": "server_error"}}),
            Reply.sse_file(MOONSHOT_STREAM, gap_s=0.05),
        )

    def one(i: int) -> str:
        text, error = stream_all(client)
        assert error is None, error
        return text

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        texts = list(pool.map(one, range(50)))
    assert all(texts)
    got = wait_rows(db, 50, timeout=30)
    assert len(got) == 50
    assert {r["outcome"] for r in got} == {"ok"}
    assert {r["provider"] for r in got} <= {"kimi", "deepseek"}


def test_local_rpm_limit_sends_the_overflow_to_the_next_provider(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    text = render_config(db, kimi.url, deepseek.url).replace(
        'model = "kimi-k2.6"\n', 'model = "kimi-k2.6"\nrpm = 2\n'
    )
    client = openai_client(start_proxy(text))
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    got = wait_rows(db, 3)
    assert [r["provider"] for r in got] == ["kimi", "kimi", "deepseek"]
    assert len(kimi.received) == 2
    assert rows(db, "attempts")[2]["error"] == "skipped: local rpm/tpm limit reached"


def test_continue_on_break_finishes_the_answer_on_the_next_provider(proxy_with):
    kimi, deepseek, client, db = proxy_with(continue_on_break=True)
    cut = Reply.sse_file(MOONSHOT_STREAM, gap_s=0.05)
    cut.abort_after_chunks = 5  # role, three reasoning deltas, then content "O" — then reset
    kimi.enqueue(cut)
    text, error = stream_all(client)
    assert error is None
    assert text == "O" + "Hello from the fake Kimi upstream."
    continuation = deepseek.received[0].json
    assert continuation["messages"] == MESSAGES + [
        {"role": "assistant", "content": "O", "partial": True}
    ]
    [row] = wait_rows(db, 1)
    assert (row["outcome"], row["provider"], row["fallback_used"]) == ("ok", "deepseek", 1)
    assert "continued_after_break" in json.loads(row["details"])
    assert attempts(db) == [("kimi", 200), ("deepseek", 200)]


def test_without_continue_on_break_a_reset_is_incomplete(proxy_with):
    kimi, deepseek, client, db = proxy_with()
    cut = Reply.sse_file(MOONSHOT_STREAM, gap_s=0.05)
    cut.abort_after_chunks = 5
    kimi.enqueue(cut)
    text, error = stream_all(client)
    assert text == "O" and isinstance(error, openai.APIError)
    assert "broke off" in str(error)
    assert deepseek.received == []
    [row] = wait_rows(db, 1)
    assert row["outcome"] == "incomplete"


# --- answers validated before they count ------------------------------------------------------


def test_an_error_event_before_any_content_falls_back(proxy_with):
    kimi, deepseek, client, db = proxy_with()
    events = MOONSHOT_STREAM.split(b"\n\n")
    err = b'data: {"error":{"message":"engine overloaded","type":"engine_overloaded_error"}}'
    kimi.enqueue(Reply.sse_file(b"\n\n".join([events[0], err]) + b"\n\n", gap_s=0.05))
    text, error = stream_all(client)
    assert error is None and text == "Hello from the fake Kimi upstream."
    wait_rows(db, 1)
    assert attempts(db) == [("kimi", 200), ("deepseek", 200)]
    assert rows(db, "attempts")[0]["error"].startswith("stream_error:")


def test_an_empty_answer_falls_back(proxy_with):
    kimi, deepseek, client, db = proxy_with()
    events = MOONSHOT_STREAM.split(b"\n\n")
    empty = [events[0], events[-3], events[-2]]  # role, usage, [DONE]: no content
    kimi.enqueue(Reply.sse_file(b"\n\n".join(empty) + b"\n\n"))
    text, error = stream_all(client)
    assert error is None and text == "Hello from the fake Kimi upstream."
    [row] = wait_rows(db, 1)
    assert (row["provider"], row["fallback_used"]) == ("deepseek", 1)
    assert rows(db, "attempts")[0]["error"].startswith("empty_answer:")


def test_json_mode_answer_that_does_not_parse_falls_back(proxy_with):
    kimi, deepseek, client, db = proxy_with()
    bad = {"id": "x", "object": "chat.completion", "model": "kimi-k2.6",
           "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "Sure! {not json"}}],
           "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}  # fmt: skip
    good = {
        **bad,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": '{"ok": true}'},
            }
        ],
    }
    kimi.enqueue(Reply.json(bad))
    deepseek.enqueue(Reply.json(good))
    r = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert json.loads(r.choices[0].message.content) == {"ok": True}
    wait_rows(db, 1)
    assert attempts(db) == [("kimi", 200), ("deepseek", 200)]
    assert rows(db, "attempts")[0]["error"].startswith("invalid_json: JSON mode answer")


def test_a_repeating_stream_is_cut_with_an_error(proxy_with):
    kimi, _, client, db = proxy_with()
    loop = "I will now check the configuration file again to be sure. "
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "kimi-k2.6",
        "choices": [{"index": 0, "delta": {"content": loop}, "finish_reason": None}],
    }
    events = [b"data: " + json.dumps(chunk).encode() + b"\n\n"] * 40 + [b"data: [DONE]\n\n"]
    kimi.enqueue(Reply(headers={"Content-Type": "text/event-stream"}, chunks=events, gap_s=0.01))
    text, error = stream_all(client)
    assert isinstance(error, openai.APIError) and "repetition loop" in str(error)
    assert text.count(loop) < 20  # cut long before the 40 repeats the upstream would send
    [row] = wait_rows(db, 1)
    assert row["outcome"] == "incomplete" and "repetition loop" in row["error"]
    assert "repetition loop" in rows(db, "attempts")[0]["error"]
