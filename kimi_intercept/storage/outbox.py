"""The team store's outbox in the local SQLite file: ``team_outbox`` holds the id of every
request not yet shipped to the team store (:mod:`.team`), filled by triggers on every insert
and update of ``requests`` — so a row is queued by the same transaction that records it, and
nothing recorded while the team store is unreachable is forgotten.

The table and triggers are created by :func:`ensure_outbox` when the team store is first
enabled (they are not part of the migrations: a store without ``[team]`` never has them); the
requests already in the file are then queued too (history is backfilled).
"""

from __future__ import annotations

import sqlite3
from typing import Any

OUTBOX_SQL = (
    "CREATE TABLE IF NOT EXISTS team_outbox (request_id TEXT PRIMARY KEY, queued_at REAL NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS team_outbox_insert AFTER INSERT ON requests BEGIN "
    "INSERT OR REPLACE INTO team_outbox VALUES (new.id, julianday('now')); END",
    "CREATE TRIGGER IF NOT EXISTS team_outbox_update AFTER UPDATE ON requests BEGIN "
    "INSERT OR REPLACE INTO team_outbox VALUES (new.id, julianday('now')); END",
)


def ensure_outbox(conn: sqlite3.Connection) -> int:
    """Create the outbox and its triggers if missing; a new outbox queues every request
    already recorded. Returns how many requests that queued."""
    with conn:
        existed = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'team_outbox'"
        ).fetchone()[0]
        for sql in OUTBOX_SQL:
            conn.execute(sql)
        if existed:
            return 0
        return queue_all(conn)


def queue_all(conn: sqlite3.Connection) -> int:
    """Queue every recorded request (``team sync``'s backfill; shipping is idempotent)."""
    with conn:
        return conn.execute(
            "INSERT OR REPLACE INTO team_outbox SELECT id, julianday('now') FROM requests"
        ).rowcount


def pending(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM team_outbox").fetchone()[0]


def next_batch(conn: sqlite3.Connection, limit: int = 500) -> dict[str, Any]:
    """Up to ``limit`` queued requests, oldest first, with their rows:
    ``{"queued": [(id, queued_at)], "requests": [...], "attempts": [...], "savings": [...]}``."""
    conn.row_factory = sqlite3.Row
    queued = [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT request_id, queued_at FROM team_outbox ORDER BY queued_at LIMIT ?", (limit,)
        )
    ]
    ids = [q[0] for q in queued]
    marks = ",".join("?" * len(ids))

    def rows(sql: str) -> list[dict[str, Any]]:
        return [dict(r) for r in conn.execute(sql.format(marks=marks), ids)] if ids else []

    return {
        "queued": queued,
        "requests": rows("SELECT * FROM requests WHERE id IN ({marks})"),
        "attempts": rows("SELECT * FROM attempts WHERE request_id IN ({marks})"),
        "savings": rows("SELECT * FROM savings WHERE request_id IN ({marks})"),
    }


def mark_shipped(conn: sqlite3.Connection, queued: list[tuple[str, float]]) -> None:
    """Drop shipped ids from the outbox — unless the row changed (was queued again) since."""
    with conn:
        conn.executemany("DELETE FROM team_outbox WHERE request_id = ? AND queued_at = ?", queued)
