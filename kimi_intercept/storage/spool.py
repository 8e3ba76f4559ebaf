"""The spool: rows the database could not take, kept in a JSON-lines file until it can.

Where: ``[storage] spool`` (:func:`spool_path`), by default beside the database
(``kimi_intercept.db`` → ``kimi_intercept.db.spool.jsonl``). When that file cannot be written
either (a read-only filesystem), a fallback in the system's temp folder is used:
``<tmp>/kimi-intercept-<12 hex of the database path's SHA-256>.spool.jsonl``. Both are
replayed.

One line per request (:class:`~.rows.Entry`), exactly the rows the writer would have written::

    {"request": {...}, "attempts": [...], "extra": {"masked": [...]}, "error": null}

Column values are JSON values; ``bytes`` (compressed originals) are ``{"$b64": "..."}``; a
value JSON cannot hold (only in a row the database refused) is ``{"$repr": "..."}``. Each
append is flushed and fsynced, so a ``kill -9`` loses no spooled row. Files are created 0600
(rows hold conversation titles). A line with an ``error`` is a row the database refused for
its data; it stays in the file, never replayed.

Replay (:meth:`Spool.replay`) is idempotent: ``INSERT OR IGNORE`` keyed by the request id, so
replaying a file again after a partial success never duplicates a row.

Errors::

    ConfigError                spool_path() on a bad ``[storage] spool``
    OSError                    Spool.append() when no spool file can be written
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlite_utils

from kimi_intercept.storage.rows import Entry, insert_entries

logger = logging.getLogger("kimi_intercept.storage.store")

#: Entries written per replay transaction.
REPLAY_CHUNK = 500
#: Errors caused by one row's data (anything else is a fault of the database or the disk).
DATA_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
    sqlite3.NotSupportedError,
    ValueError,
    TypeError,
    OverflowError,
)


def is_fault(error: BaseException) -> bool:
    """A fault of the database or the disk (retry, then spool) rather than of one row."""
    if isinstance(error, DATA_ERRORS):
        return False
    return isinstance(error, (sqlite3.OperationalError, OSError)) or (
        type(error) is sqlite3.DatabaseError  # "file is not a database", "malformed"
    )


def spool_path(cfg: Any) -> Path | None:
    """``[storage] spool`` of a :class:`~.settings.Config`: the spool file, or ``None`` (the
    default, ``""``) for ``<database>.spool.jsonl``.

    :raises ConfigError: if it is not a string
    """
    from kimi_intercept.config.settings import ConfigError

    storage = cfg.raw.get("storage", {}) if isinstance(cfg.raw, Mapping) else {}
    value = storage.get("spool", "")
    if not isinstance(value, str):
        raise ConfigError(
            f'storage.spool must be a file path (or "" for <database>.spool.jsonl); got {value!r}'
        )
    return Path(value).expanduser() if value.strip() else None


def default_spool(database: Path) -> Path:
    """``kimi_intercept.db`` → ``kimi_intercept.db.spool.jsonl``."""
    return database.with_name(database.name + ".spool.jsonl")


def fallback_spool(database: Path) -> Path:
    """The spool used when the configured one cannot be written (in the temp folder)."""
    digest = hashlib.sha256(str(Path(database).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"kimi-intercept-{digest}.spool.jsonl"


def encode(entry: Entry) -> str:
    """One spool line (with its ``\\n``)."""
    doc = {
        "request": entry.request,
        "attempts": entry.attempts,
        "extra": entry.extra,
        "error": entry.error,
    }
    return json.dumps(doc, default=_encode_value, ensure_ascii=True) + "\n"


def decode(line: str) -> Entry:
    """The entry of one spool line.

    :raises ValueError: if the line is not a spool entry (a torn or foreign line)
    """
    doc = json.loads(line, object_hook=_decode_value)
    if not isinstance(doc, dict) or not isinstance(doc.get("request"), dict):
        raise ValueError("not a spool entry")
    return Entry(doc["request"], doc.get("attempts") or [], doc.get("extra") or {}, doc["error"])


def _encode_value(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b64": base64.b64encode(bytes(value)).decode("ascii")}
    return {"$repr": repr(value)}


def _decode_value(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(obj.get("$b64"), str):
        return base64.b64decode(obj["$b64"])
    return obj  # {"$repr": ...} stays a dict: SQLite refuses it again, as it did the first time


class Spool:
    """The spool files of one database: ``path`` (configured or beside it), then the fallback.

    :param database: the database file the rows belong to
    :param path: the spool file (``None``: :func:`default_spool`)
    """

    def __init__(self, database: Path, path: Path | None = None) -> None:
        self.paths = [path or default_spool(database), fallback_spool(database)]
        #: True while some file may hold rows that are not in the database yet.
        self.pending = any(_size(p) > 0 for p in self.paths)
        self._tail_checked: set[Path] = set()

    def writable(self) -> Path | None:
        """The file :meth:`append` would write to now (``None``: neither can be written)."""
        for path in self.paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.close(_open_append(path))
                return path
            except OSError:
                continue
        return None

    def append(self, entries: list[Entry]) -> Path:
        """Append ``entries`` (flushed and fsynced) to the first file that takes them.

        :returns: the file written
        :raises OSError: if no spool file could be written (nothing was appended)
        """
        data = "".join(encode(e) for e in entries).encode("ascii")
        error: OSError | None = None
        for path in self.paths:
            try:
                self._append(path, data)
            except OSError as e:
                error = e
                continue
            if any(e.error is None for e in entries):
                self.pending = True
            return path
        assert error is not None
        raise error

    def _append(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(_open_append(path), "ab+") as f:
            start = f.seek(0, os.SEEK_END)
            if path not in self._tail_checked and start > 0:
                f.seek(start - 1)
                if f.read(1) != b"\n":  # a line torn by a kill: never glue onto it
                    data = b"\n" + data
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                f.truncate(start)  # no half line left behind (best effort on a full disk)
                raise
        self._tail_checked.add(path)

    def replay(self, db: sqlite_utils.Database) -> int:
        """Write every spooled entry into ``db``, then keep only the lines it refused.

        :returns: how many entries were written (already-present ones are not counted)
        :raises sqlite3.Error, OSError: the database is not writable; the files are unchanged
            (a later replay writes what is missing, once)
        """
        written = 0
        for path in self.paths:
            if _size(path) > 0:
                written += self._replay_file(db, path)
        self.pending = False
        return written

    def _replay_file(self, db: sqlite_utils.Database, path: Path) -> int:
        keep: list[str] = []
        chunk: list[Entry] = []
        written = 0
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    entry = decode(line)
                except ValueError:
                    logger.warning("store: %s: an unreadable line is kept as it is", path)
                    keep.append(line if line.endswith("\n") else line + "\n")
                    continue
                if entry.error is not None:
                    keep.append(line)
                    continue
                chunk.append(entry)
                if len(chunk) >= REPLAY_CHUNK:
                    written += self._write(db, chunk, keep)
                    chunk = []
            if chunk:
                written += self._write(db, chunk, keep)
        _rewrite(path, keep)
        logger.warning(
            "store: replayed %d requests from the spool %s into the database%s",
            written,
            path,
            f"; {len(keep)} lines it refused stay there (each with its error)" if keep else "",
        )
        return written

    def _write(self, db: sqlite_utils.Database, chunk: list[Entry], keep: list[str]) -> int:
        """Write one chunk (row by row if it fails on data); refused rows go to ``keep``.

        :returns: how many requests were written
        """
        try:
            return insert_entries(db, chunk, idempotent=True)
        except sqlite3.OperationalError:
            raise
        except (*DATA_ERRORS, sqlite3.DatabaseError) as e:
            if type(e) is sqlite3.DatabaseError:  # a broken file, not a bad row
                raise
            if len(chunk) > 1:
                return sum(self._write(db, [one], keep) for one in chunk)
            entry = chunk[0]
            entry.error = f"{type(e).__name__}: {e}"
            logger.warning("store: request %s refused by the database: %s", entry.id, entry.error)
            keep.append(encode(entry))
            return 0


def _open_append(path: Path) -> int:
    """A descriptor to append to ``path``, created private (0600: rows hold conversation
    titles; the fallback lives in a shared temp folder), never through a symlink."""
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    return os.open(path, flags, 0o600)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _rewrite(path: Path, lines: list[str]) -> None:
    """Replace ``path`` by ``lines`` (atomically), or remove it when there are none."""
    if not lines:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(_open_append(tmp), "w", encoding="ascii") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
