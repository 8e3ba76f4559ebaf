"""Streaming export of ``requests`` or ``conversations`` as CSV or JSON.

Rows go from a cursor to the output a batch at a time (``fetchmany``), so memory stays flat
whatever the table's size. ``requests`` exports every row in the range, duplicates included
(``duplicate_of`` says which rows the report does not count), in time order; ``conversations``
exports the ``conversations`` view (counted rows) for conversations active in the range.

JSON is one array of objects, written as it goes; ``details`` is embedded as an object.
CSV has a header row; NULL is an empty field.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Generator, Iterator
from typing import Any, TextIO

import sqlite_utils

from kimi_intercept.reports.pages import range_where as _where
from kimi_intercept.storage import REQUEST_COLUMNS

FORMATS = ("csv", "json")
TABLES = ("requests", "conversations")
BATCH = 1000


def rows(
    db: sqlite_utils.Database,
    table: str = "requests",
    since: str | None = None,
    until: str | None = None,
) -> tuple[list[str], Generator[list[tuple[Any, ...]], None, None]]:
    """Column names and a lazy iterator over the rows of ``table`` in the range, in batches
    of :data:`BATCH`.

    :raises ValueError: for an unknown table or a bad date
    """
    if table == "requests":
        where, params = _where(since, until)
        columns = list(REQUEST_COLUMNS)
        sql = f"SELECT {', '.join(columns)} FROM requests {where} ORDER BY started_at, id"
    elif table == "conversations":
        where, params = _where(None, until, column="first_at")
        if since:
            where = (where + " AND " if where else "WHERE ") + "last_at >= :since"
            params["since"] = _where(since, None)[1]["since"]
        columns = [c.name for c in db.view("conversations").columns]
        sql = f"SELECT * FROM conversations {where} ORDER BY first_at, id"
    else:
        raise ValueError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
    cursor = db.execute(sql, params)

    def batches() -> Generator[list[tuple[Any, ...]], None, None]:
        try:
            while chunk := cursor.fetchmany(BATCH):
                yield chunk
        finally:
            cursor.close()

    return columns, batches()


def write(
    out: TextIO,
    db: sqlite_utils.Database,
    fmt: str = "csv",
    table: str = "requests",
    since: str | None = None,
    until: str | None = None,
) -> int:
    """Write ``table`` in ``fmt`` to ``out`` as rows arrive; return how many rows.

    :raises ValueError: for an unknown format or table, or a bad date
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    columns, it = rows(db, table, since, until)
    with contextlib.closing(it):  # the cursor is closed even when writing fails
        return _write(out, fmt, columns, it)


def _write(out: TextIO, fmt: str, columns: list[str], it: Iterator[list[tuple[Any, ...]]]) -> int:
    n = 0
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(columns)
        for chunk in it:
            w.writerows(chunk)
            n += len(chunk)
        return n
    out.write("[")
    for chunk in it:
        for row in chunk:
            record = dict(zip(columns, row, strict=True))
            if record.get("details"):
                try:
                    record["details"] = json.loads(record["details"])
                except ValueError:
                    pass  # not JSON: kept as the text it is
            out.write(("\n" if n == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
            n += 1
    out.write("\n]\n" if n else "]\n")
    return n
