"""The SQLite store: one row per client request, one row per upstream attempt, the sanitizer's
masked originals and savings, and daily rollups that outlive pruned rows.

The schema is a public contract — reports and ad-hoc SQL query it — and only changes through
``migrations`` (one small function per change, applied by :func:`open_db`).

Writes happen off the proxy's event loop: :class:`StoreWriter` owns one thread and one
connection, fed by a queue. ``put()`` costs microseconds and never raises; the thread writes
whatever has queued up in one transaction. Readers (the report) use :func:`open_readonly`.

Counting rule: a request whose ``(provider, response_id)`` was already recorded gets
``duplicate_of`` set to the first row's id (a trigger, so every way of inserting obeys it);
every aggregate counts ``duplicate_of IS NULL`` rows only, so a replayed or retried response
is counted once.

Totals: triggers keep ``daily`` (per day × provider × model × client × route × usage source)
and ``daily_savings`` (per day × tool) equal to the sums over counted rows, on every insert
and update, so reports read a few thousand rows instead of millions.

Retention (:func:`prune`): raw rows older than ``[storage] retention_days`` are deleted and the
file compacted with ``VACUUM``; their totals stay in ``daily`` / ``daily_savings``.

Errors::

    FileNotFoundError
     └── DatabaseNotFound      open_readonly() on a path with no database
    ConfigError                retention_days() on a bad ``[storage] retention_days``
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

logger = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 5000

#: ``requests`` columns in table order, with their Python types (sqlite-utils: str → TEXT,
#: int → INTEGER, float → REAL).
_M001_REQUEST_COLUMNS: dict[str, type] = {
    "id": str,
    "started_at": str,  # ISO 8601 UTC, "2026-11-21T23:54:42.123Z"
    "client": str,  # from User-Agent, "openai-python/1.2"
    "client_host": str,
    "client_model": str,  # the model the client asked for
    "provider": str,  # the provider that answered (last attempt)
    "model": str,  # the model that answered
    "status_code": int,
    "outcome": str,  # ok | error | incomplete | client_abort
    "attempts": int,
    "fallback_used": int,  # 0/1
    "ttft_ms": float,
    "duration_ms": float,
    "prompt_tokens": int,
    "completion_tokens": int,
    "cached_tokens": int,
    "reasoning_tokens": int,
    "usage_source": str,  # provider | estimate | NULL
    "cost_usd": float,  # NULL = unpriced, never 0 for unknown
    "route": str,  # reroute | passthrough
    "stream": int,  # 0/1
    "response_id": str,
    "host": str,  # the host the client called, "api.openai.com"
    "error": str,
    "details": str,  # JSON object of provider extras
}
# Columns added by later migrations, in order; REQUEST_COLUMNS is the table as it is now.
_M002_REQUEST_COLUMNS: dict[str, type] = {
    "dialect": str,  # the client's wire dialect: openai | anthropic | gemini
}
_M003_REQUEST_COLUMNS: dict[str, type] = {
    "conversation_id": str,  # hex SHA-256 of the session header or the conversation's prefix
    "conversation_title": str,  # start of the first user message (raw; reports escape it)
    "context_window": int,  # tokens, of the model that answered
    "tokens_before_sanitize": int,  # prompt tokens before the sanitizer (estimate)
    "tokens_after_sanitize": int,  # ... and after it
    "memory_tokens": int,  # prompt tokens that are memory/MCP context (estimate)
    "prompt_tokens_estimate": int,  # our tokenizer's count, also when the provider gave usage
    "completion_tokens_estimate": int,  # (both known: calibration learns from the row)
    "cost_source": str,  # NULL = our price table at started_at; "ledger" = an imported file's
    "duplicate_of": str,  # set by a trigger: id of the first row with this provider+response_id
}
REQUEST_COLUMNS: dict[str, type] = {
    **_M001_REQUEST_COLUMNS,
    **_M002_REQUEST_COLUMNS,
    **_M003_REQUEST_COLUMNS,
}

#: ``attempts`` columns in table order.
ATTEMPT_COLUMNS: dict[str, type] = {
    "id": int,
    "request_id": str,
    "attempt": int,  # 1-based
    "provider": str,
    "model": str,
    "started_at": str,
    "status_code": int,
    "error": str,
    "duration_ms": float,
}

#: ``masked``: one row per distinct tool output the sanitizer replaced (primary key: its hash).
MASKED_COLUMNS: dict[str, type] = {
    "id": str,  # content hash of the original
    "created_at": str,  # ISO 8601 UTC
    "tool": str,  # Bash, Grep, Read…
    "kind": str,  # what was done: truncate, collapse…
    "dialect": str,
    "lines": int,  # of the original
    "bytes": int,  # of the original
    "tokens_before": int,
    "tokens_after": int,
    "original": bytes,  # zlib-compressed by the writer; read it with read_masked()
    "request_id": str,  # the first request that carried it
}

#: ``savings``: what the sanitizer removed from one request, per tool.
SAVINGS_COLUMNS: dict[str, type] = {
    "request_id": str,
    "tool": str,
    "items": int,
    "tokens_before": int,
    "tokens_after": int,
}

#: ``shadow``: one request mirrored to a second provider in shadow mode (m004), side by side
#: with what the client got.
SHADOW_COLUMNS: dict[str, type] = {
    "id": str,
    "request_id": str,
    "started_at": str,
    "primary_provider": str,
    "primary_model": str,
    "primary_outcome": str,
    "primary_ttft_ms": float,
    "primary_duration_ms": float,
    "primary_cost_usd": float,
    "shadow_provider": str,
    "shadow_model": str,
    "status_code": int,
    "outcome": str,  # ok | error
    "error": str,
    "ttft_ms": float,
    "duration_ms": float,
    "prompt_tokens": int,
    "completion_tokens": int,
    "cached_tokens": int,
    "cost_usd": float,
    "similarity": float,  # word-set Jaccard of the two answers, 0..1
}

#: Tables :meth:`StoreWriter.put` accepts in ``extra``, with their columns and primary key.
EXTRA_TABLES: dict[str, tuple[dict[str, type], tuple[str, ...]]] = {
    "masked": (MASKED_COLUMNS, ("id",)),
    "savings": (SAVINGS_COLUMNS, ("request_id", "tool")),
    "shadow": (SHADOW_COLUMNS, ("id",)),
}

# m003 builds its tables, triggers and backfill from the definitions below. They are part of
# that migration: a later schema change adds a migration that alters the table and recreates
# the triggers, after copying what m003 needs under _M003_* names, so m003 stays as released.

#: Keys of a ``daily`` row; NULL is stored as "" so the key stays unique.
DAILY_KEYS = ("day", "provider", "model", "client", "route", "usage_source")
#: Sums kept per ``daily`` row, over counted requests (``duplicate_of IS NULL``).
DAILY_SUMS: dict[str, type] = {
    "requests": int,
    "ok": int,
    "errors": int,
    "incomplete": int,
    "client_abort": int,
    "fallbacks": int,
    "prompt_tokens": int,
    "completion_tokens": int,
    "cached_tokens": int,
    "reasoning_tokens": int,
    "cost_usd": float,  # of priced requests; NULL until one is priced
    "priced": int,  # requests with a cost
    "unpriced": int,  # requests with tokens but no price
    "estimated": int,  # requests with usage_source = 'estimate'
    # calibration inputs: rows with both the provider's usage and our estimate
    "calib_samples": int,
    "calib_prompt_tokens": int,
    "calib_prompt_estimate": int,
    "calib_completion_tokens": int,
    "calib_completion_estimate": int,
}
DAILY_SAVINGS_COLUMNS: dict[str, type] = {
    "day": str,
    "tool": str,
    "items": int,
    "tokens_before": int,
    "tokens_after": int,
}


def _keys_sql(x: str = "") -> list[str]:
    """``daily`` key expressions over a requests row (``x``: ``new``, ``old``, an alias)."""
    p = f"{x}." if x else ""
    return [f"coalesce(substr({p}started_at, 1, 10), '')"] + [
        f"coalesce({p}{k}, '')" for k in DAILY_KEYS[1:]
    ]


def _contributions_sql(x: str = "") -> dict[str, str]:
    """What one requests row adds to each ``daily`` sum (``x`` as in :func:`_keys_sql`)."""
    p = f"{x}." if x else ""
    pair = {
        side: f"({p}usage_source = 'provider' AND {p}{side}_tokens IS NOT NULL "
        f"AND {p}{side}_tokens_estimate > 0)"
        for side in ("prompt", "completion")
    }
    return {
        "requests": "1",
        "ok": f"coalesce({p}outcome = 'ok', 0)",
        "errors": f"coalesce({p}outcome = 'error', 0)",
        "incomplete": f"coalesce({p}outcome = 'incomplete', 0)",
        "client_abort": f"coalesce({p}outcome = 'client_abort', 0)",
        "fallbacks": f"coalesce({p}fallback_used, 0)",
        "prompt_tokens": f"coalesce({p}prompt_tokens, 0)",
        "completion_tokens": f"coalesce({p}completion_tokens, 0)",
        "cached_tokens": f"coalesce({p}cached_tokens, 0)",
        "reasoning_tokens": f"coalesce({p}reasoning_tokens, 0)",
        "cost_usd": f"{p}cost_usd",
        "priced": f"({p}cost_usd IS NOT NULL)",
        "unpriced": f"({p}cost_usd IS NULL AND (coalesce({p}prompt_tokens, 0) > 0 "
        f"OR coalesce({p}completion_tokens, 0) > 0))",
        "estimated": f"coalesce({p}usage_source = 'estimate', 0)",
        "calib_samples": f"coalesce({pair['prompt']} OR {pair['completion']}, 0)",
        "calib_prompt_tokens": f"CASE WHEN {pair['prompt']} THEN {p}prompt_tokens ELSE 0 END",
        "calib_prompt_estimate": f"CASE WHEN {pair['prompt']} "
        f"THEN {p}prompt_tokens_estimate ELSE 0 END",
        "calib_completion_tokens": f"CASE WHEN {pair['completion']} "
        f"THEN {p}completion_tokens ELSE 0 END",
        "calib_completion_estimate": f"CASE WHEN {pair['completion']} "
        f"THEN {p}completion_tokens_estimate ELSE 0 END",
    }


#: Rows that teach calibration: the provider's usage and our estimate are both there.
CALIB = (
    "usage_source = 'provider' AND (prompt_tokens_estimate > 0 OR completion_tokens_estimate > 0)"
)

#: Sums over counted ``requests`` rows, named like ``DAILY_SUMS``: ``daily`` as it would be
#: computed from the raw rows (the triggers keep it equal to this).
COUNTED_SUMS_SQL = ",\n".join(
    f"sum({e}) AS {n}" if n == "cost_usd" else f"coalesce(sum({e}), 0) AS {n}"
    for n, e in _contributions_sql().items()
)
#: ``daily`` keys over ``requests``.
DAILY_KEYS_SQL = ", ".join(f"{e} AS {k}" for k, e in zip(DAILY_KEYS, _keys_sql(), strict=True))


def _daily_upsert_sql(select: str) -> str:
    """``INSERT INTO daily … {select} ON CONFLICT … DO UPDATE`` adding the new sums."""
    add = ", ".join(
        f"{s} = CASE WHEN excluded.{s} IS NULL THEN {s} WHEN {s} IS NULL THEN excluded.{s} "
        f"ELSE {s} + excluded.{s} END"
        if s == "cost_usd"
        else f"{s} = {s} + excluded.{s}"
        for s in DAILY_SUMS
    )
    keys = ", ".join(DAILY_KEYS)
    return (
        f"INSERT INTO daily ({keys}, {', '.join(DAILY_SUMS)}) {select} "
        f"ON CONFLICT ({keys}) DO UPDATE SET {add}"
    )


def _row_select(x: str, sign: str = "") -> str:
    sums = ", ".join(f"{sign}({e})" if sign else e for e in _contributions_sql(x).values())
    return f"SELECT {', '.join(_keys_sql(x))}, {sums}"


migrations = sqlite_utils.Migrations("kimi_intercept")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    requests = db.table("requests")
    requests.create(_M001_REQUEST_COLUMNS, pk="id")
    requests.create_index(["started_at"])
    requests.create_index(["provider", "started_at"])
    requests.create_index(["model", "started_at"])
    attempts = db.table("attempts")
    attempts.create(ATTEMPT_COLUMNS, pk="id", foreign_keys=[("request_id", "requests", "id")])
    attempts.create_index(["request_id"])


@migrations()
def m002_requests_dialect(db: sqlite_utils.Database) -> None:
    for name, kind in _M002_REQUEST_COLUMNS.items():
        db.table("requests").add_column(name, kind)


# Same provider + response id as an earlier counted row: a duplicate.
_SAME_RESPONSE = """FROM requests o WHERE o.response_id = new.response_id
      AND o.provider IS new.provider AND o.rowid != new.rowid AND o.duplicate_of IS NULL"""

# Every insert: mark a replayed response, then add a counted row to its day's totals.
_INSERT_TRIGGER = f"""
CREATE TRIGGER requests_insert AFTER INSERT ON requests
BEGIN
  UPDATE requests SET duplicate_of = (
    SELECT o.id {_SAME_RESPONSE} ORDER BY o.started_at, o.id LIMIT 1)
  WHERE rowid = new.rowid AND new.response_id IS NOT NULL AND new.duplicate_of IS NULL
    AND EXISTS (SELECT 1 {_SAME_RESPONSE});
  {
    _daily_upsert_sql(
        _row_select("r") + " FROM requests r WHERE r.rowid = new.rowid AND r.duplicate_of IS NULL"
    )
};
END
"""

# A changed row (an importer updating a grown task): take the old numbers out, put the new in.
_UPDATE_TRIGGER = f"""
CREATE TRIGGER requests_update AFTER UPDATE OF started_at, provider, model, client, route,
  usage_source, outcome, fallback_used, prompt_tokens, completion_tokens, cached_tokens,
  reasoning_tokens, cost_usd, prompt_tokens_estimate, completion_tokens_estimate ON requests
BEGIN
  {_daily_upsert_sql(_row_select("old", "-") + " WHERE old.duplicate_of IS NULL")};
  {_daily_upsert_sql(_row_select("new") + " WHERE new.duplicate_of IS NULL")};
END
"""

_SAVINGS_UPSERT = """
INSERT INTO daily_savings (day, tool, items, tokens_before, tokens_after)
SELECT coalesce(substr(r.started_at, 1, 10), ''), coalesce({x}tool, ''),
  coalesce(sum({x}items), 0), coalesce(sum({x}tokens_before), 0), coalesce(sum({x}tokens_after), 0)
FROM {source}
WHERE {where}
GROUP BY 1, 2
ON CONFLICT (day, tool) DO UPDATE SET items = items + excluded.items,
  tokens_before = tokens_before + excluded.tokens_before,
  tokens_after = tokens_after + excluded.tokens_after
"""

_SAVINGS_TRIGGER = f"""
CREATE TRIGGER savings_insert AFTER INSERT ON savings
BEGIN
  {
    _SAVINGS_UPSERT.format(
        x="new.", source="requests r", where="r.id = new.request_id AND r.duplicate_of IS NULL"
    )
};
END
"""

# One row per conversation, over counted requests. ``title``/``client`` are those of its first
# turn; ``last_prompt_tokens``/``context_window`` those of its last.
_CONVERSATIONS_VIEW = """
CREATE VIEW conversations AS
SELECT
  conversation_id AS id,
  (SELECT r.conversation_title FROM requests r WHERE r.conversation_id = c.conversation_id
     AND r.duplicate_of IS NULL ORDER BY r.started_at, r.id LIMIT 1) AS title,
  (SELECT r.client FROM requests r WHERE r.conversation_id = c.conversation_id
     AND r.duplicate_of IS NULL ORDER BY r.started_at, r.id LIMIT 1) AS client,
  min(started_at) AS first_at,
  max(started_at) AS last_at,
  count(*) AS turns,
  coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
  coalesce(sum(completion_tokens), 0) AS completion_tokens,
  coalesce(sum(cached_tokens), 0) AS cached_tokens,
  sum(cost_usd) AS cost_usd,
  coalesce(sum(cost_usd IS NULL AND (prompt_tokens > 0 OR completion_tokens > 0)), 0) AS unpriced,
  coalesce(sum(fallback_used), 0) AS fallbacks,
  coalesce(sum(outcome != 'ok'), 0) AS not_ok,
  (SELECT r.prompt_tokens FROM requests r WHERE r.conversation_id = c.conversation_id
     AND r.duplicate_of IS NULL ORDER BY r.started_at DESC, r.id DESC LIMIT 1)
     AS last_prompt_tokens,
  (SELECT r.context_window FROM requests r WHERE r.conversation_id = c.conversation_id
     AND r.duplicate_of IS NULL ORDER BY r.started_at DESC, r.id DESC LIMIT 1) AS context_window
FROM requests c
WHERE conversation_id IS NOT NULL AND duplicate_of IS NULL
GROUP BY conversation_id
"""


@migrations()
def m003_accounting(db: sqlite_utils.Database) -> None:
    requests = db.table("requests")
    for name, kind in _M003_REQUEST_COLUMNS.items():
        requests.add_column(name, kind)
    requests.create_index(["conversation_id", "started_at"])
    # Totals come from `daily` now: per-provider/model scans of the raw rows are gone, and
    # these two indexes were ~85 bytes of every row.
    db.execute("DROP INDEX IF EXISTS idx_requests_provider_started_at")
    db.execute("DROP INDEX IF EXISTS idx_requests_model_started_at")
    db.execute(
        "CREATE INDEX idx_requests_response_id ON requests (response_id) "
        "WHERE response_id IS NOT NULL"
    )
    # Small partial indexes: the report's error tables, duplicate count and calibration error
    # read only these rows.
    db.execute("CREATE INDEX idx_requests_not_ok ON requests (started_at) WHERE outcome != 'ok'")
    db.execute(
        "CREATE INDEX idx_requests_duplicates ON requests (started_at) "
        "WHERE duplicate_of IS NOT NULL"
    )
    db.execute(f"CREATE INDEX idx_requests_calibration ON requests (started_at) WHERE {CALIB}")
    db.table("attempts").create_index(["started_at"])
    db.execute("CREATE INDEX idx_attempts_failed ON attempts (request_id) WHERE error IS NOT NULL")
    db.table("masked").create(MASKED_COLUMNS, pk="id")
    db.table("masked").create_index(["request_id"])
    db.table("masked").create_index(["created_at"])
    db.table("savings").create(SAVINGS_COLUMNS, pk=("request_id", "tool"))
    db.table("daily").create(
        {**{k: str for k in DAILY_KEYS}, **DAILY_SUMS}, pk=DAILY_KEYS, not_null=DAILY_KEYS
    )
    db.table("daily_savings").create(
        DAILY_SAVINGS_COLUMNS, pk=("day", "tool"), not_null=("day", "tool")
    )
    # Rows recorded before this migration: mark the later copies of a response, total the rest.
    db.execute(
        """
        UPDATE requests SET duplicate_of = (
          SELECT o.id FROM requests o
          WHERE o.response_id = requests.response_id AND o.provider IS requests.provider
          ORDER BY o.started_at, o.id LIMIT 1)
        WHERE response_id IS NOT NULL
        """
    )
    db.execute("UPDATE requests SET duplicate_of = NULL WHERE duplicate_of = id")
    db.execute(
        _daily_upsert_sql(
            f"SELECT {DAILY_KEYS_SQL}, {COUNTED_SUMS_SQL} FROM requests "
            f"WHERE duplicate_of IS NULL GROUP BY {', '.join(DAILY_KEYS)}"
        )
    )
    db.execute(_INSERT_TRIGGER)
    db.execute(_UPDATE_TRIGGER)
    db.execute(_SAVINGS_TRIGGER)
    db.execute(_CONVERSATIONS_VIEW)


@migrations()
def m004_shadow(db: sqlite_utils.Database) -> None:
    db.table("shadow").create(SHADOW_COLUMNS, pk="id")
    db.table("shadow").create_index(["started_at"])


def daily_from_requests(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """``daily`` recomputed from the raw rows (what the triggers must have kept it equal to,
    for days nothing was pruned from), ordered by its key."""
    keys = ", ".join(DAILY_KEYS)
    sql = (
        f"SELECT {DAILY_KEYS_SQL}, {COUNTED_SUMS_SQL} FROM requests "
        f"WHERE duplicate_of IS NULL GROUP BY {keys} ORDER BY {keys}"
    )
    return list(db.query(sql))


class DatabaseNotFound(FileNotFoundError):
    """Raised by :func:`open_readonly` when no database exists at the path."""


def open_db(
    path: str | Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> sqlite_utils.Database:
    """Open (creating it and its parent folders if needed) the database for writing.

    Sets WAL, ``synchronous=NORMAL`` and ``busy_timeout``, then applies pending migrations.
    The connection belongs to the calling thread.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(path)
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    db.enable_wal()
    db.execute("PRAGMA synchronous=NORMAL")
    migrations.apply(db)
    return db


def open_readonly(path: str | Path) -> sqlite_utils.Database:
    """Open an existing database read-only (``mode=ro``); nothing can be written through it.

    :raises DatabaseNotFound: if there is no file at ``path``
    """
    path = Path(path)
    if not path.is_file():
        raise DatabaseNotFound(
            f"No database at {path.resolve()} - run the proxy or `kimi-intercept demo` first"
        )
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    conn.execute(f"PRAGMA busy_timeout={DEFAULT_BUSY_TIMEOUT_MS}")
    return sqlite_utils.Database(conn)


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()
# (request, attempts, {table: rows}) as queued by put()
_Item = tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[dict[str, Any]]]]


class StoreWriter:
    """Writes request and attempt rows (and the sanitizer's rows) from one background thread.

    Only keys that are table columns are written; any other key (an API key included) is
    dropped, logged once per key name at debug level. A non-number in a numeric column is
    written as NULL with a warning. ``details`` may be a dict: it is stored as JSON. An
    attempt without ``request_id``/``attempt`` gets the request's id and its 1-based position.
    ``extra`` rows (``masked``, ``savings``) without ``request_id`` get the request's id; a row
    whose primary key already exists is ignored (a masked original is stored once per hash);
    ``masked.original`` is given raw (``str`` or ``bytes``) and stored zlib-compressed.

    Failed writes are logged with the request ids and retried with backoff (lock and I/O
    errors); a batch that fails on bad data is written row by row, so one bad row costs only
    itself. Nothing is dropped without a log line naming the request id. A request without an
    ``id`` gets a random one (logged).

    :param path: database file, created and migrated if needed
    :param busy_timeout_ms: how long one write waits for a lock before it counts as failed
    :param retries: how many times a failed write is retried
    :param backoff_s: first retry delay, doubled on each retry
    :raises sqlite3.Error, OSError: if the database cannot be opened
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        retries: int = 4,
        backoff_s: float = 0.25,
        max_batch: int = 2000,
    ) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._unknown_keys_seen: set[tuple[str, str]] = set()
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kimi-intercept-store", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            raise self._open_error

    # -- called from the proxy's event loop -------------------------------------------------

    def put(
        self,
        request: dict[str, Any],
        attempts: Sequence[dict[str, Any]] = (),
        extra: Mapping[str, Sequence[dict[str, Any]]] | None = None,
    ) -> None:
        """Queue one request, its attempts and rows for other tables (``extra``:
        ``{"masked": [...], "savings": [...]}``), all written in one transaction.
        Never blocks, never raises."""
        try:
            if self._closed:
                logger.warning("store closed; request %s was not recorded", request.get("id"))
                return
            more = {table: [dict(r) for r in rows] for table, rows in (extra or {}).items()}
            self._queue.put((dict(request), [dict(a) for a in attempts], more))
        except Exception:
            logger.exception("store: could not queue request %r", request)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything put so far is written (or logged as failed).

        :returns: ``False`` if that did not happen within ``timeout_s``
        """
        if not self._thread.is_alive():
            return self._queue.empty()
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout_s)

    def close(self, timeout_s: float = 5.0) -> bool:
        """Write what is queued, checkpoint the WAL and stop the thread.

        :returns: ``False`` if the thread did not finish within ``timeout_s``
        """
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning(
                "store: writer still busy after %.1fs; unwritten requests may be lost", timeout_s
            )
            return False
        return True

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            db = open_db(self.path, busy_timeout_ms=self._busy_timeout_ms)
        except BaseException as e:  # handed to __init__, which raises it
            self._open_error = e
            self._ready.set()
            return
        self._ready.set()
        stop = False
        try:
            while not stop:
                batch: list[_Item] = []
                markers: list[_Flush] = []
                item = self._queue.get()
                while True:
                    if item is _STOP:
                        stop = True
                    elif isinstance(item, _Flush):
                        markers.append(item)
                    else:
                        batch.append(item)
                    if len(batch) >= self._max_batch:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                try:
                    if batch:
                        self._write(db, batch)
                except Exception:  # the thread must outlive any one batch
                    logger.exception(
                        "store: unexpected error; requests %s not recorded", _ids(batch)
                    )
                finally:
                    for marker in markers:
                        marker.done.set()
        finally:
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                logger.warning("store: WAL checkpoint on close failed: %s", e)
            db.close()

    def _write(self, db: sqlite_utils.Database, batch: list[_Item]) -> None:
        requests: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        extra: dict[str, list[dict[str, Any]]] = {}
        for request, request_attempts, request_extra in batch:
            row = self._request_row(request)
            requests.append(row)
            for n, attempt in enumerate(request_attempts, start=1):
                attempts.append(self._attempt_row(attempt, row["id"], n))
            for table, rows in request_extra.items():
                try:
                    extra.setdefault(table, []).extend(self._extra_rows(table, rows, row["id"]))
                except Exception as e:  # a bad extra row costs only itself, never the request
                    logger.warning(
                        "store: request %s: %s rows not recorded: %s: %s",
                        row["id"],
                        table,
                        type(e).__name__,
                        e,
                    )
        error = self._insert_with_retries(db, requests, attempts, extra)
        if error is None:
            return
        if len(batch) == 1:
            logger.warning(
                "store: request %s not recorded: %s: %s",
                requests[0]["id"],
                type(error).__name__,
                error,
            )
        elif isinstance(error, sqlite3.OperationalError):
            # Locked, read-only, disk full...: row by row would only fail slower.
            logger.error(
                "store: %d requests not recorded after %d retries (%s): %s",
                len(requests),
                self._retries,
                error,
                ", ".join(str(r["id"]) for r in requests),
            )
        else:
            logger.warning(
                "store: batch of %d requests failed (%s: %s); writing them one by one",
                len(batch),
                type(error).__name__,
                error,
            )
            for item in batch:
                self._write(db, [item])

    def _insert_with_retries(
        self,
        db: sqlite_utils.Database,
        requests: list[dict[str, Any]],
        attempts: list[dict[str, Any]],
        extra: dict[str, list[dict[str, Any]]],
    ) -> Exception | None:
        """Insert in one transaction; return the error if it still fails after retries.

        Lock/IO errors (``OperationalError``) are retried; bad data is returned at once.
        """
        delay = self._backoff_s
        for attempt in range(self._retries + 1):
            try:
                db.conn.execute("BEGIN IMMEDIATE")
                try:
                    db.table("requests").insert_all(requests)
                    if attempts:
                        db.table("attempts").insert_all(attempts)
                    for table, rows in extra.items():
                        if rows:
                            db.table(table).insert_all(rows, ignore=True)
                    db.conn.execute("COMMIT")
                except BaseException:
                    db.rollback()
                    raise
                return None
            except sqlite3.OperationalError as e:
                if attempt == self._retries:
                    return e
                logger.warning(
                    "store: writing requests %s failed (%s); retry %d/%d in %.2fs",
                    _ids(requests),
                    e,
                    attempt + 1,
                    self._retries,
                    delay,
                )
                time.sleep(delay)
                delay *= 2
            except (sqlite3.Error, ValueError, TypeError, OverflowError) as e:
                return e
        raise AssertionError("unreachable")

    def _request_row(self, request: dict[str, Any]) -> dict[str, Any]:
        self._note_unknown_keys(request, REQUEST_COLUMNS, "requests")
        row = self._clean(request, REQUEST_COLUMNS, request.get("id"))
        if not row["id"]:
            row["id"] = uuid.uuid4().hex
            logger.warning("store: request without an id; recorded as %s", row["id"])
        return row

    def _attempt_row(self, attempt: dict[str, Any], request_id: Any, n: int) -> dict[str, Any]:
        self._note_unknown_keys(attempt, ATTEMPT_COLUMNS, "attempts")
        row = self._clean(attempt, ATTEMPT_COLUMNS, request_id)
        del row["id"]  # rowid, assigned by SQLite
        if row["request_id"] is None:
            row["request_id"] = request_id
        if row["attempt"] is None:
            row["attempt"] = n
        return row

    def _extra_rows(
        self, table: str, rows: list[dict[str, Any]], request_id: Any
    ) -> list[dict[str, Any]]:
        if table not in EXTRA_TABLES:
            if ("extra", table) not in self._unknown_keys_seen:
                self._unknown_keys_seen.add(("extra", table))
                logger.warning("store: no table %r; its rows are not written", table)
            return []
        columns, pk = EXTRA_TABLES[table]
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        for record in rows:
            self._note_unknown_keys(record, columns, table)
            row = self._clean(record, columns, request_id)
            if row.get("request_id") is None:
                row["request_id"] = request_id
            if "original" in row:
                row["original"] = _compress(row["original"])
            key = tuple(row[k] for k in pk)
            if any(k is None for k in key):
                logger.warning("store: request %s: a %s row without %s", request_id, table, pk)
                continue
            if table == "savings" and key in out:  # one row per tool: add them up
                for name in ("items", "tokens_before", "tokens_after"):
                    if row[name] is not None:
                        out[key][name] = (out[key][name] or 0) + row[name]
                continue
            out.setdefault(key, row)
        return list(out.values())

    def _clean(
        self, record: dict[str, Any], columns: dict[str, type], request_id: Any
    ) -> dict[str, Any]:
        row = {name: record.get(name) for name in columns}
        for name, kind in columns.items():
            value = row[name]
            if kind in (int, float) and value is not None and not isinstance(value, (int, float)):
                logger.warning(
                    "store: request %s: %s=%r is not a number; written as NULL",
                    request_id,
                    name,
                    value,
                )
                row[name] = None
        return row

    def _note_unknown_keys(
        self, record: dict[str, Any], columns: dict[str, type], table: str
    ) -> None:
        for key in record.keys() - columns.keys():
            if (table, key) not in self._unknown_keys_seen:
                self._unknown_keys_seen.add((table, key))
                logger.debug("store: %s has no column %r; that key is not written", table, key)


def _compress(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")  # lone surrogates kept as they were
    return zlib.compress(bytes(value), 6)


def read_masked(db: sqlite_utils.Database, masked_id: str) -> bytes | None:
    """The original bytes of a masked item (``None`` if there is no such row or no original).
    Text was stored as UTF-8 with lone surrogates passed through:
    ``.decode("utf-8", "surrogatepass")`` gives the exact ``str`` back."""
    row = db.execute("SELECT original FROM masked WHERE id = ?", [masked_id]).fetchone()
    return zlib.decompress(row[0]) if row and row[0] is not None else None


def _ids(rows: Iterable[Any], limit: int = 5) -> str:
    ids = [str((row[0] if isinstance(row, tuple) else row).get("id")) for row in rows]
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


# -- retention ------------------------------------------------------------------------------

DEFAULT_RETENTION_DAYS = 90


def retention_days(cfg: Any) -> int | None:
    """``[storage] retention_days`` of a :class:`~kimi_intercept.config.Config` (default 90);
    ``None`` when it is 0 (keep every row).

    :raises ConfigError: if it is not a whole number of days from 0 to 36500
    """
    from kimi_intercept.config import ConfigError

    storage = cfg.raw.get("storage", {}) if isinstance(cfg.raw, Mapping) else {}
    value = storage.get("retention_days", DEFAULT_RETENTION_DAYS)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 36500:
        raise ConfigError(
            f"storage.retention_days must be a whole number of days from 1 to 36500, or 0 to "
            f"keep every row; got {value!r}"
        )
    return value or None


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` did. ``cutoff``: rows that started before this day were pruned."""

    cutoff: str
    requests: int = 0  # raw rows deleted (their totals stay in daily)
    attempts: int = 0
    savings: int = 0
    masked: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    vacuumed: bool = False

    def summary(self) -> str:
        if not (self.requests or self.masked):
            return f"Nothing older than {self.cutoff} to prune."
        return (
            f"Pruned rows older than {self.cutoff}: {self.requests:,} requests (their totals "
            f"stay in daily), {self.attempts:,} attempts, {self.savings:,} savings rows, "
            f"{self.masked:,} masked originals. Database {_mb(self.bytes_before)} → "
            f"{_mb(self.bytes_after)}."
        )


def prune(
    path: str | Path,
    days: int,
    *,
    now: datetime | None = None,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
) -> PruneResult:
    """Keep ``days`` days of raw rows: delete older requests with their attempts, savings and
    masked originals, then ``VACUUM``. Their totals stay in ``daily`` / ``daily_savings``
    (kept up to date on every write), so reports over old days still add up. Days are UTC;
    today counts as one of the ``days``.

    Safe to run while the proxy writes (one ``BEGIN IMMEDIATE`` transaction; ``VACUUM`` waits
    for ``busy_timeout``). Running it twice deletes nothing more.

    :raises ValueError: if ``days`` < 1
    :raises sqlite3.Error: if the database cannot be written
    """
    if days < 1:
        raise ValueError(f"retention must be at least 1 day, got {days}")
    today = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).date()
    cutoff = (today - timedelta(days=days - 1)).isoformat()
    path = Path(path)
    db = open_db(path, busy_timeout_ms=busy_timeout_ms)
    try:
        before = _db_bytes(path)
        old = db.execute(
            "SELECT EXISTS (SELECT 1 FROM requests WHERE started_at < :c) "
            "OR EXISTS (SELECT 1 FROM masked WHERE created_at < :c)",
            {"c": cutoff},
        ).fetchone()[0]
        if not old:
            return PruneResult(cutoff, bytes_before=before, bytes_after=before)
        counts = _delete_before(db, cutoff)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return PruneResult(
        cutoff, **counts, bytes_before=before, bytes_after=_db_bytes(path), vacuumed=True
    )


def _delete_before(db: sqlite_utils.Database, cutoff: str) -> dict[str, int]:
    old_requests = "SELECT id FROM requests WHERE started_at < :c"
    params = {"c": cutoff}
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        counts = {
            "savings": conn.execute(
                f"DELETE FROM savings WHERE request_id IN ({old_requests})", params
            ).rowcount,
            "attempts": conn.execute(
                f"DELETE FROM attempts WHERE request_id IN ({old_requests})", params
            ).rowcount,
            "masked": conn.execute("DELETE FROM masked WHERE created_at < :c", params).rowcount,
            "requests": conn.execute("DELETE FROM requests WHERE started_at < :c", params).rowcount,
        }
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return counts


def prune_on_start(cfg: Any) -> PruneResult | None:
    """The proxy's start hook: prune ``cfg.database`` to ``[storage] retention_days``.

    Never raises (a failure is logged; the proxy starts anyway). ``None`` when retention is
    off (0) or there is no database yet. Cheap when nothing is old enough (one indexed
    lookup); otherwise it takes about as long as a ``VACUUM`` of the file. Call it before
    starting the :class:`StoreWriter`, off the event loop (``asyncio.to_thread``).
    """
    try:
        days = retention_days(cfg)
        if days is None or not Path(cfg.database).is_file():
            return None
        result = prune(cfg.database, days)
    except Exception as e:
        logger.warning("kimi-intercept: pruning %s failed: %s", getattr(cfg, "database", "?"), e)
        return None
    if result.requests or result.masked:
        logger.info("kimi-intercept: %s", result.summary())
    return result


def _db_bytes(path: Path) -> int:
    return sum(
        p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
