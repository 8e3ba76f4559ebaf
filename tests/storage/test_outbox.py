"""The team store's local outbox (no server needed): history queued once when it is created,
every later insert and update queued by triggers, and a row changed while its batch was being
shipped stays queued."""

from __future__ import annotations

import sqlite3

from reportrows import row, write_rows

from kimi_intercept.storage import outbox
from kimi_intercept.storage.team import safe_url


def queued(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT request_id FROM team_outbox ORDER BY 1")]


def test_the_outbox_queues_history_then_every_new_or_changed_row(tmp_path):
    db = tmp_path / "s.db"
    write_rows(db, [(row("old", "2026-11-20T10:00:00.000Z"), [])])
    conn = sqlite3.connect(db)
    assert outbox.ensure_outbox(conn) == 1 and queued(conn) == ["old"]
    assert outbox.ensure_outbox(conn) == 0  # created once
    write_rows(db, [(row("new", "2026-11-21T10:00:00.000Z"), [{"attempt": 1}])])
    batch = outbox.next_batch(conn)
    assert sorted(r["id"] for r in batch["requests"]) == ["new", "old"]
    assert [a["request_id"] for a in batch["attempts"]] == ["new"]
    with conn:  # changed while its batch is on the way: stays queued
        conn.execute("UPDATE requests SET cost_usd = 1.0 WHERE id = 'new'")
    outbox.mark_shipped(conn, batch["queued"])
    assert queued(conn) == ["new"]
    outbox.mark_shipped(conn, outbox.next_batch(conn)["queued"])
    assert queued(conn) == [] and outbox.pending(conn) == 0
    conn.close()


def test_urls_in_messages_have_no_password():
    assert safe_url("postgresql://ada:s3cret@db.internal:5433/usage") == (
        "postgresql://ada:***@db.internal:5433/usage"
    )
    assert safe_url("postgresql://db.internal/usage") == "postgresql://db.internal/usage"
