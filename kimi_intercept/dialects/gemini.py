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

This module owns the request side (:func:`to_openai_request`, :func:`parse_path`) and is the
dialect's public face: it re-exports the answers (:class:`StreamTranslator`,
:func:`from_openai_response`, :func:`error_body`, :func:`usage_metadata`) from
:mod:`.gemini_stream` and native metering (:class:`StreamMeter`, :func:`meter_json`,
:func:`usage_from_gemini`) from :mod:`.gemini_meter`; the small JSON helpers they share are in
:mod:`.gemini_wire`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, unquote

from kimi_intercept.dialects import DialectError
from kimi_intercept.dialects.gemini_meter import StreamMeter, meter_json, usage_from_gemini
from kimi_intercept.dialects.gemini_stream import (
    StreamTranslator,
    error_body,
    from_openai_response,
    usage_metadata,
)
from kimi_intercept.dialects.gemini_wire import _dict, _dumps

__all__ = [
    "StreamMeter",
    "StreamTranslator",
    "error_body",
    "from_openai_response",
    "meter_json",
    "parse_path",
    "to_openai_request",
    "usage_from_gemini",
    "usage_metadata",
]

# fmt: off
#: ``generationConfig`` fields that map one to one.
_GEN_CONFIG = {"maxOutputTokens": "max_tokens", "temperature": "temperature", "topP": "top_p",
               "stopSequences": "stop", "candidateCount": "n", "seed": "seed",
               "presencePenalty": "presence_penalty", "frequencyPenalty": "frequency_penalty"}
# fmt: on
_PATH = re.compile(r"/v1[a-z0-9]*/(?:.+/)?models/([^/:]*):(generateContent|streamGenerateContent)$")


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
