"""Signals and time bounds, end to end: a real mitmdump + addon, the openai SDK through
HTTPS_PROXY, fake providers streaming slowly.

- SIGTERM with streams in flight: the short ones finish, the one longer than ``[proxy] drain_s``
  is cut (outcome ``shutdown``, no provider penalised), a call arriving during the drain gets a
  503 in its dialect, every request has its row, and mitmdump exits 0.
- ``stall_timeout_s`` counts data only: a stream of ``: keep-alive`` comments is cut.
- ``[routing] max_answer_s`` cuts an answer that runs too long.
- Passed-through calls have their own health: their failures do not open the breaker of the
  configured provider on the same host.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from proxyproc import render_config, rows, wait_rows

from kimi_intercept.commands.simulator import Reply, default_usage, kimi_stream_events
from kimi_intercept.commands.status import status_file_for
from kimi_intercept.routing.plan import conversation_key, share_roll

MESSAGES = [{"role": "user", "content": "Say OK."}]
SSE = {"Content-Type": "text/event-stream"}


def stream_reply(n_words: int, gap_s: float) -> Reply:
    """A Moonshot-style stream answering ``w0 w1 …`` one word per event, ``gap_s`` apart."""
    words = tuple(f"w{i} " for i in range(n_words))
    events = kimi_stream_events("kimi-k2.6", default_usage(MESSAGES), False, words)
    return Reply(headers=SSE, chunks=events, gap_s=gap_s)


def with_keys(text: str, table: str, **keys: Any) -> str:
    """``text`` with ``keys`` added to ``[table]`` (appended as a new table if absent)."""
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    header = f"[{table}]\n"
    return text.replace(header, header + lines) if header in text else text + header + lines


@pytest.fixture
def proxy_with(tmp_path, fake_upstream, start_proxy, openai_client):
    """``proxy_with(proxy={...}, **routing)`` → kimi and deepseek fakes, the proxy, a client and
    the db path."""

    def make(proxy: dict[str, Any] | None = None, **routing: Any):
        kimi, deepseek = fake_upstream(), fake_upstream()
        db = tmp_path / "kimi.db"
        text = with_keys(render_config(db, kimi.url, deepseek.url), "routing", **routing)
        text = with_keys(text, "proxy", **(proxy or {}))
        proc = start_proxy(text)
        return kimi, deepseek, proc, openai_client(proc), db

    return make


class StreamingCall(threading.Thread):
    """One streamed chat completion in a thread: the text received, the error if any."""

    def __init__(self, client: openai.OpenAI) -> None:
        super().__init__(daemon=True)
        self.client, self.text, self.error = client, "", None
        self.first = threading.Event()

    def run(self) -> None:
        try:
            stream = self.client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    self.text += chunk.choices[0].delta.content
                    self.first.set()
        except Exception as e:  # what the client saw, checked by the test
            self.error = e
        finally:
            self.first.set()


def wait_until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def live_status(db: Path) -> dict[str, dict[str, Any]]:
    doc = json.loads(status_file_for(db).read_text())
    return {p["provider"]: p for p in doc["providers"]}


def test_sigterm_drains_short_streams_cuts_the_long_one_and_keeps_every_row(proxy_with):
    kimi, deepseek, proc, client, db = proxy_with(proxy={"drain_s": 2.5})
    replies = [stream_reply(4, 0.3), stream_reply(6, 0.3), stream_reply(60, 0.25)]
    calls = []
    for n, reply in enumerate(replies, start=1):
        kimi.enqueue(reply)
        call = StreamingCall(client)
        call.start()
        wait_until(lambda n=n: len(kimi.received) == n)
        calls.append(call)
    for call in calls:
        assert call.first.wait(10)
    t0 = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # A new call during the drain: a 503 in the OpenAI dialect, and a row.
    with pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert refused.value.status_code == 503
    assert "shutting down" in refused.value.message
    code = proc.proc.wait(20)
    took = time.monotonic() - t0
    for call in calls:
        call.join(5)
    assert code == 0
    assert 2.5 <= took < 2.5 + 6, took  # waited for the drain, not for the 15 s stream
    short, medium, long = calls
    assert (short.error, short.text) == (None, "w0 w1 w2 w3 ")
    assert (medium.error, medium.text) == (None, "w0 w1 w2 w3 w4 w5 ")
    assert long.error is not None and long.text.startswith("w0 w1 ")
    assert len(long.text.split()) < 30
    got = rows(db)
    assert len(got) == 4  # requests sent == rows stored
    by_outcome = sorted((r["outcome"], r["status_code"]) for r in got)
    assert by_outcome == [("ok", 200), ("ok", 200), ("shutdown", 200), ("shutdown", 503)]
    [cut] = [r for r in got if r["outcome"] == "shutdown" and r["status_code"] == 200]
    assert "drain_s = 2.5 s" in cut["error"] and cut["provider"] == "kimi"
    # Not a provider failure: the committed attempts carry no error, kimi stays available.
    assert [a["error"] for a in rows(db, "attempts")] == [None, None, None]
    kimi_health = live_status(db)["kimi"]
    assert (kimi_health["state"], kimi_health["recent_failures"]) == ("available", 0)
    assert "stalled" not in proc.log_text() and "broke off" not in proc.log_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_with_nothing_in_flight_exits_promptly(proxy_with, sig):
    kimi, deepseek, proc, client, db = proxy_with()  # drain_s: the default 30 s
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    t0 = time.monotonic()
    proc.proc.send_signal(sig)
    assert proc.proc.wait(15) == 0
    assert time.monotonic() - t0 < 5
    assert [r["outcome"] for r in rows(db)] == ["ok"]


def test_a_second_signal_cuts_at_once(proxy_with):
    kimi, deepseek, proc, client, db = proxy_with()  # drain_s: the default 30 s
    kimi.enqueue(stream_reply(60, 0.25))
    call = StreamingCall(client)
    call.start()
    assert call.first.wait(10)
    t0 = time.monotonic()
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait_for_log("get up to 30 s to finish")
    proc.proc.send_signal(signal.SIGINT)
    assert proc.proc.wait(15) == 0
    assert time.monotonic() - t0 < 6
    call.join(5)
    assert call.error is not None
    [row] = rows(db)
    assert (row["outcome"], row["provider"]) == ("shutdown", "kimi")


def test_keep_alives_do_not_reset_the_stall_timeout(proxy_with):
    kimi, deepseek, proc, client, db = proxy_with(stall_timeout_s=1, max_retries=0)
    events = kimi_stream_events("kimi-k2.6", default_usage(MESSAGES), False, ("Hello",))
    kimi.enqueue(Reply(headers=SSE, chunks=events[:2] + [b": keep-alive\n\n"] * 40, gap_s=0.2))
    call = StreamingCall(client)
    t0 = time.monotonic()
    call.run()
    took = time.monotonic() - t0
    assert call.text == "Hello" and call.error is not None
    assert took < 4, took  # cut after ~1 s without data, not after the 8 s of keep-alives
    [row] = wait_rows(db, 1)
    assert row["outcome"] == "incomplete"
    assert "no data for 1 s (keep-alives do not count)" in row["error"]


def test_keep_alives_before_any_content_fall_back(proxy_with):
    kimi, deepseek, proc, client, db = proxy_with(stall_timeout_s=1, max_retries=0)
    events = kimi_stream_events("kimi-k2.6", default_usage(MESSAGES), False, ("Hello",))
    kimi.enqueue(Reply(headers=SSE, chunks=events[:1] + [b": keep-alive\n\n"] * 40, gap_s=0.2))
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in r if c.choices)
    [row] = wait_rows(db, 1)
    assert (row["provider"], row["outcome"]) == ("deepseek", "ok")
    first = rows(db, "attempts")[0]
    assert first["provider"] == "kimi"
    assert first["error"] == "timeout: no data for 1 s (keep-alives do not count)"


def test_max_answer_s_cuts_a_long_answer(proxy_with):
    kimi, deepseek, proc, client, db = proxy_with(max_answer_s=1.5)
    kimi.enqueue(stream_reply(30, 0.2))  # ~6 s
    call = StreamingCall(client)
    t0 = time.monotonic()
    call.run()
    took = time.monotonic() - t0
    assert call.text.startswith("w0 ") and call.error is not None
    assert "max_answer_s = 1.5 s" in str(call.error)  # the in-band error event
    assert 1.4 <= took < 4, took
    [row] = wait_rows(db, 1)
    assert row["outcome"] == "incomplete"
    assert "max_answer_s = 1.5 s" in row["error"]


def test_max_answer_s_before_any_answer_is_an_error_in_the_clients_dialect(proxy_with):
    kimi, deepseek, proc, client, db = proxy_with(max_answer_s=1)
    slow = stream_reply(3, 0.1)
    slow.delay_before_headers_s = 4
    kimi.enqueue(slow)
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert time.monotonic() - t0 < 3
    assert e.value.status_code == 504
    assert "max_answer_s = 1 s" in e.value.message
    [row] = wait_rows(db, 1)
    assert (row["outcome"], row["status_code"]) == ("incomplete", 504)
    assert deepseek.received == []  # a cut, not a failure to fall back from


def _session_on(side: str, share: float) -> str:
    """An ``x-kimi-session`` value whose conversation falls on ``side`` ("passthrough" or
    "reroute") of ``[routing] share`` (the share is decided per conversation)."""
    for n in range(1000):
        value = f"session-{n}"
        roll = share_roll(conversation_key([("x-kimi-session", value)], {}))
        if (roll >= share) == (side == "passthrough"):
            return value
    raise AssertionError("no session found")


def test_passthrough_failures_leave_the_configured_providers_breaker_closed(
    tmp_path, fake_upstream, start_proxy
):
    """The share not rerouted is passed through. Here the configured provider ``kimi`` lives on
    the same host (localhost) as the original API: two failed passed-through calls must not
    open kimi's breaker (failures_to_open = 2), so a rerouted call is still served by kimi."""
    original, kimi, deepseek = fake_upstream(), fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    kimi_url = kimi.url.replace("127.0.0.1", "localhost")
    text = render_config(db, kimi_url, deepseek.url, hosts=["localhost"], share=50)
    proc = start_proxy(with_keys(text, "routing", failures_to_open=2, max_retries=0))
    busy = {"error": {"message": "overloaded", "type": "server_error"}}
    original.enqueue(Reply.error(503, busy), Reply.error(503, busy))
    port = original.url.rsplit(":", 1)[1]
    passed, rerouted = _session_on("passthrough", 50), _session_on("reroute", 50)
    with httpx.Client(proxy=proc.proxy_url, trust_env=False) as http:
        for _ in range(2):
            r = http.post(
                f"http://localhost:{port}/v1/chat/completions",
                json={"model": "gpt-4o", "messages": MESSAGES},
                headers={"authorization": "Bearer sk-client", "x-kimi-session": passed},
            )
            assert r.status_code == 503
        r = http.post(
            f"http://localhost:{port}/v1/chat/completions",
            json={"model": "gpt-4o", "messages": MESSAGES},
            headers={"authorization": "Bearer sk-client", "x-kimi-session": rerouted},
        )
        assert r.status_code == 200
    got = wait_rows(db, 3)
    assert [(r["route"], r["provider"]) for r in got] == [
        ("passthrough", "kimi"),
        ("passthrough", "kimi"),
        ("reroute", "kimi"),
    ]
    assert len(kimi.received) == 1 and deepseek.received == []
    # the status file is published within 0.2 s of a change (relay/live.py coalesces writes)
    wait_until(lambda: "kimi" in live_status(db))
    health = live_status(db)
    assert health["kimi"]["state"] == "available"
    assert health["passthrough:localhost"]["state"] == "open"


def test_an_anthropic_client_is_cut_and_refused_in_its_own_dialect(
    tmp_path, fake_upstream, start_proxy, monkeypatch
):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    text = render_config(db, kimi.url, deepseek.url, hosts=["api.anthropic.com"])
    proc = start_proxy(with_keys(text, "proxy", drain_s=1))
    for name, value in proc.client_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    client = anthropic.Anthropic(api_key="sk-ant-client-key", max_retries=0)
    kimi.enqueue(stream_reply(60, 0.25))
    got: dict[str, Any] = {"text": "", "error": None}
    first = threading.Event()

    def run() -> None:
        try:
            with client.messages.stream(
                model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES
            ) as stream:
                for piece in stream.text_stream:
                    got["text"] += piece
                    first.set()
        except Exception as e:  # checked below
            got["error"] = e
        finally:
            first.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert first.wait(10)
    proc.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises(anthropic.APIStatusError) as refused:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES)
    assert refused.value.status_code == 503
    assert refused.value.body["type"] == "error"
    assert "shutting down" in refused.value.body["error"]["message"]
    assert proc.proc.wait(15) == 0
    thread.join(5)
    assert got["text"].startswith("w0 ")
    assert "drain_s = 1 s" in str(got["error"])
    assert sorted(r["outcome"] for r in rows(db)) == ["shutdown", "shutdown"]
