"""What a token count is: an integer in ``0 <= n < 2**53``.

Providers' usage objects are trusted only when every count in them is one (issue #11: ``1e30``,
negatives and strings were stored as provider truth, or lost the row with an OverflowError).
"""

from __future__ import annotations

import json
from typing import Any

#: Token counts are integers below 2**53 (exact in JSON doubles and in SQLite); a provider
#: number outside ``0 <= n < MAX_TOKEN_COUNT`` (``1e30``, ``-5``, ``"12"``) is not usage.
MAX_TOKEN_COUNT = 2**53


def is_count(value: Any) -> bool:
    """A token count: a JSON integer (not a bool) in ``0 <= n < 2**53``."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_TOKEN_COUNT


def count_problem(u: Any, keys: tuple[str, ...], where: str = "usage") -> str | None:
    """Why a provider's usage object is not believable: the first of ``keys`` present with a
    value that is neither null nor a token count, e.g. ``"usage.prompt_tokens = 1e+30 is not a
    token count"``; ``None`` when all are fine (or absent). Dotted keys reach into objects."""
    if not isinstance(u, dict):
        return None
    for key in keys:
        value: Any = u
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and not is_count(value):
            return f"{where}.{key} = {json.dumps(value, default=str)[:60]} is not a token count"
    return None
