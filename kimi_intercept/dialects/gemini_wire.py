"""Gemini dialect, shared helpers: lenient JSON reading and writing (``_dict``, ``_dumps``),
used by the request side (:mod:`.gemini`), the answers (:mod:`.gemini_stream`) and native
metering (:mod:`.gemini_meter`). A leaf: it imports none of them.

Sources: https://ai.google.dev/api/generate-content (request and response objects).
"""

from __future__ import annotations

import json
from typing import Any


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
