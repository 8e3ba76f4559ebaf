"""Responses API dialect, answers back to the client: OpenAI chat completions as a Responses
event stream (:class:`StreamTranslator`) or one ``response`` object
(:func:`from_openai_response`), and OpenAI error bodies (:func:`error_body`).

Sources: https://platform.openai.com/docs/api-reference/responses-streaming,
https://platform.openai.com/docs/api-reference/responses/object; wire shapes in
``shared/notes/providers.md`` §2.2 and ``tests/wire/captured_openai_responses_*.sse``.

Answers: ``reasoning_content`` → a ``reasoning`` item with one ``summary_text``; ``content`` →
a ``message`` item with one ``output_text`` part; each tool call → a ``function_call`` item
(``call_id`` the provider's call id). Items come in the order the provider started them.
``finish_reason`` ``length`` → status ``incomplete`` (``max_output_tokens``); usage → the
Responses ``usage`` (:func:`.responses_wire.response_usage`). Each finished response's items
are kept for ``previous_response_id`` (:mod:`.responses_store`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kimi_intercept.accounting.sse import SSEParser
from kimi_intercept.accounting.usage import Usage, usage_from_openai
from kimi_intercept.dialects import DialectError, event_object, list_of
from kimi_intercept.dialects.responses_store import expand_input
from kimi_intercept.dialects.responses_wire import (
    _dict,
    call_item,
    error_body,
    finish_status,
    message_item,
    new_id,
    reasoning_item,
    remember,
    request_tools,
    response_object,
    response_usage,
    sse,
    tool_names,
)

__all__ = ["StreamTranslator", "error_body", "from_openai_response"]

logger = logging.getLogger("kimi_intercept.dialects.responses")


def _inputs(request: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The request's expanded input items, or ``None`` when they cannot be known."""
    try:
        return expand_input(_dict(request)) if request is not None else None
    except DialectError:
        return None


class StreamTranslator:
    """OpenAI chat-completions SSE events in, Responses API events out.

    The first upstream chunk opens the response (``response.created``, ``response.in_progress``);
    then each kind of delta opens its item when it first appears (``response.output_item.added``,
    for text also ``response.content_part.added``; for reasoning
    ``response.reasoning_summary_part.added``), streams (``response.output_text.delta``,
    ``response.function_call_arguments.delta``, ``response.reasoning_summary_text.delta``) and
    is closed (``….done`` and ``response.output_item.done``) when another item starts or the
    answer finishes. ``response.completed`` (or ``response.incomplete``) with ``usage`` is sent
    on the provider's ``[DONE]`` (or :meth:`finish`): usage may come after ``finish_reason``,
    and Codex closes the connection as soon as it reads ``response.completed``, so it must not
    arrive before the provider's stream has ended. Every
    event carries ``sequence_number`` from 0. Tool-call deltas without ``index`` (Moonshot) go
    to the call with their ``id``, else the latest call.
    """

    def __init__(
        self,
        model: str | None,
        *,
        request: dict[str, Any] | None = None,
        prompt_tokens: int | None = None,
    ) -> None:
        self.model = model
        self._request = request
        self._inputs = _inputs(request)
        self._names = tool_names(request_tools(request, self._inputs))
        self._parser = SSEParser()
        self._id = new_id("resp")
        self._created = int(time.time())
        self._seq = 0
        self._started = self._done = False
        self._usage: Usage | None = None
        self._reason: str | None = None
        self._output: list[dict[str, Any]] = []  # finished items
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._calls: dict[Any, dict[str, Any]] = {}  # tool-call key → its item
        self._last_key: Any = 0

    def feed(self, raw_event: bytes) -> bytes:
        return b"".join(self._on_data(e.data) for e in self._parser.feed(raw_event))

    def finish(self) -> bytes:
        return self._final()

    def error_event(self, message: str, code: str) -> bytes:
        """An ``error`` event, then ``response.failed`` with the same error; the stream ends."""
        if self._done:
            return b""
        out = self._start()
        self._done = True
        out += self._emit({"type": "error", "code": code, "message": message, "param": None})
        resp = self._response("failed", error={"code": code, "message": message})
        return out + self._emit({"type": "response.failed", "response": resp})

    # -- events -----------------------------------------------------------------------------

    def _emit(self, obj: dict[str, Any]) -> bytes:
        obj["sequence_number"] = self._seq
        self._seq += 1
        return sse(obj)

    def _response(self, status: str, **kw: Any) -> dict[str, Any]:
        return response_object(
            self._id, self._created, self.model, self._request, status=status,
            output=list(self._output), **kw,
        )  # fmt: skip

    def _added(self, item: dict[str, Any]) -> bytes:
        event = {"type": "response.output_item.added", "item": item}
        return self._emit({**event, "output_index": len(self._output)})

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        out = self._emit({"type": "response.created", "response": self._response("in_progress")})
        return out + self._emit(
            {"type": "response.in_progress", "response": self._response("in_progress")}
        )

    def _on_data(self, data: str) -> bytes:
        if self._done:
            return b""
        if data.strip() == "[DONE]":
            return self._final()
        obj = event_object(data)
        if obj is None:
            return b""
        if obj.get("error") is not None:
            err = _dict(obj["error"]) or {"message": str(obj["error"])}
            code = str(err.get("code") or err.get("type") or "upstream_error")
            return self.error_event(str(err.get("message", "upstream error")), code)
        out = self._start()
        if self.model is None and isinstance(obj.get("model"), str):
            self.model = obj["model"]
        for choice in list_of(obj.get("choices")):
            choice = _dict(choice)
            if choice.get("index", 0) != 0:
                continue  # n > 1 has no Responses equivalent: the first choice is the answer
            delta = _dict(choice.get("delta"))
            if isinstance(delta.get("reasoning_content"), str) and delta["reasoning_content"]:
                out += self._delta("reasoning", delta["reasoning_content"])
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self._delta("message", delta["content"])
            for tc in list_of(delta.get("tool_calls")):
                out += self._tool_delta(_dict(tc))
            if isinstance(choice.get("finish_reason"), str):
                self._reason = choice["finish_reason"]
            if isinstance(choice.get("usage"), dict):
                self._usage = usage_from_openai(choice["usage"])
        for holder in (obj, _dict(obj.get("x_groq"))):
            if isinstance(holder.get("usage"), dict):
                self._usage = usage_from_openai(holder["usage"])
        return out

    def _delta(self, kind: str, text: str) -> bytes:
        out = b""
        item = self._open
        if item is None or item["type"] != kind:
            out += self._close()
            item = self._open = {"type": kind, "id": new_id("rs" if kind == "reasoning" else "msg")}
            item["text"] = []
            where = {"item_id": item["id"], "output_index": len(self._output)}
            if kind == "reasoning":
                added = reasoning_item(item["id"], None)
                part = {"type": "summary_text", "text": ""}
                more = {"type": "response.reasoning_summary_part.added", "summary_index": 0}
            else:
                added = message_item(item["id"], "", status="in_progress")
                part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
                more = {"type": "response.content_part.added", "content_index": 0}
            out += self._added(added)
            out += self._emit({**more, **where, "part": part})
        item["text"].append(text)
        where = {"item_id": item["id"], "output_index": len(self._output)}
        if kind == "reasoning":
            event = {"type": "response.reasoning_summary_text.delta", "summary_index": 0}
        else:
            event = {"type": "response.output_text.delta", "content_index": 0, "logprobs": []}
        return out + self._emit({**event, **where, "delta": text})

    def _tool_delta(self, tc: dict[str, Any]) -> bytes:
        key, call_id = tc.get("index"), tc.get("id")
        if not isinstance(key, int):  # a malformed index: the call id, else the last call's
            key = call_id if isinstance(call_id, str) and call_id else self._last_key
        self._last_key = key
        fn = _dict(tc.get("function"))
        out = b""
        item = self._calls.get(key)
        if item is None:
            out += self._close()
            call_id = tc.get("id") if isinstance(tc.get("id"), str) else new_id("call")
            item = self._open = self._calls[key] = {
                "type": "function_call", "id": new_id("fc"), "call_id": call_id,
                "name": fn.get("name") if isinstance(fn.get("name"), str) else "", "text": [],
            }  # fmt: skip
            added = call_item(item["id"], call_id, item["name"], "", "in_progress", self._names)
            item["custom"] = added["type"] == "custom_tool_call"
            out += self._added(added)
        args = fn.get("arguments")
        if isinstance(args, str) and args and item is self._open and item["custom"]:
            item["text"].append(args)  # sent whole when the call ends: the input is inside JSON
        elif isinstance(args, str) and args and item is self._open:
            item["text"].append(args)
            out += self._emit(
                {"type": "response.function_call_arguments.delta", "item_id": item["id"],
                 "output_index": len(self._output), "delta": args}
            )  # fmt: skip
        elif isinstance(args, str) and args:
            logger.warning("a late argument fragment for tool call %r was dropped", item["name"])
        return out

    def _close(self) -> bytes:
        """Finish the item being streamed (its ``….done`` events)."""
        item, self._open = self._open, None
        if item is None:
            return b""
        text = "".join(item["text"])
        where = {"item_id": item["id"], "output_index": len(self._output)}
        if item["type"] == "reasoning":
            done = reasoning_item(item["id"], text)
            part = {"type": "summary_text", "text": text}
            out = self._emit(
                {"type": "response.reasoning_summary_text.done", **where, "summary_index": 0,
                 "text": text}
            )  # fmt: skip
            out += self._emit(
                {"type": "response.reasoning_summary_part.done", **where, "summary_index": 0,
                 "part": part}
            )  # fmt: skip
        elif item["type"] == "message":
            done = message_item(item["id"], text)
            out = self._emit(
                {"type": "response.output_text.done", **where, "content_index": 0, "logprobs": [],
                 "text": text}
            )  # fmt: skip
            out += self._emit(
                {"type": "response.content_part.done", **where, "content_index": 0,
                 "part": done["content"][0]}
            )  # fmt: skip
        else:
            done = call_item(item["id"], item["call_id"], item["name"], text, names=self._names)
            if item["custom"]:
                event = {"type": "response.custom_tool_call_input.done", "input": done["input"]}
            else:
                event = {"type": "response.function_call_arguments.done", "name": done["name"]}
                event["arguments"] = text
            out = self._emit({**event, **where})
        out += self._emit(
            {"type": "response.output_item.done", "item": done, "output_index": len(self._output)}
        )
        self._output.append(done)
        return out

    def _final(self) -> bytes:
        if self._done:
            return b""
        if not self._started:  # nothing arrived: no answer to close
            self._done = True
            return b""
        out = self._close()
        self._done = True
        status, incomplete = finish_status(self._reason)
        resp = self._response(status, usage=response_usage(self._usage), incomplete=incomplete)
        remember(self._id, self._inputs, self._output, self._request)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._emit({"type": kind, "response": resp})


def from_openai_response(
    body: dict[str, Any], *, request: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A non-streamed chat completion as a ``response`` object (same mapping as
    :class:`StreamTranslator`; ``model`` is the upstream's); kept for
    ``previous_response_id``. An ``{"error": …}`` body becomes :func:`error_body` (500);
    never raises."""
    body = _dict(body)
    if body.get("error") is not None:
        err = _dict(body["error"]) or {"message": str(body["error"])}
        code = str(err.get("code") or err.get("type") or "upstream_error")
        return error_body(500, str(err.get("message", "upstream error")), code)
    choices = list_of(body.get("choices"))
    choice = _dict(choices[0]) if choices else {}
    msg = _dict(choice.get("message"))
    output: list[dict[str, Any]] = []
    names = tool_names(request_tools(request, _inputs(request)))
    if isinstance(msg.get("reasoning_content"), str) and msg["reasoning_content"]:
        output.append(reasoning_item(new_id("rs"), msg["reasoning_content"]))
    if isinstance(msg.get("content"), str) and msg["content"]:
        output.append(message_item(new_id("msg"), msg["content"]))
    for call in map(_dict, list_of(msg.get("tool_calls"))):
        fn = _dict(call.get("function"))
        call_id = call.get("id") if isinstance(call.get("id"), str) else new_id("call")
        name = fn.get("name") if isinstance(fn.get("name"), str) else ""
        args = fn.get("arguments") if isinstance(fn.get("arguments"), str) else ""
        output.append(call_item(new_id("fc"), call_id, name, args, names=names))
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else choice.get("usage")
    status, incomplete = finish_status(choice.get("finish_reason"))
    response_id = new_id("resp")
    model = body.get("model") if isinstance(body.get("model"), str) else None
    created = body["created"] if isinstance(body.get("created"), int) else int(time.time())
    out = response_object(
        response_id, created, model, request, status=status,
        output=output, incomplete=incomplete,
        usage=response_usage(usage_from_openai(usage) if isinstance(usage, dict) else None),
    )  # fmt: skip
    remember(response_id, _inputs(request), output, request)
    return out
