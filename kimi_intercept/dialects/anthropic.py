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
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from kimi_intercept.accounting.sse import SSEParser
from kimi_intercept.accounting.usage import (
    MAX_COMPLETION_TEXT_CHARS,
    ChatStreamMeter,
    JsonMeter,
    Usage,
    usage_from_openai,
)
from kimi_intercept.dialects import DialectError, event_object

logger = logging.getLogger(__name__)

#: OpenAI ``finish_reason`` → Anthropic ``stop_reason`` (default ``end_turn``).
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
#: HTTP status → Anthropic ``error.type`` (https://docs.claude.com/en/api/errors).
STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
# Error codes/types of our relay and of OpenAI-dialect providers → Anthropic error.type.
_CODE_TYPES = {
    "context_length_exceeded": "invalid_request_error",
    "content_filter": "invalid_request_error",
    "invalid_authentication_error": "authentication_error",
    "invalid_api_key": "authentication_error",
    "permission_denied_error": "permission_error",
    "not_found": "not_found_error",
    "resource_not_found_error": "not_found_error",
    "model_not_found": "not_found_error",
    "rate_limit_reached_error": "rate_limit_error",
    "rate_limit_exceeded": "rate_limit_error",
    "exceeded_current_quota_error": "rate_limit_error",
    "insufficient_quota": "billing_error",
    "engine_overloaded_error": "overloaded_error",
    "all_providers_failed": "overloaded_error",
}
_USAGE_KEYS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
_TOO_LONG = "prompt is too long"  # Claude Code compacts the conversation on this wording
_THINKING = {"enabled": "enabled", "adaptive": "enabled", "disabled": "disabled"}
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


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


def _usage(u: Usage | None) -> dict[str, int]:
    """OpenAI usage → Anthropic: ``prompt_tokens`` includes cached tokens, Anthropic's
    ``input_tokens`` excludes them (they are ``cache_read_input_tokens``)."""
    if u is None:
        return {"input_tokens": 0, "output_tokens": 0}
    cached = u.cached_tokens or 0
    return {
        "input_tokens": max((u.prompt_tokens or 0) - cached, 0),
        "output_tokens": u.completion_tokens or 0,
        "cache_read_input_tokens": cached,
    }


def _error(message: str, code: str, kind: str | None = None) -> dict[str, Any]:
    """An Anthropic error body. ``kind`` defaults to the type mapped from ``code`` (already an
    Anthropic type, or one of :data:`_CODE_TYPES`, else ``api_error``). Code
    ``context_length_exceeded`` prefixes the message with "prompt is too long: ", the wording
    Claude Code reacts to by compacting the conversation."""
    if kind is None:
        kind = code if code in STATUS_TYPES.values() else _CODE_TYPES.get(code, "api_error")
    if code == "context_length_exceeded" and not message.lower().startswith(_TOO_LONG):
        message = f"{_TOO_LONG}: {message}"
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_body(status: int, message: str, code: str) -> dict[str, Any]:
    """An Anthropic error body, ``error.type`` by HTTP status (``api_error`` if unlisted);
    ``code`` as in :func:`_error`."""
    return _error(message, code, STATUS_TYPES.get(status, "api_error"))


def count_tokens_response(input_tokens: int) -> dict[str, int]:
    """The body of ``POST /v1/messages/count_tokens``."""
    return {"input_tokens": input_tokens}


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {payload}\n\n".encode()


def _tool_input(arguments: str) -> tuple[dict[str, Any], bool]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}, False
    return (value, True) if isinstance(value, dict) else ({}, False)


def from_openai_response(body: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed chat.completion as an Anthropic message (first choice): a ``thinking``
    block from ``reasoning_content`` (``signature: ""``), a ``text`` block, ``tool_use`` blocks.
    Tool arguments that are not a JSON object give ``input: {}`` and the raw string under the
    block's ``raw_arguments`` key. An ``{"error": …}`` body becomes an Anthropic error body."""
    if isinstance(body.get("error"), dict):
        err = body["error"]
        return _error(_str(err.get("message")), _str(err.get("type")) or _str(err.get("code")))
    choices = [c for c in body.get("choices") or [] if isinstance(c, dict)]
    choice = choices[0] if choices else {}
    msg = _dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    if reasoning := _str(msg.get("reasoning_content")) or _str(msg.get("reasoning")):
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if text := _str(msg.get("content")) or _str(msg.get("refusal")):
        content.append({"type": "text", "text": text})
    for call in msg.get("tool_calls") or []:
        call = _dict(call)
        fn = _dict(call.get("function"))
        raw = _str(fn.get("arguments"))
        args, ok = _tool_input(raw)
        call_id = _str(call.get("id")) or _tool_id()
        block = {"type": "tool_use", "id": call_id, "name": _str(fn.get("name")), "input": args}
        if not ok:
            block["raw_arguments"] = raw
        content.append(block)
    stop = STOP_REASONS.get(_str(choice.get("finish_reason")), "end_turn")
    if stop == "end_turn" and any(b["type"] == "tool_use" for b in content):
        stop = "tool_use"
    usage = usage_from_openai(body["usage"]) if isinstance(body.get("usage"), dict) else None
    return _message(_str(body.get("id")), _str(body.get("model")), content, stop, _usage(usage))


def _message(
    upstream_id: str, model: str, content: list[Any], stop: str | None, usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": "msg_" + (upstream_id or uuid.uuid4().hex),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }


def _tool_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


@dataclass(eq=False)
class _Call:
    """One upstream tool call; ``block`` is its content-block index once started."""

    id: str
    name: str
    born: int  # number of the tool-call delta that introduced it
    block: int | None = None
    args: list[str] = field(default_factory=list)  # fragments held while not started


class StreamTranslator:
    """OpenAI chat SSE events in, Anthropic SSE events out, one upstream event at a time.

    ``message_start`` on the first chunk (id ``msg_<upstream id>``, usage 0/0); then one block
    per kind of delta in arrival order (``reasoning_content``/``reasoning`` → ``thinking``,
    ``content``/``refusal`` → ``text``, ``tool_calls`` → ``tool_use`` with ``input_json_delta``),
    each closed before the next opens, so a Kimi tool call before the text is just an earlier
    block. Thinking blocks start with ``signature: ""`` and get no ``signature_delta``: the
    SDKs' accumulators keep the start value and need none. ``finish_reason`` closes the open
    block; ``[DONE]`` (or :meth:`finish`) sends ``message_delta`` with the last usage seen and
    ``message_stop``. Only choice 0 is translated.

    Tool-call keys: ``index`` when present; index-less Moonshot deltas by ``id``, and an
    id-less fragment at position ``i`` of a delta listing ``n`` fragments belongs to the
    ``i``-th of the last ``n`` calls. Calls introduced in the same delta as the streaming one
    (Moonshot starts parallel calls together; Groq sends whole calls) are held and sent whole
    when it closes. A fragment for a block already closed (no known provider does this) is sent
    at that block's index, which the SDKs accumulate by index.
    """

    def __init__(self, model: str | None = None) -> None:
        self._model = model
        self._parser = SSEParser()
        self._started = False
        self._ended = False
        self._index = -1  # index of the last started block
        self._open: str | None = None  # "text", "thinking", "tool" or None
        self._calls: dict[tuple[str, Any], _Call] = {}
        self._order: list[_Call] = []
        self._live: _Call | None = None
        self._held: list[_Call] = []
        self._tool_deltas = 0
        self._finish: str | None = None
        self._usage: Usage | None = None

    def feed(self, raw_event: bytes) -> bytes:
        if self._ended:
            return b""
        events = self._parser.feed(raw_event)
        if not events and raw_event.lstrip().startswith(b":"):
            return _sse("ping", {"type": "ping"})  # keep-alive comment
        return b"".join(self._on_data(e.data) for e in events)

    def finish(self) -> bytes:
        self._parser.close()
        return b"" if self._ended else self._stop()

    def error_event(self, message: str, code: str) -> bytes:
        self._ended = True
        return _sse("error", _error(message, code))

    def _on_data(self, data: str) -> bytes:
        if self._ended:
            return b""
        if data.strip() == "[DONE]":
            return self._stop()
        obj = event_object(data)
        if obj is None:
            return b""
        if obj.get("error") is not None:
            err = obj["error"] if isinstance(obj["error"], dict) else {"message": obj["error"]}
            code = _str(err.get("type")) or _str(err.get("code"))
            return self.error_event(_str(err.get("message")) or str(err), code)
        out = [] if self._started else [self._start(obj)]
        choices = [c for c in obj.get("choices") or [] if isinstance(c, dict)]
        choice = next((c for c in choices if c.get("index", 0) == 0), {})
        delta = _dict(choice.get("delta"))
        if reasoning := _str(delta.get("reasoning_content")) or _str(delta.get("reasoning")):
            out.append(self._text("thinking", reasoning))
        if text := _str(delta.get("content")) or _str(delta.get("refusal")):
            out.append(self._text("text", text))
        if isinstance(delta.get("tool_calls"), list):
            out.append(self._tool_calls([_dict(c) for c in delta["tool_calls"]]))
        if isinstance(choice.get("finish_reason"), str):
            self._finish = choice["finish_reason"]
            out.append(self._close())
        for holder in (choice, _dict(obj.get("x_groq")), obj):
            if isinstance(holder.get("usage"), dict):
                self._usage = usage_from_openai(holder["usage"])
        return b"".join(out)

    def _start(self, obj: dict[str, Any]) -> bytes:
        self._started = True
        model = _str(obj.get("model")) or self._model or ""
        message = _message(_str(obj.get("id")), model, [], None, _usage(None))
        return _sse("message_start", {"type": "message_start", "message": message})

    def _begin(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._open = kind
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return out + _sse("content_block_start", start)

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": index, "delta": delta}
        return _sse("content_block_delta", event)

    def _close(self) -> bytes:
        out = b""
        if self._open is not None:
            out = _sse("content_block_stop", {"type": "content_block_stop", "index": self._index})
            self._open = self._live = None
        held, self._held = self._held, []
        for call in held:
            args = call.args
            out += self._begin_call(call)
            out += b"".join(self._delta(self._index, _json_delta(a)) for a in args)
            out += self._close()
        return out

    def _text(self, kind: str, text: str) -> bytes:
        out = b""
        if self._open != kind:
            block = {"type": kind, kind: ""}
            if kind == "thinking":
                block["signature"] = ""
            out = self._begin(kind, block)
        key = "thinking_delta" if kind == "thinking" else "text_delta"
        return out + self._delta(self._index, {"type": key, kind: text})

    def _begin_call(self, call: _Call) -> bytes:
        block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        out = self._begin("tool", block)
        call.block, call.args, self._live = self._index, [], call
        return out

    def _tool_calls(self, calls: list[dict[str, Any]]) -> bytes:
        self._tool_deltas += 1
        out = []
        for i, raw in enumerate(calls):
            call = self._find(raw, i, len(calls))
            fragment = _str(_dict(raw.get("function")).get("arguments"))
            if call.block is None and call not in self._held:
                if self._live is not None and self._live.born == self._tool_deltas:
                    self._held.append(call)
                else:
                    out.append(self._begin_call(call))
            if not fragment:
                continue
            if call.block is None:
                call.args.append(fragment)
            else:
                out.append(self._delta(call.block, _json_delta(fragment)))
        return b"".join(out)

    def _find(self, raw: dict[str, Any], position: int, count: int) -> _Call:
        index, call_id = raw.get("index"), _str(raw.get("id"))
        if isinstance(index, int) and not isinstance(index, bool):
            key: tuple[str, Any] = ("index", index)
        elif call_id:
            key = ("id", call_id)
        elif len(self._order) >= count:
            return self._order[len(self._order) - count + position]
        else:
            key = ("new", len(self._order))
        if key not in self._calls:
            name = _str(_dict(raw.get("function")).get("name"))
            call = _Call(id=call_id or _tool_id(), name=name, born=self._tool_deltas)
            self._calls[key] = call
            self._order.append(call)
        return self._calls[key]

    def _stop(self) -> bytes:
        out = [] if self._started else [self._start({})]
        out.append(self._close())
        stop = STOP_REASONS.get(self._finish or "", "end_turn")
        if stop == "end_turn" and self._order:
            stop = "tool_use"
        usage = _usage(self._usage) if self._usage else {"output_tokens": 0}
        delta = {"stop_reason": stop, "stop_sequence": None}
        out.append(_sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(_sse("message_stop", {"type": "message_stop"}))
        self._ended = True
        return b"".join(out)


def _json_delta(fragment: str) -> dict[str, str]:
    return {"type": "input_json_delta", "partial_json": fragment}


def _native_usage(u: dict[str, int | None]) -> Usage | None:
    """Anthropic counts → our columns (OpenAI meaning: prompt includes cached):
    ``prompt = input + cache_read + cache_creation``, ``cached = cache_read``,
    ``completion = output``; reasoning is not reported separately."""
    if u.get("input_tokens") is None and u.get("output_tokens") is None:
        return None
    prompt = None if u.get("input_tokens") is None else sum(u.get(k) or 0 for k in _USAGE_KEYS)
    return Usage(prompt, u.get("output_tokens"), u.get("cache_read_input_tokens"), None)


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
        for key in (*_USAGE_KEYS, "output_tokens"):
            value = _count(_dict(u).get(key))
            if value is not None:
                self._counts[key] = value
        self.usage = _native_usage(self._counts)

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
        obj = json.loads(body)
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
    counts = {k: _count(_dict(obj.get("usage")).get(k)) for k in (*_USAGE_KEYS, "output_tokens")}
    return JsonMeter(
        usage=_native_usage(counts),
        response_id=_str(obj.get("id")) or None,
        model=_str(obj.get("model")) or None,
        finish_reason=_str(obj.get("stop_reason")) or None,
        completion_text="".join(text)[:MAX_COMPLETION_TEXT_CHARS],
    )
