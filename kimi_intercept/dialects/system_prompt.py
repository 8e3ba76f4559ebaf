"""Adding route text to a request's system prompt, in whichever dialect the body is.

``system_prepend`` / ``system_append`` (a routing rule's and a provider's, see
:mod:`kimi_intercept.config.rules`) are joined to the client's system prompt with a blank line
(``"\\n\\n"``). The result depends only on the texts and the client's own system prompt, so every
turn of a conversation sends the same bytes in front of the messages and the provider's prompt
cache keeps hitting.

Per dialect:

- OpenAI chat completions: the leading ``system`` (or ``developer``) message; a string content
  gets the text joined, a list of parts gets text parts before / after; no such message → a
  ``system`` message is inserted first.
- Anthropic Messages: ``system`` (string joined; list of blocks → text blocks before / after,
  a ``cache_control`` breakpoint staying where the client put it); none → a string.
- Gemini: ``systemInstruction`` (or ``system_instruction``) ``parts`` get text parts before /
  after; none → ``{"parts": [...]}``.

Pure: the input is never mutated.
"""

from __future__ import annotations

from typing import Any

SEP = "\n\n"


def add_system_text(body: dict[str, Any], dialect: str, prepend: str, append: str) -> dict:
    """A copy of ``body`` (in ``dialect``: "openai", "anthropic" or "gemini") with ``prepend``
    before and ``append`` after its system prompt; ``body`` itself when both are empty."""
    if not (prepend or append):
        return body
    if dialect == "anthropic":
        return {**body, "system": _joined(body.get("system"), prepend, append, _text_part)}
    if dialect == "gemini":
        key = "system_instruction" if "system_instruction" in body else "systemInstruction"
        inst = body.get(key) if isinstance(body.get(key), dict) else {}
        parts = inst.get("parts") if isinstance(inst.get("parts"), list) else []
        new = [{"text": prepend}] * bool(prepend) + list(parts) + [{"text": append}] * bool(append)
        return {**body, key: {**inst, "parts": new}}
    messages = list(body.get("messages") or [])
    first = messages[0] if messages and isinstance(messages[0], dict) else None
    if first is not None and first.get("role") in ("system", "developer"):
        content = _joined(first.get("content"), prepend, append, _text_part)
        messages[0] = {**first, "content": content}
    else:
        messages.insert(0, {"role": "system", "content": _joined(None, prepend, append, str)})
    return {**body, "messages": messages}


def _text_part(text: str) -> dict[str, str]:  # the same shape in OpenAI and Anthropic
    return {"type": "text", "text": text}


def _joined(system: Any, prepend: str, append: str, part: Any) -> Any:
    """``system`` (a string, a list of parts, or nothing) with the texts around it."""
    if isinstance(system, list):
        return [part(prepend)] * bool(prepend) + system + [part(append)] * bool(append)
    texts = [prepend, system if isinstance(system, str) else "", append]
    return SEP.join(t for t in texts if t)
