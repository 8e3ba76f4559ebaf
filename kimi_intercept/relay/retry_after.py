"""How long a provider asked us to wait: ``retry-after-ms``, ``Retry-After``, the message's
wording and Gemini's ``RetryInfo``, with OpenAI's rate-limit reset headers as a fallback.

Sources: RFC 9110 §10.2.3 (``Retry-After``), https://platform.openai.com/docs/guides/rate-limits
(``x-ratelimit-reset-*``), https://ai.google.dev/gemini-api/docs/rate-limits (``RetryInfo``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import timezone
from email.utils import parsedate_to_datetime

_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_GO_PART = r"\d+(?:\.\d+)?(?:h|ms|us|µs|ns|m|s)"
_GO_DURATION = re.compile(rf"(?:{_GO_PART})+")
_GO_PIECE = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_WAIT_PHRASE = re.compile(
    rf"(?:try again|retry)\s+(?:in|after)\s+"
    rf"(?:(?P<go>(?:{_GO_PART})+)(?![a-z])"
    r"|(?P<num>\d+(?:\.\d+)?)\s*"
    r"(?P<unit>milliseconds?|ms|seconds?|secs?|s|minutes?|mins?|hours?|hrs?|h)\b)",
    re.IGNORECASE,
)
_RETRY_DELAY = re.compile(r'"retryDelay"\s*:\s*"(\d+(?:\.\d+)?)s"')
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def retry_after_s(
    headers: Mapping[str, str],
    message: str | bytes,
    now: float | None = None,
    *,
    status: int | None = None,
) -> float | None:
    """Seconds the provider asked us to wait, or ``None`` when nothing says.

    Explicit statements, largest wins: ``retry-after-ms``, ``Retry-After`` (seconds or
    HTTP-date, against ``now`` in epoch seconds), the message wording ("Please try again in
    1.4s", "please try again after 1 seconds", "try again in 20ms", "Please retry in 28.1s")
    and Gemini's ``RetryInfo.retryDelay`` — ``message`` may be the whole body for that.
    Only when none of those is present and ``status`` is 429: the largest of OpenAI's
    ``x-ratelimit-reset-requests`` / ``-tokens``, which count until the limit is *full* again
    (rate-limits guide), so they are a fallback, not the wait.
    """
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    said: list[float] = []
    ms = _number(lower.get("retry-after-ms"))
    if ms is not None:
        said.append(ms / 1000.0)
    header = lower.get("retry-after")
    if header is not None:
        seconds = _http_retry_after(header, now)
        if seconds is not None:
            said.append(seconds)
    for m in _WAIT_PHRASE.finditer(text):
        if m.group("go"):
            said.append(_go_duration(m.group("go")))
        else:
            said.append(float(m.group("num")) * _word_unit(m.group("unit")))
    said.extend(float(m.group(1)) for m in _RETRY_DELAY.finditer(text))
    if said:
        return max(said)
    if status == 429:
        resets = [
            _reset_header(lower[name])
            for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
            if name in lower
        ]
        known = [r for r in resets if r is not None]
        if known:
            return max(known)
    return None


def _http_retry_after(value: str, now: float | None) -> float | None:
    value = value.strip()
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


def _reset_header(value: str) -> float | None:
    value = value.strip()
    plain = _number(value)
    if plain is not None:
        return plain
    return _go_duration(value) if _GO_DURATION.fullmatch(value) else None


def _go_duration(value: str) -> float:
    return sum(float(n) * _GO_UNITS[u] for n, u in _GO_PIECE.findall(value))


def _word_unit(unit: str) -> float:
    unit = unit.lower()
    if unit.startswith("mil") or unit == "ms":
        return 1e-3
    if unit.startswith("mi"):
        return 60.0
    if unit.startswith("h"):
        return 3600.0
    return 1.0


def _number(value: str | None) -> float | None:
    if value is None or not _NUMBER.fullmatch(value.strip()):
        return None
    n = float(value)
    return n if math.isfinite(n) else None
