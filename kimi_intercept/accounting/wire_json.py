"""JSON from the wire — request bodies, SSE event data, answers — parsed fast, with exactly
``json.loads``'s results and errors.

:func:`loads` decodes with msgspec (https://jcristharif.com/msgspec/, a C decoder: a 700 KB
coding-agent request in ~0.8 ms against ``json.loads``' ~2 ms, an SSE chat-completion chunk in
~1.4 µs against ~7 µs, each timed alone on the project's VM; the planning step of
``benchmarks/big_profile.py``'s next turn went from 2.7 to 1.05 ms). msgspec returns the same
Python values for standard JSON — dicts in key order (the last of duplicate keys wins),
arbitrary-precision integers, correctly rounded floats — and refuses what ``json.loads``
accepts beyond the standard: ``NaN`` / ``Infinity``, numbers beyond the float range
(``1e400``), lone UTF-16 surrogate escapes (``"\\ud83d"``, a JavaScript client's cut emoji), a
UTF-8 byte-order mark.
Whatever msgspec refuses is parsed again by ``json.loads``, so a caller gets ``json.loads``'
value, or its exception (``json.JSONDecodeError`` / ``ValueError``, ``UnicodeDecodeError``,
``RecursionError``, ``TypeError``), and nothing else.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

_decode = msgspec.json.Decoder().decode


def loads(data: str | bytes | bytearray | memoryview) -> Any:
    """``json.loads(data)`` — the same value, or the same exception — decoded by msgspec when
    it can (see the module's docstring)."""
    try:
        return _decode(data)
    except Exception:  # refused by msgspec: json.loads decides (its value or its error)
        return json.loads(data)
