"""Make an Anthropic Messages body acceptable to Kimi's Anthropic-compatible endpoint
(``https://api.moonshot.ai/anthropic``, https://platform.kimi.ai/docs/guide/agent-support).

Rules:

1. at most ``max_tools`` tools (128: MoonshotAI/Kimi-K2#90), the one ``tool_choice`` pins kept;
2. content blocks other than :data:`ANTHROPIC_BLOCKS` — the tags Kimi's 400 lists as allowed
   (MoonshotAI/Kimi-K2.5#27, rejecting ``document``; Kimi-K2#118 ``tool_reference``) — become a
   text block when they carry text (a text ``source``, ``text``, or text blocks inside
   ``content``), else are dropped, also inside ``tool_result`` content;
3. thinking on (:func:`.kimi_types.thinking_on`; Anthropic's ``adaptive`` counts as enabled)
   and an assistant turn with ``tool_use`` but no ``thinking`` block: Kimi 400s "thinking is
   enabled but reasoning_content is missing in assistant tool call message"
   (router-for-me/CLIProxyAPI#3601). ``missing_reasoning="backfill"`` puts an empty
   ``thinking`` block first in that turn ⚠ (the chat endpoint's "" backfill, carried over);
   ``"disable_thinking"`` sends ``thinking: {type: disabled}`` instead (hermes-agent's fix
   drops thinking on Kimi routes), except for always-thinking models.

Each change is one line of :attr:`Normalized.changes`, which the caller logs.

Pure; the input is not mutated.
"""

from __future__ import annotations

from typing import Any

from kimi_intercept.dialects.kimi_types import THINKING_ALWAYS, Normalized, thinking_on

# The block tags Kimi's Anthropic endpoint allows, as its 400 lists them (Kimi-K2.5#27).
ANTHROPIC_BLOCKS = frozenset(
    {"image", "server_tool_use", "text", "thinking", "tool_result", "tool_use",
     "web_search_tool_result"}
)  # fmt: skip
EMPTY_THINKING = {"type": "thinking", "thinking": "", "signature": ""}


def normalize_anthropic_for_kimi(
    body: dict, *, max_tools: int = 128, missing_reasoning: str = "backfill"
) -> Normalized:
    """``body`` (an Anthropic Messages request) fixed for Kimi's Anthropic endpoint;
    ``missing_reasoning`` is the ``[kimi]`` switch of rule 3."""
    out = dict(body)
    changes: list[str] = []
    tools = out.get("tools")
    if isinstance(tools, list) and len(tools) > max_tools:
        pinned = (out.get("tool_choice") or {}).get("name")
        keep = tools[:max_tools]
        if pinned and all(t.get("name") != pinned for t in keep if isinstance(t, dict)):
            keep = keep[: max_tools - 1] + [t for t in tools if t.get("name") == pinned][:1]
        dropped = [t.get("name") for t in tools if t not in keep and isinstance(t, dict)]
        out["tools"] = keep
        changes.append(
            f"dropped {len(dropped)} tools beyond Kimi's {max_tools}-tool limit: "
            + ", ".join(str(n) for n in dropped)
        )
    messages = out.get("messages")
    if isinstance(messages, list):
        fixed = [_message(m, changes) for m in messages]
        fixed = _thinking(out, fixed, missing_reasoning, changes)
        if fixed != messages:
            out["messages"] = fixed
    return Normalized(out if changes else body, tuple(changes))


def _thinking(out: dict, messages: list, missing: str, changes: list[str]) -> list:
    model = out.get("model") if isinstance(out.get("model"), str) else ""
    kind = out["thinking"].get("type") if isinstance(out.get("thinking"), dict) else None
    if not thinking_on(model.strip().lower(), "enabled" if kind == "adaptive" else kind):
        return messages
    lacking = [i for i, m in enumerate(messages) if _tool_turn_without_thinking(m)]
    if not lacking:
        return messages
    if missing == "disable_thinking" and not model.strip().lower().startswith(THINKING_ALWAYS):
        out["thinking"] = {"type": "disabled"}
        changes.append(
            "turned thinking off: an assistant tool_use turn has no thinking block "
            '([kimi] missing_reasoning = "disable_thinking")'
        )
        return messages
    fixed = list(messages)
    for i in lacking:
        fixed[i] = {**fixed[i], "content": [dict(EMPTY_THINKING), *fixed[i]["content"]]}
    changes.append(
        f"added an empty thinking block to {len(lacking)} assistant tool_use turns: thinking is "
        'on and Kimi 400s "reasoning_content is missing" (⚠ empty accepted: unverified)'
    )
    return fixed


def _tool_turn_without_thinking(m: Any) -> bool:
    if not isinstance(m, dict) or m.get("role") != "assistant":
        return False
    kinds = {b.get("type") for b in m.get("content") or [] if isinstance(b, dict)}
    return isinstance(m.get("content"), list) and "tool_use" in kinds and "thinking" not in kinds


def _text(block: dict) -> str | None:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        return source["data"]
    if isinstance(block.get("text"), str):
        return block["text"]
    inner = block.get("content")
    if isinstance(inner, list):
        texts = [b["text"] for b in inner if isinstance(b, dict) and isinstance(b.get("text"), str)]
        return "\n".join(texts) if texts else None
    return inner if isinstance(inner, str) else None


def _blocks(blocks: list, changes: list[str]) -> list:
    kept = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(block, dict) or not isinstance(kind, str) or kind in ANTHROPIC_BLOCKS:
            if kind == "tool_result" and isinstance(block.get("content"), list):
                inner = _blocks(block["content"], changes)
                if inner != block["content"]:
                    block = {**block, "content": inner or ""}
            kept.append(block)
            continue
        text = _text(block)
        if text:
            kept.append({"type": "text", "text": text})
            changes.append(f"converted a {kind} block to text")
        else:
            changes.append(f"dropped a {kind} block")
    return kept


def _message(message: Any, changes: list[str]) -> Any:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    blocks = _blocks(message["content"], changes)
    return message if blocks == message["content"] else {**message, "content": blocks}
