"""The store's schema and connections: the tables' columns, the ``migrations`` that create
and change them, and :func:`open_db` (which applies pending migrations) / :func:`open_readonly`.

The schema is a public contract — reports and ad-hoc SQL query it — and only changes through
``migrations`` (one small function per change, registered in order). The totals tables and
triggers that m003 creates are defined in :mod:`kimi_intercept.storage.rollup`. Everything here is
importable from :mod:`kimi_intercept.storage.store` too.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from kimi_intercept.storage.rollup import CALIB, create_daily
from kimi_intercept.storage.titles import title_sql

DEFAULT_BUSY_TIMEOUT_MS = 5000

#: ``requests`` columns in table order, with their Python types (sqlite-utils: str → TEXT,
#: int → INTEGER, float → REAL).
_M001_REQUEST_COLUMNS: dict[str, type] = {
    "id": str,
    "started_at": str,  # ISO 8601 UTC, "2026-11-21T23:54:42.123Z"
    "client": str,  # from User-Agent, "openai-python/1.2"
    "client_host": str,
    "client_model": str,  # the model the client asked for
    "provider": str,  # the provider that answered (last attempt)
    "model": str,  # the model that answered
    "status_code": int,
    "outcome": str,  # ok | error | incomplete | client_abort | shutdown
    "attempts": int,
    "fallback_used": int,  # 0/1
    "ttft_ms": float,
    "duration_ms": float,
    "prompt_tokens": int,
    "completion_tokens": int,
    "cached_tokens": int,
    "reasoning_tokens": int,
    "usage_source": str,  # provider | estimate | NULL
    "cost_usd": float,  # NULL = unpriced, never 0 for unknown
    "route": str,  # reroute | passthrough
    "stream": int,  # 0/1
    "response_id": str,
    "host": str,  # the host the client called, "api.openai.com"
    "error": str,
    "details": str,  # JSON object of provider extras
}
# Columns added by later migrations, in order; REQUEST_COLUMNS is the table as it is now.
_M002_REQUEST_COLUMNS: dict[str, type] = {
    "dialect": str,  # the client's wire dialect: openai | anthropic | gemini
}
_M003_REQUEST_COLUMNS: dict[str, type] = {
    # SHA-256 of the session header or the conversation's prefix: its first 32 hex digits
    # (rows before m009: all 64)
    "conversation_id": str,
    # start of the first user message (raw; reports escape it); since m009 only on the first row
    # of a conversation the writer stores (storage.titles), NULL on later rows
    "conversation_title": str,
    "context_window": int,  # tokens, of the model that answered
    "tokens_before_sanitize": int,  # prompt tokens before the sanitizer (estimate)
    "tokens_after_sanitize": int,  # ... and after it
    "memory_tokens": int,  # prompt tokens that are memory/MCP context (estimate)
    "prompt_tokens_estimate": int,  # our tokenizer's count, also when the provider gave usage
    "completion_tokens_estimate": int,  # (both known: calibration learns from the row)
    "cost_source": str,  # NULL = our price table at started_at; "ledger" = an imported file's
    "duplicate_of": str,  # set by a trigger: id of the first row with this provider+response_id
}
_M005_REQUEST_COLUMNS: dict[str, type] = {
    "rule": str,  # the [[routing.rules]] name that chose the chain (NULL: the default chain)
}
_M006_REQUEST_COLUMNS: dict[str, type] = {
    "cache_write_tokens": int,  # prompt tokens written to the provider's cache (all TTLs)
    "cache_write_1h_tokens": int,  # ... of which with Anthropic's 1-hour TTL
}
_M007_REQUEST_COLUMNS: dict[str, type] = {
    # what the client's own model would have cost for the same usage, at its price (reroutes;
    # NULL: passed through, or the requested model is unpriced)
    "requested_cost_usd": float,
    # the sanitizer's measured saving in USD, net of the extra cost it caused (a broken cache
    # prefix); position-aware: removed tokens already in the previous turn at the cached price
    "sanitizer_saved_usd": float,
    "sanitizer_holdout": int,  # 1: a holdout conversation, measured but not masked; 0: masked
}
REQUEST_COLUMNS: dict[str, type] = {
    **_M001_REQUEST_COLUMNS,
    **_M002_REQUEST_COLUMNS,
    **_M003_REQUEST_COLUMNS,
    **_M005_REQUEST_COLUMNS,
    **_M006_REQUEST_COLUMNS,
    **_M007_REQUEST_COLUMNS,
}

#: ``attempts`` columns in table order.
ATTEMPT_COLUMNS: dict[str, type] = {
    "id": int,
    "request_id": str,
    "attempt": int,  # 1-based
    "provider": str,
    "model": str,
    "started_at": str,
    "status_code": int,
    "error": str,
    "duration_ms": float,
}

#: ``masked``: one row per distinct tool output the sanitizer replaced (primary key: its hash).
MASKED_COLUMNS: dict[str, type] = {
    "id": str,  # content hash of the original
    "created_at": str,  # ISO 8601 UTC
    "tool": str,  # Bash, Grep, Read…
    "kind": str,  # what was done: truncate, collapse…
    "dialect": str,
    "lines": int,  # of the original
    "bytes": int,  # of the original
    "tokens_before": int,
    "tokens_after": int,
    "original": bytes,  # zlib-compressed by the writer; read it with read_masked()
    "request_id": str,  # the first request that carried it
}

#: ``savings``: what the sanitizer removed from one request, per tool.
SAVINGS_COLUMNS: dict[str, type] = {
    "request_id": str,
    "tool": str,
    "items": int,
    "tokens_before": int,
    "tokens_after": int,
}

#: ``shadow``: one request mirrored to a second provider in shadow mode (m004), side by side
#: with what the client got.
SHADOW_COLUMNS: dict[str, type] = {
    "id": str,
    "request_id": str,
    "started_at": str,
    "primary_provider": str,
    "primary_model": str,
    "primary_outcome": str,
    "primary_ttft_ms": float,
    "primary_duration_ms": float,
    "primary_cost_usd": float,
    "shadow_provider": str,
    "shadow_model": str,
    "status_code": int,
    "outcome": str,  # ok | error
    "error": str,
    "ttft_ms": float,
    "duration_ms": float,
    "prompt_tokens": int,
    "completion_tokens": int,
    "cached_tokens": int,
    "cost_usd": float,
    "similarity": float,  # word-set Jaccard of the two answers, 0..1
}

#: ``cache_breaks``: a request whose provider-reported cached share of the prompt fell sharply
#: from the previous request of its conversation (m008; :mod:`kimi_intercept.relay.cache_breaks`).
#: Positions are in the OpenAI-hub form of the request (the system prompt is ``messages[0]``).
CACHE_BREAK_COLUMNS: dict[str, type] = {
    "request_id": str,
    "conversation_id": str,
    "started_at": str,  # ISO 8601 UTC, of the request
    "client": str,
    "provider": str,
    "model": str,
    "previous_request_id": str,
    "previous_cached_ratio": float,  # cached / prompt tokens of the previous request, 0..1
    "cached_ratio": float,  # ... of this one
    "previous_prompt_tokens": int,
    "prompt_tokens": int,
    "position": str,  # "model", "tools[2]", "messages[3]", "messages[3].content[1]", or NULL
    "message_index": int,  # NULL for model/tools, or when nothing before the new turn changed
    "block_index": int,  # content block in that message (the tool's index for "tools")
    "role": str,  # system | user | assistant | tool
    "kind": str,  # model | tools | system | text | tool_call | tool_result | removed
    "hint": str,  # "system prompt edited", "tool list reordered", ...
    "changed_by": str,  # NULL, "sanitizer" or "compression": ours changed that position
    "caused_by_us": int,  # 1: the client's own request did not change there (a bug of ours)
}

#: Tables :meth:`StoreWriter.put` accepts in ``extra``, with their columns and primary key.
EXTRA_TABLES: dict[str, tuple[dict[str, type], tuple[str, ...]]] = {
    "masked": (MASKED_COLUMNS, ("id",)),
    "savings": (SAVINGS_COLUMNS, ("request_id", "tool")),
    "shadow": (SHADOW_COLUMNS, ("id",)),
    "cache_breaks": (CACHE_BREAK_COLUMNS, ("request_id",)),
}

migrations = sqlite_utils.Migrations("kimi_intercept")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    requests = db.table("requests")
    requests.create(_M001_REQUEST_COLUMNS, pk="id")
    requests.create_index(["started_at"])
    requests.create_index(["provider", "started_at"])
    requests.create_index(["model", "started_at"])
    attempts = db.table("attempts")
    attempts.create(ATTEMPT_COLUMNS, pk="id", foreign_keys=[("request_id", "requests", "id")])
    attempts.create_index(["request_id"])


@migrations()
def m002_requests_dialect(db: sqlite_utils.Database) -> None:
    for name, kind in _M002_REQUEST_COLUMNS.items():
        db.table("requests").add_column(name, kind)


# One row per conversation, over counted requests. ``title``/``client`` are those of its first
# turn; ``last_prompt_tokens``/``context_window`` those of its last.
_CONVERSATIONS_VIEW = """
CREATE VIEW conversations AS
SELECT
  conversation_id AS id,
  (SELECT r.conversation_title FROM requests r WHERE r.conversation_id = c.conversation_id
     AND r.duplicate_of IS NULL ORDER BY r.started_at, r.id LIMIT 1) AS title,
  (SELECT r.client FROM requests r WHERE r.conversation_id = c.conversation_id
     AND r.duplicate_of IS NULL ORDER BY r.started_at, r.id LIMIT 1) AS client,
  min(started_at) AS first_at,
  max(started_at) AS last_at,
  count(*) AS turns,
  coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
  coalesce(sum(completion_tokens), 0) AS completion_tokens,
  coalesce(sum(cached_tokens), 0) AS cached_tokens,
  sum(cost_usd) AS cost_usd,
  coalesce(sum(cost_usd IS NULL AND (prompt_tokens > 0 OR completion_tokens > 0)), 0) AS unpriced,
  coalesce(sum(fallback_used), 0) AS fallbacks,
  coalesce(sum(outcome != 'ok'), 0) AS not_ok,
  (SELECT r.prompt_tokens FROM requests r WHERE r.conversation_id = c.conversation_id
     AND r.duplicate_of IS NULL ORDER BY r.started_at DESC, r.id DESC LIMIT 1)
     AS last_prompt_tokens,
  (SELECT r.context_window FROM requests r WHERE r.conversation_id = c.conversation_id
     AND r.duplicate_of IS NULL ORDER BY r.started_at DESC, r.id DESC LIMIT 1) AS context_window
FROM requests c
WHERE conversation_id IS NOT NULL AND duplicate_of IS NULL
GROUP BY conversation_id
"""


@migrations()
def m003_accounting(db: sqlite_utils.Database) -> None:
    requests = db.table("requests")
    for name, kind in _M003_REQUEST_COLUMNS.items():
        requests.add_column(name, kind)
    requests.create_index(["conversation_id", "started_at"])
    # Totals come from `daily` now: per-provider/model scans of the raw rows are gone, and
    # these two indexes were ~85 bytes of every row.
    db.execute("DROP INDEX IF EXISTS idx_requests_provider_started_at")
    db.execute("DROP INDEX IF EXISTS idx_requests_model_started_at")
    db.execute(
        "CREATE INDEX idx_requests_response_id ON requests (response_id) "
        "WHERE response_id IS NOT NULL"
    )
    # Small partial indexes: the report's error tables, duplicate count and calibration error
    # read only these rows.
    db.execute("CREATE INDEX idx_requests_not_ok ON requests (started_at) WHERE outcome != 'ok'")
    db.execute(
        "CREATE INDEX idx_requests_duplicates ON requests (started_at) "
        "WHERE duplicate_of IS NOT NULL"
    )
    db.execute(f"CREATE INDEX idx_requests_calibration ON requests (started_at) WHERE {CALIB}")
    db.table("attempts").create_index(["started_at"])
    db.execute("CREATE INDEX idx_attempts_failed ON attempts (request_id) WHERE error IS NOT NULL")
    db.table("masked").create(MASKED_COLUMNS, pk="id")
    db.table("masked").create_index(["request_id"])
    db.table("masked").create_index(["created_at"])
    db.table("savings").create(SAVINGS_COLUMNS, pk=("request_id", "tool"))
    create_daily(db)
    db.execute(_CONVERSATIONS_VIEW)


@migrations()
def m004_shadow(db: sqlite_utils.Database) -> None:
    db.table("shadow").create(SHADOW_COLUMNS, pk="id")
    db.table("shadow").create_index(["started_at"])


@migrations()
def m005_requests_rule(db: sqlite_utils.Database) -> None:
    for name, kind in _M005_REQUEST_COLUMNS.items():
        db.table("requests").add_column(name, kind)


@migrations()
def m006_cache_writes(db: sqlite_utils.Database) -> None:
    for name, kind in _M006_REQUEST_COLUMNS.items():
        db.table("requests").add_column(name, kind)


@migrations()
def m007_money_savings(db: sqlite_utils.Database) -> None:
    for name, kind in _M007_REQUEST_COLUMNS.items():
        db.table("requests").add_column(name, kind)


@migrations()
def m008_cache_breaks(db: sqlite_utils.Database) -> None:
    db.table("cache_breaks").create(CACHE_BREAK_COLUMNS, pk="request_id")
    db.table("cache_breaks").create_index(["conversation_id", "started_at"])
    db.table("cache_breaks").create_index(["started_at"])


# m009: as m003's view, with the title read as storage.titles says (the first titled row).
_CONVERSATIONS_VIEW_M009 = _CONVERSATIONS_VIEW.replace(
    """(SELECT r.conversation_title FROM requests r WHERE r.conversation_id = c.conversation_id
     AND r.duplicate_of IS NULL ORDER BY r.started_at, r.id LIMIT 1)""",
    title_sql("c.conversation_id"),
)


@migrations()
def m009_smaller_rows(db: sqlite_utils.Database) -> None:
    """Bytes per request row (#16): new rows carry shorter ids (storage.ids, 32-hex
    conversation ids) and the title once per conversation (storage.titles); indexes nothing
    needs go. ``attempts`` are pruned and read by ``request_id`` (the status command finds the
    recent ones through ``requests.started_at``); calibration reads the latest rows through
    ``idx_requests_started_at``; a conversation's rows are few, found by ``conversation_id``
    alone."""
    db.execute("DROP INDEX IF EXISTS idx_attempts_started_at")
    db.execute("DROP INDEX IF EXISTS idx_requests_calibration")
    db.execute("DROP INDEX IF EXISTS idx_requests_conversation_id_started_at")
    db.execute(
        "CREATE INDEX idx_requests_conversation_id ON requests (conversation_id) "
        "WHERE conversation_id IS NOT NULL"
    )
    db.execute("DROP VIEW IF EXISTS conversations")
    db.execute(_CONVERSATIONS_VIEW_M009)


class DatabaseNotFound(FileNotFoundError):
    """Raised by :func:`open_readonly` when no database exists at the path."""


def open_db(
    path: str | Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> sqlite_utils.Database:
    """Open (creating it and its parent folders if needed) the database for writing.

    Sets WAL, ``synchronous=NORMAL`` and ``busy_timeout``, then applies pending migrations.
    The connection belongs to the calling thread.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(path)
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    db.enable_wal()
    db.execute("PRAGMA synchronous=NORMAL")
    migrations.apply(db)
    return db


def open_readonly(path: str | Path) -> sqlite_utils.Database:
    """Open an existing database read-only (``mode=ro``); nothing can be written through it.

    :raises DatabaseNotFound: if there is no file at ``path``
    """
    path = Path(path)
    if not path.is_file():
        raise DatabaseNotFound(
            f"No database at {path.resolve()} - run the proxy or `kimi-intercept demo` first"
        )
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    conn.execute(f"PRAGMA busy_timeout={DEFAULT_BUSY_TIMEOUT_MS}")
    return sqlite_utils.Database(conn)
