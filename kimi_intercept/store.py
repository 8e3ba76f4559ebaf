"""The SQLite store: one row per client request, one row per upstream attempt.

The schema is a public contract — reports and ad-hoc SQL query it — and only changes through
``migrations`` (one small function per change, applied by :func:`open_db`).

Writes happen off the proxy's event loop: :class:`StoreWriter` owns one thread and one
connection, fed by a queue. ``put()`` costs microseconds and never raises; the thread writes
whatever has queued up in one transaction. Readers (the report) use :func:`open_readonly`.

Errors::

    FileNotFoundError
     └── DatabaseNotFound      open_readonly() on a path with no database
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
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
REQUEST_COLUMNS: dict[str, type] = {**_M001_REQUEST_COLUMNS, **_M002_REQUEST_COLUMNS}

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
_Item = tuple[dict[str, Any], list[dict[str, Any]]]


class StoreWriter:
    """Writes request and attempt rows from one background thread.

    Only keys that are table columns are written; any other key (an API key included) is
    dropped, logged once per key name at debug level. A non-number in a numeric column is
    written as NULL with a warning. ``details`` may be a dict: it is stored as JSON. An
    attempt without ``request_id``/``attempt`` gets the request's id and its 1-based position.

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

    def put(self, request: dict[str, Any], attempts: Sequence[dict[str, Any]] = ()) -> None:
        """Queue one request and its attempts. Never blocks, never raises."""
        try:
            if self._closed:
                logger.warning("store closed; request %s was not recorded", request.get("id"))
                return
            self._queue.put((dict(request), [dict(a) for a in attempts]))
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
        for request, request_attempts in batch:
            row = self._request_row(request)
            requests.append(row)
            for n, attempt in enumerate(request_attempts, start=1):
                attempts.append(self._attempt_row(attempt, row["id"], n))
        error = self._insert_with_retries(db, requests, attempts)
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


def _ids(rows: Iterable[Any], limit: int = 5) -> str:
    ids = [str((row[0] if isinstance(row, tuple) else row).get("id")) for row in rows]
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
