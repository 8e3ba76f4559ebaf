"""Retention: ``[storage] retention_days`` (:func:`retention_days`), :func:`prune` — raw rows
older than that are deleted and the file compacted with ``VACUUM``; their totals stay in
``daily`` / ``daily_savings`` — and :func:`prune_on_start`, the proxy's start hook. Everything
here is importable from :mod:`kimi_intercept.storage.store` too.

Errors::

    ConfigError                retention_days() on a bad ``[storage] retention_days``
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from kimi_intercept.storage.schema import DEFAULT_BUSY_TIMEOUT_MS, open_db

# Logged under the store's name, as before retention had a module of its own.
logger = logging.getLogger("kimi_intercept.storage.store")

DEFAULT_RETENTION_DAYS = 90


def retention_days(cfg: Any) -> int | None:
    """``[storage] retention_days`` of a :class:`~.settings.Config` (default 90);
    ``None`` when it is 0 (keep every row).

    :raises ConfigError: if it is not a whole number of days from 0 to 36500
    """
    from kimi_intercept.config.settings import ConfigError

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
        conn.execute("DELETE FROM cache_breaks WHERE started_at < :c", params)
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
