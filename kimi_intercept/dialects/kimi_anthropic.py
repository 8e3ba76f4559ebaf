"""Make an Anthropic Messages body acceptable to Kimi's Anthropic-compatible endpoint
(``https://api.moonshot.ai/anthropic``, https://platform.kimi.ai/docs/guide/agent-support).

Rules: at most ``max_tools`` tools (128: MoonshotAI/Kimi-K2#90), the one ``tool_choice`` pins
kept; content blocks other than :data:`ANTHROPIC_BLOCKS` — ``document`` (Kimi-K2.5#27: 400),
``tool_reference`` (Kimi-K2#118: 400), and the server-tool, search-result and container blocks
Kimi cannot run ⚠ — become a text block when they carry text (a text ``source``, ``text``, or
text blocks inside ``content``), else are dropped, also inside ``tool_result`` content. Each
change is one line of :attr:`Normalized.changes`, which the caller logs.

Pure; the input is not mutated.
"""

from __future__ import annotations

from typing import Any

from kimi_intercept.dialects.kimi_types import Normalized

# Block types Kimi's Anthropic endpoint takes: the Messages API's client-side ones.
ANTHROPIC_BLOCKS = frozenset(
    {"text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"}
)


def normalize_anthropic_for_kimi(body: dict, *, max_tools: int = 128) -> Normalized:
    """``body`` (an Anthropic Messages request) fixed for Kimi's Anthropic endpoint."""
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
        if fixed != messages:
            out["messages"] = fixed
    return Normalized(out if changes else body, tuple(changes))


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
