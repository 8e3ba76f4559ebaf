"""Conversation titles, stored once per conversation instead of on every row (m009).

The writer keeps ``conversation_title`` only on the first row of a conversation it writes
(:class:`TitleMemo`, a bounded memory of the conversations already titled: after a restart, or
once a conversation is forgotten, its next row carries the title once more); later rows store
NULL. A conversation's title is therefore its first non-NULL ``conversation_title``: read it
with :func:`title_sql` inside a query or :func:`conversation_titles` from Python. Rows written
before m009 carry the title on every row, and read the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

#: Conversations a writer remembers as titled (least recently written forgotten first).
MAX_TITLED = 4096

_TITLE_SQL = (
    "(SELECT t.conversation_title FROM requests t WHERE t.conversation_id = {conversation} "
    "AND t.conversation_title IS NOT NULL LIMIT 1)"
)


def title_sql(conversation: str) -> str:
    """An SQL scalar subquery: the title of the conversation whose id is the SQL expression
    ``conversation`` (``"r.conversation_id"``, ``"?"``), or NULL. It reads the conversation's
    rows in the order of ``idx_requests_conversation_id`` (rowid: the first written first) and
    stops at the first titled one."""
    return _TITLE_SQL.format(conversation=conversation)


def conversation_titles(db: Any, conversation_ids: Iterable[str | None]) -> dict[str, str]:
    """``{conversation id: title}`` for those of ``conversation_ids`` that have a title.

    :param db: a ``sqlite3.Connection`` or a ``sqlite_utils.Database`` with a ``requests`` table
    """
    conn = getattr(db, "conn", db)
    sql = f"SELECT {title_sql('?')}"
    out: dict[str, str] = {}
    for conv in dict.fromkeys(c for c in conversation_ids if c):
        title = conn.execute(sql, [conv]).fetchone()[0]
        if title is not None:
            out[conv] = title
    return out


class TitleMemo:
    """Which conversations this writer has already stored a title for (at most ``limit``).

    Not thread-safe: the writer thread alone uses it.
    """

    def __init__(self, limit: int = MAX_TITLED) -> None:
        self.limit = limit
        self._titled: OrderedDict[str, None] = OrderedDict()

    def strip(self, row: dict[str, Any]) -> None:
        """Set ``row["conversation_title"]`` to ``None`` when this conversation's title is
        already stored; otherwise keep it and remember the conversation (if it has a title)."""
        conv = row.get("conversation_id")
        if not conv:
            return
        if conv in self._titled:
            self._titled.move_to_end(conv)
            row["conversation_title"] = None
        elif row.get("conversation_title") is not None:
            self._titled[conv] = None
            if len(self._titled) > self.limit:
                self._titled.popitem(last=False)

    def forget(self, row: dict[str, Any]) -> None:
        """The titled ``row`` was not stored (the database refused it): title the next one."""
        if row.get("conversation_title") is not None:
            self._titled.pop(row.get("conversation_id") or "", None)
