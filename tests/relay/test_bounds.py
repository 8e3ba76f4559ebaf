"""What counts as data for the stall timeout (:class:`~kimi_intercept.relay.bounds.DataClock`)."""

from __future__ import annotations

import pytest

from kimi_intercept.relay.bounds import Cut, DataClock


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fed(chunks: list[bytes], sse: bool = True) -> list[bool]:
    clock = DataClock(sse)
    return [clock.feed(c) for c in chunks]


def test_comments_and_blank_lines_are_not_data_but_events_are():
    assert fed([b": keep-alive\n\n", b":\n\n", b"\r\n", b'data: {"a": 1}\n\n']) == [
        False,
        False,
        False,
        True,
    ]


def test_anthropic_ping_events_are_keep_alives():
    ping = b'event: ping\ndata: {"type": "ping"}\n\n'
    delta = b'event: content_block_delta\ndata: {"type": "content_block_delta"}\n\n'
    assert fed([ping, delta, b'data: {"type":"ping"}\n\n']) == [False, True, False]


def test_an_event_split_across_chunks_counts_when_its_data_line_ends():
    assert fed([b'data: {"cho', b'ices": []}\n', b"\n"]) == [False, True, False]
    # a comment split the same way stays a comment
    assert fed([b": keep", b"-alive\n\n"]) == [False, False]
    # CRLF framing (Gemini)
    assert fed([b'data: {"x": 1}\r\n\r\n', b": ka\r\n\r\n"]) == [True, False]


def test_a_long_unfinished_data_line_is_data_on_its_way():
    assert fed([b"data: " + b"x" * 100, b"y" * 100, b"\n\n"]) == [True, True, True]
    assert fed([b": " + b"x" * 100, b"\n\n"]) == [False, False]


def test_any_byte_of_a_json_body_is_data():
    assert fed([b" ", b": not sse"], sse=False) == [True, True]
    assert fed([b""], sse=False) == [False]


def test_left_counts_from_the_last_data_only():
    t = Clock()
    clock = DataClock(True, clock=t)
    t.now += 0.5
    clock.feed(b'data: {"a": 1}\n\n')
    t.now += 0.8
    clock.feed(b": keep-alive\n\n")
    assert clock.left(1.0) == pytest.approx(0.2)
    assert clock.keepalives == 1
    t.now += 0.3
    assert clock.left(1.0) == pytest.approx(-0.1)


def test_cuts_name_their_setting():
    assert Cut.shutdown(30).outcome == "shutdown"
    assert "[proxy] drain_s = 30 s" in Cut.shutdown(30).message
    assert Cut.max_answer(1800).outcome == "incomplete"
    assert "[routing] max_answer_s = 1800 s" in Cut.max_answer(1800).message


def test_passed_through_calls_count_toward_their_own_health():
    from types import SimpleNamespace as NS

    from kimi_intercept.relay.health import health_key

    target = NS(provider="openai")
    assert health_key(NS(kind="passthrough", host="api.openai.com"), target) == (
        "passthrough:api.openai.com"
    )
    assert health_key(NS(kind="reroute", host="api.openai.com"), target) == "openai"
