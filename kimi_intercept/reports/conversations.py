"""The report's conversations: the most recently active ones in the range with their sums and
context gauge (:func:`conversation_rows`), and one conversation turn by turn with its charts,
masked items and savings (:func:`conversation_context`); :func:`page_name` names its page."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import sqlite_utils

from kimi_intercept.config.settings import Config
from kimi_intercept.reports.cache_breaks import conversation_breaks
from kimi_intercept.reports.charts import gauge_line, turn_bars
from kimi_intercept.reports.data import range_where
from kimi_intercept.storage.rollup import COUNTED_SUMS_SQL
from kimi_intercept.storage.titles import title_sql

CONVERSATION_LIST_LIMIT = 500
CONVERSATION_PAGES = 200
TURN_LIMIT = 2000

# The title is the conversation's first stored one (only the first row carries it: m009).
_FIRST_TURN_SQL = f"""
SELECT {title_sql("r.conversation_id")} AS title, r.client, r.route FROM requests r
WHERE r.conversation_id = ? AND r.duplicate_of IS NULL ORDER BY r.started_at, r.id LIMIT 1
"""
_LAST_TURN_SQL = """
SELECT prompt_tokens, context_window, provider, model FROM requests
WHERE conversation_id = ? AND duplicate_of IS NULL ORDER BY started_at DESC, id DESC LIMIT 1
"""

_TURNS_SQL = """
SELECT r.id, r.started_at, r.client_model, r.provider, r.model, r.outcome, r.status_code,
  r.attempts, r.fallback_used, r.prompt_tokens, r.completion_tokens, r.cached_tokens,
  r.reasoning_tokens, r.usage_source, r.cost_usd, r.context_window, r.ttft_ms, r.duration_ms,
  r.tokens_before_sanitize, r.tokens_after_sanitize, r.memory_tokens, r.duplicate_of, r.error,
  (SELECT sum(s.tokens_before - s.tokens_after) FROM savings s WHERE s.request_id = r.id)
    AS saved_tokens,
  (SELECT sum(s.items) FROM savings s WHERE s.request_id = r.id) AS masked_items
FROM requests r
WHERE r.conversation_id = ?
ORDER BY r.started_at, r.id
LIMIT ?
"""

_MASKED_SQL = """
SELECT m.id, m.created_at, m.tool, m.kind, m.dialect, m.lines, m.bytes, m.tokens_before,
  m.tokens_after, m.request_id
FROM masked m WHERE m.request_id IN (SELECT id FROM requests WHERE conversation_id = ?)
ORDER BY m.created_at, m.id
LIMIT 500
"""

_CONVERSATION_SAVINGS_SQL = """
SELECT s.tool, sum(s.items) AS items, sum(s.tokens_before) AS tokens_before,
  sum(s.tokens_after) AS tokens_after
FROM savings s JOIN requests r ON r.id = s.request_id
WHERE r.conversation_id = ? AND r.duplicate_of IS NULL
GROUP BY s.tool ORDER BY s.tool
"""


def page_name(conversation_id: str) -> str:
    """The file of a conversation's page, inside ``conversations/``: the id itself when it is
    a hex digest (as the proxy writes them), else a hash of it."""
    if re.fullmatch(r"[0-9a-f]{16,64}", conversation_id):
        return conversation_id + ".html"
    return hashlib.sha256(conversation_id.encode()).hexdigest() + ".html"


def conversation_rows(
    db: sqlite_utils.Database,
    since: str | None,
    until: str | None,
    cfg: Config | None,
    limit: int = CONVERSATION_LIST_LIMIT,
) -> tuple[list[dict[str, Any]], int]:
    """The ``limit`` most recently active conversations in the range with their sums, and how
    many conversations the range has. The list comes from one pass over the range's rows
    (``+``: along ``started_at``, not the conversation index, which would fetch every row by
    its rowid); the sums from each conversation's own rows (``idx_requests_conversation_id``)."""
    where, params = range_where(since, until, "+conversation_id IS NOT NULL")
    activity = db.execute(
        f"SELECT conversation_id, max(started_at) FROM requests {where} GROUP BY conversation_id",
        params,
    ).fetchall()
    recent = sorted(activity, key=lambda a: (a[1] or "", a[0]), reverse=True)[:limit]
    where_c, params_c = range_where(since, until, "conversation_id = :id", "duplicate_of IS NULL")
    rows = []
    for n, (conversation_id, _) in enumerate(recent):
        r = next(
            db.query(
                f"SELECT min(started_at) AS first_at, max(started_at) AS last_at, "
                f"{COUNTED_SUMS_SQL} FROM requests {where_c}",
                {**params_c, "id": conversation_id},
            )
        )
        if not r["requests"]:
            continue  # only replayed responses in this range
        r["id"] = conversation_id
        r["page"] = (
            f"conversations/{page_name(conversation_id)}" if n < CONVERSATION_PAGES else None
        )
        first = next(db.query(_FIRST_TURN_SQL, [conversation_id]), {})
        last = next(db.query(_LAST_TURN_SQL, [conversation_id]), {})
        r["title"], r["client"], r["route"] = (
            first.get("title"),
            first.get("client"),
            first.get("route"),
        )
        window = last.get("context_window") or _context_window(
            cfg, last.get("model"), last.get("provider")
        )
        r["last_prompt_tokens"], r["context_window"] = last.get("prompt_tokens"), window
        r["gauge"] = (
            r["last_prompt_tokens"] / window if window and r["last_prompt_tokens"] else None
        )
        if not r["priced"]:
            r["cost_usd"] = None
        rows.append(r)
    return rows, len(activity)


def _context_window(cfg: Config | None, model: str | None, provider: str | None) -> int | None:
    info = cfg.model_info(model, provider) if cfg is not None and model else None
    return info.context_window if info else None


def conversation_context(
    db: sqlite_utils.Database, conv: Mapping[str, Any], cfg: Config | None
) -> dict[str, Any]:
    turns = list(db.query(_TURNS_SQL, [conv["id"], TURN_LIMIT]))
    for n, t in enumerate(turns, start=1):
        t["n"] = n
        window = t["context_window"] or _context_window(cfg, t["model"], t["provider"])
        t["window"] = window
        t["gauge"] = t["prompt_tokens"] / window if window and t["prompt_tokens"] else None
    counted = [t for t in turns if not t["duplicate_of"]]
    breaks = conversation_breaks(db, conv["id"])
    turn_of = {t["id"]: t["n"] for t in turns}
    for b in breaks:
        b["turn"] = turn_of.get(b["request_id"])
        if b["turn"] is not None:
            turns[b["turn"] - 1]["cache_break"] = b
    return {
        "conv": conv,
        "turns": turns,
        "turn_chart": turn_bars(counted),
        "gauge_chart": gauge_line(counted),
        "masked": list(db.query(_MASKED_SQL, [conv["id"]])),
        "savings": list(db.query(_CONVERSATION_SAVINGS_SQL, [conv["id"]])),
        "breaks": breaks,
        "clipped": len(turns) >= TURN_LIMIT,
        "turn_limit": TURN_LIMIT,
    }
