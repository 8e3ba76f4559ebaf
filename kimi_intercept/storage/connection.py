"""The writer's connection: :class:`Connection` opens the database for writing and notices
when its file is deleted or replaced while running (then it recreates it, with one warning).

SQLite keeps writing to a file that was deleted under it (an unlinked inode) without an
error; comparing the path's device and inode with those of the file that was opened is how
such a write is caught.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import sqlite_utils

from kimi_intercept.storage.schema import DEFAULT_BUSY_TIMEOUT_MS, open_db

logger = logging.getLogger("kimi_intercept.storage.store")


class Connection:
    """The database at ``path`` for one thread, (re)opened on demand.

    :param path: the database file (created, with its folder, when missing)
    :param busy_timeout_ms: how long one write waits for a lock
    """

    def __init__(self, path: Path, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.db: sqlite_utils.Database | None = None
        self._file_id: tuple[int, int] | None = None

    def open(self) -> sqlite_utils.Database:
        """Open (create, migrate) the database.

        :raises sqlite3.Error, OSError: if it cannot be opened
        """
        self.close()
        self.db = open_db(self.path, busy_timeout_ms=self.busy_timeout_ms)
        self._file_id = _file_id(self.path)
        return self.db

    def ensure(self) -> sqlite_utils.Database:
        """The open database; recreated (one warning) if its file was deleted or replaced.

        :raises sqlite3.Error, OSError: if it cannot be (re)opened
        """
        if self.db is not None and not self.replaced():
            return self.db
        if self.db is not None:
            logger.warning(
                "store: the database %s was deleted or replaced while running; recreating it",
                self.path,
            )
        return self.open()

    def set_busy_timeout(self, ms: int) -> None:
        """Wait at most ``ms`` for a lock from now on (this connection and the next)."""
        self.busy_timeout_ms = ms
        if self.db is not None:
            self.db.execute(f"PRAGMA busy_timeout={int(ms)}")

    def replaced(self) -> bool:
        """True if the path no longer names the file that was opened."""
        try:
            return _file_id(self.path) != self._file_id
        except OSError:
            return True

    def close(self, checkpoint: bool = False) -> None:
        """Close it (``checkpoint``: first move the WAL into the file and truncate it)."""
        db, self.db = self.db, None
        if db is None:
            return
        try:
            if checkpoint:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            logger.warning("store: WAL checkpoint on close failed: %s", e)
        try:
            db.close()
        except sqlite3.Error as e:
            logger.debug("store: closing the database: %s", e)


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino
