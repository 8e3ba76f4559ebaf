"""What ``kimi-intercept top`` shows, read once a second: a few small queries on a read-only
connection, plus the running proxy's status file (providers' health, calls in flight).

Cheap by construction: totals for today and this month come from the ``daily`` rollup (one row
per day × provider × model × client × route × usage source), everything else reads only the
last hour of ``requests`` through the ``started_at`` index, and the latest calls are one
``ORDER BY started_at DESC LIMIT n``. Times in ``requests`` are ISO 8601 UTC strings
(``2026-11-21T23:54:42.123Z``), compared as text.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kimi_intercept.commands.status import read_live
from kimi_intercept.storage.titles import title_sql

#: The windows ``top`` compares, in seconds.
RATE_WINDOW_S = 60  # tokens per minute
NOW_WINDOW_S = 5 * 60  # cache-hit rate "now"
HOUR_S = 60 * 60


@dataclass
class Snapshot:
    """One refresh. Money in USD, tokens as counted (provider usage or our estimate)."""

    taken: float  # time.time()
    error: str | None = None  # why there are no numbers (no database yet, unreadable…)
    spend_today: float | None = None
    daily_usd: float | None = None  # [budget] limits (shown without a client filter)
    monthly_usd: float | None = None
    spend_month: float | None = None
    calls_today: int = 0
    tokens_per_min: int = 0
    cache_now: float | None = None  # cached / prompt tokens over the last 5 min, 0..1
    cache_hour: float | None = None  # … over the last hour
    models: list[dict[str, Any]] = field(default_factory=list)  # last hour, per provider/model
    latest: list[dict[str, Any]] = field(default_factory=list)  # newest first
    conversations: list[dict[str, Any]] = field(default_factory=list)  # active in the last hour
    clients: list[str] = field(default_factory=list)  # seen in the last 24 h, for the filter
    in_flight: list[dict[str, Any]] = field(default_factory=list)  # from the status file
    providers: list[dict[str, Any]] | None = None  # breaker states; None: no proxy running
    breaks: list[dict[str, Any]] = field(default_factory=list)  # cache breaks, last 24 h, newest


def iso(t: float) -> str:
    """Unix seconds → the ``started_at`` format."""
    dt = datetime.fromtimestamp(t, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class Reader:
    """Keeps one read-only connection to ``db_path`` open between refreshes."""

    def __init__(
        self, db_path: Path, status_path: Path, latest: int = 12, budget: Any = None
    ) -> None:
        self.budget = budget  # a config.budget.Budget, or None
        self.db_path = db_path
        self.status_path = status_path
        self.latest_n = latest
        self._conn: sqlite3.Connection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            uri = self.db_path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=1000")
            conn.row_factory = sqlite3.Row
            self._conn = conn
        return self._conn

    def snapshot(self, client: str | None = None, now: float | None = None) -> Snapshot:
        """Everything ``top`` shows, for one client (its ``client`` column) or all."""
        now = time.time() if now is None else now
        snap = Snapshot(taken=now)
        if self.budget is not None and client is None:
            snap.daily_usd, snap.monthly_usd = self.budget.daily_usd, self.budget.monthly_usd
        live = read_live(self.status_path)
        if live is not None:
            snap.providers = live.get("providers") or []
            flying = [c for c in live.get("in_flight") or [] if isinstance(c, dict)]
            snap.in_flight = [c for c in flying if client is None or c.get("client") == client]
        if not self.db_path.is_file():
            snap.error = f"waiting for the database at {self.db_path} (start the proxy)"
            return snap
        try:
            self._read(snap, client, now)
        except sqlite3.Error as e:
            self.close()  # reopen next time: the file may have been replaced
            snap.error = f"cannot read {self.db_path}: {e}"
        return snap

    def _read(self, snap: Snapshot, client: str | None, now: float) -> None:
        conn = self._connect()
        today = datetime.fromtimestamp(now, timezone.utc).date()
        where, args = ("and client = ?", [client]) if client is not None else ("", [])
        daily_where = ("and client = ?", [client or ""]) if client is not None else ("", [])
        r = conn.execute(
            f"""select sum(case when day = ? then cost_usd end) as today,
                       sum(cost_usd) as month,
                       coalesce(sum(case when day = ? then requests end), 0) as calls
                from daily where day >= ? {daily_where[0]}""",
            [today.isoformat(), today.isoformat(), today.replace(day=1).isoformat()]
            + daily_where[1],
        ).fetchone()
        snap.spend_today, snap.spend_month, snap.calls_today = r["today"], r["month"], r["calls"]
        hour_ago, now_ago, minute_ago = iso(now - HOUR_S), iso(now - NOW_WINDOW_S), iso(now - 60)
        r = conn.execute(
            f"""select
                 coalesce(sum(case when started_at >= ? then
                   coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0) end), 0) as tpm,
                 sum(case when started_at >= ? then cached_tokens end) as cached_now,
                 sum(case when started_at >= ? then prompt_tokens end) as prompt_now,
                 sum(cached_tokens) as cached_hour, sum(prompt_tokens) as prompt_hour
               from requests
               where started_at >= ? and duplicate_of is null {where}""",
            [minute_ago, now_ago, now_ago, hour_ago, *args],
        ).fetchone()
        snap.tokens_per_min = r["tpm"]
        snap.cache_now = _ratio(r["cached_now"], r["prompt_now"])
        snap.cache_hour = _ratio(r["cached_hour"], r["prompt_hour"])
        snap.models = [
            dict(m)
            for m in conn.execute(
                f"""select provider, model, count(*) as calls,
                      coalesce(sum(outcome != 'ok'), 0) as errors,
                      coalesce(sum(fallback_used), 0) as fallbacks,
                      avg(ttft_ms) as ttft_ms,
                      coalesce(sum(prompt_tokens), 0) + coalesce(sum(completion_tokens), 0)
                        as tokens,
                      sum(cost_usd) as cost_usd
                    from requests where started_at >= ? and duplicate_of is null {where}
                    group by provider, model order by calls desc limit 8""",
                [hour_ago, *args],
            )
        ]
        has_breaks = conn.execute(
            "select 1 from sqlite_master where type = 'table' and name = 'cache_breaks'"
        ).fetchone()  # a database from before m008 that no proxy has opened yet has none
        broke = "exists(select 1 from cache_breaks b where b.request_id = requests.id)"
        snap.latest = [
            dict(c)
            for c in conn.execute(
                f"""select started_at, client, client_model, provider, model, outcome,
                      status_code, fallback_used, prompt_tokens, cached_tokens,
                      completion_tokens, usage_source, cost_usd, ttft_ms, duration_ms,
                      conversation_id, coalesce(conversation_title, {_TITLE_OF_ROW})
                        as conversation_title,
                      {broke if has_breaks else "0"} as cache_break
                    from requests where 1 {where}
                    order by started_at desc limit ?""",
                [*args, self.latest_n],
            )
        ]
        snap.conversations = [dict(c) for c in conn.execute(_CONVERSATIONS.format(where=where),
                                                             [hour_ago, *args])]  # fmt: skip
        if has_breaks:
            snap.breaks = [dict(b) for b in conn.execute(_BREAKS.format(where=where.replace(
                "client", "b.client")), [iso(now - 24 * HOUR_S), *args])]  # fmt: skip
        snap.clients = [
            c[0]
            for c in conn.execute(
                "select distinct client from requests where started_at >= ? "
                "and client is not null order by client",
                [iso(now - 24 * HOUR_S)],
            )
        ]


# Conversations with a call in the last hour; the gauge is the last call's prompt plus output
# over the context window of the model that answered it. The hour's rows are read along
# started_at (``+conversation_id``: not along the conversation index, all rows ever).
_CONVERSATIONS = """
with recent as (
  select conversation_id, count(*) as calls, sum(cost_usd) as cost_usd,
         max(started_at) as last_at, sum(cached_tokens) as cached, sum(prompt_tokens) as prompt
  from requests
  where started_at >= ? and +conversation_id is not null and duplicate_of is null {where}
  group by conversation_id order by last_at desc limit 8
)
select recent.*, last.client, {title} as title, last.model,
       coalesce(last.prompt_tokens, 0) + coalesce(last.completion_tokens, 0) as context_used,
       last.context_window
from recent join requests last on last.id = (
  select r.id from requests r where r.conversation_id = recent.conversation_id
  order by r.started_at desc, r.id desc limit 1)
order by last_at desc
""".replace("{title}", title_sql("recent.conversation_id"))
# A row's conversation title when the row itself has none (only the first row has it: m009).
_TITLE_OF_ROW = title_sql("requests.conversation_id")


# The latest cache breaks (relay.cache_breaks), with their conversation's title.
_BREAKS = """
select b.started_at, b.client, b.previous_cached_ratio, b.cached_ratio, b.position, b.kind,
       b.hint, b.changed_by, b.caused_by_us, {title} as title
from cache_breaks b
where b.started_at >= ? {where}
order by b.started_at desc limit 4
""".replace("{title}", title_sql("b.conversation_id"))


def _ratio(part: float | None, whole: float | None) -> float | None:
    return None if not whole else (part or 0) / whole
