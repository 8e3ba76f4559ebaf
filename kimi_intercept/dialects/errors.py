"""Reading provider error bodies: the message and codes of every dialect's error shape, with
anything shaped like an API key redacted.

Shapes: OpenAI/Moonshot/DeepSeek/Groq ``{"error": {"message", "type", "code"}}``
(https://platform.openai.com/docs/guides/error-codes), Anthropic ``{"type": "error", "error":
{"type", "message"}}`` (https://docs.anthropic.com/en/api/errors), Gemini ``{"error": {"code",
"message", "status", "details"}}``, also streamed as a one-element array
(https://ai.google.dev/gemini-api/docs/troubleshooting); anything else (an HTML page from a load
balancer) is read as text. Pure functions; never raise.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_MESSAGE = 500  # characters of a provider message kept in rows, logs and client errors


def error_message(body: bytes) -> str:
    """``error.message`` in the OpenAI/Moonshot/DeepSeek/Groq/Anthropic/Gemini shapes, else the
    start of the body as text (HTML tags dropped). Never raises; at most 500 characters."""
    return clip_message(codes_and_message(body)[1])


_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def codes_and_message(body: bytes) -> tuple[frozenset[str], str]:
    """The lower-cased codes an error body carries, and its message (unclipped)."""
    try:  # a stray non-UTF-8 byte in an otherwise JSON body still yields its message
        obj: Any = json.loads(body.decode("utf-8", "replace").lstrip("\ufeff"))
    except (ValueError, RecursionError):
        return frozenset(), _body_start(body)
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        obj = obj[0]  # Gemini streams errors as a one-element array
    if not isinstance(obj, dict):
        return frozenset(), _body_start(body)
    err = obj.get("error")
    codes: set[str] = set()
    source = err if isinstance(err, dict) else obj
    for key in ("type", "code", "status"):
        value = source.get(key)
        if isinstance(value, str) and value:
            codes.add(value.lower())
    details = source.get("details")
    if isinstance(details, dict):  # Anthropic: error.details.error_code
        value = details.get("error_code")
        if isinstance(value, str):
            codes.add(value.lower())
    elif isinstance(details, list):  # Gemini: error.details[].reason (ErrorInfo)
        for item in details:
            if isinstance(item, dict) and isinstance(item.get("reason"), str):
                codes.add(item["reason"].lower())
    codes.discard("error")
    for candidate in (
        err.get("message") if isinstance(err, dict) else err,
        obj.get("message"),
        obj.get("detail"),
    ):
        if isinstance(candidate, str) and candidate.strip():
            return frozenset(codes), candidate.strip()
    return frozenset(codes), _body_start(body)


def _body_start(body: bytes) -> str:
    text = body[: MAX_MESSAGE * 8].decode("utf-8", "replace")
    if text.lstrip().startswith("<"):
        text = _TAG.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{6,}|nvapi-[A-Za-z0-9_\-]{6,}|AIza[0-9A-Za-z_\-]{20,})")


def redact(text: str) -> str:
    """Mask anything shaped like an API key (``sk-…``, ``nvapi-…``, ``AIza…``): providers echo
    the key they were sent in 401 messages, and messages reach logs, rows and status files."""
    return _KEYLIKE.sub(lambda m: m.group(0)[:3] + "…redacted", text)


def clip_message(text: str) -> str:
    """``text`` redacted and cut to :data:`MAX_MESSAGE` characters."""
    text = redact(text)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"
