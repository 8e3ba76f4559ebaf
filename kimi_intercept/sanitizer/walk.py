"""Walking request bodies of each dialect to the texts the sanitizer may mask: OpenAI
``role: tool`` content, Anthropic ``tool_result`` blocks, Gemini ``functionResponse`` values, and
the agents' in-text wrappers (Cline ``[tool for …] Result:``, ``<environment_details>``,
``<system-reminder>``, Kimi CLI ``<system>``) — see :mod:`.sanitize` for what is never touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from kimi_intercept.sanitizer.mask import (
    _BOUNDARY_RE,
    _HEADER_ONLY_RE,
    _INSTRUCTION_REMINDER_RE,
    _REMINDER_TOOL_RE,
    _START_RE,
    _TAG_KINDS,
)

# --- walking requests -----------------------------------------------------------------------


class Visitor(Protocol):
    """What the request walkers call for each tool output and each plain user text."""

    def tool(self, text: str, tool: str | None, kind: str, server: str | None) -> str | None:
        """The replacement of a tool output, ``None`` to keep it."""

    def text(self, text: str) -> str | None:
        """The replacement of a user text that may hold wrappers, ``None`` to keep it."""


def rewrite_spans(text: str, visitor: Visitor) -> str | None:
    """``text`` with each in-text wrapper's inside replaced by ``visitor.tool`` (``None``: no
    change). Wrappers: ``<environment_details>``, ``<system-reminder>``, ``<system>`` (the part
    between the tags) and Cline ``[tool for '...'] Result:`` bodies (up to the next header, or
    the next ``<environment_details>``, ``<system-reminder>``, ``<feedback>``,
    ``<user_message>``, ``<answer>`` or ``<task>`` at a line start)."""
    out: list[str] = []
    pos = 0
    changed = False
    search = 0
    while (m := _START_RE.search(text, search)) is not None:
        if tag := m.group("tag"):
            close = text.find(f"</{tag}>", m.end())
            if close < 0:
                search = m.end()
                continue
            start = m.end() + 1 if text.startswith("\n", m.end()) and m.end() < close else m.end()
            end = close - 1 if start < close and text[close - 1] == "\n" else close
            kind, tool = _TAG_KINDS[tag], _TAG_KINDS[tag]
            inner = text[start:end]
            if kind == "system_reminder":
                if _INSTRUCTION_REMINDER_RE.search(inner):
                    search = close
                    continue
                if found := _REMINDER_TOOL_RE.search(inner):
                    tool = found.group(1)
            new = visitor.tool(inner, tool, kind, None)
            resume = close
        else:
            start = m.end() + 1 if text.startswith((" ", "\n"), m.end()) else m.end()
            b = _BOUNDARY_RE.search(text, start)
            end = b.start() if b else len(text)
            tool, server = m.group("tool"), _server(m.group("desc"))
            new = (
                visitor.tool(text[start:end], tool, "tool_result", server) if end > start else None
            )
            resume = max(end, m.end())
        if new is not None:
            out += [text[pos:start], new]
            pos = end
            changed = True
        search = resume
    if not changed:
        return None
    out.append(text[pos:])
    return "".join(out)


def _server(desc: str | None) -> str | None:
    if desc and len(desc) >= 2 and desc[0] == "'" and desc.endswith("'"):
        return desc[1:-1]
    return None


def _text_of(part: Any) -> str | None:
    if isinstance(part, dict) and part.get("type", "text") == "text" and not part.get("thought"):
        text = part.get("text")
        return text if isinstance(text, str) else None
    return None


def _tool_content(content: Any, tool: str | None, visitor: Visitor) -> Any:
    """A tool result's content (string or list of text parts/blocks), rewritten."""
    if isinstance(content, str):
        new = visitor.tool(content, tool, "tool_result", None)
        return content if new is None else new
    if not isinstance(content, list):
        return content
    out = content
    for i, part in enumerate(content):
        text = _text_of(part)
        if text is not None and (new := visitor.tool(text, tool, "tool_result", None)) is not None:
            if out is content:
                out = list(content)
            out[i] = {**part, "text": new}
    return out


def _json_strings(value: Any, tool: str | None, visitor: Visitor) -> Any:
    if isinstance(value, str):
        new = visitor.tool(value, tool, "tool_result", None)
        return value if new is None else new
    if isinstance(value, dict):
        out = value
        for k, v in value.items():
            if (new := _json_strings(v, tool, visitor)) is not v:
                out = dict(value) if out is value else out
                out[k] = new
        return out
    if isinstance(value, list):
        out_list = value
        for i, v in enumerate(value):
            if (new := _json_strings(v, tool, visitor)) is not v:
                out_list = list(value) if out_list is value else out_list
                out_list[i] = new
        return out_list
    return value


def _user_content(content: Any, names: Mapping[str, str], visitor: Visitor) -> Any:
    """User content: a string, or a list of text parts/blocks, Anthropic ``tool_result`` blocks
    and Gemini ``functionResponse`` parts. A text block that is only a Cline header makes the
    next text block that tool's output."""
    if isinstance(content, str):
        new = visitor.text(content)
        return content if new is None else new
    if not isinstance(content, list):
        return content
    out = content
    pending: tuple[str, str | None] | None = None
    for i, part in enumerate(content):
        new_part = part
        text = _text_of(part)
        if text is not None:
            if pending is not None and not _START_RE.match(text):
                new = visitor.tool(text, pending[0], "tool_result", pending[1])
                pending = None
            elif header := _HEADER_ONLY_RE.fullmatch(text):
                pending = (header.group("tool"), _server(header.group("desc")))
                new = None
            else:
                pending = None
                new = visitor.text(text)
            if new is not None:
                new_part = {**part, "text": new}
        elif isinstance(part, dict) and part.get("type") == "tool_result":
            tool = _name(names, part.get("tool_use_id"))
            inner = _tool_content(part.get("content"), tool, visitor)
            if inner is not part.get("content"):
                new_part = {**part, "content": inner}
        elif isinstance(part, dict) and isinstance(part.get("functionResponse"), dict):
            fr = part["functionResponse"]
            tool = fr.get("name") if isinstance(fr.get("name"), str) else None
            response = _json_strings(fr.get("response"), tool, visitor)
            if response is not fr.get("response"):
                new_part = {**part, "functionResponse": {**fr, "response": response}}
        if new_part is not part:
            out = list(content) if out is content else out
            out[i] = new_part
    return out


def _name(names: Mapping[str, str], call_id: Any) -> str | None:
    return names.get(call_id) if isinstance(call_id, str) else None


def note_calls(dialect: str, msg: Any, names: dict[str, str]) -> None:
    """Record the tool-call ids → names an assistant message declares (OpenAI ``tool_calls``,
    Anthropic ``tool_use`` blocks; Gemini responses carry their own name)."""
    if not isinstance(msg, dict) or msg.get("role") != "assistant":
        return
    if dialect == "openai":
        for call in msg.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(call.get("id"), str):
                names[call["id"]] = fn.get("name") if isinstance(fn.get("name"), str) else ""
    elif dialect == "anthropic" and isinstance(msg.get("content"), list):
        for block in msg["content"]:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                if isinstance(block.get("id"), str) and isinstance(block.get("name"), str):
                    names[block["id"]] = block["name"]


def rewrite_message(dialect: str, msg: Any, names: Mapping[str, str], visitor: Visitor) -> Any:
    """One message (a Gemini ``contents`` entry) with its tool outputs and user texts rewritten;
    the same object when nothing changed. Assistant/model and system messages are returned as
    they are."""
    if not isinstance(msg, dict):
        return msg
    role = msg.get("role")
    if dialect == "gemini":
        if role == "model":
            return msg
        parts = _user_content(msg.get("parts"), names, visitor)
        return msg if parts is msg.get("parts") else {**msg, "parts": parts}
    if dialect == "openai" and role in ("tool", "function"):
        tool = _name(names, msg.get("tool_call_id"))
        if tool is None and isinstance(msg.get("name"), str):
            tool = msg["name"]
        content = _tool_content(msg.get("content"), tool, visitor)
    elif role == "user":
        content = _user_content(msg.get("content"), names, visitor)
    else:
        return msg
    return msg if content is msg.get("content") else {**msg, "content": content}


def messages_key(dialect: str) -> str:
    """Where the conversation lives in a request body of ``dialect``."""
    if dialect not in ("openai", "anthropic", "gemini"):
        raise ValueError(f"unknown dialect {dialect!r}; expected openai, anthropic or gemini")
    return "contents" if dialect == "gemini" else "messages"
