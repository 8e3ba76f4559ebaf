"""What counts as data for the stall timeout (:class:`~kimi_intercept.relay.bounds.DataClock`)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from kimi_intercept.relay.bounds import Cut, DataClock

WIRE = Path(__file__).resolve().parents[1] / "wire"


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


class Scanning(DataClock):
    """The clock with every chunk scanned line by line (no shortcut): the reference."""

    def _sse_data(self, chunk: bytes) -> bool:
        return self._scan(chunk)


class Counting(DataClock):
    scans = 0

    def _scan(self, chunk: bytes) -> bool:
        self.scans += 1
        return super()._scan(chunk)


KEEPALIVES = (
    b": keep-alive\n\n"
    b'data: {"choices":[{"delta":{"content":"shipping"}}]}\n\n'  # "ping" inside content
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b"data\n\n"  # a data field without a colon
    b'data: {"choices":[{"delta":{"content":"x"}}]}\r\n\r\n'
    b":\n\n" + b"data: " + b"y" * 200 + b"\n\n"
)
#: Reads whose state or mix the shortcut must not misjudge.
SEQUENCES = [
    [b'data: {"a":1}\n\n: keep-alive\n\n'],  # data and a keep-alive in one read
    [b'data: {"b":2}\r: ka\n\n'],  # a lone CR ends a data line before a comment
    [b"event: ping\n", b"data: {}\n\n"],  # a ping's data in the next read
    [b": keep", b"-alive\ndata: {}\n\n"],  # a comment finished by the next read
]


def _streams() -> list[bytes]:
    return [f.read_bytes() for f in sorted(WIRE.rglob("*.sse"))] + [KEEPALIVES]


def _chunkings(stream: bytes, rng: random.Random) -> list[list[bytes]]:
    events = [e for e in re.split(rb"(?<=\n\n)|(?<=\r\n\r\n)", stream) if e]
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, len(stream) // 40)))
    bounds = [0, *cuts, len(stream)]
    return [
        events,  # one event per read
        [b"".join(events[i : i + 3]) for i in range(0, len(events), 3)],  # bursts
        [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)],  # anywhere
        [stream],  # all in one read
    ]


def test_the_shortcut_says_what_the_line_scan_says() -> None:
    """Every recorded stream (and one of keep-alives, pings, CRLF and long lines), read in
    whole events, in bursts and cut anywhere: the same answer for every read, and the same
    keep-alives counted, as when each read is scanned line by line."""
    rng = random.Random(7)
    cases = [c for stream in _streams() for c in _chunkings(stream, rng)] + SEQUENCES
    for chunks in cases:
        fast, slow = DataClock(True), Scanning(True)
        assert [fast.feed(c) for c in chunks] == [slow.feed(c) for c in chunks], chunks
        assert fast.keepalives == slow.keepalives, chunks


def test_whole_events_with_data_are_not_scanned() -> None:
    stream = (WIRE / "documented" / "moonshot_stream.sse").read_bytes()
    events = [e + b"\n\n" for e in stream.split(b"\n\n") if e]
    clock = Counting(True)
    assert all(clock.feed(e) for e in events)
    assert clock.scans == 0
    assert clock.feed(b": keep-alive\n\n") is False  # the rest is scanned
    assert clock.scans == 1 and clock.keepalives == 1


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
