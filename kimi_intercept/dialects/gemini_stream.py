"""Gemini dialect, answers back to the client: OpenAI chat completions as Gemini
``GenerateContentResponse`` chunks (:class:`StreamTranslator`, ``streamGenerateContent?alt=sse``)
or one response (:func:`from_openai_response`), and ``google.rpc.Status`` errors
(:func:`error_body`).

Sources: https://ai.google.dev/api/generate-content (response objects),
https://ai.google.dev/gemini-api/docs/function-calling, https://cloud.google.com/apis/design/errors
(``google.rpc.Status``); wire shapes in ``shared/notes/providers.md`` §6 and
``tests/wire/captured_gemini_*.sse`` (events end with ``\\r\\n\\r\\n``; no ``[DONE]``).

Answers: text → ``text`` parts, reasoning → ``thought`` parts, each tool call → one whole
``functionCall`` part; ``finish_reason`` → ``finishReason`` (:data:`_FINISH`); usage →
``usageMetadata`` (:func:`usage_metadata`; back again: :func:`.gemini_meter.usage_from_gemini`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kimi_intercept.accounting.sse import SSEParser
from kimi_intercept.accounting.usage import Usage, usage_from_openai
from kimi_intercept.dialects import event_object, json_bytes, list_of
from kimi_intercept.dialects.gemini_wire import _dict

# Logged under the dialect's name, as before the answers had a module of their own.
logger = logging.getLogger("kimi_intercept.dialects.gemini")

# fmt: off
#: OpenAI ``finish_reason`` → Gemini ``finishReason`` (anything else: ``OTHER``).
_FINISH = {"stop": "STOP", "tool_calls": "STOP", "function_call": "STOP", "length": "MAX_TOKENS",
           "content_filter": "SAFETY"}
#: HTTP status → google.rpc.Code, https://cloud.google.com/apis/design/errors#handling_errors
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
           404: "NOT_FOUND", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
           500: "INTERNAL", 501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
#: kimi-intercept error codes → the HTTP status of an in-stream error event (else 500).
_CODE_STATUS = {"context_length_exceeded": 400, "not_found": 404, "rate_limit_exceeded": 429,
                "stream_interrupted": 503}
# fmt: on


def _sse(obj: dict[str, Any]) -> bytes:
    """One Gemini SSE event: ``data: <json>`` and a CRLF blank line, as in the captures."""
    return b"data: " + json_bytes(obj, (",", ":")) + b"\r\n\r\n"


def _text_parts(msg: dict[str, Any], thoughts: bool = True) -> list[dict[str, Any]]:
    """``reasoning_content`` as a ``thought`` part (only with ``thoughts``: the client asked for
    them), then ``content``, of a delta or message."""
    parts: list[dict[str, Any]] = []
    keys = (("reasoning_content", {"thought": True}),) if thoughts else ()
    for key, extra in (*keys, ("content", {})):
        if isinstance(msg.get(key), str) and msg[key]:
            parts.append({"text": msg[key], **extra})
    return parts


def wants_thoughts(request: dict[str, Any] | None) -> bool:
    """True when a Gemini request asks for thought parts:
    ``generationConfig.thinkingConfig.includeThoughts`` (off by default;
    https://ai.google.dev/gemini-api/docs/thinking#summaries)."""
    config = _dict(_dict(_dict(request).get("generationConfig")).get("thinkingConfig"))
    return config.get("includeThoughts") is True


def usage_metadata(usage: Usage) -> dict[str, int]:
    """OpenAI usage as Gemini ``usageMetadata``: ``promptTokenCount`` = prompt,
    ``candidatesTokenCount`` = completion − reasoning (Gemini counts thoughts apart),
    ``thoughtsTokenCount`` = reasoning, ``totalTokenCount`` = prompt + completion,
    ``cachedContentTokenCount`` = cached; the last two only when the upstream reported them."""
    prompt = usage.prompt_tokens or 0
    completion = usage.completion_tokens or 0
    meta = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": max(completion - (usage.reasoning_tokens or 0), 0),
        "totalTokenCount": prompt + completion,
    }
    if usage.reasoning_tokens is not None:
        meta["thoughtsTokenCount"] = usage.reasoning_tokens
    if usage.cached_tokens is not None:
        meta["cachedContentTokenCount"] = usage.cached_tokens
    return meta


def _call_parts(calls: list[tuple[Any, Any, str]]) -> tuple[list[dict[str, Any]], bool]:
    """``functionCall`` parts for (id, name, arguments JSON text) triples, and whether one had
    arguments that are not a JSON object (Gemini's ``MALFORMED_FUNCTION_CALL``; dropped)."""
    parts: list[dict[str, Any]] = []
    malformed = False
    for call_id, name, arguments in calls:
        try:
            args = json.loads(arguments or "{}")
        except ValueError:
            args = None
        if not isinstance(args, dict):
            logger.warning("tool call %r has arguments that are not a JSON object", name)
            malformed = True
            continue
        fc: dict[str, Any] = {"name": name, "args": args}
        if call_id:
            fc["id"] = call_id
        parts.append({"functionCall": fc})
    return parts, malformed


def _candidate(
    parts: list[dict[str, Any]], reason: Any, malformed: bool, index: int
) -> dict[str, Any]:
    """The last candidate of an answer; an empty text part when there is nothing else, so
    that clients reading ``parts[0]`` do not break."""
    reason = reason if isinstance(reason, str) else None  # a list or object: not a reason
    finish = "MALFORMED_FUNCTION_CALL" if malformed else _FINISH.get(reason or "stop", "OTHER")
    content = {"parts": parts or [{"text": ""}], "role": "model"}
    return {"content": content, "finishReason": finish, "index": index}


class StreamTranslator:
    """OpenAI chat-completions SSE events in, Gemini ``streamGenerateContent?alt=sse`` out.

    Every text delta becomes a chunk ``{"candidates": [{"content": {"parts": [{"text"}],
    "role": "model"}, "index"}], "usageMetadata"?, "modelVersion", "responseId"}`` at once;
    ``reasoning_content`` becomes a ``{"text", "thought": true}`` part when the client's
    ``request`` asked for thoughts (:func:`wants_thoughts`), else it is left out. Gemini sends
    function
    calls whole, so tool-call deltas are accumulated and each call becomes one ``functionCall``
    part ``{name, args (parsed), id}`` in the final chunk.

    The final chunk carries ``finishReason`` and the final ``usageMetadata``. OpenAI sends
    usage *after* ``finish_reason`` (a trailing ``"choices": []`` chunk; Moonshot, DeepSeek and
    Groq also put it on the finish chunk), so the final chunk is held until usage has arrived
    and every choice has finished, or until ``[DONE]`` / :meth:`finish`. Holding costs one
    event, and gives the client one chunk with calls, reason and usage, as Gemini itself does
    (``captured_gemini_function_call_stream.sse``). Before usage is known, chunks carry no
    ``usageMetadata`` (gemini-cli takes ``promptTokenCount`` from every chunk that has one, so
    zeros would be wrong). A stream that ended with no ``finish_reason`` gets ``STOP``.
    """

    def __init__(
        self,
        model: str | None,
        *,
        request: dict[str, Any] | None = None,
        prompt_tokens: int | None = None,
    ) -> None:
        self.model = model
        self._thoughts = wants_thoughts(request)
        self._parser = SSEParser()
        self._id: str | None = None
        self._upstream_model: str | None = None
        self._usage: Usage | None = None
        self._finish: dict[int, str | None] = {}  # choice index → finish_reason
        self._calls: dict[int, dict[Any, list[Any]]] = {}  # choice → key → [id, name, args]
        self._last_key: dict[int, Any] = {}
        self._done = False

    def feed(self, raw_event: bytes) -> bytes:
        return b"".join(self._on_data(e.data) for e in self._parser.feed(raw_event))

    def finish(self) -> bytes:
        return self._final()

    def error_event(self, message: str, code: str) -> bytes:
        """An in-stream ``google.rpc.Status`` (status from ``code``; 500 if not known)."""
        self._done = True
        return _sse(error_body(_CODE_STATUS.get(code, 500), message, code))

    def _on_data(self, data: str) -> bytes:
        if self._done:
            return b""
        if data.strip() == "[DONE]":
            return self._final()
        obj = event_object(data)
        if obj is None:
            return b""
        if obj.get("error") is not None:
            status = from_openai_response(obj)["error"]
            return self.error_event(status["message"], status["details"][0]["reason"].lower())
        self._id = self._id or (obj["id"] if isinstance(obj.get("id"), str) else None)
        if self._upstream_model is None and isinstance(obj.get("model"), str):
            self._upstream_model = obj["model"]
        candidates = []
        for choice in list_of(obj.get("choices")):
            choice = _dict(choice)
            idx = choice["index"] if isinstance(choice.get("index"), int) else 0
            self._finish.setdefault(idx, None)
            delta = _dict(choice.get("delta"))
            parts = _text_parts(delta, self._thoughts)
            for tc in list_of(delta.get("tool_calls")):
                self._add_call(idx, _dict(tc))
            if isinstance(choice.get("finish_reason"), str):
                self._finish[idx] = choice["finish_reason"]
            if isinstance(choice.get("usage"), dict):
                self._usage = usage_from_openai(choice["usage"])
            if parts:
                candidates.append({"content": {"parts": parts, "role": "model"}, "index": idx})
        for holder in (obj, _dict(obj.get("x_groq"))):
            if isinstance(holder.get("usage"), dict):
                self._usage = usage_from_openai(holder["usage"])
        out = self._chunk(candidates) if candidates else b""
        if self._usage is not None and self._finish and all(self._finish.values()):
            out += self._final()
        return out

    def _add_call(self, choice: int, tc: dict[str, Any]) -> None:
        """Accumulate one tool-call delta; deltas without ``index`` (seen from Moonshot) go to
        the call with their ``id``, or to the latest call."""
        calls = self._calls.setdefault(choice, {})
        key = tc.get("index")
        if not isinstance(key, int):
            call_id = tc.get("id")
            key = call_id if isinstance(call_id, str) and call_id else self._last_key.get(choice, 0)
        self._last_key[choice] = key
        call = calls.setdefault(key, [None, "", []])
        fn = _dict(tc.get("function"))
        if isinstance(tc.get("id"), str) and call[0] is None:
            call[0] = tc["id"]
        if isinstance(fn.get("name"), str) and not call[1]:
            call[1] = fn["name"]
        if isinstance(fn.get("arguments"), str):
            call[2].append(fn["arguments"])

    def _final(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        if not self._finish:  # nothing arrived: no answer to close
            return b""
        candidates = []
        for idx in sorted(self._finish):
            calls = [(c[0], c[1], "".join(c[2])) for c in self._calls.get(idx, {}).values()]
            parts, malformed = _call_parts(calls)
            candidates.append(_candidate(parts, self._finish[idx], malformed, idx))
        return self._chunk(candidates)

    def _chunk(self, candidates: list[dict[str, Any]]) -> bytes:
        obj: dict[str, Any] = {"candidates": candidates}
        if self._usage is not None:
            obj["usageMetadata"] = usage_metadata(self._usage)
        if self.model or self._upstream_model:
            obj["modelVersion"] = self.model or self._upstream_model
        if self._id is not None:
            obj["responseId"] = self._id
        return _sse(obj)


def from_openai_response(
    body: dict[str, Any], *, request: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A non-streamed chat completion as a ``GenerateContentResponse`` (same mapping as
    :class:`StreamTranslator`, thought parts only when ``request`` asked for them;
    ``modelVersion`` is the upstream's ``model``). An ``{"error": …}`` body becomes
    :func:`error_body` (500); never raises."""
    body = _dict(body)
    if body.get("error") is not None:
        err = _dict(body["error"]) or {"message": str(body["error"])}
        code = str(err.get("code") or err.get("type") or "upstream_error")
        return error_body(500, str(err.get("message", "upstream error")), code)
    choices = body.get("choices") if isinstance(body.get("choices"), list) else []
    candidates = []
    for pos, choice in enumerate(map(_dict, choices)):
        msg = _dict(choice.get("message"))
        calls = []
        for call in map(_dict, list_of(msg.get("tool_calls"))):
            fn = _dict(call.get("function"))
            calls.append((call.get("id"), fn.get("name"), fn.get("arguments") or ""))
        call_parts, malformed = _call_parts(calls)
        index = choice["index"] if isinstance(choice.get("index"), int) else pos
        reason = choice.get("finish_reason")
        parts = _text_parts(msg, wants_thoughts(request)) + call_parts
        candidates.append(_candidate(parts, reason, malformed, index))
    out: dict[str, Any] = {"candidates": candidates}
    usage = body.get("usage")
    if not isinstance(usage, dict) and choices:
        usage = _dict(choices[0]).get("usage")
    if isinstance(usage, dict):
        out["usageMetadata"] = usage_metadata(usage_from_openai(usage))
    if isinstance(body.get("model"), str):
        out["modelVersion"] = body["model"]
    if isinstance(body.get("id"), str):
        out["responseId"] = body["id"]
    return out


def error_body(status: int, message: str, code: str) -> dict[str, Any]:
    """A ``google.rpc.Status`` error body: ``{"error": {"code": status, "message", "status":
    <google.rpc.Code name for the HTTP status, else "UNKNOWN">, "details": [ErrorInfo]}}``;
    ``code`` (e.g. ``all_providers_failed``) goes into ``ErrorInfo.reason``, upper-cased as
    the design guide asks."""
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": code.upper(),
        "domain": "kimi-intercept",
    }
    return {
        "error": {
            "code": status,
            "message": message,
            "status": _STATUS.get(status, "UNKNOWN"),
            "details": [info],
        }
    }
