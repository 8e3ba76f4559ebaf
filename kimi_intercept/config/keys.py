"""Strict keys: every config table declares the keys it reads, and any other key is an error
that names the key, its table and the closest valid key (:func:`difflib.get_close_matches`)::

    [routing] unknown key `primry` — did you mean `primary`?

The declared sets live next to the code that parses each table (``ROUTING_KEYS`` in
:mod:`.settings`, ``RULE_KEYS`` in :mod:`.rules`, ``SANITIZER_KEYS`` in the sanitizer …); this
module only compares and words the message. Callers raise their own error type with it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


def unknown_key_message(
    table: Mapping[str, Any] | Iterable[str], allowed: Iterable[str], where: str
) -> str | None:
    """The message for the first key of ``table`` not in ``allowed``, or ``None`` if all are.

    ``where`` names the table as the user wrote it, e.g. ``[routing]`` or
    ``routing rule 'fast': match``.
    """
    allowed = sorted(allowed)
    for key in table:
        if key not in allowed:
            return f"{where} unknown key `{key}` — {suggestion(str(key), allowed)}"
    return None


def suggestion(key: str, allowed: Iterable[str]) -> str:
    """``did you mean `x`?`` for the closest of ``allowed``, else the list of valid keys."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    if not allowed:
        return "this table takes no keys"
    return "valid keys: " + ", ".join(allowed)
