"""OpenAI Responses API (``POST /v1/responses``) ⇄ OpenAI chat completions (the seam of
:mod:`.dialects`).

Sources: https://platform.openai.com/docs/api-reference/responses/create (request),
https://platform.openai.com/docs/api-reference/responses/object and
https://platform.openai.com/docs/api-reference/responses-streaming (answers); wire shapes in
``shared/notes/providers.md`` §2.2 and ``tests/wire/captured_openai_responses_*.sse``.

Requests (:func:`to_openai_request`): ``instructions`` → a first ``system`` message;
``input`` (a string, or items) → messages: ``message`` items (roles ``user``/``assistant``/
``system``; ``developer`` → ``system``) with ``input_text``/``output_text``/``refusal`` parts
as text and ``input_image`` (URL or data URL) as ``image_url``; ``function_call`` items → the
``tool_calls`` of one assistant message (consecutive calls share it); ``function_call_output``
→ a ``tool`` message; ``reasoning`` items → ``reasoning_content`` of the next assistant
message (summary and reasoning text; ``encrypted_content`` dropped). ``previous_response_id``
→ the stored items of that response first (:mod:`.responses_store`; unknown or expired: the
API's own 400 ``previous_response_not_found``). ``tools`` (and those of ``additional_tools``
input items, as Codex's code mode sends them) of type ``function`` → functions; ``custom``
(free-form text) → a function taking ``{"input": str}``, answered back as a
``custom_tool_call``; the tools inside a ``namespace`` tool → functions named
``<namespace>__<name>``, answered back as ``name`` + ``namespace``; ``configuration_update``
items are skipped;
``tool_choice`` auto/none/required/a function; ``text.format`` ``json_schema``/``json_object``
→ ``response_format``; ``max_output_tokens`` → ``max_tokens``; ``reasoning.effort``
``none``/``minimal`` → Kimi ``thinking: disabled``, any other effort → ``enabled``;
``temperature``, ``top_p``, ``parallel_tool_calls``, ``user`` copied; streaming adds
``stream_options.include_usage``. Dropped: ``store``, ``include``, ``metadata``,
``truncation``, ``prompt_cache_key``, ``service_tier``, ``reasoning.summary``, ``text.verbosity``.
Refused (:class:`DialectError`, a 400 naming it): the built-in tools the hub cannot run
(:data:`BUILTIN_TOOLS`) unless ``[dialects.responses] drop_builtin_tools = true`` (then dropped
and logged), ``input_file`` parts, images by ``file_id``, ``item_reference`` items.

This module owns the request side and is the dialect's public face: it re-exports the answers
(:class:`StreamTranslator`, :func:`from_openai_response`, :func:`error_body`) from
:mod:`.responses_stream` and native metering (:class:`StreamMeter`, :func:`meter_json`,
:func:`usage_from_responses`) from :mod:`.responses_meter`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kimi_intercept.dialects import DialectError
from kimi_intercept.dialects.responses_meter import StreamMeter, meter_json, usage_from_responses
from kimi_intercept.dialects.responses_store import STORE, ResponseStore, expand_input
from kimi_intercept.dialects.responses_stream import (
    StreamTranslator,
    error_body,
    from_openai_response,
)
from kimi_intercept.dialects.responses_wire import NAMESPACE_SEP, request_tools

__all__ = [
    "BUILTIN_TOOLS",
    "StreamMeter",
    "StreamTranslator",
    "error_body",
    "expand_input",
    "from_openai_response",
    "hub_or_error",
    "meter_json",
    "to_openai_request",
    "usage_from_responses",
]

logger = logging.getLogger(__name__)

#: Hosted tools OpenAI runs on its side; a chat-completions provider cannot.
BUILTIN_TOOLS = (
    "web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11",
    "file_search", "computer_use", "computer_use_preview", "mcp", "code_interpreter",
    "image_generation", "local_shell",
)  # fmt: skip
_COPIED = ("temperature", "top_p", "parallel_tool_calls", "user")


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def to_openai_request(
    body: dict[str, Any],
    *,
    model: str | None,
    drop_builtin_tools: bool = False,
    store: ResponseStore = STORE,
) -> dict[str, Any]:
    """A Responses API request as an OpenAI chat-completions body (mapping in the module
    docstring). Raises :class:`DialectError` for what is listed there as refused."""
    if not isinstance(body, dict):
        raise DialectError("a Responses API request must be a JSON object")
    model = model or body.get("model")
    if not isinstance(model, str) or not model:
        raise DialectError("the request names no model", param="model")
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        messages.append({"role": "system", "content": body["instructions"]})
    items = expand_input(body, store)
    messages += items_to_messages(items)
    if not messages:
        raise DialectError("the request has no input", param="input")
    out: dict[str, Any] = {"model": model, "messages": messages}
    for key in _COPIED:
        if body.get(key) is not None:
            out[key] = body[key]
    if isinstance(body.get("max_output_tokens"), int):
        out["max_tokens"] = body["max_output_tokens"]
    tools = _tools(request_tools(body, items), drop_builtin_tools)
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"), drop_builtin_tools)
        if choice is not None:
            out["tool_choice"] = choice
    fmt = _dict(_dict(body.get("text")).get("format"))
    if fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    effort = _dict(body.get("reasoning")).get("effort")
    if isinstance(effort, str):
        out["thinking"] = {"type": "disabled" if effort in ("none", "minimal") else "enabled"}
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def hub_or_error(
    body: dict[str, Any], model: str | None, drop_builtin_tools: bool = False
) -> tuple[dict[str, Any] | None, DialectError | None]:
    """:func:`to_openai_request`, or ``(None, the error)``: never raises (an unexpected shape
    becomes a :class:`DialectError` too)."""
    try:
        return to_openai_request(body, model=model, drop_builtin_tools=drop_builtin_tools), None
    except DialectError as e:
        return None, e
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        return None, DialectError(f"cannot translate the Responses API request: {e}")


def items_to_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input/output items as chat messages (see the module docstring)."""
    out: list[dict[str, Any]] = []
    reasoning: list[str] = []
    calls_open = False  # the last message is an assistant message that may take more calls
    for n, item in enumerate(items):
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            role = "system" if role == "developer" else role
            if role not in ("user", "assistant", "system"):
                raise DialectError(f"input[{n}] has role {role!r}", param=f"input[{n}].role")
            if role == "assistant":
                msg: dict[str, Any] = {"role": "assistant", "content": _text(item, n)}
                if reasoning:
                    msg["reasoning_content"], reasoning = "".join(reasoning), []
                out.append(msg)
                calls_open = True
                continue
            out.append({"role": role, "content": _content(item.get("content"), n, role)})
        elif kind in ("additional_tools", "configuration_update"):
            continue  # tools (read by to_openai_request) and Codex's settings: not messages
        elif kind in ("function_call", "custom_tool_call"):
            name = item.get("name")
            if isinstance(item.get("namespace"), str) and isinstance(name, str):
                name = item["namespace"] + NAMESPACE_SEP + name
            call = {
                "id": item.get("call_id") or item.get("id"),
                "type": "function",
                "function": {"name": name, "arguments": _arguments(item)},
            }
            if not calls_open:
                out.append({"role": "assistant", "content": None})
                calls_open = True
            if reasoning:
                out[-1]["reasoning_content"] = out[-1].get("reasoning_content", "") + "".join(
                    reasoning
                )
                reasoning = []
            out[-1].setdefault("tool_calls", []).append(call)
            continue
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            if isinstance(output, list):
                output = "".join(_part_text(p) for p in output if isinstance(p, dict))
            text = output if isinstance(output, str) else json.dumps(output)
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "reasoning":
            for key, part in (("summary", "summary_text"), ("content", "reasoning_text")):
                for p in item.get(key) or []:
                    if isinstance(p, dict) and p.get("type") == part and p.get("text"):
                        reasoning.append(str(p["text"]))
            continue
        elif kind == "item_reference":
            raise DialectError(
                f"input[{n}] is an item_reference; send the item itself or use "
                "previous_response_id",
                param=f"input[{n}]",
            )
        else:
            raise DialectError(f"input[{n}] has type {kind!r}, which cannot be sent as chat")
        calls_open = False
    return out


def _arguments(item: dict[str, Any]) -> str:
    """A call's arguments for the hub: a custom tool's raw ``input`` as ``{"input": …}``."""
    if item.get("type") == "custom_tool_call":
        return json.dumps({"input": item.get("input") or ""}, ensure_ascii=False)
    return item.get("arguments") or ""


def _part_text(part: dict[str, Any]) -> str:
    for key in ("text", "refusal"):
        if isinstance(part.get(key), str):
            return part[key]
    return ""


def _text(item: dict[str, Any], n: int) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    return "".join(_part_text(p) for p in content or [] if isinstance(p, dict))


def _content(content: Any, n: int, role: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for p in content if isinstance(content, list) else []:
        p = _dict(p)
        if p.get("type") in ("input_text", "output_text", "text", "refusal"):
            parts.append({"type": "text", "text": _part_text(p)})
        elif p.get("type") == "input_image":
            url = p.get("image_url")
            if not isinstance(url, str) or not url:
                raise DialectError(
                    f"input[{n}]: an input_image by file_id refers to a file stored at OpenAI; "
                    "send it as image_url (a URL or data URL)",
                    param=f"input[{n}].content",
                )
            image: dict[str, Any] = {"url": url}
            if p.get("detail") in ("low", "high", "auto"):
                image["detail"] = p["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise DialectError(
                f"input[{n}]: a {p.get('type')!r} part cannot be sent as chat",
                param=f"input[{n}].content",
            )
    if role == "system" or all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts if p["type"] == "text")
    return parts


def _tools(tools: Any, drop: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else []:
        tool = _dict(tool)
        kind = tool.get("type")
        children = tool.get("tools") if isinstance(tool.get("tools"), list) else None
        if kind in ("function", "custom"):
            out.append(_function(tool))
            continue
        callable_ = ("function", "custom")
        if (
            kind == "namespace"
            and children
            and all(_dict(t).get("type") in callable_ for t in children)
        ):
            out += [_function(_dict(t), tool) for t in children]
            continue
        what = f"{kind!r}" + (f" ({tool['server_label']})" if tool.get("server_label") else "")
        if drop:
            logger.warning("kimi-intercept: dropped the built-in Responses tool %s", what)
            continue
        hosted = "the built-in tool" if kind in BUILTIN_TOOLS else "the tool type"
        raise DialectError(
            f"kimi-intercept reroutes this request to a chat-completions provider, which cannot "
            f"run {hosted} {what}; remove it, or set [dialects.responses] drop_builtin_tools = "
            "true to drop such tools",
            code="unsupported_tool",
            param="tools",
        )
    return out


def _function(tool: dict[str, Any], namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Responses function tool as a chat ``function``; inside a ``namespace`` tool its name
    is ``<namespace>__<name>`` and the namespace's description comes first."""
    name = tool.get("name")
    described = [tool.get("description")]
    if namespace is not None:
        name = f"{namespace.get('name')}{NAMESPACE_SEP}{name}"
        described.insert(0, namespace.get("description"))
    fn: dict[str, Any] = {"name": name}
    if any(isinstance(d, str) and d for d in described):
        fn["description"] = "\n\n".join(d for d in described if isinstance(d, str) and d)
    if tool.get("type") == "custom":  # free-form text (e.g. a grammar): one string argument
        fmt = _dict(tool.get("format"))
        about = "The tool's whole input, as raw text"
        if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
            about += f" in this {fmt.get('syntax', '')} grammar:\n{fmt['definition']}"
        text = {"type": "string", "description": about}
        fn["parameters"] = {"type": "object", "properties": {"input": text}, "required": ["input"]}
        return {"type": "function", "function": fn}
    fn["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    if isinstance(tool.get("strict"), bool):
        fn["strict"] = tool["strict"]
    return {"type": "function", "function": fn}


def _tool_choice(choice: Any, drop: bool) -> str | dict[str, Any] | None:
    if choice in ("auto", "none", "required"):
        return choice
    choice = _dict(choice)
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if choice.get("type") == "allowed_tools":
        return "required" if choice.get("mode") == "required" else "auto"
    if choice and not drop:
        raise DialectError(
            f"tool_choice {choice.get('type')!r} names a tool a chat-completions provider "
            "cannot run",
            code="unsupported_tool",
            param="tool_choice",
        )
    return None
