"""Anthropic Messages dialect: translation to and from OpenAI chat completions, and metering of
native Anthropic answers. Pure: bytes and dicts in, bytes and dicts out.

Sources: request and response shapes https://docs.claude.com/en/api/messages ; stream events
https://platform.claude.com/docs/en/build-with-claude/streaming ; error types
https://docs.claude.com/en/api/errors ; project notes ``providers.md`` §7 (Anthropic), §1.3/§1.5
(the Kimi chunks translated from), ``peers.md`` §3 H (Kimi quirks).

Request content blocks (:func:`to_openai_request`):

=====================  ======================================================================
Anthropic              OpenAI chat completions
=====================  ======================================================================
``system`` (str/list)  first ``system`` message; text blocks joined by ``\\n``
``role: system`` msg   a ``system`` message in place (Claude Code sends one), same joining
``text``               content; text-only turns become one string (blocks joined by a blank
                       line), turns with images a list of ``text``/``image_url`` parts
``image``              ``image_url`` part: base64 source → ``data:`` URL, url source → the URL;
                       other sources (Files API ``file``) dropped
``tool_use``           assistant ``tool_calls`` (arguments = ``json.dumps(input)``)
``tool_result``        a ``role: tool`` message (``tool_call_id``), placed before the rest of
                       the user turn; content flattened to text (blocks joined by ``\\n``),
                       ``is_error`` → prefixed ``"Error: "``; images in it move to the user turn
``thinking``           assistant ``reasoning_content`` (Kimi/DeepSeek field); signature dropped
``redacted_thinking``  dropped (encrypted, meaningless to another model)
``document``           its text (``text`` or ``content`` source), after its ``title``; PDFs
                       (base64/url/file sources) dropped
``search_result``      text: title, source and its text blocks
``tool_reference``     dropped (names a deferred tool; no text, rejected by Kimi)
other blocks           their ``text`` field if a string, else dropped (``server_tool_use``,
                       ``web_search_tool_result``, ``container_upload``, …)
=====================  ======================================================================

``cache_control`` is dropped everywhere (OpenAI-dialect providers cache automatically).

This module owns the request side (:func:`to_openai_request`, :func:`count_tokens_response`)
and is the dialect's public face (the seam of :mod:`.dialects`): it re-exports the answers
(:func:`from_openai_response`, :class:`StreamTranslator`, :func:`error_body`) from
:mod:`.anthropic_stream` and native metering (:class:`StreamMeter`, :func:`meter_json`) from
:mod:`.anthropic_meter`; the small JSON helpers they share are in :mod:`.anthropic_wire`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kimi_intercept.dialects import DialectError
from kimi_intercept.dialects.anthropic_meter import StreamMeter, meter_json
from kimi_intercept.dialects.anthropic_stream import (
    STATUS_TYPES,
    STOP_REASONS,
    StreamTranslator,
    error_body,
    from_openai_response,
)
from kimi_intercept.dialects.anthropic_wire import _blocks, _dict, _str

__all__ = [
    "STATUS_TYPES",
    "STOP_REASONS",
    "StreamMeter",
    "StreamTranslator",
    "count_tokens_response",
    "error_body",
    "from_openai_response",
    "meter_json",
    "to_openai_request",
]

logger = logging.getLogger(__name__)

_THINKING = {"enabled": "enabled", "adaptive": "enabled", "disabled": "disabled"}
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


def _block_text(block: dict[str, Any]) -> str | None:
    """The text a content block carries (see the module table), ``None`` if it has none."""
    kind = block.get("type")
    if kind == "tool_reference":
        return None
    if kind == "document":
        source = _dict(block.get("source"))
        if source.get("type") == "text":
            body = _str(source.get("data"))
        elif source.get("type") == "content":
            body = _flatten(source.get("content"))
        else:
            return None
        return "\n\n".join(t for t in (_str(block.get("title")), body) if t)
    if kind == "search_result":
        parts = (
            _str(block.get("title")),
            _str(block.get("source")),
            _flatten(block.get("content")),
        )
        return "\n".join(p for p in parts if p)
    return block["text"] if isinstance(block.get("text"), str) else None


def _flatten(content: Any) -> str:
    texts = (_block_text(b) for b in _blocks(content))
    return "\n".join(t for t in texts if t is not None)


def _image_part(block: dict[str, Any]) -> dict[str, Any] | None:
    source = _dict(block.get("source"))
    if source.get("type") == "base64":
        url = f"data:{_str(source.get('media_type'))};base64,{_str(source.get('data'))}"
    elif source.get("type") == "url":
        url = _str(source.get("url"))
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _user_turn(content: Any) -> list[dict[str, Any]]:
    """A user turn: its tool results as ``tool`` messages, then the rest as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in _blocks(content):
        if block.get("type") == "tool_result":
            inner = _blocks(block.get("content"))
            text = _flatten(inner)
            if block.get("is_error") is True:
                text = f"Error: {text}"
            call_id = _str(block.get("tool_use_id"))
            out.append({"role": "tool", "tool_call_id": call_id, "content": text})
            parts += [p for b in inner if b.get("type") == "image" and (p := _image_part(b))]
        elif block.get("type") == "image":
            part = _image_part(block)
            if part:
                parts.append(part)
        elif (text := _block_text(block)) is not None:
            parts.append({"type": "text", "text": text})
    if parts and all(p["type"] == "text" for p in parts):
        out.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts)})
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _assistant_turn(content: Any) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in _blocks(content):
        kind = block.get("type")
        if kind == "thinking":
            thinking.append(_str(block.get("thinking")))
        elif kind == "tool_use":
            args = json.dumps(block.get("input", {}), ensure_ascii=False)
            fn = {"name": _str(block.get("name")), "arguments": args}
            calls.append({"id": _str(block.get("id")), "type": "function", "function": fn})
        elif kind != "redacted_thinking" and (text := _block_text(block)) is not None:
            texts.append(text)
    msg: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts)}
    if thinking:
        msg["reasoning_content"] = "".join(thinking)
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tools(tools: Any) -> list[dict[str, Any]]:
    """Client tools as functions. Server tools (``web_search``, ``code_execution``, …) have no
    ``input_schema``: Anthropic runs them itself, nobody would run them here, so they are skipped
    rather than offered to a model that would call them in vain."""
    out = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict) or not isinstance(tool.get("input_schema"), dict):
            continue
        fn = {"name": _str(tool.get("name")), "parameters": tool["input_schema"]}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def to_openai_request(body: dict[str, Any], *, model: str | None = None) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat-completions body (blocks: module table).

    Fields: ``max_tokens``, ``temperature``, ``top_p``, ``stream`` copied; ``stop_sequences`` →
    ``stop``; ``metadata.user_id`` → ``user``; ``tools`` → functions (``input_schema`` →
    ``parameters``); ``tool_choice`` auto/any/tool/none → ``auto``/``required``/the named
    function/``none`` and its ``disable_parallel_tool_use`` → ``parallel_tool_calls: false``;
    ``thinking`` enabled/adaptive → Kimi's ``{"type": "enabled"}`` (``budget_tokens`` has no
    equivalent), disabled → ``{"type": "disabled"}``; streaming adds
    ``stream_options.include_usage``. Everything else (``top_k``, ``service_tier``,
    ``container``, ``mcp_servers``, ``context_management``, ``output_config``, ``diagnostics``,
    …) is dropped. Raises :class:`DialectError` for a body without a ``messages`` list, a message
    that is not an object or has an unknown role, or no model at all.
    """
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise DialectError("an Anthropic Messages request needs a 'messages' list")
    model = model or body.get("model")
    if not isinstance(model, str) or not model:
        raise DialectError("the request names no model")
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _flatten(body["system"])})
    for n, msg in enumerate(body["messages"]):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role == "user":
            messages += _user_turn(msg.get("content"))
        elif role == "assistant":
            messages.append(_assistant_turn(msg.get("content")))
        elif role == "system":
            messages.append({"role": "system", "content": _flatten(msg.get("content"))})
        else:
            raise DialectError(f"messages[{n}] has role {role!r}; expected user or assistant")
    out: dict[str, Any] = {"model": model, "messages": messages}
    for key in ("max_tokens", "temperature", "top_p", "stream"):
        if key in body:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    if tools := _tools(body.get("tools")):
        out["tools"] = tools
        choice = _dict(body.get("tool_choice"))
        if choice.get("type") == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif choice.get("type") in _TOOL_CHOICE:
            out["tool_choice"] = _TOOL_CHOICE[choice["type"]]
        if choice.get("disable_parallel_tool_use") is True:
            out["parallel_tool_calls"] = False
    thinking = _THINKING.get(_dict(body.get("thinking")).get("type"))
    if thinking:
        out["thinking"] = {"type": thinking}
    user = _dict(body.get("metadata")).get("user_id")
    if isinstance(user, str) and user:
        out["user"] = user
    if body.get("stream") is True:
        out["stream_options"] = {"include_usage": True}
    return out


def count_tokens_response(input_tokens: int) -> dict[str, int]:
    """The body of ``POST /v1/messages/count_tokens``."""
    return {"input_tokens": input_tokens}
