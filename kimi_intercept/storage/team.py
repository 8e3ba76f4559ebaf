"""The PostgreSQL team store (``[team] url``): every developer's rows in one database.

Rows travel from the local outbox (:mod:`.outbox`) by idempotent upserts keyed by the request id
(attempts by request id + local attempt id, savings by request id + tool), so shipping the same
row twice — a retry after a lost connection, ``team sync`` over history — changes nothing. The
local SQLite file stays the source of truth: while the server is unreachable rows wait in the
outbox; :class:`TeamShipper` ships in the background and catches up when it is back.

PostgreSQL schema (created and migrated by :func:`migrate`; ``kimi_intercept_schema`` holds the
version): ``requests`` (``developer`` + every local ``requests`` column, primary key ``id``),
``attempts`` (``developer``, ``local_id`` + the local columns, primary key
``(request_id, local_id)``), ``savings`` (``developer`` + the local columns, primary key
``(request_id, tool)``), ``daily`` (``developer`` + the local ``daily`` columns, primary key
``developer`` + its keys: the totals of days whose raw rows were pruned locally, shipped on the
first round and by ``team sync``). Columns added to the local schema later are added here by
the next :func:`migrate` (``ADD COLUMN IF NOT EXISTS``). The sanitizer's masked originals
(content) are never shipped.

Needs ``psycopg`` 3 (``pip install 'kimi-intercept[team]'``). Connection errors are reported
with the URL's password removed (:func:`safe_url`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kimi_intercept.storage import outbox
from kimi_intercept.storage.rollup import DAILY_KEYS, DAILY_SUMS
from kimi_intercept.storage.schema import (
    ATTEMPT_COLUMNS,
    DEFAULT_BUSY_TIMEOUT_MS,
    REQUEST_COLUMNS,
    SAVINGS_COLUMNS,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_PG = {str: "text", int: "bigint", float: "double precision", bytes: "bytea"}
_ATTEMPT = {("local_id" if k == "id" else k): v for k, v in ATTEMPT_COLUMNS.items()}
TABLES: dict[str, tuple[dict[str, type], tuple[str, ...]]] = {
    "requests": ({"developer": str, **REQUEST_COLUMNS}, ("id",)),
    "attempts": ({"developer": str, **_ATTEMPT}, ("request_id", "local_id")),
    "savings": ({"developer": str, **SAVINGS_COLUMNS}, ("request_id", "tool")),
    # totals of days whose raw rows were pruned locally (no raw row left to ship)
    "daily": (
        {"developer": str, **{k: str for k in DAILY_KEYS}, **DAILY_SUMS},
        ("developer", *DAILY_KEYS),
    ),
}


class TeamStoreError(Exception):
    """The team store cannot be reached or written; the message has no password."""


def safe_url(url: str) -> str:
    """``url`` without its password (``postgresql://ada:***@host/db``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str, timeout_s: float = 5.0) -> Any:
    """A psycopg connection (autocommit off). :raises TeamStoreError: naming the server."""
    import psycopg

    try:
        return psycopg.connect(url, connect_timeout=max(1, int(timeout_s)))
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TeamStoreError(f"cannot reach the team store {safe_url(url)}: {first}") from None


def migrate(conn: Any) -> None:
    """Create the tables, or add what the current local schema has and they lack."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(727172)")  # two proxies starting at once
        conn.execute("CREATE TABLE IF NOT EXISTS kimi_intercept_schema (version integer)")
        for table, (cols, key) in TABLES.items():
            defs = ", ".join(f"{c} {_PG[t]}" for c, t in cols.items())
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ({defs}, PRIMARY KEY ({', '.join(key)}))"
            )
            for c, t in cols.items():
                conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {c} {_PG[t]}")
        conn.execute("CREATE INDEX IF NOT EXISTS requests_developer ON requests (developer)")
        conn.execute("CREATE INDEX IF NOT EXISTS requests_started_at ON requests (started_at)")
        conn.execute("DELETE FROM kimi_intercept_schema")
        conn.execute("INSERT INTO kimi_intercept_schema VALUES (%s)", (SCHEMA_VERSION,))


def upsert(conn: Any, table: str, rows: Sequence[dict[str, Any]], developer: str) -> None:
    """Insert or update ``rows`` of ``table`` (local column names) under ``developer``."""
    if not rows:
        return
    cols_types, key = TABLES[table]
    cols = list(cols_types)
    names = ", ".join(cols)
    marks = ", ".join(["%s"] * len(cols))
    update = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in key)
    sql = (
        f"INSERT INTO {table} ({names}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {update}"
    )
    values = []
    for r in rows:
        r = {("local_id" if table == "attempts" and k == "id" else k): v for k, v in r.items()}
        r["developer"] = developer
        values.append(tuple(r.get(c) for c in cols))
    with conn.cursor() as cur:
        cur.executemany(sql, values)


def ship(db_path: Path, url: str, developer: str, batch: int = 500, ensure: bool = True) -> int:
    """Ship everything in the outbox of ``db_path`` (created if needed, history queued) to the
    team store; returns the number of requests shipped. ``ensure=False``: the outbox is known
    to exist (the shipper's later rounds skip the ``CREATE … IF NOT EXISTS``).

    :raises TeamStoreError: the server cannot be reached or refused a write (what was not
        shipped stays in the outbox)
    """
    import psycopg

    local = _local(db_path)
    shipped = 0
    try:
        if ensure:
            outbox.ensure_outbox(local)
        if not outbox.pending(local):
            return 0
        conn = connect(url)
        try:
            migrate(conn)
            if ensure:  # first round, team sync: totals of the days pruned locally
                with conn.transaction():
                    upsert(conn, "daily", pruned_days(local), developer)
            while (b := outbox.next_batch(local, batch))["queued"]:
                with conn.transaction():
                    for table in ("requests", "attempts", "savings"):
                        upsert(conn, table, b[table], developer)
                outbox.mark_shipped(local, b["queued"])
                shipped += len(b["requests"])
        except psycopg.Error as e:
            raise TeamStoreError(f"team store {safe_url(url)}: {str(e).strip()[:300]}") from None
        finally:
            conn.close()
    finally:
        local.close()
    return shipped


def pruned_days(local: sqlite3.Connection) -> list[dict[str, Any]]:
    """``daily`` rows of the days before the oldest raw request (their rows were pruned)."""
    local.row_factory = sqlite3.Row
    oldest = local.execute("SELECT min(substr(started_at, 1, 10)) FROM requests").fetchone()[0]
    sql = "SELECT * FROM daily" + (" WHERE day < ?" if oldest else "")
    return [dict(r) for r in local.execute(sql, (oldest,) if oldest else ())]


def _local(db_path: Path) -> sqlite3.Connection:
    """The local store, never created here (the store writer creates and migrates it)."""
    uri = f"file:{Path(db_path).resolve()}?mode=rw"
    return sqlite3.connect(uri, uri=True, timeout=DEFAULT_BUSY_TIMEOUT_MS / 1000)


def backfill(db_path: Path, url: str, developer: str) -> int:
    """``team sync``: queue every request of ``db_path`` again, then :func:`ship`."""
    local = _local(db_path)
    try:
        outbox.ensure_outbox(local)
        outbox.queue_all(local)
    finally:
        local.close()
    return ship(db_path, url, developer)


def pull(url: str, since: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every team row (requests from ``since``, ``YYYY-MM-DD``, on), by table, as dicts with
    the local column names plus ``developer``.

    :raises TeamStoreError: the server cannot be reached or read
    """
    import psycopg
    from psycopg.rows import dict_row

    conn = connect(url)
    try:
        migrate(conn)
        where, params = ("WHERE started_at >= %s", (since,)) if since else ("", ())
        out = {}
        with conn.cursor(row_factory=dict_row) as cur:
            for table in TABLES:
                if table == "requests":
                    sql = f"SELECT * FROM requests {where}"
                elif table == "daily":
                    sql = "SELECT * FROM daily" + (" WHERE day >= %s" if since else "")
                else:
                    sql = f"SELECT * FROM {table}" + (
                        f" WHERE request_id IN (SELECT id FROM requests {where})" if since else ""
                    )
                cur.execute(sql, params)
                out[table] = [
                    {("id" if k == "local_id" else k): v for k, v in r.items()}
                    for r in cur.fetchall()
                ]
        return out
    except psycopg.Error as e:
        raise TeamStoreError(f"team store {safe_url(url)}: {str(e).strip()[:300]}") from None
    finally:
        conn.close()


class TeamShipper:
    """Ships the outbox every ``interval_s`` seconds from one daemon thread (never raises; an
    unreachable server is one warning per outage, and the rows wait in the outbox)."""

    def __init__(self, db_path: Path, url: str, developer: str, interval_s: float = 30.0):
        self.db_path, self.url, self.developer = Path(db_path), url, developer
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._down = False
        self._ready = False  # the outbox and its triggers exist
        self._thread = threading.Thread(target=self._run, name="kimi-team", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """One last shipment (bounded by ``timeout_s``), then stop."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._once()
            if self._stop.is_set():
                return

    def _once(self) -> None:
        try:
            n = ship(self.db_path, self.url, self.developer, ensure=not self._ready)
            self._ready = True
        except TeamStoreError as e:
            if not self._down:
                log.warning("kimi-intercept: %s; rows wait in the local outbox", e)
            self._down = True
            return
        except sqlite3.Error as e:  # the local file is locked, missing, not migrated yet
            self._ready = False  # a recreated file needs its outbox again
            log.warning("kimi-intercept: cannot read the outbox in %s: %s; retrying in %gs",
                        self.db_path, e, self.interval_s)  # fmt: skip
            return
        except Exception:
            log.exception("kimi-intercept: shipping to the team store failed")
            return
        if self._down and n:
            log.info("kimi-intercept: team store back; %d requests caught up", n)
        self._down = False
