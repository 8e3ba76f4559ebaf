"""The store writer: :class:`StoreWriter` writes request, attempt and sanitizer rows from one
background thread, off the proxy's event loop.

``put()`` costs microseconds and never raises; the thread writes whatever has queued up in one
transaction. The tables, the counting rule and retention: :mod:`kimi_intercept.storage`.

No row is lost to a storage fault: a write that fails on a lock or an I/O error is retried with
backoff, then its rows go to the spool (:mod:`.spool`) and are replayed once the database can
be written again; a batch that fails on bad data is written row by row, and a row the database
refuses is kept in the spool with its error. A database file deleted while running is
recreated. What is queued in memory is bounded (:data:`MAX_PENDING` requests); beyond that the
spool takes it. Only when neither the database nor any spool file can be written are rows held
in memory, and beyond the bound the oldest are dropped with an error line naming them.
"""

from __future__ import annotations

import collections
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from kimi_intercept.storage.connection import Connection
from kimi_intercept.storage.rows import Entry, RowMaker, ids, insert_entries
from kimi_intercept.storage.schema import DEFAULT_BUSY_TIMEOUT_MS
from kimi_intercept.storage.spool import Spool, is_fault

logger = logging.getLogger(__name__)

#: Requests waiting in memory at most (queued plus held); beyond it the spool takes them.
MAX_PENDING = 10_000
#: Seconds between attempts to write to a database that failed (reopen, then replay the spool).
RETRY_S = 5.0
#: Seconds the writer sleeps after a row arrives, then writes all that came meanwhile in one
#: transaction: each wake-up of the writer thread costs the proxy's loop a GIL hand-off, so rows
#: are written a few at a time under load (a flush or close writes at once).
LINGER_S = 0.2


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()
# (request, attempts, {table: rows}) as queued by put()
_Item = tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[dict[str, Any]]]]


class StoreWriter:
    """Writes request and attempt rows (and the sanitizer's rows) from one background thread.

    Rows are cleaned as :class:`~.rows.RowMaker` says (only table columns; non-numbers in
    numeric columns become NULL; a request without ``id`` gets one). ``extra`` rows
    (``masked``, ``savings``, ``shadow``, ``cache_breaks``) without ``request_id`` get the
    request's id; a row whose primary key already exists is ignored; ``masked.original`` is
    given raw (``str`` or ``bytes``) and stored zlib-compressed.

    Faults (the whole rule: module docstring): retried ``retries`` times, backoff from
    ``backoff_s`` doubling; then spooled, and the database tried again every ``retry_s`` s.
    A database that cannot be opened is logged with the spool's path: this never raises.

    :param path: database file, created and migrated if needed (recreated if deleted)
    :param spool: spool file (``None``: ``<path>.spool.jsonl``)
    :param busy_timeout_ms: how long one write waits for a lock before it counts as failed
    :param max_pending: requests waiting in memory at most before the spool takes them
    """

    def __init__(
        self,
        path: str | Path,
        *,
        spool: str | Path | None = None,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        retries: int = 4,
        backoff_s: float = 0.25,
        max_batch: int = 2000,
        max_pending: int = MAX_PENDING,
        retry_s: float = RETRY_S,
        linger_s: float = LINGER_S,
    ) -> None:
        self.path = Path(path)
        self.spool = Spool(self.path, Path(spool) if spool else None)
        #: Why the database could not be opened at start (``None``: it could).
        self.open_error: BaseException | None = None
        self._busy_timeout_ms = busy_timeout_ms
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._retry_s = retry_s
        self._linger_s = linger_s
        self._wake = threading.Event()  # set by flush() and close(): stop lingering
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._backlog: collections.deque[Any] = collections.deque()  # taken, not yet handled
        self._held: list[Entry] = []  # neither the database nor the spool took them
        self._rows = RowMaker()
        self._conn = Connection(self.path, busy_timeout_ms)
        self._outage: str | None = None
        self._spooled_to: Path | None = None
        self._next_try = 0.0
        self._closed = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kimi-intercept-store", daemon=True)
        self._thread.start()
        self._ready.wait()

    @property
    def _db(self) -> sqlite_utils.Database | None:
        return self._conn.db

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
        """Wait until everything put so far is in the database or the spool (or logged as
        lost, see the module docstring).

        :returns: ``False`` if that did not happen within ``timeout_s``
        """
        if not self._thread.is_alive():
            return self._queue.empty()
        marker = _Flush()
        self._queue.put(marker)
        self._wake.set()
        return marker.done.wait(timeout_s)

    def close(self, timeout_s: float | None = None) -> bool:
        """Write what is queued (to the database, else the spool), checkpoint the WAL and stop
        the thread. Retries stop at once: what the database does not take now is spooled.

        :param timeout_s: default: the busy timeout plus 5 s
        :returns: ``False`` if the thread did not finish in time
        """
        if timeout_s is None:
            timeout_s = self._busy_timeout_ms / 1000 + 5.0
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._wake.set()
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
            self._open(at_start=True)
        finally:
            self._ready.set()
        stop = False
        try:
            self._recover()  # the spool of an earlier run
            while not stop:
                items, stop = self._collect()
                try:
                    self._recover()
                    batch = [self._entry(i) for i in items if isinstance(i, tuple)]
                    if batch := [e for e in batch if e is not None]:
                        self._store(batch)
                except Exception:  # the thread must outlive any one batch
                    logger.exception("store: unexpected error in the writer thread")
                finally:
                    for item in items:
                        if isinstance(item, _Flush):
                            item.done.set()
            # Last chance for held and spooled rows; a lock is waited for 1 s at most now.
            self._conn.set_busy_timeout(min(self._busy_timeout_ms, 1000))
            self._recover(force=True)
            if self._held:
                held, self._held = self._held, []
                self._to_spool(held)
        finally:
            if self._held:
                n, lost = len(self._held), ids(self._held)
                logger.error("store: %d requests lost (no database, no spool): %s", n, lost)
            self._conn.close(checkpoint=True)

    def _collect(self) -> tuple[list[Any], bool]:
        """Wait for the next item; unless it asks for a flush or the stop, sleep ``linger_s``
        (a flush or close wakes it: :attr:`_wake`), then take what else is waiting (up to
        ``max_batch`` rows). Puts never wake the thread: one wake-up per batch."""
        stop = False
        items: list[Any] = []
        rows = 0
        try:
            if self._backlog:
                item = self._backlog.popleft()
            else:
                waiting = self._db is None or self.spool.pending or self._held
                item = self._queue.get(timeout=self._retry_s if waiting else None)
                if isinstance(item, tuple) and self._linger_s > 0:
                    self._wake.wait(self._linger_s)
            self._wake.clear()
            while True:
                items.append(item)
                if item is _STOP:
                    stop = True
                elif isinstance(item, tuple):
                    rows += 1
                if rows >= self._max_batch:
                    break
                item = self._backlog.popleft() if self._backlog else self._queue.get_nowait()
        except queue.Empty:
            pass
        return items, stop

    def _entry(self, item: _Item) -> Entry | None:
        try:
            return self._rows.entry(*item)
        except Exception:
            logger.exception("store: request %r could not be made into rows", item[0].get("id"))
            return None

    def _store(self, entries: list[Entry], retries: int | None = None) -> None:
        """Write ``entries`` to the database, else to the spool; never drops one."""
        if self._db is None:
            self._to_spool(entries)
            return
        error = self._insert(entries, self._retries if retries is None else retries)
        if error is None:
            return
        if is_fault(error):
            self._fault(error)
            self._to_spool(entries)
        elif len(entries) == 1:
            entries[0].error = f"{type(error).__name__}: {error}"
            self._rows.titles.forget(entries[0].request)
            where = self._to_spool(entries)
            logger.warning(
                "store: request %s refused by the database (%s); kept in %s",
                entries[0].id,
                entries[0].error,
                where or "memory",
            )
        else:
            logger.warning(
                "store: batch of %d requests failed (%s: %s); writing them one by one",
                len(entries),
                type(error).__name__,
                error,
            )
            for entry in entries:
                self._store([entry], retries)

    def _insert(self, entries: list[Entry], retries: int) -> Exception | None:
        """Insert in one transaction; return the error if it still fails after retries.

        Faults (lock, I/O) are retried; bad data is returned at once. A batch that went to a
        file deleted meanwhile is written again to the recreated one.
        """
        delay = self._backoff_s
        for attempt in range(retries + 1):
            try:
                insert_entries(self._conn.ensure(), entries)
                if self._conn.replaced():  # committed into a deleted file
                    insert_entries(self._conn.ensure(), entries, idempotent=True)
                return None
            except Exception as e:
                if not is_fault(e) or attempt == retries or self._closed:
                    return e
                logger.warning(
                    "store: writing requests %s failed (%s); retry %d/%d in %.2fs",
                    ids(entries),
                    e,
                    attempt + 1,
                    retries,
                    delay,
                )
                self._sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _recover(self, force: bool = False) -> None:
        """Every ``retry_s`` while something waits: reopen, write held rows, replay the spool."""
        if self._db is not None and not self.spool.pending and not self._held:
            return
        now = time.monotonic()
        if not force and now < self._next_try:
            return
        self._next_try = now + self._retry_s
        if self._db is None:
            self._open()
        if self._db is None:
            if self._held:  # the spool may take them now
                held, self._held = self._held, []
                self._to_spool(held)
            return
        if self._held:
            held, self._held = self._held, []
            self._store(held, retries=0)
        if self._db is not None and self.spool.pending:
            try:
                self.spool.replay(self._db)
            except (sqlite3.Error, OSError) as e:
                self._fault(e)
                return
        if self._db is not None and self._outage is not None:
            logger.warning("store: the database %s is written again", self.path)
            self._outage = self._spooled_to = None

    # -- faults -------------------------------------------------------------------------------

    # Outages are warnings, not errors: mitmdump exits when an error is logged while it starts,
    # and a proxy that cannot write its database must keep serving. Only a lost row is an error.

    def _open(self, at_start: bool = False) -> sqlite_utils.Database | None:
        try:
            return self._conn.open()
        except (sqlite3.Error, OSError) as e:
            if at_start:
                self.open_error = e
                self._outage = f"{type(e).__name__}: {e}"
                where = self.spool.writable()
                logger.warning(
                    "store: CANNOT OPEN THE DATABASE %s (%s); requests are recorded in %s and "
                    "written to the database once it opens (tried every %gs)",
                    self.path,
                    self._outage,
                    where or "memory only (no spool file can be written either)",
                    self._retry_s,
                )
            return None

    def _fault(self, error: BaseException) -> None:
        """The database cannot be written: close it, log once per outage, try again later."""
        if self._outage is None:
            self._outage = f"{type(error).__name__}: {error}"
            logger.warning(
                "store: the database %s cannot be written (%s); requests go to the spool and "
                "are written to the database once it can be (tried every %gs)",
                self.path,
                self._outage,
                self._retry_s,
            )
        self._conn.close()
        self._next_try = time.monotonic() + self._retry_s

    def _to_spool(self, entries: list[Entry]) -> Path | None:
        try:
            path = self.spool.append(entries)
        except OSError as e:
            self._hold(entries, e)
            return None
        if path != self._spooled_to and any(e.error is None for e in entries):
            self._spooled_to = path
            logger.warning("store: requests are being spooled to %s", path)
        return path

    def _hold(self, entries: list[Entry], error: OSError) -> None:
        if not self._held:
            logger.warning(
                "store: no spool file can be written either (%s); up to %d requests wait in memory",
                error,
                self._max_pending,
            )
        self._held.extend(entries)
        over = len(self._held) - self._max_pending
        if over > 0:
            lost, self._held = self._held[:over], self._held[over:]
            logger.error("store: %d requests lost (memory bound reached): %s", over, ids(lost))

    def _sleep(self, delay: float) -> None:
        """Back off; meanwhile the spool takes what is queued beyond ``max_pending``."""
        end = time.monotonic() + delay
        while not self._closed and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
            if self._queue.qsize() + len(self._held) > self._max_pending:
                self._spill()

    def _spill(self) -> None:
        entries: list[Entry] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple):
                if (entry := self._entry(item)) is not None:
                    entries.append(entry)
            else:
                self._backlog.append(item)  # flush markers wait for the batch in hand
        if entries:
            self._to_spool(entries)
