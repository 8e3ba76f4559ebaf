"""The store writer: :class:`StoreWriter` writes request, attempt and sanitizer rows from one
background thread, off the proxy's event loop; :func:`read_masked` reads a masked original back.

``put()`` costs microseconds and never raises; the thread writes whatever has queued up in one
transaction. The tables, the counting rule and retention: :mod:`kimi_intercept.storage`.
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
from pathlib import Path
from typing import Any

import sqlite_utils

from kimi_intercept.storage.schema import (
    ATTEMPT_COLUMNS,
    DEFAULT_BUSY_TIMEOUT_MS,
    EXTRA_TABLES,
    REQUEST_COLUMNS,
    open_db,
)

logger = logging.getLogger(__name__)


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
