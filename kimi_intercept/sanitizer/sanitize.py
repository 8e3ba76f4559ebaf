"""Sanitizer: mask verbose tool and console output in LLM requests, deterministically.

Pure functions over request bodies (no I/O, no mitmproxy, no asyncio). Everything here is
CPU-bound (token counting above all): call it from a worker thread, never on the proxy's event
loop. Sources: ``shared/notes/providers.md`` §9 (what tool output looks like per agent), §10 (MCP
memory), ``peers.md`` §3 I-J and §4.3 (prefix-cache stability, errors at the end of logs).

What is masked (:func:`sanitize_request`), when its text is above
``SanitizeSettings.threshold_tokens``:

- OpenAI ``role: tool`` (and legacy ``role: function``) message content, a string or each text
  part; Anthropic ``tool_result`` content, a string or each text block (``tool_use_id``,
  ``is_error`` and ``cache_control`` kept as they are); Gemini ``functionResponse.response``
  (each string value inside, the structure kept). Kind ``tool_result``.
- Inside user text: Cline ``[tool for '...'] Result:`` blocks (the body after the header, in the
  same text or in the next text block; kind ``tool_result``); ``<environment_details>``,
  Claude Code ``<system-reminder>`` and Kimi CLI ``<system>`` blocks (only what is between the
  tags; kinds ``environment_details``, ``system_reminder``, ``system``).

Never touched: system prompts, assistant turns, tool definitions, user text outside those
wrappers, outputs of ``skip_tools`` (matched on the whole name, or on the part after the last
``__`` of an MCP name such as ``mcp__filesystem__read_file``), Claude Code reminders that carry
instructions (``# claudeMd``, ``# MCP Server Instructions``) and kinds in ``skip_kinds``.

How a text is masked, and the marker: :mod:`.mask`. Where texts are found: :mod:`.walk`.

Deterministic and prefix-stable: a text's masked form depends only on the text and the
settings, never on its position, neighbours or later turns; ids and tool-call pairing are never
changed. :class:`MaskCache` memoises masks and token counts by content, so the next turn of a
conversation only pays for what is new.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

from kimi_intercept.accounting import tokens
from kimi_intercept.sanitizer.mask import (  # noqa: F401 (re-exported: the sanitizer's public API)
    _JSON_OBJECT_RE,
    _MEMORY_TOOL_RE,
    _MISSING,
    DEFAULT_SKIP_TOOLS,
    END_OF_ERRORS,
    MARKER_RE,
    MaskCache,
    MaskedItem,
    SanitizeResult,
    SanitizeSettings,
    _mask,
    content_id,
    mask_text,
)
from kimi_intercept.sanitizer.walk import (  # noqa: F401
    messages_key,
    note_calls,
    rewrite_message,
    rewrite_spans,
)

# --- sanitizing ------------------------------------------------------------------------------


def _is_memory(tool: str | None, server: str | None, text: str, cache: MaskCache | None) -> bool:
    if tool:
        name = tool.lower()
        if name.startswith("mcp__"):
            srv = name.split("__")[1] if name.count("__") >= 2 else ""
            if "memory" in srv or "mem0" in srv:
                return True
        if _MEMORY_TOOL_RE.search(name):
            return True
    if server and ("memory" in server.lower() or "mem0" in server.lower()):
        return True
    if not _JSON_OBJECT_RE.match(text) or '"entities"' not in text or '"relations"' not in text:
        return False
    key = ("memory-shape", text)
    found = cache.get(key) if cache is not None else _MISSING
    if found is _MISSING:
        found = _memory_shape(text)
        if cache is not None:
            cache.put(key, found, sys.getsizeof(text))
    return bool(found)


def _memory_shape(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if not isinstance(value, dict):
        return False
    entities, relations = value.get("entities"), value.get("relations")
    return (
        isinstance(entities, list)
        and isinstance(relations, list)
        and all(isinstance(e, dict) for e in entities)
        and any("entityType" in e or "observations" in e for e in entities)
    )


class _Sanitizer:
    def __init__(self, settings: SanitizeSettings, cache: MaskCache | None) -> None:
        self.settings = settings
        self.cache = cache
        self.items: list[MaskedItem] = []
        self.memory: dict[str, int] = {}

    def _count(self, text: str) -> int:
        return self.cache.count(text) if self.cache is not None else tokens.count_text(text)

    def tool(self, text: str, tool: str | None, kind: str, server: str | None) -> str | None:
        if _is_memory(tool, server, text, self.cache):
            key = tool or "unknown"
            self.memory[key] = self.memory.get(key, 0) + self._count(text)
        s = self.settings
        if not s.enabled or kind in s.skip_kinds or skipped(tool, s):
            return None
        m = _mask(text, s, self.cache)
        if m is None:
            return None
        item = MaskedItem(
            m.id, tool, kind, text, m.masked, m.tokens_after, m.lines, m.bytes, self.cache
        )
        self.items.append(item)
        return m.masked

    def text(self, text: str) -> str | None:
        if "Result:" not in text and "<environment_details>" not in text and "<system" not in text:
            return None
        if self.cache is None:
            return rewrite_spans(text, self)
        key = ("text", self.settings, text)
        hit = self.cache.get(key)
        if hit is _MISSING:
            inner = _Sanitizer(self.settings, self.cache)
            new = rewrite_spans(text, inner)
            hit = (new, tuple(inner.items), tuple(inner.memory.items()))
            size = sys.getsizeof(text) + (sys.getsizeof(new) if new else 0)
            self.cache.put(key, hit, size)
        new, items, memory = hit
        self.items += items
        for tool, n in memory:
            self.memory[tool] = self.memory.get(tool, 0) + n
        return new  # type: ignore[no-any-return]


def skipped(tool: str | None, settings: SanitizeSettings) -> bool:
    """Whether ``tool``'s output must stay exact (whole name, or the part after an MCP ``__``)."""
    if not tool:
        return False
    return tool in settings.skip_tools or tool.rpartition("__")[2] in settings.skip_tools


def sanitize_request(
    dialect: str,
    body: dict[str, Any],
    settings: SanitizeSettings,
    cache: MaskCache | None = None,
) -> SanitizeResult:
    """Mask the tool/console output of a native request body of ``dialect`` (``openai``,
    ``anthropic``, ``gemini``). Returns a new body (the input is never mutated; unchanged
    messages are shared), the masked items in request order and the MCP memory accounting
    (done even when the sanitizer is disabled). Raises ``ValueError`` for an unknown dialect."""
    key = messages_key(dialect)
    run = _Sanitizer(settings, cache)
    out = dict(body)
    messages = body.get(key)
    if isinstance(messages, list):
        names: dict[str, str] = {}
        new_messages = messages
        for i, msg in enumerate(messages):
            note_calls(dialect, msg, names)
            new = rewrite_message(dialect, msg, names, run)
            if new is not msg:
                new_messages = list(messages) if new_messages is messages else new_messages
                new_messages[i] = new
        out[key] = new_messages
    items = tuple(run.items)
    return SanitizeResult(
        body=out,
        items=items,
        tokens_after=sum(i.tokens_after for i in items),
        memory_tokens=sum(run.memory.values()),
        memory_by_tool=run.memory,
    )


# --- counting a whole prompt with the cache --------------------------------------------------


def count_prompt_tokens(body: dict[str, Any], cache: MaskCache) -> int:
    """:func:`~.tokens.estimate_prompt_tokens` of an OpenAI chat body (the same
    number), with every text counted through ``cache``: the next turn of a conversation only
    tokenizes what is new."""
    if not isinstance(body, dict):
        return 0
    total = tokens.REPLY_PRIMING_TOKENS
    messages = body.get("messages")
    for msg in messages if isinstance(messages, list) else ():
        if not isinstance(msg, dict):
            continue
        total += tokens.TOKENS_PER_MESSAGE
        for key, value in msg.items():
            if key == "content":
                total += _content_tokens(value, cache)
            elif key == "tool_calls" and isinstance(value, list):
                for call in value:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict):
                        for k in ("name", "arguments"):
                            if isinstance(fn.get(k), str):
                                total += cache.count(fn[k])
            elif isinstance(value, str) and key in (
                "role",
                "name",
                "tool_call_id",
                "reasoning_content",
            ):
                total += cache.count(value) + (tokens.TOKENS_PER_NAME if key == "name" else 0)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        total += cache.count(json.dumps(tools, ensure_ascii=False, separators=(",", ":")))
    return total


def _content_tokens(content: Any, cache: MaskCache) -> int:
    if isinstance(content, str):
        return cache.count(content)
    total = 0
    for part in content if isinstance(content, list) else ():
        if isinstance(part, str):
            total += cache.count(part)
        elif isinstance(part, dict):
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                total += cache.count(part["text"])
            elif part.get("type") in ("image_url", "input_image"):
                total += tokens.IMAGE_TOKENS
    return total


def leaf_tokens(value: Any, count: Callable[[str], int], skip: Iterable[str] = ()) -> int:
    """Tokens of every string in a JSON value (values of keys in ``skip``, signatures, base64
    ``data`` and ``data:`` URLs ignored): a dialect-neutral estimate for native bodies."""
    ignored = frozenset(skip) | {"data", "signature", "thoughtSignature"}

    def walk(v: Any) -> int:
        if isinstance(v, str):
            return 0 if v.startswith("data:") else count(v)
        if isinstance(v, dict):
            return sum(walk(x) for k, x in v.items() if k not in ignored)
        if isinstance(v, list):
            return sum(walk(x) for x in v)
        return 0

    return walk(value)
