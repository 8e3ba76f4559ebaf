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

Modules: :mod:`.schema` (the tables, ``migrations``, :func:`open_db`, :func:`open_readonly`),
:mod:`.rollup` (the counting rule's triggers and the ``daily`` rollups), :mod:`.retention`
(:func:`prune`), :mod:`.store` (:class:`StoreWriter`), :mod:`.rows` (the rows as written:
:class:`Entry`, :func:`read_masked`), :mod:`.ids` (new request ids: time-ordered ULIDs),
:mod:`.titles` (a conversation's title, stored on its first row only), :mod:`.spool` (rows
kept in a JSON-lines file while the database cannot be written, :func:`spool_path`),
:mod:`.connection` (the writer's connection, recreated when its file is deleted), :mod:`.merge`
(several files as one store, :func:`merge_files`), :mod:`.outbox` and :mod:`.team` (the
PostgreSQL team store: the local outbox, upserts, :class:`~.team.TeamShipper`; needs
``psycopg``, imported when used). Import the names below from here.

No lost rows: lock and I/O errors are retried, then rows spool and are replayed when the
database can be written again; a row the database refuses stays in the spool with its error.

Errors::

    FileNotFoundError
     └── DatabaseNotFound      open_readonly() on a path with no database
    ConfigError                retention_days() on a bad ``[storage] retention_days``,
                               spool_path() on a bad ``[storage] spool``
"""

from __future__ import annotations

from kimi_intercept.storage.retention import (
    DEFAULT_RETENTION_DAYS,
    PruneResult,
    prune,
    prune_on_start,
    retention_days,
)
from kimi_intercept.storage.rollup import (
    CALIB,
    COUNTED_SUMS_SQL,
    DAILY_KEYS,
    DAILY_KEYS_SQL,
    DAILY_SAVINGS_COLUMNS,
    DAILY_SUMS,
    daily_from_requests,
)
from kimi_intercept.storage.rows import Entry, read_masked
from kimi_intercept.storage.schema import (
    ATTEMPT_COLUMNS,
    CACHE_BREAK_COLUMNS,
    DEFAULT_BUSY_TIMEOUT_MS,
    EXTRA_TABLES,
    MASKED_COLUMNS,
    REQUEST_COLUMNS,
    SAVINGS_COLUMNS,
    SHADOW_COLUMNS,
    DatabaseNotFound,
    m001_initial,
    m002_requests_dialect,
    m003_accounting,
    m004_shadow,
    migrations,
    open_db,
    open_readonly,
)
from kimi_intercept.storage.spool import Spool, spool_path
from kimi_intercept.storage.store import MAX_PENDING, StoreWriter

__all__ = [
    "ATTEMPT_COLUMNS",
    "CACHE_BREAK_COLUMNS",
    "CALIB",
    "COUNTED_SUMS_SQL",
    "DAILY_KEYS",
    "DAILY_KEYS_SQL",
    "DAILY_SAVINGS_COLUMNS",
    "DAILY_SUMS",
    "DEFAULT_BUSY_TIMEOUT_MS",
    "DEFAULT_RETENTION_DAYS",
    "EXTRA_TABLES",
    "MAX_PENDING",
    "MASKED_COLUMNS",
    "REQUEST_COLUMNS",
    "SAVINGS_COLUMNS",
    "SHADOW_COLUMNS",
    "Spool",
    "DatabaseNotFound",
    "Entry",
    "PruneResult",
    "StoreWriter",
    "daily_from_requests",
    "m001_initial",
    "m002_requests_dialect",
    "m003_accounting",
    "m004_shadow",
    "migrations",
    "open_db",
    "open_readonly",
    "prune",
    "prune_on_start",
    "read_masked",
    "retention_days",
    "spool_path",
]
