"""Several stores as one: :func:`merge_files` copies the rows of SQLite files (one per developer)
into one store file, where the counting rule and the ``daily`` rollups apply as usual, so the
report, ``stats`` and ``export`` read it like any store.

Each copied request is labelled with a developer (by default the file's stem) in the
``developers`` table (``request_id`` → ``developer``), which only merged stores have. A request
id already copied (the same file given twice, or a file copied into another) is counted once:
its second copy, attempts and savings are skipped and counted in :attr:`MergeResult.skipped`.

Pruned days: only raw rows are copied; ``daily`` totals of days whose raw rows a source file
pruned are not (the merged totals cover the raw rows the files still hold).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from kimi_intercept.storage.schema import (
    ATTEMPT_COLUMNS,
    MASKED_COLUMNS,
    REQUEST_COLUMNS,
    SAVINGS_COLUMNS,
    open_db,
)

#: The merged store's label table: which developer each request came from.
DEVELOPERS_SQL = (
    "CREATE TABLE IF NOT EXISTS developers (request_id TEXT PRIMARY KEY, developer TEXT NOT NULL)"
)


@dataclass
class MergeResult:
    """Requests copied and skipped (already present) per developer label."""

    copied: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def developer_label(path: Path) -> str:
    """The developer a file stands for: its stem (``ada.db`` → ``ada``)."""
    return path.stem


def merge_files(
    sources: Sequence[tuple[Path, str]], dest: Path, result: MergeResult | None = None
) -> MergeResult:
    """Copy every ``(file, developer)`` of ``sources`` into the store at ``dest`` (created and
    migrated if needed). A source that is itself a merged store keeps its own labels.

    :raises sqlite3.DatabaseError: a source that is not a store, or cannot be read
    """
    result = result or MergeResult()
    db = open_db(dest)
    try:
        db.execute(DEVELOPERS_SQL)
        for path, developer in sources:
            open_db(path).close()  # an older schema is migrated first
            _merge_one(db, path, developer, result)
    finally:
        db.close()
    return result


def _cols(db: sqlite_utils.Database, schema: str, table: str, wanted: Sequence[str]) -> list[str]:
    have = {r[1] for r in db.execute(f"PRAGMA {schema}.table_info({table})").fetchall()}
    return [c for c in wanted if c in have]


def _merge_one(db: sqlite_utils.Database, path: Path, developer: str, result: MergeResult) -> None:
    conn: sqlite3.Connection = db.conn
    conn.execute("ATTACH DATABASE ? AS src", (str(path),))
    try:
        with conn:
            conn.execute(
                "CREATE TEMP TABLE new_ids AS SELECT id FROM src.requests "
                "WHERE id NOT IN (SELECT id FROM main.requests)"
            )
            new = conn.execute("SELECT count(*) FROM new_ids").fetchone()[0]
            total = conn.execute("SELECT count(*) FROM src.requests").fetchone()[0]
            labelled = _has_table(conn, "src", "developers")
            label = (
                "coalesce((SELECT developer FROM src.developers d WHERE d.request_id = r.id), ?)"
                if labelled
                else "?"
            )
            conn.execute(
                f"INSERT INTO main.developers (request_id, developer) SELECT r.id, {label} "
                "FROM src.requests r WHERE r.id IN (SELECT id FROM new_ids)",
                (developer,),
            )
            cols = ", ".join(_cols(db, "src", "requests", list(REQUEST_COLUMNS)))
            conn.execute(
                f"INSERT INTO main.requests ({cols}) SELECT {cols} FROM src.requests "
                "WHERE id IN (SELECT id FROM new_ids) ORDER BY started_at"
            )
            attempt_cols = [c for c in ATTEMPT_COLUMNS if c != "id"]
            for table, wanted in (("attempts", attempt_cols), ("savings", list(SAVINGS_COLUMNS))):
                if not _has_table(conn, "src", table):
                    continue
                c = ", ".join(_cols(db, "src", table, wanted))
                conn.execute(
                    f"INSERT OR IGNORE INTO main.{table} ({c}) SELECT {c} FROM src.{table} "
                    "WHERE request_id IN (SELECT id FROM new_ids)"
                )
            if _has_table(conn, "src", "masked"):
                c = ", ".join(_cols(db, "src", "masked", list(MASKED_COLUMNS)))
                conn.execute(f"INSERT OR IGNORE INTO main.masked ({c}) SELECT {c} FROM src.masked")
            conn.execute("DROP TABLE temp.new_ids")
        result.copied[developer] = result.copied.get(developer, 0) + new
        result.skipped[developer] = result.skipped.get(developer, 0) + total - new
    finally:
        conn.execute("DETACH DATABASE src")


def _has_table(conn: sqlite3.Connection, schema: str, table: str) -> bool:
    sql = f"SELECT count(*) FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?"
    return bool(conn.execute(sql, (table,)).fetchone()[0])
