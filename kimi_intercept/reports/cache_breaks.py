"""The report's cache breaks (the ``cache_breaks`` table, written by the proxy:
:mod:`kimi_intercept.relay.cache_breaks`): how many each client had in the range, how many of
them we caused, and one conversation's breaks with their position and hint."""

from __future__ import annotations

import sqlite3
from typing import Any

import sqlite_utils

from kimi_intercept.reports.data import range_where

_COLUMNS = (
    "request_id, started_at, client, provider, model, previous_cached_ratio, cached_ratio, "
    "previous_prompt_tokens, prompt_tokens, position, role, kind, hint, changed_by, caused_by_us"
)


def client_breaks(
    db: sqlite_utils.Database, since: str | None, until: str | None
) -> list[dict[str, Any]]:
    """Per client (most breaks first): ``client``, ``breaks``, ``ours`` (caused by our sanitizer
    or compression), ``conversations`` with a break, and the most frequent ``hint``."""
    where, params = range_where(since, until)
    try:
        rows = list(
            db.query(
                "SELECT client, count(*) AS breaks, coalesce(sum(caused_by_us), 0) AS ours, "
                "count(DISTINCT conversation_id) AS conversations, "
                "(SELECT b.hint FROM cache_breaks b WHERE b.client IS c.client "
                " GROUP BY b.hint ORDER BY count(*) DESC, b.hint LIMIT 1) AS top_hint "
                f"FROM cache_breaks c {where} GROUP BY client ORDER BY breaks DESC, client",
                params,
            )
        )
    except sqlite3.OperationalError:  # a database from before m008 (read-only: not migrated)
        return []
    return rows


def conversation_breaks(db: sqlite_utils.Database, conversation_id: str) -> list[dict[str, Any]]:
    """One conversation's breaks in time order (columns: the ``cache_breaks`` table's)."""
    try:
        return list(
            db.query(
                f"SELECT {_COLUMNS} FROM cache_breaks WHERE conversation_id = ? "
                "ORDER BY started_at, request_id LIMIT 500",
                [conversation_id],
            )
        )
    except sqlite3.OperationalError:
        return []
