"""Per-message memos keyed by content: what the big-prompt path computes once per message.

Coding agents resend the whole conversation on every turn, and each turn is a fresh
``json.loads`` (new objects, same content). Work done per message — its JSON text for the
upstream body, its digests for cache-break detection, its hash for the sanitizer's savings —
is kept in a bounded :class:`ContentMemo` under the message's :func:`content_key`, so the next
turn pays for the new messages only (plus one walk of each message to build its key: about
3 µs a message, and hashing each string once, ~1 ms per MB).

:func:`content_key` is exact: two values get equal keys only when they are the same JSON (same
key order, same types: ``1``, ``1.0`` and ``true`` differ), and dict lookups compare keys after
the hash, so a hit never returns another message's result.

:func:`body_bytes` is :func:`~kimi_intercept.dialects.json_bytes` of a request body (the same
bytes) with each message's JSON text taken from a memo: the unchanged history is never
re-serialized.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from kimi_intercept.dialects import json_bytes

T = TypeVar("T")
_MISSING = object()
_SCALARS = (int, float, bool, type(None))


def content_key(value: Any) -> Any:
    """A hashable value equal for equal JSON values only (key order and scalar types count).

    Strings stand for themselves (their hash is computed once and cached by Python); dicts,
    lists and other scalars become tagged tuples. Raises ``TypeError`` for values that are not
    JSON (sets, objects) — callers then skip the memo."""
    t = type(value)
    if t is str:
        return value
    if t is dict:
        return ("d", *[(k, v if type(v) is str else content_key(v)) for k, v in value.items()])
    if t is list:
        return ("l", *[v if type(v) is str else content_key(v) for v in value])
    if t is float:  # repr: -0.0 == 0.0 in Python, not in JSON
        return ("float", repr(value))
    if t in _SCALARS:
        return (t.__name__, value)
    raise TypeError(f"not a JSON value: {t.__name__}")


class ContentMemo:
    """A bounded, thread-safe LRU map from content keys to results. Bounded by ``max_entries``
    and ``max_bytes`` (the sizes the callers give, meant to cover the key's strings and the
    result); the least recently used entries go first."""

    def __init__(self, max_entries: int = 50_000, max_bytes: int = 64 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._bytes = 0
        self._data: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def bytes(self) -> int:
        """The sum of the sizes of the entries held (bytes, as given to :meth:`put`)."""
        return self._bytes

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return default
            self._data.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        """Remember ``value`` under ``key``; ``size`` in bytes counts against ``max_bytes`` (an
        entry larger than ``max_bytes`` is not kept)."""
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._data[key] = (value, size)
            self._bytes += size
            while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, gone) = self._data.popitem(last=False)
                self._bytes -= gone

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def memo(
        self,
        tag: str,
        value: Any,
        compute: Callable[[Any], T],
        size: Callable[[T], int] | None = None,
    ) -> T:
        """``compute(value)``, remembered under ``(tag, content_key(value))``. Its size in bytes
        is ``size(result)`` when given (it must cover the key's strings too), else the key's
        strings (:func:`text_size`) plus 200. Values that are not JSON are computed every
        time."""
        try:
            key = (tag, content_key(value))
        except (TypeError, RecursionError):
            return compute(value)
        found = self.get(key, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[no-any-return]
        result = compute(value)
        self.put(key, result, size(result) if size is not None else text_size(value) + 200)
        return result


def text_size(value: Any) -> int:
    """Bytes of the strings in a JSON value (``sys.getsizeof`` of each), an estimate of what a
    content key holds alive."""
    t = type(value)
    if t is str:
        return sys.getsizeof(value)
    if t is dict:
        return sum(sys.getsizeof(k) + text_size(v) for k, v in value.items())
    if t is list:
        return sum(text_size(v) for v in value)
    return 32


#: Per-message results of one proxy process: JSON texts (UTF-8) for upstream bodies (tag
#: ``"json"``), cache-break digests, the sanitizer's message hashes. Bounded: 64 MB of keys and
#: results.
MESSAGES = ContentMemo(max_entries=60_000, max_bytes=64 << 20)


#: Bodies with fewer messages than this are serialized whole (a few µs; the memo costs more).
MEMO_FROM_MESSAGES = 8
_ENCODER = json.JSONEncoder(ensure_ascii=False)  # what json.dumps(v, ensure_ascii=False) uses


def _utf8(value: Any) -> bytes:
    """``value``'s JSON text in UTF-8; ``UnicodeEncodeError`` for a lone surrogate."""
    return _ENCODER.encode(value).encode("utf-8")


def body_bytes(
    body: Any, memo: ContentMemo | None = None, seen: dict[int, tuple[Any, bytes]] | None = None
) -> bytes:
    """``json_bytes(body)`` — the same bytes — with the JSON text of each item of
    ``body["messages"]`` (or ``body["contents"]``) taken from ``memo`` (default
    :data:`MESSAGES`) when the same message was serialized before. ``seen`` (optional, by
    object id) shares texts between bodies built together from the same message objects, which
    must not change meanwhile. Raises what ``json.dumps`` raises for values that are not JSON.

    The pieces are kept and joined as UTF-8 bytes: one copy of the body, where joining
    texts, framing them and encoding the whole took three (a 700 KB body from the memo in
    ~1.05 against ~1.5 ms, ``benchmarks/big_profile.py``'s conversation)."""
    memo = MESSAGES if memo is None else memo
    if type(body) is not dict or not all(type(k) is str for k in body):
        return json_bytes(body)
    history = body.get("messages", body.get("contents"))
    if type(history) is not list or len(history) < MEMO_FROM_MESSAGES:
        return json_bytes(body)  # a short conversation: serialized whole is cheaper
    parts: list[bytes] = [b"{"]
    try:
        for k, v in body.items():
            if len(parts) > 1:
                parts.append(b", ")
            parts.append(_utf8(k) + b": ")
            if k in ("messages", "contents") and type(v) is list:
                parts.append(b"[")
                for i, m in enumerate(v):
                    if i:
                        parts.append(b", ")
                    parts.append(_fragment(m, memo, seen))
                parts.append(b"]")
            else:
                parts.append(_utf8(v))
    except UnicodeEncodeError:  # a lone surrogate: json_bytes writes it escaped
        return json_bytes(body)
    parts.append(b"}")
    return b"".join(parts)


def _fragment(m: Any, memo: ContentMemo, seen: dict[int, tuple[Any, bytes]] | None) -> bytes:
    if seen is not None and (hit := seen.get(id(m))) is not None and hit[0] is m:
        return hit[1]
    text = memo.memo("json", m, _utf8, _twice) if type(m) is dict else _utf8(m)
    if seen is not None:
        seen[id(m)] = (m, text)
    return text


def _twice(text: bytes) -> int:
    """The size of a message's JSON text and of its key's strings (about as long)."""
    return 2 * sys.getsizeof(text)
