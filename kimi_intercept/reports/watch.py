"""``kimi-intercept report --watch``: write the report again whenever the database changes.

A change is seen by polling, every ``interval_s`` seconds, the database file's and its WAL's
size and modification time and SQLite's ``PRAGMA data_version`` on one read-only connection
(it changes when any other connection commits: https://sqlite.org/pragma.html#pragma_data_version).
Polling a few ``stat`` calls a second costs nothing measurable and needs no file-watching
library. The pages are written with a ``<meta http-equiv="refresh">`` so an open browser tab
reloads itself.

:func:`watch` returns when ``stop`` is set (the CLI sets it on Ctrl-C, so a page being written
is finished first, never left half-written).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_INTERVAL_S = 1.0


class DatabaseVersion:
    """The state of a database that changes with every commit (see module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    def current(self) -> tuple[Any, ...]:
        """``(db size, db mtime, wal size, wal mtime, data_version)``; equal tuples: no
        change in between. A file that is missing or unreadable reads as ``None`` parts."""
        parts: list[Any] = []
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                st = os.stat(p)
                parts += [st.st_size, st.st_mtime_ns]
            except OSError:
                parts += [None, None]
        try:
            if self._conn is None:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            parts.append(self._conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            self.close()  # the file may have been replaced: reopen next time
            parts.append(None)
        return tuple(parts)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def watch(
    db_path: Path,
    build: Callable[[], Any],
    stop: threading.Event,
    interval_s: float = DEFAULT_INTERVAL_S,
    on_error: Callable[[Exception], None] | None = None,
) -> int:
    """Call ``build()`` now and after each change of the database at ``db_path``, until
    ``stop`` is set; return how many times it built. An exception from ``build`` (a locked or
    damaged database, a full disk) goes to ``on_error`` and the watch goes on."""
    version = DatabaseVersion(db_path)
    seen: tuple[Any, ...] | None = None
    builds = 0
    try:
        while not stop.is_set():
            now = version.current()
            if now != seen:
                seen = now
                try:
                    build()
                    builds += 1
                except Exception as e:
                    if on_error is None:
                        raise
                    on_error(e)
            stop.wait(interval_s)
    finally:
        version.close()
    return builds
