"""Cache breaks: when a provider's prompt cache stops hitting, find the first position that
changed, say what it was, and whether we (the sanitizer or compression) changed it.

Providers cache a prompt by its prefix, in the order they read it: the model, the tools, then
the messages (the system prompt first). When the cached share of the prompt
(``cached_tokens / prompt_tokens``, as the provider reports it) falls by ``[cache] break_drop``
of the previous request's share while the prompt did not shrink, something before the new turn
changed. :func:`fingerprint` reduces an OpenAI-hub request to digests (per message, per content
block, per tool; the system prompt also with its dates and times blanked), :func:`first_change`
compares two of them, and :class:`CacheBreaks` keeps the last fingerprint of each conversation
(bounded, least recently seen forgotten first) and builds the ``cache_breaks`` row
(:data:`~kimi_intercept.storage.schema.CACHE_BREAK_COLUMNS`).

Two fingerprints are kept per request: the client's own request (before the sanitizer) and
what the provider received. A break whose first sent change is at a position the client did
not change was caused by us (``caused_by_us``): by the sanitizer, a bug, logged as one
``BUG`` warning line; by context compression (which rewrites the history near the context
window, once, by design), one plain warning line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kimi_intercept.config.cache import CacheSettings
from kimi_intercept.dialects.memo import MESSAGES
from kimi_intercept.routing.plan import RoutePlan

log = logging.getLogger(__name__)

#: Dates and times as agents put them in system prompts: 2026-12-01, 2026-12-01T09:48:47,
#: 09:48 / 09:48:47, 12/01/2026, "December 1, 2026", "Tue Dec  1".
TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
    r"|\b\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\b"
    r"|\b\d{1,2}/\d{1,2}/\d{2,4}\b"
    r"|\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.? +\d{1,2}(?:, *\d{4})?\b"
    r"|\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)(?:day|sday|nesday|rsday|urday)?\b"
)

HINTS = {
    "model": "model switch",
    "tools_reordered": "tool list reordered",
    "tools_changed": "tool list changed",
    "timestamp": "timestamp in the system prompt",
    "system": "system prompt edited",
    "tool_result": "an earlier tool result rewritten",
    "tool_call": "an earlier tool call rewritten",
    "removed": "earlier messages removed (history compacted or rewound)",
    "none": "nothing before the new turn changed (the provider's cache expired or was evicted)",
}


@dataclass(frozen=True)
class Message:
    """One hub message: its role, kind (system | text | tool_call | tool_result), the digest of
    the whole message and of each content block."""

    role: str
    kind: str
    digest: bytes
    blocks: tuple[bytes, ...]  # empty for a message of one block
    block_kinds: tuple[str, ...]


@dataclass(frozen=True)
class Fingerprint:
    """Digests of one OpenAI-hub request, in the order a provider's prefix cache reads it."""

    model: str | None
    tools: tuple[bytes, ...]
    messages: tuple[Message, ...]
    system_unstamped: bytes | None  # digest of the system prompt with dates/times blanked


@dataclass(frozen=True)
class Change:
    """The first position where two requests differ (see the ``cache_breaks`` columns)."""

    position: str | None
    hint: str
    kind: str | None = None
    role: str | None = None
    message_index: int | None = None
    block_index: int | None = None


def _digest(value: Any) -> bytes:
    """Digest of a JSON value, blind to ``cache_control`` markers (agents move them) and to key
    order: 8 bytes of Python's hash of its canonical form (no serialization; compared within
    this process only, never stored). Values that are not JSON are serialized and hashed."""
    try:
        return hash(_canonical(value)).to_bytes(8, "little", signed=True)
    except (TypeError, RecursionError):
        text = json.dumps(_strip(value), sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest()


def _canonical(value: Any) -> Any:
    """A hashable form of a JSON value: dict keys sorted, ``cache_control`` left out, scalar
    types kept apart (``1``, ``1.0``, ``true``). Raises ``TypeError`` for other values."""
    t = type(value)
    if t is str:
        return value
    if t is dict:
        items = [(k, _canonical(v)) for k, v in value.items() if k != "cache_control"]
        if not all(type(k) is str for k, _ in items):
            raise TypeError("a key that is not a string")
        return ("d", *sorted(items, key=lambda kv: kv[0]))
    if t is list:
        return ("l", *[_canonical(v) for v in value])
    if t is float:  # repr: -0.0 == 0.0 in Python, not in JSON
        return ("float", repr(value))
    if t in (int, bool, type(None)):
        return (t.__name__, value)
    raise TypeError(f"not a JSON value: {t.__name__}")


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p.get("text", "")
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _message(m: Any) -> Message:
    if not isinstance(m, dict):
        return Message("?", "text", _digest(m), (), ())
    role = sys.intern(str(m.get("role") or "?"))
    content = m.get("content")
    parts = content if isinstance(content, list) else [content] if content else []
    kinds = tuple(
        sys.intern(str(p.get("type", "text"))) if isinstance(p, dict) else "text" for p in parts
    )
    blocks = [_digest(p) for p in parts]
    if m.get("tool_calls"):
        blocks.append(_digest(m["tool_calls"]))
        kinds += ("tool_call",)
    if role in ("system", "developer"):
        kind = "system"
    elif role == "tool":
        kind = "tool_result"
    elif m.get("tool_calls") and not _text(content):
        kind = "tool_call"
    else:
        kind = "text"
    # one block: its digest is the message's (kept once: the memory holds many messages)
    return Message(role, kind, _digest(m), tuple(blocks) if len(blocks) > 1 else (), kinds)


def fingerprint(hub: dict[str, Any]) -> Fingerprint:
    """The :class:`Fingerprint` of an OpenAI-hub request body (``model``, ``tools``,
    ``messages``); anything malformed digests as it is. Each message's and tool's digests are
    remembered by content (:data:`~kimi_intercept.dialects.memo.MESSAGES`): the next turn of a
    conversation digests only its new messages."""
    messages = hub.get("messages") if isinstance(hub.get("messages"), list) else []
    tools = hub.get("tools") if isinstance(hub.get("tools"), list) else []
    unstamped = None
    if (
        messages
        and isinstance(messages[0], dict)
        and messages[0].get("role")
        in (
            "system",
            "developer",
        )
    ):
        unstamped = MESSAGES.memo("unstamped", messages[0].get("content"), _unstamped)
    model = hub.get("model")
    return Fingerprint(
        model=model if isinstance(model, str) else None,
        tools=tuple(MESSAGES.memo("digest", t, _digest) for t in tools),
        messages=tuple(MESSAGES.memo("message", m, _message) for m in messages),
        system_unstamped=unstamped,
    )


def _unstamped(content: Any) -> bytes:
    return _digest(TIMESTAMP.sub("<time>", _text(content)))


def first_change(prev: Fingerprint, now: Fingerprint) -> Change:
    """Where ``now`` first differs from ``prev`` in the part ``prev`` had (the model, the tools,
    then ``prev``'s messages); ``position`` is ``None`` when ``now`` only extends ``prev``."""
    if prev.model != now.model:
        return Change("model", HINTS["model"], kind="model")
    if prev.tools != now.tools:
        i = _first_diff(prev.tools, now.tools)
        same_set = sorted(prev.tools) == sorted(now.tools)
        hint = HINTS["tools_reordered" if same_set else "tools_changed"]
        return Change(f"tools[{i}]", hint, kind="tools", block_index=i)
    for i, old in enumerate(prev.messages):
        if i >= len(now.messages):
            return Change(f"messages[{i}]", HINTS["removed"], kind="removed", message_index=i)
        new = now.messages[i]
        if old.digest == new.digest:
            continue
        j = _first_diff(old.blocks, new.blocks)
        position = f"messages[{i}]" + (f".content[{j}]" if len(new.blocks) > 1 else "")
        kind = new.kind
        if j < len(new.block_kinds) and new.block_kinds[j] in ("tool_result", "tool_call"):
            kind = new.block_kinds[j]
        if kind == "system":
            same = i == 0 and prev.system_unstamped == now.system_unstamped
            hint = HINTS["timestamp" if same else "system"]
        elif kind in ("tool_result", "tool_call"):
            hint = HINTS[kind]
        else:
            hint = f"an earlier {new.role} message edited"
        return Change(position, hint, kind, new.role, i, j if len(new.blocks) > 1 else None)
    return Change(None, HINTS["none"])


def _first_diff(a: tuple[bytes, ...], b: tuple[bytes, ...]) -> int:
    """The first index where ``a`` and ``b`` differ (the shorter one's length if one is a
    prefix of the other)."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


@dataclass
class _Seen:
    request_id: str
    provider: str | None
    model: str | None
    ratio: float
    prompt_tokens: int
    client: Fingerprint | None
    sent: Fingerprint
    compressed: bool
    received: float = 0.0  # the request's RoutePlan.received (epoch seconds)


class CacheBreaks:
    """The bounded per-conversation memory of one relay. Thread-safe (used from workers)."""

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._lock = threading.Lock()

    def prepare(self, plan: RoutePlan, prepare: Callable[[RoutePlan], Any]) -> None:
        """Run ``prepare(plan)`` (the sanitizer and compression), keeping the client's own
        request (hub dialect) aside first when breaks are detected: :meth:`observe`
        fingerprints it after the answer, off the request's path (the sanitizer and the
        targets never change a body in place, they build new ones). Call in a worker thread."""
        if self.settings.detect_breaks and plan.conversation and plan.request_json:
            plan.cache_view = plan.request_json
        prepare(plan)

    def observe(self, plan: RoutePlan, row: dict[str, Any]) -> dict[str, Any] | None:
        """Compare the finished request (its ``requests`` row and what was sent) with the
        previous one of its conversation; the ``cache_breaks`` row on a break, else ``None``.
        Only calls with the provider's own usage count. Never raises. Call in a worker."""
        try:
            return self._observe(plan, row)
        except Exception:
            log.exception("kimi-intercept: cache-break detection failed for %s", row.get("id"))
            return None

    def _observe(self, plan: RoutePlan, row: dict[str, Any]) -> dict[str, Any] | None:
        s = self.settings
        conv, prompt, cached = row.get("conversation_id"), row.get("prompt_tokens"), None
        if not s.detect_breaks or not conv or plan.kind != "reroute" or not plan.request_json:
            return None
        if row.get("usage_source") != "provider" or row.get("outcome") != "ok" or not prompt:
            return None
        cached = row.get("cached_tokens")
        if cached is None:
            return None  # this provider does not report its cache
        ratio = min(cached / prompt, 1.0)
        prepared, sent = plan.prepared, fingerprint(plan.request_json)
        view = plan.cache_view  # the client's own request, when kept (prepare)
        if view is plan.request_json:
            client: Fingerprint | None = sent  # nothing was rebuilt: what was sent is its own
        else:
            client = fingerprint(view) if isinstance(view, dict) else None
        seen = _Seen(
            request_id=row["id"], provider=row.get("provider"), model=row.get("model"),
            ratio=ratio, prompt_tokens=prompt, client=_shared(client, sent), sent=sent,
            compressed=bool(prepared is not None and getattr(prepared, "compression", None)),
            received=getattr(plan, "received", 0.0) or 0.0,
        )  # fmt: skip
        with self._lock:
            prev = self._seen.pop(conv, None)
            if prev is not None and prev.received > seen.received:
                # a later request of this conversation finished first (rows are built after
                # the answers): it stays the one to compare with, and this one is not judged
                self._seen[conv] = prev
                return None
            self._seen[conv] = seen
            while len(self._seen) > s.conversations:
                self._seen.popitem(last=False)
        if (
            prev is None
            or prev.ratio < s.min_previous_ratio
            or prompt < max(s.min_prompt_tokens, prev.prompt_tokens)
            or ratio > prev.ratio * (1 - s.break_drop)
        ):
            return None
        return self._row(prev, seen, row)

    def _row(self, prev: _Seen, now: _Seen, row: dict[str, Any]) -> dict[str, Any]:
        if (prev.provider, prev.model) != (now.provider, now.model):
            change = Change("model", HINTS["model"], kind="model")
        else:
            change = first_change(prev.sent, now.sent)
        changed_by, ours = None, False
        if change.position is not None and prev.client is not None and now.client is not None:
            theirs = first_change(prev.client, now.client)
            if prev.compressed or now.compressed:
                changed_by = "compression" if theirs.position != change.position else None
            elif change.message_index is not None:
                i, j = change.message_index, change.block_index
                if _differs(now.client, now.sent, i, j) or _differs(prev.client, prev.sent, i, j):
                    changed_by = "sanitizer"
            ours = theirs.position is None and change.kind != "model"
            if ours and changed_by is None:
                changed_by = "compression" if prev.compressed or now.compressed else "sanitizer"
        brk = {
            "request_id": row["id"], "conversation_id": row.get("conversation_id"),
            "started_at": row.get("started_at"), "client": row.get("client"),
            "provider": row.get("provider"), "model": row.get("model"),
            "previous_request_id": prev.request_id,
            "previous_cached_ratio": round(prev.ratio, 4), "cached_ratio": round(now.ratio, 4),
            "previous_prompt_tokens": prev.prompt_tokens, "prompt_tokens": now.prompt_tokens,
            "position": change.position, "message_index": change.message_index,
            "block_index": change.block_index, "role": change.role, "kind": change.kind,
            "hint": change.hint, "changed_by": changed_by, "caused_by_us": int(ours),
        }  # fmt: skip
        if ours and changed_by == "sanitizer":
            log.warning(
                "kimi-intercept: BUG: a cache break caused by our sanitizer at %s (conversation "
                "%s, cached %.0f%% -> %.0f%%): the client's own request did not change there — "
                "please report it",
                change.position, str(row.get("conversation_id"))[:8],
                prev.ratio * 100, now.ratio * 100,
            )  # fmt: skip
        elif ours:  # compressing near the context window rewrites the history once, by design
            log.warning(
                "kimi-intercept: cache break at %s after our context compression (conversation "
                "%s, cached %.0f%% -> %.0f%%)",
                change.position, str(row.get("conversation_id"))[:8],
                prev.ratio * 100, now.ratio * 100,
            )  # fmt: skip
        return brk


def _shared(client: Fingerprint | None, sent: Fingerprint) -> Fingerprint | None:
    """``client`` holding ``sent``'s own objects for every message the preparation left as it
    was (most of them), so remembering both costs little more than remembering one."""
    if client is None:
        return None
    same = [
        s if i < len(sent.messages) and (s := sent.messages[i]) == c else c
        for i, c in enumerate(client.messages)
    ]
    return Fingerprint(client.model, client.tools, tuple(same), client.system_unstamped)


def _differs(client: Fingerprint, sent: Fingerprint, i: int, j: int | None) -> bool:
    """Whether what was sent at message ``i`` (block ``j``) is not the client's own."""
    if i >= len(client.messages) or i >= len(sent.messages):
        return True
    a, b = client.messages[i], sent.messages[i]
    if j is None:
        return a.digest != b.digest
    return a.blocks[j : j + 1] != b.blocks[j : j + 1]


def break_text(brk: dict[str, Any]) -> str:
    """The console's words for one ``cache_breaks`` row: ``CACHE BREAK 92%→11% at
    messages[3] (tool_result): an earlier tool result rewritten``, plus ``— ours
    (sanitizer), a bug`` when we caused it."""
    text = f"CACHE BREAK {_pct(brk.get('previous_cached_ratio'))}→{_pct(brk.get('cached_ratio'))}"
    if brk.get("position"):
        text += f" at {brk['position']}"
        if brk.get("kind") and brk["kind"] not in ("model", "tools"):
            text += f" ({brk['kind']})"
    text += f": {brk.get('hint')}"
    if brk.get("caused_by_us"):
        text += f" — ours ({brk.get('changed_by')}), a bug"
    elif brk.get("changed_by"):
        text += f" (our {brk['changed_by']} changed it too)"
    return text


def _pct(v: float | None) -> str:
    return "?" if v is None else f"{v * 100:.0f}%"
