"""Responses API objects the answers are built from: the ``response`` object, its items and
``usage``, and the error body (https://platform.openai.com/docs/api-reference/responses/object;
shapes as in ``tests/wire/captured_openai_responses_*.sse``)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from kimi_intercept.accounting.usage import Usage
from kimi_intercept.dialects import json_bytes, list_of
from kimi_intercept.dialects.responses_store import STORE, ResponseStore

# fmt: off
#: HTTP status → OpenAI error ``type`` (https://platform.openai.com/docs/guides/error-codes).
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 429: "rate_limit_error"}
# fmt: on


def new_id(prefix: str) -> str:
    """``resp_…``, ``msg_…``, ``fc_…``, ``rs_…``: OpenAI's id shapes, 48 random hex digits."""
    return f"{prefix}_{secrets.token_hex(24)}"


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def response_usage(usage: Usage | None) -> dict[str, Any] | None:
    """Hub usage as the Responses ``usage`` object: ``input_tokens`` (cached included),
    ``input_tokens_details.cached_tokens`` (and ``cache_write_tokens``), ``output_tokens``
    (reasoning included), ``output_tokens_details.reasoning_tokens``, ``total_tokens``; counts
    not reported are 0."""
    if usage is None:
        return None
    inp, out = usage.prompt_tokens or 0, usage.completion_tokens or 0
    return {
        "input_tokens": inp,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens or 0,
            "cache_write_tokens": usage.cache_write_tokens or 0,
        },
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
        "total_tokens": inp + out,
    }


def response_object(
    response_id: str,
    created_at: int,
    model: str | None,
    request: dict[str, Any] | None,
    *,
    status: str = "in_progress",
    output: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    incomplete: str | None = None,
) -> dict[str, Any]:
    """A ``response`` object; the request's own settings are echoed as the API does."""
    req = _dict(request)
    text = _dict(req.get("text"))
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"),
        "model": model or req.get("model"),
        "output": output or [],
        "parallel_tool_calls": req.get("parallel_tool_calls", True),
        "previous_response_id": req.get("previous_response_id"),
        "reasoning": {"effort": _dict(req.get("reasoning")).get("effort"), "summary": None},
        "store": req.get("store", True),
        "temperature": req.get("temperature", 1.0),
        "text": {"format": _dict(text.get("format")) or {"type": "text"}},
        "tool_choice": req.get("tool_choice", "auto"),
        "tools": req.get("tools") or [],
        "top_p": req.get("top_p", 1.0),
        "truncation": req.get("truncation", "disabled"),
        "usage": usage,
        "user": req.get("user"),
        "metadata": _dict(req.get("metadata")),
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": [part] if status == "completed" else [],
        "role": "assistant",
    }


def call_item(
    item_id: str,
    call_id: str,
    name: str,
    arguments: str,
    status: str = "completed",
    names: dict[str, tuple[str | None, str, str]] | None = None,
) -> dict[str, Any]:
    """A ``function_call`` item, or a ``custom_tool_call`` (``input`` = the ``input`` argument
    the hub's function got) for a custom tool; a hub name in ``names`` (:func:`tool_names`) is
    given back as the client's ``name`` plus ``namespace``."""
    namespace, client_name, kind = (names or {}).get(name, (None, name, "function"))
    item: dict[str, Any] = {"id": item_id, "type": "function_call", "status": status}
    if kind == "custom":
        item.update(type="custom_tool_call", input=custom_input(arguments) if arguments else "")
    else:
        item["arguments"] = arguments
    item.update(call_id=call_id, name=client_name)
    if namespace is not None:
        item["namespace"] = namespace
    return item


def custom_input(arguments: str) -> str:
    """The raw input of a custom tool call from the hub's ``{"input": …}`` arguments (the text
    itself when they are not that JSON)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    got = value.get("input") if isinstance(value, dict) else None
    return got if isinstance(got, str) else arguments


#: Between a namespace and a function name in the flat name the hub sees.
NAMESPACE_SEP = "__"


def request_tools(body: dict[str, Any] | None, items: list[dict[str, Any]] | None) -> list[Any]:
    """The request's ``tools`` plus those of its ``additional_tools`` input items (Codex's
    code mode sends its tools so)."""
    tools = list(list_of(_dict(body).get("tools")))
    for item in items or []:
        if _dict(item).get("type") == "additional_tools":
            tools += list_of(item.get("tools"))
    return tools


def tool_names(tools: list[Any]) -> dict[str, tuple[str | None, str, str]]:
    """``hub name -> (namespace or None, client name, "function" | "custom")`` for the tools
    the hub sees under another name or kind: the tools inside ``namespace`` tools (flat name
    ``<namespace>__<name>``) and ``custom`` tools (a function taking ``{"input": str}``)."""
    out: dict[str, tuple[str | None, str, str]] = {}
    for tool in map(_dict, tools):
        if tool.get("type") == "custom" and isinstance(tool.get("name"), str):
            out[tool["name"]] = (None, tool["name"], "custom")
        if tool.get("type") != "namespace" or not isinstance(tool.get("name"), str):
            continue
        for child in map(_dict, list_of(tool.get("tools"))):
            if isinstance(child.get("name"), str):
                kind = "custom" if child.get("type") == "custom" else "function"
                flat = tool["name"] + NAMESPACE_SEP + child["name"]
                out[flat] = (tool["name"], child["name"], kind)
    return out


def reasoning_item(item_id: str, text: str | None) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": text}] if text is not None else []
    return {"id": item_id, "type": "reasoning", "summary": summary}


def finish_status(reason: Any) -> tuple[str, str | None]:
    """``(status, incomplete reason)`` for a chat ``finish_reason``: ``length`` →
    ``incomplete``/``max_output_tokens``, ``content_filter`` → ``incomplete``/
    ``content_filter``, anything else ``completed``."""
    if reason == "length":
        return "incomplete", "max_output_tokens"
    if reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def remember(
    response_id: str,
    inputs: list[dict[str, Any]] | None,
    output: list[dict[str, Any]],
    request: dict[str, Any] | None,
    store: ResponseStore = STORE,
) -> None:
    """Keep a finished response's items for ``previous_response_id`` (not when the client sent
    ``store: false``, as OpenAI; not when its input could not be expanded)."""
    if inputs is None or _dict(request).get("store") is False:
        return
    store.put(response_id, [*inputs, *output])


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``; ``type`` from
    the status (``invalid_request_error`` for 400 …, else ``kimi_intercept_error``)."""
    kind = _TYPES.get(status, "kimi_intercept_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def sse(obj: dict[str, Any]) -> bytes:
    """One Responses SSE event: ``event: <type>`` then ``data: <json>``, as captured."""
    head = f"event: {obj['type']}\ndata: ".encode()
    return head + json_bytes(obj, (",", ":")) + b"\n\n"
