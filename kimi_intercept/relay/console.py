"""One console line per finished LLM call, from its ``requests`` row and ``attempts`` rows.

A pure function of the rows the relay hands to the store (columns: :mod:`.storage.schema`), so
the proxy's output and ``kimi-intercept top`` show the same numbers the database holds::

    14:02:11 openai-python conv 3f2a9c "Fix the failing test" kimi/kimi-k2.6 (asked gpt-4o)
      in 12,340 (11,200 cached) out 512 $0.0042 ttft 410 ms 3.2 s masked 1,830

(one line; wrapped here). Then, when they apply: ``fallback after kimi 429`` (the failed or
skipped attempts before the one that answered), ``FAILED 502: <error>`` / ``INCOMPLETE`` /
``CLIENT LEFT`` for an outcome other than ``ok``, ``passthrough`` for a call sent to its own
provider, and ``CACHE BREAK 92%→11% at messages[3] (tool_result): an earlier tool result
rewritten`` when the provider's cache stopped hitting (:func:`.cache_breaks.break_text`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kimi_intercept.relay.cache_breaks import break_text

_ERROR_CHARS = 140


def console_line(
    row: dict[str, Any],
    attempts: Sequence[dict[str, Any]] = (),
    cache_breaks: Sequence[dict[str, Any]] = (),
) -> str:
    """The line for one ``requests`` row (and its ``attempts`` rows, in order; its
    ``cache_breaks`` row, if any).

    Times are the local wall clock of ``started_at`` (ISO 8601 UTC); tokens as counted by the
    provider (or estimated: then marked ``~``); cost in USD (``unpriced`` when NULL); TTFT and
    duration from ``ttft_ms`` / ``duration_ms``; ``masked`` is ``tokens_before_sanitize -
    tokens_after_sanitize`` when the sanitizer removed anything.
    """
    parts = [_clock(row.get("started_at")), short_client(row.get("client"))]
    conv = row.get("conversation_id")
    if conv:
        title = row.get("conversation_title")
        parts.append(f"conv {conv[:6]}" + (f' "{_short(title, 32)}"' if title else ""))
    answered = f"{row.get('provider') or '–'}/{row.get('model') or '–'}"
    asked = row.get("client_model")
    if asked and asked != row.get("model"):
        answered += f" (asked {asked})"
    parts.append(answered)
    parts.append(_tokens(row))
    if row.get("prompt_tokens") is not None or row.get("completion_tokens") is not None:
        parts.append(_usd(row.get("cost_usd")))
    if row.get("ttft_ms") is not None:
        parts.append(f"ttft {_ms(row['ttft_ms'])}")
    if row.get("duration_ms") is not None:
        parts.append(_ms(row["duration_ms"]))
    before, after = row.get("tokens_before_sanitize"), row.get("tokens_after_sanitize")
    if before is not None and after is not None and before > after:
        parts.append(f"masked {before - after:,}")
    if row.get("route") == "passthrough":
        parts.append("passthrough")
    fallback = _fallback(row, attempts)
    if fallback:
        parts.append(fallback)
    outcome = row.get("outcome")
    if outcome == "error":
        err = _short(row.get("error") or "", _ERROR_CHARS)
        parts.append(f"FAILED {row.get('status_code') or ''}: {err}".replace(" :", ":"))
    elif outcome == "incomplete":
        parts.append("INCOMPLETE" + (f": {_short(row['error'], 80)}" if row.get("error") else ""))
    elif outcome == "client_abort":
        parts.append("CLIENT LEFT")
    parts += [break_text(b) for b in cache_breaks]
    return " ".join(p for p in parts if p)


def _fallback(row: dict[str, Any], attempts: Sequence[dict[str, Any]]) -> str:
    if not row.get("fallback_used"):
        return ""
    failed = [
        f"{a.get('provider')} {a.get('status_code') or _kind(a.get('error'))}"
        for a in attempts
        if a.get("error")
    ]
    return "fallback after " + ", ".join(failed) if failed else "fallback"


def _kind(error: str | None) -> str:
    """``"timeout: no first byte…"`` → ``timeout``; ``"skipped: …"`` → ``skipped``."""
    return (error or "failed").split(":", 1)[0][:24]


def _tokens(row: dict[str, Any]) -> str:
    p, c, cached = row.get("prompt_tokens"), row.get("completion_tokens"), row.get("cached_tokens")
    if p is None and c is None:
        return "no usage"
    mark = "~" if row.get("usage_source") == "estimate" else ""
    text = f"in {mark}{_n(p)}"
    if cached:
        text += f" ({cached:,} cached)"
    return f"{text} out {mark}{_n(c)}"


def _n(v: int | None) -> str:
    return "–" if v is None else f"{v:,}"


def _usd(v: float | None) -> str:
    if v is None:
        return "unpriced"
    return f"${v:.5f}" if abs(v) < 0.01 else f"${v:.4f}" if abs(v) < 1 else f"${v:,.2f}"


def _ms(v: float) -> str:
    return f"{v:,.0f} ms" if v < 1000 else f"{v / 1000:.1f} s"


def _clock(iso: str | None) -> str:
    """``2026-11-21T23:54:42.123Z`` → ``23:54:42`` in local time (the raw text if unparsable)."""
    if not iso:
        return "--:--:--"
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return iso[11:19]


def short_client(ua: str | None) -> str:
    """The ``client`` column without its version: ``claude-cli/2.1.3`` → ``claude-cli``,
    ``OpenAI/Python 2.54.0`` → ``OpenAI/Python``."""
    name = (ua or "").strip()
    head, _, tail = name.rpartition(" ")
    if head and tail[:1].isdigit():
        name = head
    product, _, version = name.partition("/")
    if version[:1].isdigit():
        name = product
    return name[:24] or "unknown"


def _short(text: str | None, limit: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
