from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kimi_intercept.accounting.sse import SSEEvent, SSEParser

WIRE = Path(__file__).resolve().parents[1] / "wire"


def parse_all(chunks: list[bytes]) -> tuple[list[SSEEvent], SSEParser]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return events, parser


def split_every(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for size in sizes:
        out.append(data[pos : pos + size])
        pos += size
    out.append(data[pos:])
    return out


def test_single_event():
    events, parser = parse_all([b'data: {"a": 1}\n\n'])
    assert events == [SSEEvent(event="message", data='{"a": 1}', id=None)]
    assert parser.pending_bytes == 0


def test_event_field_id_and_multiline_data():
    stream = b"event: delta\nid: 7\ndata: one\ndata:two\ndata:  three\n\ndata: next\n\n"
    events, _ = parse_all([stream])
    assert events == [
        SSEEvent(event="delta", data="one\ntwo\n three", id="7"),
        # the last event ID carries over (WHATWG), the event type does not
        SSEEvent(event="message", data="next", id="7"),
    ]


def test_field_without_colon_and_empty_data():
    events, _ = parse_all([b"data\n\ndata:\n\n"])
    assert events == [SSEEvent("message", "", None), SSEEvent("message", "", None)]


def test_event_without_data_is_not_dispatched():
    events, _ = parse_all([b"event: ping\n\nretry: 10\nfoo: bar\n\ndata: x\n\n"])
    assert events == [SSEEvent("message", "x", None)]


def test_comments_are_ignored():
    events, parser = parse_all([b": keep-alive\n\n: another\ndata: x\n: mid\n\n"])
    assert events == [SSEEvent("message", "x", None)]
    assert parser.pending_bytes == 0


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol: bytes):
    stream = b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    events, _ = parse_all([stream])
    assert [e.data for e in events] == ["a\nb", "c"]


def test_crlf_split_between_chunks_is_one_line_end():
    # If "\r" and "\n" were taken as two line ends, the blank line would split the event.
    events, _ = parse_all([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"])
    assert events == [SSEEvent("message", "a\nb", None)]


def test_lone_cr_at_chunk_end_followed_by_text():
    events, _ = parse_all([b"data: a\r", b"data: b\r\r"])
    assert [e.data for e in events] == ["a\nb"]


def test_multibyte_utf8_split_inside_a_character():
    raw = "data: héllo 你好 🙂\n\n".encode()
    for cut in range(len(raw) + 1):
        events, _ = parse_all([raw[:cut], raw[cut:]])
        assert events == [SSEEvent("message", "héllo 你好 🙂", None)], cut


def test_one_byte_at_a_time():
    raw = "event: x\r\ndata: 你\r\n\r\ndata: ok\n\n".encode()
    events, _ = parse_all([raw[i : i + 1] for i in range(len(raw))])
    assert events == [SSEEvent("x", "你", None), SSEEvent("message", "ok", None)]


def test_invalid_utf8_is_replaced_not_raised():
    events, _ = parse_all([b"data: \xff\xfeok\n\n"])
    assert events == [SSEEvent("message", "\ufffd\ufffdok", None)]


def test_bom_at_start_is_dropped():
    events, _ = parse_all([b"\xef\xbb", b"\xbfdata: x\n\n"])
    assert events == [SSEEvent("message", "x", None)]


def test_unterminated_event_is_discarded_and_reported():
    events, parser = parse_all([b"data: one\n\ndata: tw"])
    assert events == [SSEEvent("message", "one", None)]
    assert parser.pending_bytes == len(b"data: tw")

    events, parser = parse_all([b"data: one\n\ndata: two\n"])
    assert events == [SSEEvent("message", "one", None)]
    assert parser.pending_bytes == len(b"data: two\n")


def test_gemini_crlf_capture():
    raw = (WIRE / "captured_gemini_stream.sse").read_bytes()
    assert b"\r\n\r\n" in raw
    rng = random.Random(7)
    for _ in range(50):
        sizes = [rng.randint(1, 40) for _ in range(30)]
        events, parser = parse_all(split_every(raw, sizes))
        assert [json.loads(e.data)["usageMetadata"]["totalTokenCount"] for e in events] == [
            131,
            139,
        ]
        assert parser.pending_bytes == 0


def test_keeps_only_the_unfinished_line():
    parser = SSEParser()
    for _ in range(1000):
        parser.feed(b"data: " + b"x" * 100 + b"\n\n")
    assert parser.pending_bytes == 0
    parser.feed(b"data: partial")
    assert parser.pending_bytes == len(b"data: partial")


# --- EventSplitter: whole raw events, bytes untouched -------------------------------------


def _split_all(data: bytes, size: int) -> list[bytes]:
    from kimi_intercept.accounting.sse import EventSplitter

    s = EventSplitter()
    events: list[bytes] = []
    for i in range(0, len(data), size):
        events += s.push(data[i : i + size])
    rest = s.flush()
    return events + ([rest] if rest else [])


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
@pytest.mark.parametrize(
    "name",
    [
        "documented/moonshot_stream.sse",
        "captured_gemini_stream.sse",
        "documented/deepseek_stream.sse",
    ],
)
def test_event_splitter_returns_each_event_whole_at_any_chunking(name, size):
    data = (WIRE / name).read_bytes()
    whole = _split_all(data, len(data))
    assert b"".join(whole) == data  # nothing lost or changed
    assert _split_all(data, size) == whole
    framing = b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n"
    assert all(e.endswith(framing) for e in whole)
    assert len(whole) == data.count(framing)


def test_event_splitter_holds_an_unfinished_event_and_a_trailing_cr():
    from kimi_intercept.accounting.sse import EventSplitter

    s = EventSplitter()
    assert s.push(b"data: 1\n\ndata: 2\r\n\r") == [b"data: 1\n\n"]
    assert s.push(b"\ndata: 3") == [b"data: 2\r\n\r\n"]
    assert s.flush() == b"data: 3"


# --- the shortcuts for reads of whole ``data:`` events ------------------------------------------

#: Reads the shortcuts must leave to the line scan, or split the same way it does (each case
#: is read after one whole event, as in a stream).
EDGES = [
    [b"data: a", b"data: b\n\n"],  # the end of an unfinished line
    [b"data: a\n", b"data: b\n\n"],  # the second data line of an event
    [b"event: x\n", b"data: b\n\n"],  # the data of an event with a type
    [b"retry: 5\n", b"data: b\n\n"],  # after a line of the same event
    [b"data: a\rb\n\n"],  # a lone CR ends a line
    [b"data: a\r\r", b"data: b\n\n", b"\ndata: c\n\n"],  # a read after one ending in CR
    [b"data: a\n\n\ndata: b\n\n"],  # a blank line more between events
    [b"data: a\n\n\n\ndata: b\n\n"],  # two
    [b"data: a\n\n\n"],  # a third newline at the end of the read
    [b"data: a\ndata: b\n\n"],  # one event of two data lines
    [b"data:a\n\n"],  # no space after the colon
    [b"data: a\n\n", b"event: x\ndata: b\n\n", b"data: c\n\n"],  # an event type
    [b"id: 7\n\n", b"data: a\n\n"],  # the last event id carries over
    [b"data: \xe2\x82\n\n", b"data: \xac\n\n"],  # invalid UTF-8 in separate events
    [b"data: a\r\n\r\n", b"data: b\n\n"],  # CRLF, then LF
    [b"data: a\r", b"\ndata: b\n\n"],  # a CRLF split between reads
    [b"\xef\xbb\xbfdata: a\n\n", b"data: b\n\n"],  # a BOM before the first line
    [b"data: a\n", b"\ndata: b\n\n"],  # a blank line in the next read
]


class _Scanning(SSEParser):
    def _data_events(self, chunk: bytes) -> None:
        return None


def _cases() -> list[list[bytes]]:
    rng = random.Random(11)
    cases = [[b"data: 0\n\n", *edge] for edge in EDGES]
    for f in sorted(WIRE.rglob("*.sse")):
        data = f.read_bytes()
        events = [e for e in data.split(b"\n\n") if e]
        cases.append([e + b"\n\n" for e in events])  # one event per read
        cases.append([b"\n\n".join(events[i : i + 4]) + b"\n\n" for i in range(0, len(events), 4)])
        cuts = sorted(rng.sample(range(1, len(data)), len(data) // 50))
        cases.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=False)])
    return cases


def test_parser_shortcut_gives_the_events_the_line_scan_gives() -> None:
    for chunks in _cases():
        fast, slow = SSEParser(), _Scanning()
        assert [fast.feed(c) for c in chunks] == [slow.feed(c) for c in chunks], chunks
        assert fast.pending_bytes == slow.pending_bytes, chunks


def test_splitter_shortcut_cuts_where_the_scan_cuts() -> None:
    from kimi_intercept.accounting.sse import EventSplitter

    class Scanning(EventSplitter):
        def push(self, chunk: bytes) -> list[bytes]:
            return self._scan(chunk)

    for chunks in _cases():
        fast, slow = EventSplitter(), Scanning()
        assert [fast.push(c) for c in chunks] == [slow.push(c) for c in chunks], chunks
        assert fast.flush() == slow.flush(), chunks


def test_whole_data_events_skip_the_line_scan() -> None:
    class Counting(SSEParser):
        scans = 0

        def _scan(self, chunk: bytes) -> list[SSEEvent]:
            self.scans += 1
            return super()._scan(chunk)

    data = (WIRE / "documented" / "moonshot_stream.sse").read_bytes()
    events = [e + b"\n\n" for e in data.split(b"\n\n") if e]
    parser = Counting()
    got = [ev for e in events for ev in parser.feed(e)]
    assert got == parse_all([data])[0]
    assert parser.scans == 1  # the first read only (a BOM may lead the stream)
