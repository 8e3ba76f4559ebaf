"""Anthropic Messages dialect, native answers: usage, ids, stop reason and text of an answer
a provider gave in Anthropic's own dialect, streamed (:class:`StreamMeter`) or not
(:func:`meter_json`). Pure: bytes and dicts in, meters out.

Sources: response shapes and usage fields https://docs.claude.com/en/api/messages ; stream
events https://platform.claude.com/docs/en/build-with-claude/streaming .
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from kimi_intercept.accounting import wire_json
from kimi_intercept.accounting.usage import (
    MAX_COMPLETION_TEXT_CHARS,
    ChatStreamMeter,
    JsonMeter,
    Usage,
    count_problem,
    is_count,
)
from kimi_intercept.dialects.anthropic_wire import _blocks, _dict, _str

_USAGE_KEYS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
#: ``usage.cache_creation``: the cache writes by TTL (5 minutes is the default).
_CREATION_KEYS = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")


def _count(value: Any) -> int | None:
    return value if is_count(value) else None


def _native_usage(u: dict[str, int | None]) -> Usage | None:
    """Anthropic counts → our columns (OpenAI meaning: prompt includes cached):
    ``prompt = input + cache_read + cache_creation``, ``cached = cache_read``,
    ``cache_write = cache_creation`` of which ``cache_write_1h`` =
    ``cache_creation.ephemeral_1h_input_tokens``, ``completion = output``; reasoning is not
    reported separately."""
    if u.get("input_tokens") is None and u.get("output_tokens") is None:
        return None
    prompt = None if u.get("input_tokens") is None else sum(u.get(k) or 0 for k in _USAGE_KEYS)
    writes = u.get("cache_creation_input_tokens")
    writes_1h = u.get("ephemeral_1h_input_tokens")
    if writes is None and (writes_1h or u.get("ephemeral_5m_input_tokens")):
        writes = (writes_1h or 0) + (u.get("ephemeral_5m_input_tokens") or 0)
    return Usage(
        prompt,
        u.get("output_tokens"),
        u.get("cache_read_input_tokens"),
        None,
        cache_write_tokens=writes,
        cache_write_1h_tokens=writes_1h if writes else None,
    )


def _counts(usage: Any, into: dict[str, int | None]) -> dict[str, int | None]:
    """The counts of one Anthropic ``usage`` object (with its ``cache_creation`` breakdown)
    merged into ``into``: a key the object does not carry keeps its earlier value."""
    usage = _dict(usage)
    for key in (*_USAGE_KEYS, "output_tokens"):
        value = _count(usage.get(key))
        if value is not None:
            into[key] = value
    for key in _CREATION_KEYS:
        value = _count(_dict(usage.get("cache_creation")).get(key))
        if value is not None:
            into[key] = value
    return into


class StreamMeter(ChatStreamMeter):
    """Meters a native Anthropic Messages SSE body, with the attributes of
    :class:`~kimi_intercept.accounting.usage.ChatStreamMeter` (``finish_reason`` = ``stop_reason``,
    ``saw_done`` = ``message_stop`` arrived, ``error`` = the ``event: error`` payload).

    Input and cache counts come from ``message_start.message.usage`` and are replaced by the
    ones ``message_delta.usage`` repeats (current API); output is the last
    ``message_delta.usage.output_tokens`` (cumulative, never summed), or the
    ``message_start`` value if the stream was cut before any ``message_delta``. Usage mapping:
    :func:`_native_usage`. ``completion_text`` collects text, thinking, tool names and tool
    JSON; ``answer_text`` the text alone.
    """

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[str, int | None] = {}

    def _take_usage(self, u: Any) -> None:
        problem = count_problem(u, (*_USAGE_KEYS, "output_tokens"))
        self._problem = getattr(self, "_problem", None) or problem
        self.usage = _native_usage(_counts(u, self._counts))
        if self.usage is not None and self._problem:
            self.usage = dataclasses.replace(self.usage, problem=self._problem)

    def _on_chunk(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "message_start":
            msg = _dict(obj.get("message"))
            self.response_id = self.response_id or _str(msg.get("id")) or None
            self.model = self.model or _str(msg.get("model")) or None
            self._take_usage(msg.get("usage"))
        elif kind == "content_block_start":
            block = _dict(obj.get("content_block"))
            if block.get("type") in ("tool_use", "server_tool_use"):
                self.saw_tool_calls = True
                self._add_text([_str(block.get("name"))])
        elif kind == "content_block_delta":
            delta = _dict(obj.get("delta"))
            if delta.get("type") == "text_delta":
                if self._text_len < MAX_COMPLETION_TEXT_CHARS:
                    self._answer.append(_str(delta.get("text")))
                self._add_text([_str(delta.get("text"))])
            elif delta.get("type") == "thinking_delta":
                self._add_text([_str(delta.get("thinking"))])
            elif delta.get("type") == "input_json_delta":
                self._add_text([_str(delta.get("partial_json"))])
        elif kind == "message_delta":
            reason = _dict(obj.get("delta")).get("stop_reason")
            if isinstance(reason, str):
                self.finish_reason = reason
            self._take_usage(obj.get("usage"))
        elif kind == "message_stop":
            self.saw_done = True
        elif kind == "error":
            self.error = _dict(obj.get("error")) or {"message": str(obj.get("error"))}


def meter_json(body: bytes) -> JsonMeter:
    """Meter a non-streamed Anthropic message (or error) body; never raises."""
    try:
        obj = wire_json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return JsonMeter()
    if not isinstance(obj, dict):
        return JsonMeter()
    if obj.get("type") == "error":
        return JsonMeter(error=_dict(obj.get("error")) or {"message": str(obj.get("error"))})
    text = []
    for block in _blocks(obj.get("content")):
        if block.get("type") in ("tool_use", "server_tool_use"):
            text += [_str(block.get("name")), json.dumps(block.get("input", {}))]
        else:
            text.append(_str(block.get("text")) or _str(block.get("thinking")))
    usage = _native_usage(_counts(obj.get("usage"), {}))
    problem = count_problem(obj.get("usage"), (*_USAGE_KEYS, "output_tokens"))
    if usage is not None and problem:
        usage = dataclasses.replace(usage, problem=problem)
    return JsonMeter(
        usage=usage,
        response_id=_str(obj.get("id")) or None,
        model=_str(obj.get("model")) or None,
        finish_reason=_str(obj.get("stop_reason")) or None,
        completion_text="".join(text)[:MAX_COMPLETION_TEXT_CHARS],
    )
