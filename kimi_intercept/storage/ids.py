"""Request ids: :func:`new_request_id` makes the ``requests.id`` of every new row.

A ULID in lowercase: 10 Crockford base32 characters of the UTC time in ms, then 16 of 80
random bits (26 characters, ``"01kbf0v8q3x7m2c9d4e5f6g7h8"``). Ids sort by time, so new rows
are appended at the end of the primary-key index and of ``attempts.request_id``'s (full pages),
and at 80 random bits per millisecond two machines merged into one team store practically
never collide. Rows written before m009 keep their 32-hex uuid4 ids; nothing parses an id.
"""

from __future__ import annotations

import os
import time

#: Crockford's base32, lowercase: ascending in ASCII, so ids sort as their numbers.
ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
ID_LENGTH = 26
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]  # 10 bits -> 2 characters


def new_request_id(now_ms: int | None = None) -> str:
    """A new request id: 26 lowercase base32 characters, time-ordered (see the module).

    :param now_ms: the time to put in it, ms since the Unix epoch (default: now)
    """
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    n = ((ms & (2**48 - 1)) << 80) | int.from_bytes(os.urandom(10), "big")  # 130 bits: 2 zero
    return "".join([_PAIRS[(n >> shift) & 1023] for shift in range(120, -1, -10)])
