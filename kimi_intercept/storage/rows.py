"""Rows as the writer stores them: :class:`Entry` (one request with its attempts and its rows
for other tables, cleaned to the tables' columns), :class:`RowMaker` (queued dicts → entries)
and :func:`insert_entries` (one transaction, plain or idempotent); :func:`read_masked` reads
a masked original back.

An entry is the unit that is written, spooled and replayed: a request row is never stored
without its attempts and extra rows, nor they without it.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from kimi_intercept.storage.ids import new_request_id
from kimi_intercept.storage.schema import ATTEMPT_COLUMNS, EXTRA_TABLES, REQUEST_COLUMNS
from kimi_intercept.storage.titles import TitleMemo

# Logged under the store's name: these messages were the writer's before this module existed.
logger = logging.getLogger("kimi_intercept.storage.store")


def _insert_sql(table: str, columns: Sequence[str], verb: str = "INSERT") -> str:
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


_REQUEST_NAMES = tuple(REQUEST_COLUMNS)
_ATTEMPT_NAMES = tuple(c for c in ATTEMPT_COLUMNS if c != "id")  # rowid, assigned by SQLite
_INSERT_REQUEST = _insert_sql("requests", _REQUEST_NAMES)
_INSERT_REQUEST_ONCE = _insert_sql("requests", _REQUEST_NAMES, "INSERT OR IGNORE")
_INSERT_ATTEMPT = _insert_sql("attempts", _ATTEMPT_NAMES)
_INSERT_EXTRA = {
    table: (tuple(columns), _insert_sql(table, tuple(columns), "INSERT OR IGNORE"))
    for table, (columns, _pk) in EXTRA_TABLES.items()
}


@dataclass
class Entry:
    """One request as written: ``request`` (``requests`` columns), ``attempts`` (``attempts``
    columns, without the rowid ``id``), ``extra`` (``{"masked" | "savings" | "shadow" |
    "cache_breaks": rows}``, ``masked.original`` already zlib-compressed bytes). ``error``: why
    the database refused this entry (``"IntegrityError: UNIQUE constraint failed:
    requests.id"``); such an entry is kept in the spool and never replayed."""

    request: dict[str, Any]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    error: str | None = None

    @property
    def id(self) -> Any:
        return self.request.get("id")


class RowMaker:
    """Turns what :meth:`StoreWriter.put` queued into :class:`Entry` objects.

    Only keys that are table columns are kept (others, an API key included, are dropped and
    logged once per key name at debug level); a non-number in a numeric column becomes
    ``None`` with a warning; a request without ``id`` gets a new one (logged). A
    ``conversation_title`` is kept on the first row of its conversation only
    (:class:`~.titles.TitleMemo`); later rows get NULL.
    """

    def __init__(self) -> None:
        self._unknown_keys_seen: set[tuple[str, str]] = set()
        self.titles = TitleMemo()

    def entry(
        self,
        request: dict[str, Any],
        attempts: Sequence[dict[str, Any]],
        extra: dict[str, list[dict[str, Any]]],
    ) -> Entry:
        row = self._request_row(request)
        out = Entry(row, [self._attempt_row(a, row["id"], n) for n, a in enumerate(attempts, 1)])
        for table, rows in extra.items():
            try:
                out.extra.setdefault(table, []).extend(self._extra_rows(table, rows, row["id"]))
            except Exception as e:  # a bad extra row costs only itself, never the request
                logger.warning(
                    "store: request %s: %s rows not recorded: %s: %s",
                    row["id"],
                    table,
                    type(e).__name__,
                    e,
                )
        return out

    def _request_row(self, request: dict[str, Any]) -> dict[str, Any]:
        self._note_unknown_keys(request, REQUEST_COLUMNS, "requests")
        row = self._clean(request, REQUEST_COLUMNS, request.get("id"))
        if not row["id"]:
            row["id"] = new_request_id()
            logger.warning("store: request without an id; recorded as %s", row["id"])
        self.titles.strip(row)
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


def insert_entries(
    db: sqlite_utils.Database, entries: Sequence[Entry], *, idempotent: bool = False
) -> int:
    """Write ``entries`` in one ``BEGIN IMMEDIATE`` transaction (rolled back on any error),
    with one prepared ``INSERT`` per table run by ``executemany`` (sqlite-utils' ``insert_all``
    re-reads the schema on every call: it is kept for migrations and reads).

    Plain: a request id already stored raises ``IntegrityError``. ``idempotent`` (replaying
    the spool, or rewriting a batch that went to a deleted file): ``INSERT OR IGNORE`` keyed
    by the request id, and a request already stored keeps its attempts (they are not added
    twice); extra rows are always ``OR IGNORE`` on their primary key. A ``dict``/``list``
    value is stored as its JSON text, as sqlite-utils would.

    :returns: how many request rows were inserted
    :raises sqlite3.Error, ValueError, TypeError, OverflowError: nothing was written
    """
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        attempts: list[dict[str, Any]] = []
        inserted = 0
        if idempotent:
            for e in entries:
                cur = conn.execute(_INSERT_REQUEST_ONCE, _values(e.request, _REQUEST_NAMES))
                if cur.rowcount == 1:
                    inserted += 1
                    attempts.extend(e.attempts)
        else:
            conn.executemany(_INSERT_REQUEST, [_values(e.request, _REQUEST_NAMES) for e in entries])
            inserted = len(entries)
            attempts = [a for e in entries for a in e.attempts]
        if attempts:
            conn.executemany(_INSERT_ATTEMPT, [_values(a, _ATTEMPT_NAMES) for a in attempts])
        for table, rows in _by_table(entries).items():
            if rows:
                names, sql = _INSERT_EXTRA[table]
                conn.executemany(sql, [_values(r, names) for r in rows])
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise
    return inserted


def _values(row: dict[str, Any], names: Sequence[str]) -> list[Any]:
    out = [row.get(n) for n in names]
    for i, v in enumerate(out):
        if isinstance(v, (dict, list, tuple)):
            out[i] = json.dumps(v, default=repr, ensure_ascii=False)
    return out


def _by_table(entries: Iterable[Entry]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        for table, rows in e.extra.items():
            out.setdefault(table, []).extend(rows)
    return out


def ids(entries: Iterable[Entry], limit: int = 5) -> str:
    """``"req-1, req-2, … and 7 more"``: the request ids of ``entries`` for a log line."""
    shown = [str(e.id) for e in entries]
    text = ", ".join(shown[:limit])
    return text + (f" and {len(shown) - limit} more" if len(shown) > limit else "")


def read_masked(db: sqlite_utils.Database, masked_id: str) -> bytes | None:
    """The original bytes of a masked item (``None`` if there is no such row or no original).
    Text was stored as UTF-8 with lone surrogates passed through:
    ``.decode("utf-8", "surrogatepass")`` gives the exact ``str`` back."""
    row = db.execute("SELECT original FROM masked WHERE id = ?", [masked_id]).fetchone()
    return zlib.decompress(row[0]) if row and row[0] is not None else None
