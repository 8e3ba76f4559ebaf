"""ccusage-style views of usage: per month (from the ``daily`` rollups, pruned days included),
per session (conversation) and per 5-hour block (both from raw ``requests`` rows, so within the
retention period). Every view is a list of dicts with the same sums, ready for a table or JSON.

A **block** follows ccusage: it starts at the hour (UTC) of its first request and lasts 5 hours;
the first request at or after its end starts the next block. Counted rows only (a duplicate
response is not counted twice).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlite_utils

from kimi_intercept.reports.data import Facts, range_where
from kimi_intercept.storage.titles import conversation_titles

BLOCK = timedelta(hours=5)
#: The sums every view row carries (tokens are counts; ``cost_usd`` is USD of priced rows,
#: ``None`` when nothing was priced; ``unpriced`` counts requests with tokens and no price).
VIEW_SUMS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd",
             "unpriced")  # fmt: skip


def month_rows(facts: Facts) -> list[dict[str, Any]]:
    """One row per month ``YYYY-MM`` (oldest first)."""
    out: dict[str, dict[str, Any]] = {}
    for d in facts.group("day"):
        row = out.setdefault(d["day"][:7], _empty(month=d["day"][:7]))
        for k in VIEW_SUMS:
            if k == "cost_usd":
                if d[k] is not None:
                    row[k] = (row[k] or 0.0) + d[k]
            else:
                row[k] += d[k]
    return [_rounded(out[k]) for k in sorted(out)]


_RAW = """
SELECT started_at, conversation_id, conversation_title, client, model, prompt_tokens,
       completion_tokens, cached_tokens, cost_usd
FROM requests {where} ORDER BY started_at
"""


def _raw(db: sqlite_utils.Database, since: str | None, until: str | None) -> list[dict]:
    if not db.table("requests").exists():
        return []
    where, params = range_where(since, until, "duplicate_of IS NULL")
    return list(db.query(_RAW.format(where=where), params))


def _add(row: dict[str, Any], r: dict[str, Any]) -> None:
    row["requests"] += 1
    for k in ("prompt_tokens", "completion_tokens", "cached_tokens"):
        row[k] += r[k] or 0
    if r["cost_usd"] is not None:
        row["cost_usd"] = (row["cost_usd"] or 0.0) + r["cost_usd"]
    elif r["prompt_tokens"] or r["completion_tokens"]:
        row["unpriced"] += 1
    row["last"] = r["started_at"]
    if r["model"] and r["model"] not in row["models"]:
        row["models"].append(r["model"])


def session_rows(
    db: sqlite_utils.Database, since: str | None = None, until: str | None = None
) -> list[dict[str, Any]]:
    """One row per conversation (``session``: its id; ``title``, ``client``, ``first`` and
    ``last`` ISO 8601 UTC, ``models``), most recent activity first. Requests without a
    conversation id are one ``(none)`` session."""
    out: dict[str, dict[str, Any]] = {}
    for r in _raw(db, since, until):
        key = r["conversation_id"] or "(none)"
        row = out.get(key)
        if row is None:
            row = out[key] = _empty(session=key, title=r["conversation_title"],
                                    client=r["client"], first=r["started_at"])  # fmt: skip
        elif row["title"] is None:
            row["title"] = r["conversation_title"]
        _add(row, r)
    # Only a conversation's first stored row carries its title (m009), maybe outside the range.
    untitled = [k for k, row in out.items() if row["title"] is None and k != "(none)"]
    for key, title in conversation_titles(db, untitled).items():
        out[key]["title"] = title
    return sorted((_rounded(r) for r in out.values()), key=lambda r: r["last"], reverse=True)


def block_rows(
    db: sqlite_utils.Database, since: str | None = None, until: str | None = None
) -> list[dict[str, Any]]:
    """One row per 5-hour block (``block``: its start, ``end``, ISO 8601 UTC), oldest first."""
    out: list[dict[str, Any]] = []
    end: datetime | None = None
    for r in _raw(db, since, until):
        at = _parse(r["started_at"])
        if end is None or at >= end:
            start = at.replace(minute=0, second=0, microsecond=0)
            end = start + BLOCK
            out.append(_empty(block=_iso(start), end=_iso(end), first=r["started_at"]))
        _add(out[-1], r)
    return [_rounded(r) for r in out]


def _empty(**keys: Any) -> dict[str, Any]:
    return {**keys, "requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "cached_tokens": 0, "cost_usd": None, "unpriced": 0, "models": []}  # fmt: skip


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    if row["cost_usd"] is not None:
        row["cost_usd"] = round(row["cost_usd"], 9)
    if not row["models"]:
        row.pop("models")
    return row


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")
