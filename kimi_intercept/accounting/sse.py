"""Incremental Server-Sent Events parser over raw response-body chunks.

Follows the WHATWG HTML "Server-sent events" parsing rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- lines end with ``\\r\\n``, ``\\n`` or ``\\r`` (Gemini frames events with ``\\r\\n\\r\\n``, the
  OpenAI-dialect providers with ``\\n\\n``; see ``tests/wire/``);
- a line starting with ``:`` is a comment (``: keep-alive`` from DeepSeek) and is ignored;
- ``field:value`` with one optional space after the colon; a line without a colon is a field
  with an empty value; fields ``event``, ``data``, ``id`` are used, ``retry`` and unknown fields
  are ignored;
- a blank line dispatches the event: several ``data`` lines are joined with ``\\n``; an event
  with no ``data`` field is not dispatched; ``event`` defaults to ``"message"``;
- a U+FEFF byte-order mark at the very start of the stream is dropped;
- at end of stream an unterminated event is **discarded** (not dispatched). How many bytes
  were left over is kept in :attr:`SSEParser.pending_bytes`, so a caller can tell a stream
  that was cut off mid-event from one that ended cleanly.

Bytes are buffered and only complete lines are decoded (UTF-8, ``errors="replace"``), so a
multi-byte character split across chunks comes out intact and non-UTF-8 input never raises.
Only the unfinished line is buffered, as a list of pieces; each input byte is scanned once.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = "\ufeff"


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched SSE event.

    ``event`` is the event type (``"message"`` when the stream sent no ``event:`` field);
    ``data`` is the ``data:`` lines joined by ``"\\n"``; ``id`` is the stream's last event ID
    at dispatch time (per the spec it carries over to later events), ``None`` if never set.
    """

    event: str
    data: str
    id: str | None = None


class SSEParser:
    """Feed raw body chunks, get back the events they complete.

    >>> p = SSEParser()
    >>> p.feed(b"data: {\\"a\\"")
    []
    >>> p.feed(b": 1}\\n\\n")
    [SSEEvent(event='message', data='{"a": 1}', id=None)]
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # pieces of the current, unterminated line
        self._partial_len = 0  # bytes in _parts
        self._event_bytes = 0  # bytes of complete lines since the last blank line
        self._skip_lf = False  # previous chunk ended in "\r": a leading "\n" completes CRLF
        self._at_start = True  # BOM check pending
        self._data: list[str] = []
        self._has_data = False
        self._event_type = ""
        self._last_id: str | None = None
        self.closed = False

    @property
    def pending_bytes(self) -> int:
        """Bytes received since the last event boundary that were not dispatched.

        0 after a cleanly terminated stream; > 0 after :meth:`close` means the stream ended
        in the middle of an event (that event was discarded).
        """
        return self._event_bytes + self._partial_len

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk`` (any size, any boundary) and return the events it completed."""
        if self.closed:
            logger.debug("SSEParser.feed() after close(); %d bytes ignored", len(chunk))
            return []
        if not chunk:
            return []
        if (  # between events, a read of whole ``data: …`` events: no line scan needed
            not self._parts
            and not self._event_bytes  # (no line of an unfinished event: no data, no type)
            and not self._at_start
            and chunk.startswith(b"data: ")
            and chunk.endswith(b"\n\n")
            and b"\r" not in chunk
        ):
            events = self._data_events(chunk)
            if events is not None:
                return events
        return self._scan(chunk)

    def _data_events(self, chunk: bytes) -> list[SSEEvent] | None:
        """The events of ``chunk`` if each is one ``data: …`` line and its blank line (what
        :meth:`_scan` would dispatch, without its line-by-line pass), else ``None``."""
        lines = chunk[:-2].split(b"\n\n")
        for line in lines:
            if line[:6] != b"data: " or b"\n" in line:
                return None
        last_id = self._last_id
        return [SSEEvent("message", line[6:].decode("utf-8", "replace"), last_id) for line in lines]

    def _scan(self, chunk: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        pos = 0
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 0x0A:  # second half of a CRLF split across chunks: it belongs to
                pos = 1  # the line already counted (and maybe dispatched), so it is not pending
        for m in _LINE_END.finditer(chunk, pos):
            start, end = m.span()
            piece = chunk[pos:start]
            if self._parts:
                self._parts.append(piece)
                raw = b"".join(self._parts)
                self._parts = []
                self._partial_len = 0
            else:
                raw = piece
            line_len = len(raw) + (end - start)
            pos = end
            if end == len(chunk) and chunk[start] == 0x0D and end - start == 1:
                self._skip_lf = True
            event = self._line(raw.decode("utf-8", errors="replace"), line_len)
            if event is not None:
                events.append(event)
        if pos < len(chunk):
            rest = chunk[pos:]
            self._parts.append(rest)
            self._partial_len += len(rest)
        return events

    def close(self) -> list[SSEEvent]:
        """Mark end of stream. Per the spec an unterminated event is discarded, so this
        returns ``[]``; check :attr:`pending_bytes` to see whether anything was cut off."""
        self.closed = True
        if self.pending_bytes:
            logger.debug("SSE stream ended mid-event; %d bytes discarded", self.pending_bytes)
        return []

    def _line(self, line: str, line_len: int) -> SSEEvent | None:
        if self._at_start:
            self._at_start = False
            if line.startswith(_BOM):
                line = line[1:]
        if not line:
            self._event_bytes = 0
            return self._dispatch()
        self._event_bytes += line_len
        if line[0] == ":":
            return None
        field, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._has_data = True
        elif field == "event":
            self._event_type = value
        elif field == "id":
            if "\x00" not in value:
                self._last_id = value
        # "retry" and unknown fields are ignored.
        return None

    def _dispatch(self) -> SSEEvent | None:
        event_type = self._event_type or "message"
        self._event_type = ""
        if not self._has_data:
            return None
        data = "\n".join(self._data)
        self._data = []
        self._has_data = False
        return SSEEvent(event=event_type, data=data, id=self._last_id)


# A blank line: a line terminator (\r\n, \n or a lone \r) followed by another one.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")


class EventSplitter:
    """Cuts a byte stream into complete SSE events, bytes untouched.

    ``push(chunk)`` returns the raw bytes of every event completed by ``chunk`` (each with its
    blank-line terminator); the unfinished rest is held. ``flush()`` returns what is left at the
    end of the stream. Used so that the relay forwards whole events only: a client never sees
    half of a malformed event before the in-band error that replaces it. Only the held tail is
    re-scanned (from a few bytes before its end), so each byte is scanned about once.
    """

    def __init__(self) -> None:
        self._buf = b""

    def push(self, chunk: bytes) -> list[bytes]:
        if (  # whole events ending in "\n\n" (not three), no CR: a split finds the same ones
            not self._buf
            and chunk.endswith(b"\n\n")
            and not chunk.endswith(b"\n\n\n")
            and b"\r" not in chunk
        ):
            return [event + b"\n\n" for event in chunk[:-2].split(b"\n\n")]
        return self._scan(chunk)

    def _scan(self, chunk: bytes) -> list[bytes]:
        start = max(len(self._buf) - 3, 0)
        buf = self._buf + chunk
        out: list[bytes] = []
        cut = 0
        for m in _EVENT_END.finditer(buf, start):
            if m.end() == len(buf) and buf.endswith(b"\r"):
                break  # a \r at the very end may be the first half of \r\n: wait for more
            out.append(buf[cut : m.end()])
            cut = m.end()
        self._buf = buf[cut:]
        return out

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest
