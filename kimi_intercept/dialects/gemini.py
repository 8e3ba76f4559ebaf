"""Gemini ``generateContent`` ⇄ OpenAI chat completions (the seam of :mod:`.dialects`).

Sources: https://ai.google.dev/api/generate-content (request and response objects),
https://ai.google.dev/gemini-api/docs/function-calling, https://cloud.google.com/apis/design/errors
(``google.rpc.Status``); wire shapes in ``shared/notes/providers.md`` §6 and
``tests/wire/captured_gemini_*.sse`` (events end with ``\\r\\n\\r\\n``; no ``[DONE]``).

Requests: model and streaming come from the URL (:func:`parse_path`); ``systemInstruction`` →
``system`` message; ``contents`` roles ``user``/``model`` → ``user``/``assistant``; parts:
``text`` (model ``thought`` text → ``reasoning_content``), image ``inlineData`` → ``image_url``
data URL, ``functionCall`` → ``tool_calls`` (``id`` or ``call_<n>``, arguments as JSON text),
``functionResponse`` → a ``tool`` message for the call it answers (by id, else by name);
``generationConfig`` → ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``n``, ``seed``,
penalties, JSON mode; ``functionDeclarations`` → ``tools`` (schema types lower-cased);
``functionCallingConfig.mode`` → ``tool_choice``. Dropped: ``thoughtSignature``,
``safetySettings``, ``topK``, ``responseSchema``, ``thinkingConfig`` (the upstream model's
thinking setting applies; its reasoning comes back as ``thought`` parts, which gemini-cli and
google-genai's ``.text`` keep apart from the answer). Refused (:class:`DialectError`): built-in
tools (``googleSearch``…), ``cachedContent``, non-image media, code-execution parts, and a
``functionResponse`` answering no call (Gemini refuses that too).

Answers: text → ``text`` parts, reasoning → ``thought`` parts, each tool call → one whole
``functionCall`` part; ``finish_reason`` → ``finishReason`` (:data:`_FINISH`); usage →
``usageMetadata`` (:func:`usage_metadata`; back again: :func:`usage_from_gemini`).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs, unquote

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
#: ``generationConfig`` fields that map one to one.
_GEN_CONFIG = {"maxOutputTokens": "max_tokens", "temperature": "temperature", "topP": "top_p",
               "stopSequences": "stop", "candidateCount": "n", "seed": "seed",
               "presencePenalty": "presence_penalty", "frequencyPenalty": "frequency_penalty"}
# fmt: on
_PATH = re.compile(r"/v1[a-z0-9]*/(?:.+/)?models/([^/:]*):(generateContent|streamGenerateContent)$")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _sse(obj: dict[str, Any]) -> bytes:
    """One Gemini SSE event: ``data: <json>`` and a CRLF blank line, as in the captures."""
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + data.encode() + b"\r\n\r\n"


def _text_parts(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """``reasoning_content`` as a ``thought`` part, then ``content``, of a delta or message."""
    parts: list[dict[str, Any]] = []
    for key, extra in (("reasoning_content", {"thought": True}), ("content", {})):
        if isinstance(msg.get(key), str) and msg[key]:
            parts.append({"text": msg[key], **extra})
    return parts


# --- request ------------------------------------------------------------------------------------


def to_openai_request(body: dict[str, Any], *, model: str | None, stream: bool) -> dict[str, Any]:
    """A Gemini ``GenerateContentRequest`` as an OpenAI chat-completions body.

    Gemini carries the model and streaming in the URL (``/v1beta/models/{model}:…``, see
    :func:`parse_path`), so the caller passes both; ``model=None`` becomes ``"gemini"``. The
    field mapping is in the module docstring. Raises :class:`DialectError` for a
    body without ``contents`` and for anything listed there as refused.
    """
    contents = body.get("contents") if isinstance(body, dict) else None
    if not isinstance(contents, list) or not contents:
        raise DialectError('a Gemini request needs a non-empty "contents" list')
    if body.get("cachedContent"):
        raise DialectError("cachedContent refers to a prompt stored at Google; it cannot be sent")
    messages: list[dict[str, Any]] = []
    system = body.get("systemInstruction")
    if isinstance(system, str):
        system = {"parts": [{"text": system}]}
    parts = map(_dict, _dict(system).get("parts") or [])
    texts = [p["text"] for p in parts if isinstance(p.get("text"), str)]
    if texts:
        messages.append({"role": "system", "content": "\n".join(texts)})
    messages += _messages(contents)
    out: dict[str, Any] = {"model": model or "gemini", "messages": messages}
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = _tool_choice(_dict(_dict(body.get("toolConfig")).get("functionCallingConfig")))
        if choice is not None:
            out["tool_choice"] = choice
    config = _dict(body.get("generationConfig"))
    for key, name in _GEN_CONFIG.items():
        if config.get(key) is not None:
            out[name] = config[key]
    if config.get("responseMimeType") == "application/json":
        out["response_format"] = {"type": "json_object"}
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _messages(contents: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, name) of the last model turn's unanswered calls
    n = 0  # functionCall parts so far: ids for calls without one are call_<n>
    for i, content in enumerate(contents):
        parts = _dict(content).get("parts")
        if not isinstance(parts, list):
            raise DialectError(f"contents[{i}] has no parts list")
        if _dict(content).get("role") == "model":
            text: list[str] = []
            thoughts: list[str] = []
            calls: list[dict[str, Any]] = []
            for part in map(_dict, parts):
                if "functionCall" in part:
                    fc = _dict(part["functionCall"])
                    call_id = fc.get("id") or f"call_{n}"
                    n += 1
                    fn = {"name": fc.get("name"), "arguments": _dumps(fc.get("args") or {})}
                    calls.append({"id": call_id, "type": "function", "function": fn})
                elif isinstance(part.get("text"), str):
                    (thoughts if part.get("thought") else text).append(part["text"])
                elif _image_url(part, i) is not None:
                    raise DialectError(f"contents[{i}]: a model turn cannot carry an image")
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
            if thoughts:
                msg["reasoning_content"] = "".join(thoughts)
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
            pending = [(c["id"], c["function"]["name"]) for c in calls]
            continue
        user: list[dict[str, Any]] = []
        for part in map(_dict, parts):
            if "functionResponse" in part:
                fr = _dict(part["functionResponse"])
                call_id = _answer(pending, fr, i)
                out.append(
                    {"role": "tool", "tool_call_id": call_id, "content": _dumps(fr.get("response"))}
                )
            elif isinstance(part.get("text"), str):
                user.append({"type": "text", "text": part["text"]})
            else:
                url = _image_url(part, i)
                if url is not None:
                    user.append({"type": "image_url", "image_url": {"url": url}})
        if len(user) == 1 and user[0]["type"] == "text":
            out.append({"role": "user", "content": user[0]["text"]})
        elif user:
            out.append({"role": "user", "content": user})
    return out


def _answer(pending: list[tuple[str, str]], fr: dict[str, Any], i: int) -> str:
    """The id of the pending call a ``functionResponse`` answers (by id, else by name)."""
    for key, pos in ((fr.get("id"), 0), (fr.get("name"), 1)):
        for call in pending:
            if key is not None and call[pos] == key:
                pending.remove(call)
                return call[0]
    raise DialectError(
        f"contents[{i}]: functionResponse {fr.get('name')!r} answers no functionCall of the "
        "model turn before it"
    )


def _image_url(part: dict[str, Any], i: int) -> str | None:
    """The ``image_url`` of an image part; raises for media OpenAI chat cannot carry. Other
    part kinds (``thoughtSignature`` alone, ``videoMetadata``, …) give ``None``: dropped."""
    inline, file = _dict(part.get("inlineData")), _dict(part.get("fileData"))
    if str(inline.get("mimeType", "")).startswith("image/"):
        return f"data:{inline['mimeType']};base64,{inline.get('data', '')}"
    uri = str(file.get("fileUri", ""))
    if str(file.get("mimeType", "")).startswith("image/") and uri.startswith("http"):
        return uri
    for key in ("inlineData", "fileData", "executableCode", "codeExecutionResult"):
        if key in part:
            mime = _dict(part[key]).get("mimeType")
            what = f"{key} ({mime})" if mime else key
            raise DialectError(f"contents[{i}]: a {what} part cannot be sent as OpenAI chat")
    return None


def _tools(tools: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else []:
        for key, decls in _dict(tool).items():
            if key != "functionDeclarations":
                raise DialectError(f"the Gemini built-in tool {key!r} has no OpenAI equivalent")
            for decl in decls if isinstance(decls, list) else []:
                decl = _dict(decl)
                fn: dict[str, Any] = {"name": decl.get("name")}
                if decl.get("description"):
                    fn["description"] = decl["description"]
                if "parametersJsonSchema" in decl:  # already JSON Schema
                    fn["parameters"] = decl["parametersJsonSchema"]
                elif "parameters" in decl:
                    fn["parameters"] = _schema(decl["parameters"])
                else:
                    fn["parameters"] = {"type": "object", "properties": {}}
                out.append({"type": "function", "function": fn})
    return out


def _schema(schema: Any) -> Any:
    """Gemini's OpenAPI-subset ``Schema`` as JSON Schema: ``type`` lower-cased ("OBJECT" →
    "object") here and in every sub-schema (``properties``, ``items``, ``anyOf``)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            value = value.lower()
        elif key == "properties" and isinstance(value, dict):
            value = {name: _schema(sub) for name, sub in value.items()}
        elif key == "items":
            value = _schema(value)
        elif key == "anyOf" and isinstance(value, list):
            value = [_schema(sub) for sub in value]
        out[key] = value
    return out


def _tool_choice(config: dict[str, Any]) -> str | dict[str, Any] | None:
    mode = str(config.get("mode", "")).upper()
    if mode in ("AUTO", "VALIDATED"):
        return "auto"
    if mode == "NONE":
        return "none"
    if mode == "ANY":
        names = config.get("allowedFunctionNames")
        if isinstance(names, list) and len(names) == 1:
            return {"type": "function", "function": {"name": names[0]}}
        return "required"
    return None


# --- answers ------------------------------------------------------------------------------------


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
    finish = "MALFORMED_FUNCTION_CALL" if malformed else _FINISH.get(reason or "stop", "OTHER")
    content = {"parts": parts or [{"text": ""}], "role": "model"}
    return {"content": content, "finishReason": finish, "index": index}


class StreamTranslator:
    """OpenAI chat-completions SSE events in, Gemini ``streamGenerateContent?alt=sse`` out.

    Every text delta becomes a chunk ``{"candidates": [{"content": {"parts": [{"text"}],
    "role": "model"}, "index"}], "usageMetadata"?, "modelVersion", "responseId"}`` at once;
    ``reasoning_content`` becomes a ``{"text", "thought": true}`` part. Gemini sends function
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

    def __init__(self, model: str | None) -> None:
        self.model = model
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
        for choice in obj.get("choices") or []:
            choice = _dict(choice)
            idx = choice["index"] if isinstance(choice.get("index"), int) else 0
            self._finish.setdefault(idx, None)
            delta = _dict(choice.get("delta"))
            parts = _text_parts(delta)
            for tc in delta.get("tool_calls") or []:
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
            key = tc.get("id") or self._last_key.get(choice, 0)
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


def from_openai_response(body: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed chat completion as a ``GenerateContentResponse`` (same mapping as
    :class:`StreamTranslator`; ``modelVersion`` is the upstream's ``model``). An ``{"error":
    …}`` body becomes :func:`error_body` (500); never raises."""
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
        for call in map(_dict, msg.get("tool_calls") or []):
            fn = _dict(call.get("function"))
            calls.append((call.get("id"), fn.get("name"), fn.get("arguments") or ""))
        call_parts, malformed = _call_parts(calls)
        index = choice["index"] if isinstance(choice.get("index"), int) else pos
        reason = choice.get("finish_reason")
        candidates.append(_candidate(_text_parts(msg) + call_parts, reason, malformed, index))
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


# --- native Gemini answers ------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_from_gemini(meta: dict[str, Any]) -> Usage:
    """Read ``usageMetadata`` into OpenAI meanings: prompt = ``promptTokenCount`` (includes
    ``cachedContentTokenCount``) + ``toolUsePromptTokenCount`` (tool results Google fed back,
    billed as input); completion = ``candidatesTokenCount`` + ``thoughtsTokenCount`` (OpenAI
    counts reasoning inside completion; Gemini's ``totalTokenCount`` is the sum of all four);
    cached = ``cachedContentTokenCount``; reasoning = ``thoughtsTokenCount``."""
    prompt = _int(meta.get("promptTokenCount"))
    tool_use = _int(meta.get("toolUsePromptTokenCount"))
    if prompt is not None and tool_use:
        prompt += tool_use
    candidates = _int(meta.get("candidatesTokenCount"))
    thoughts = _int(meta.get("thoughtsTokenCount"))
    completion = None
    if candidates is not None or thoughts is not None:
        completion = (candidates or 0) + (thoughts or 0)
    return Usage(prompt, completion, _int(meta.get("cachedContentTokenCount")), thoughts)


class StreamMeter(ChatStreamMeter):
    """Meters a native Gemini SSE answer, with the attributes of
    :class:`~kimi_intercept.accounting.usage.ChatStreamMeter`.

    ``usageMetadata`` is on every chunk and cumulative, so the **last** one is kept
    (:func:`usage_from_gemini`); ``response_id`` = ``responseId``, ``model`` =
    ``modelVersion``; ``finish_reason`` = the last ``finishReason`` (Gemini's words, e.g.
    ``"STOP"``; ``promptFeedback.blockReason`` when the prompt was blocked); ``saw_done``: a
    finish reason arrived (Gemini sends no ``[DONE]``); text parts go to ``completion_text``,
    and to ``answer_text`` unless ``thought``; a ``functionCall`` part sets ``saw_tool_calls``
    and adds its name and JSON arguments to ``completion_text``; ``error``: an in-stream
    ``{"error": {...}}``.
    """

    def _on_chunk(self, obj: dict[str, Any]) -> None:
        if self.response_id is None and isinstance(obj.get("responseId"), str):
            self.response_id = obj["responseId"]
        if self.model is None and isinstance(obj.get("modelVersion"), str):
            self.model = obj["modelVersion"]
        if isinstance(obj.get("error"), dict):
            self.error = obj["error"]
        if isinstance(obj.get("usageMetadata"), dict):
            self.usage = usage_from_gemini(obj["usageMetadata"])
        blocked = _dict(obj.get("promptFeedback")).get("blockReason")
        if isinstance(blocked, str):
            self.finish_reason, self.saw_done = blocked, True
        found: list[str] = []
        for cand in map(_dict, obj.get("candidates") or []):
            if isinstance(cand.get("finishReason"), str):
                self.finish_reason, self.saw_done = cand["finishReason"], True
            for part in map(_dict, _dict(cand.get("content")).get("parts") or []):
                text = part.get("text")
                if isinstance(text, str) and text:
                    found.append(text)
                    if not part.get("thought") and self._text_len < MAX_COMPLETION_TEXT_CHARS:
                        self._answer.append(text)
                if isinstance(part.get("functionCall"), dict):
                    self.saw_tool_calls = True
                    fc = part["functionCall"]
                    found += [str(fc.get("name") or ""), _dumps(fc.get("args") or {})]
        if found:
            self._add_text(found)


def meter_json(body: bytes) -> JsonMeter:
    """Meter a non-streamed ``GenerateContentResponse``, or the JSON array of them that
    ``streamGenerateContent`` returns without ``alt=sse``; an error body fills ``error``.
    Never raises."""
    try:
        obj = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return JsonMeter()
    meter = StreamMeter()
    for item in obj if isinstance(obj, list) else [obj]:
        if isinstance(item, dict):
            meter._on_chunk(item)
    return JsonMeter(
        usage=meter.usage,
        response_id=meter.response_id,
        model=meter.model,
        finish_reason=meter.finish_reason,
        completion_text=meter.completion_text,
        error=meter.error,
    )


def parse_path(path: str) -> tuple[str | None, bool] | None:
    """``(model, stream)`` of a Gemini request path, else ``None``.

    ``/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse`` → ``("gemini-2.5-flash",
    True)``; ``…:generateContent`` → ``(model, False)``; an empty model segment gives ``None``
    as model. ``streamGenerateContent`` without ``alt=sse`` answers a JSON array, not SSE,
    which the translator does not produce: ``None``, like any other method (``countTokens``…).
    """
    route, _, query = path.partition("?")
    m = _PATH.search(route)
    if m is None:
        return None
    model = unquote(m.group(1)) or None
    if m.group(2) == "generateContent":
        return model, False
    if "sse" not in parse_qs(query).get("alt", []):
        return None
    return model, True
