"""Anthropic Messages dialect, shared helpers: lenient readers of the JSON of requests and
answers (``_dict``, ``_str``, content ``_blocks``), used by the request side
(:mod:`.anthropic`), the answers (:mod:`.anthropic_stream`) and native metering
(:mod:`.anthropic_meter`). A leaf: it imports none of them.

Sources: content blocks https://docs.claude.com/en/api/messages .
"""

from __future__ import annotations

from typing import Any


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
