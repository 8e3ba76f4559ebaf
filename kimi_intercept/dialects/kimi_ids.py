"""Tool-call ids in the history Kimi receives, and the client's ids back in Kimi's answer.

Kimi K2 "expects all tool call IDs in historical messages to follow the format
``functions.func_name:idx``" and Moonshot's own API renames them before the model sees them
(https://github.com/MoonshotAI/K2-Vendor-Verifier, README "Rename Tool Call IDs"). Ids in
another form (``call_…`` from OpenAI, ``toolu_…`` from Anthropic, ``search:0``) "could mislead
Kimi-K2 into generating incorrect tool call IDs". So, switch ``[kimi] rewrite_tool_call_ids``
(on by default; Moonshot says its API does it too, so the rule is belt and braces there and
needed for other hosts of the model):

- request: every assistant ``tool_calls[].id`` becomes ``functions.<name>:<idx>`` — ``name`` the
  function name Kimi sees, ``idx`` the call's position among all tool calls of the conversation
  (0-based; the same on every turn, so the prompt cache keeps hitting) — and each ``role: tool``
  message's ``tool_call_id`` follows its call;
- answer: any tool-call id that is one of those rewritten ids is given back to the client as its
  own id (:func:`restore_answer`), streamed or not, so the client never sees an id it did not
  send or receive. New calls keep the id Kimi gave them; on the next turn they are rewritten
  by position like the rest.

Pure: the input is never mutated.
"""

from __future__ import annotations

from typing import Any

from kimi_intercept.accounting import wire_json
from kimi_intercept.dialects import json_bytes


def rewrite_tool_call_ids(msgs: list[Any]) -> tuple[list[Any], dict[str, str]]:
    """``msgs`` (OpenAI chat messages) with Kimi-form tool-call ids, and a map from each id
    Kimi now sees to the client's id (only ids that changed)."""
    out, client_to_kimi, back, idx = list(msgs), {}, {}, 0
    for i, msg in enumerate(out):
        if not isinstance(msg, dict) or msg.get("role") != "assistant":
            continue
        calls = msg.get("tool_calls")
        if not isinstance(calls, list) or not calls:
            continue
        new_calls = []
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            name = fn.get("name") if isinstance(fn, dict) else None
            old = call.get("id") if isinstance(call, dict) else None
            if not isinstance(name, str) or not isinstance(old, str):
                new_calls.append(call)
                continue
            new = f"functions.{name}:{idx}"
            idx += 1
            client_to_kimi.setdefault(old, new)
            if new != old:
                back[new] = old
                call = {**call, "id": new}
            new_calls.append(call)
        out[i] = {**msg, "tool_calls": new_calls}
    for i, msg in enumerate(out):
        if isinstance(msg, dict) and msg.get("role") == "tool":
            old = msg.get("tool_call_id")
            if isinstance(old, str) and client_to_kimi.get(old, old) != old:
                out[i] = {**msg, "tool_call_id": client_to_kimi[old]}
    return out, back


def restore_answer(raw: bytes, renamed: dict[str, str], ids: dict[str, str]) -> bytes:
    """Put the client's tool names (``renamed``: name Kimi saw → client's) and tool-call ids
    (``ids``: id Kimi saw → client's) back into one Kimi answer: a whole SSE event of a
    chat-completions stream (``data: {...}``) or a whole non-streamed JSON body. Anything that
    does not parse, or needs no change, is returned unchanged (the same bytes)."""
    if not (renamed or ids) or b"tool_calls" not in raw:
        return raw  # only tool calls carry names or ids to restore: most events are text
    is_sse = raw.lstrip().startswith(b"data:")
    payload = raw.split(b":", 1)[1].strip() if is_sse else raw
    try:
        obj = wire_json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return raw
    changed = False
    for choice in obj.get("choices") or [] if isinstance(obj, dict) else []:
        part = (choice.get("delta") or choice.get("message")) if isinstance(choice, dict) else None
        for call in (part or {}).get("tool_calls") or [] if isinstance(part, dict) else []:
            if not isinstance(call, dict):
                continue
            if isinstance(call.get("id"), str) and call["id"] in ids:
                call["id"] = ids[call["id"]]
                changed = True
            fn = call.get("function")
            if isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"] in renamed:
                fn["name"] = renamed[fn["name"]]
                changed = True
    if not changed:
        return raw
    text = json_bytes(obj)
    if not is_sse:
        return text
    return b"data: " + text + raw[len(raw.rstrip(b"\r\n")) :]
