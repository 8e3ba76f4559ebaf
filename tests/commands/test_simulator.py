"""FakeUpstream on its own: byte formats, scripted replies and failure modes (no proxy)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest
from proxyproc import REPO

from kimi_intercept.commands.simulator import (
    DEFAULT_ANSWER_DELTAS,
    DEFAULT_COMPLETION_TOKENS,
    FakeUpstream,
    Reply,
    closed_port,
    default_usage,
)

WIRE = REPO / "tests" / "wire"  # byte-exact copies of ../shared/wire (see its README)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello."},
]


def wire_file(name: str) -> bytes:
    return (WIRE / name).read_bytes()


def sse_events(body: bytes) -> list[bytes]:
    """Each event's joined ``data:`` payload; asserts every event is framed by a blank line."""
    text = body.replace(b"\r\n", b"\n")
    assert text.endswith(b"\n\n")
    payloads = []
    for event in text[:-2].split(b"\n\n"):
        lines = event.split(b"\n")
        assert all(line.startswith(b"data: ") for line in lines), event
        payloads.append(b"\n".join(line[6:] for line in lines))
    return payloads


@pytest.fixture
def up(fake_upstream: Callable[..., FakeUpstream]) -> FakeUpstream:
    return fake_upstream()


@pytest.fixture
def client() -> httpx.Client:
    with httpx.Client(trust_env=False, timeout=10) as c:
        yield c


def test_default_stream_with_include_usage(up: FakeUpstream, client: httpx.Client) -> None:
    request = {
        "model": "kimi-k2.6",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = client.post(up.url + "/v1/chat/completions", json=request)

    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    payloads = sse_events(r.content)
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    expected_usage = default_usage(MESSAGES)
    assert up.last_usage == expected_usage
    assert expected_usage == {
        "prompt_tokens": len(json.dumps(MESSAGES)) // 4,
        "completion_tokens": DEFAULT_COMPLETION_TOKENS,
        "total_tokens": len(json.dumps(MESSAGES)) // 4 + DEFAULT_COMPLETION_TOKENS,
        "cached_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"kimi-k2.6"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    content = chunks[1 : 1 + len(DEFAULT_ANSWER_DELTAS)]
    assert [c["choices"][0]["delta"] for c in content] == [
        {"content": t} for t in DEFAULT_ANSWER_DELTAS
    ]
    finish, trailer = chunks[-2], chunks[-1]
    assert finish["choices"] == [
        {"index": 0, "delta": {}, "finish_reason": "stop", "usage": expected_usage}
    ]
    assert "usage" not in finish
    assert trailer["choices"] == []
    assert trailer["usage"] == expected_usage
    assert len(chunks) == len(DEFAULT_ANSWER_DELTAS) + 3


def test_default_stream_without_include_usage_has_no_trailer(
    up: FakeUpstream, client: httpx.Client
) -> None:
    r = client.post(
        up.url + "/v1/chat/completions",
        json={"model": "kimi-k2-turbo-preview", "messages": MESSAGES, "stream": True},
    )

    payloads = sse_events(r.content)
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert payloads[-1] == b"[DONE]"
    assert all(c["choices"] for c in chunks)
    assert chunks[-1]["choices"][0]["usage"] == default_usage(MESSAGES)
    assert {c["model"] for c in chunks} == {"kimi-k2-turbo-preview"}


def test_default_non_stream_completion(up: FakeUpstream, client: httpx.Client) -> None:
    r = client.post(
        up.url + "/api/v1/chat/completions", json={"model": "kimi-k2.6", "messages": MESSAGES}
    )

    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.headers["content-length"] == str(len(r.content))
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(DEFAULT_ANSWER_DELTAS)},
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == default_usage(MESSAGES) == up.last_usage


def test_default_gap_spaces_the_events(fake_upstream: Callable[..., FakeUpstream]) -> None:
    up = fake_upstream(default_gap_s=0.05)
    arrivals = []
    with httpx.Client(trust_env=False, timeout=10) as c:
        start = time.monotonic()
        with c.stream(
            "POST",
            up.url + "/v1/chat/completions",
            json={"model": "k", "messages": [], "stream": True},
        ) as r:
            for _ in r.iter_raw():
                arrivals.append(time.monotonic() - start)
    events = len(DEFAULT_ANSWER_DELTAS) + 3  # role, deltas, finish, [DONE]
    assert arrivals[-1] >= 0.05 * (events - 1) * 0.9
    assert arrivals[0] < arrivals[-1] - 0.2


def test_scripted_429_then_default(up: FakeUpstream, client: httpx.Client) -> None:
    error = json.loads(wire_file("documented/moonshot_error_429_engine_overloaded.json"))
    up.enqueue(Reply.error(429, error))

    first = client.post(up.url + "/v1/chat/completions", json={"messages": MESSAGES})
    second = client.post(up.url + "/v1/chat/completions", json={"messages": MESSAGES})

    assert first.status_code == 429
    assert first.headers["content-type"] == "application/json; charset=utf-8"
    assert first.json() == {
        "error": {
            "message": "The engine is currently overloaded, please try again later",
            "type": "engine_overloaded_error",
        }
    }
    assert second.status_code == 200
    assert up.pending == 0


def test_scripted_replies_are_used_in_order(up: FakeUpstream, client: httpx.Client) -> None:
    up.enqueue(Reply(status=503, chunks=[b"a"]), Reply.json({"ok": 1}, headers={"X-Test": "y"}))

    statuses = [client.post(up.url + "/v1/chat/completions", json={}) for _ in range(3)]

    assert [r.status_code for r in statuses] == [503, 200, 200]
    assert statuses[1].json() == {"ok": 1}
    assert statuses[1].headers["x-test"] == "y"
    assert statuses[2].json()["object"] == "chat.completion"


def test_abort_after_chunks_cuts_the_connection(up: FakeUpstream, client: httpx.Client) -> None:
    raw = wire_file("documented/moonshot_stream.sse")
    reply = Reply.sse_file(raw)
    reply.abort_after_chunks = 3
    up.enqueue(reply)
    got = b""

    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        with client.stream("POST", up.url + "/v1/chat/completions", json={}) as r:
            assert r.status_code == 200
            for part in r.iter_raw():
                got += part

    assert got == b"".join(reply.chunks[:3])


def test_reset_before_headers(up: FakeUpstream, client: httpx.Client) -> None:
    up.enqueue(Reply(reset_before_headers=True, delay_before_headers_s=0.05))

    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        client.post(up.url + "/v1/chat/completions", json={})

    assert len(up.received) == 1


def test_received_records_the_request(up: FakeUpstream, client: httpx.Client) -> None:
    client.post(
        up.url + "/openai/v1/chat/completions?x=1",
        json={"model": "kimi-k2.6", "messages": MESSAGES},
        headers={"Authorization": "Bearer sk-test-moonshot-provider-key", "X-Custom": "A"},
    )

    (req,) = up.received
    assert req.method == "POST"
    assert req.path == "/openai/v1/chat/completions?x=1"
    assert req.headers["authorization"] == "Bearer sk-test-moonshot-provider-key"
    assert req.headers["x-custom"] == "A"
    assert all(k == k.lower() for k in req.headers)
    assert req.json == {"model": "kimi-k2.6", "messages": MESSAGES}
    assert json.loads(req.body) == req.json


def test_other_paths_get_a_moonshot_404(up: FakeUpstream, client: httpx.Client) -> None:
    r = client.get(up.url + "/v1/models")

    assert r.status_code == 404
    assert r.json()["error"]["type"] == "resource_not_found_error"
    assert up.received[0].json is None


@pytest.mark.parametrize("name", ["documented/moonshot_stream.sse", "captured_gemini_stream.sse"])
def test_sse_file_replays_bytes_exactly(name: str, up: FakeUpstream, client: httpx.Client) -> None:
    raw = wire_file(name)
    reply = Reply.sse_file(raw)
    up.enqueue(reply)

    r = client.post(up.url + "/v1/chat/completions", json={})

    assert b"".join(reply.chunks) == raw
    assert len(reply.chunks) == len(sse_events(raw))
    assert all(c.endswith((b"\n\n", b"\r\n\r\n")) for c in reply.chunks)
    assert r.content == raw
    assert r.headers["transfer-encoding"] == "chunked"


def test_closed_port_refuses() -> None:
    port = closed_port()

    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", trust_env=False, timeout=5)


def test_context_manager_stops_the_server() -> None:
    with FakeUpstream() as up:
        url = up.url
        assert httpx.post(url + "/v1/chat/completions", json={}, trust_env=False).status_code == 200

    with pytest.raises(httpx.ConnectError):
        httpx.post(url + "/v1/chat/completions", json={}, trust_env=False, timeout=5)
