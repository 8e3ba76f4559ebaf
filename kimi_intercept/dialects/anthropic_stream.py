"""Anthropic Messages dialect, answers back to the client: a non-streamed OpenAI chat
completion as an Anthropic message (:func:`from_openai_response`), an OpenAI chat SSE stream as
Anthropic stream events (:class:`StreamTranslator`), and Anthropic error bodies
(:func:`error_body`, the in-band ``error`` event). Pure: bytes and dicts in, bytes and dicts out.

Sources: response shapes https://docs.claude.com/en/api/messages ; stream events
https://platform.claude.com/docs/en/build-with-claude/streaming ; error types
https://docs.claude.com/en/api/errors ; project notes ``providers.md`` §7 (Anthropic), §1.3/§1.5
(the Kimi chunks translated from), ``peers.md`` §3 H (Kimi quirks).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from kimi_intercept.accounting.sse import SSEParser
from kimi_intercept.accounting.usage import Usage, usage_from_openai
from kimi_intercept.dialects import event_object, json_bytes, list_of
from kimi_intercept.dialects.anthropic_wire import _dict, _str

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
_TOO_LONG = "prompt is too long"  # Claude Code compacts the conversation on this wording


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


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    payload = json_bytes(data, (",", ":"))
    return f"event: {kind}\ndata: ".encode() + payload + b"\n\n"


def _tool_input(arguments: str) -> tuple[dict[str, Any], bool]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}, False
    return (value, True) if isinstance(value, dict) else ({}, False)


def from_openai_response(
    body: dict[str, Any], *, request: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A non-streamed chat.completion as an Anthropic message (first choice): a ``thinking``
    block from ``reasoning_content`` (``signature: ""``), a ``text`` block, ``tool_use`` blocks.
    Tool arguments that are not a JSON object give ``input: {}`` and the raw string under the
    block's ``raw_arguments`` key. An ``{"error": …}`` body becomes an Anthropic error body.
    Fields of the wrong type read as missing; never raises."""
    body = _dict(body)
    if isinstance(body.get("error"), dict):
        err = body["error"]
        return _error(_str(err.get("message")), _str(err.get("type")) or _str(err.get("code")))
    choices = [c for c in list_of(body.get("choices")) if isinstance(c, dict)]
    choice = choices[0] if choices else {}
    msg = _dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    if reasoning := _str(msg.get("reasoning_content")) or _str(msg.get("reasoning")):
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if text := _str(msg.get("content")) or _str(msg.get("refusal")):
        content.append({"type": "text", "text": text})
    for call in list_of(msg.get("tool_calls")):
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

    ``message_start`` on the first chunk (id ``msg_<upstream id>``; usage: our estimate of the
    prompt as ``input_tokens``, as Anthropic sends its count there, output 0 — the exact counts
    follow in ``message_delta``); then one block
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

    def __init__(
        self,
        model: str | None = None,
        *,
        request: dict[str, Any] | None = None,
        prompt_tokens: int | None = None,
    ) -> None:
        self._model = model
        self._prompt_tokens = prompt_tokens
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
        choices = [c for c in list_of(obj.get("choices")) if isinstance(c, dict)]
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
        usage = {"input_tokens": self._prompt_tokens or 0, "output_tokens": 0}
        message = _message(_str(obj.get("id")), model, [], None, usage)
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
