"""The static HTML report suite: SQL aggregates over the store, rendered by Jinja2.

Pages, all in the output folder: ``index.html`` (overview: today / 7 / 30 days, per-day charts,
sources, errors, latest requests), ``providers.html`` (comparison: success and fallback rates,
p50/p95 latency and TTFT, cost per request, errors by class), ``models.html`` (with the
calibration of estimates), ``clients.html``, ``conversations.html`` and one
``conversations/<id>.html`` per recent conversation (turn by turn, context gauge, masked items).

Speed at a million rows: one SQL pass groups the range's counted requests by day × provider ×
model × client × route × usage source (:func:`read_facts`, plus the ``daily`` rollups of pruned
days); every overview, table and chart is a sum over those few groups in Python. Latency
percentiles come from per-millisecond histograms (1 % buckets above a second), conversations
from one grouped query, single rows only for the latest 50 requests and the conversation pages.
Only ``duplicate_of IS NULL`` rows are counted (a replayed response once).

No page has an external URL, a script or a font: charts are inline SVG (``templates/_charts.html``)
and every value from the database is escaped by Jinja's autoescape.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlite_utils
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from kimi_intercept import calibration
from kimi_intercept.config import Config, ModelInfo
from kimi_intercept.prices import price_book
from kimi_intercept.store import (
    COUNTED_SUMS_SQL,
    DAILY_SUMS,
    DatabaseNotFound,
    open_db,
    open_readonly,
)

from . import compare

MAX_CHART_DAYS = 92
LATEST_LIMIT = 50
CONVERSATION_LIST_LIMIT = 500
CONVERSATION_PAGES = 200
SAMPLE_ROWS = 100_000
TURN_LIMIT = 2000
WINDOWS = (("today", 1), ("7 days", 7), ("30 days", 30))

env = Environment(
    loader=PackageLoader("kimi_intercept"),
    autoescape=select_autoescape(default_for_string=True, default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def fmt_num(value: float | None) -> str:
    """``12345`` → ``12,345``; ``None`` → ``–``."""
    return "–" if value is None else f"{value:,.0f}"


def fmt_usd(value: float | None) -> str:
    """Dollars to the cent; below a cent to 1/100 cent, below that to a millionth of a dollar
    (a single short request costs fractions of a cent); ``None`` → ``unpriced``."""
    if value is None:
        return "unpriced"
    if value != 0 and abs(value) < 0.0001:
        return f"${value:.6f}"
    if value != 0 and abs(value) < 0.01:
        return f"${value:.4f}"
    return f"${value:,.2f}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f} ms" if value < 10_000 else f"{value / 1000:,.1f} s"


def fmt_pct(part: float | None, whole: float | None) -> str:
    return "–" if not whole else f"{100 * (part or 0) / whole:.0f}%"


def fmt_ratio(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage: ``0.123`` → ``12.3%``; ``None`` → ``–``."""
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def fmt_compact(value: float) -> str:
    """Axis labels: ``2500`` → ``2.5k``, ``3000000`` → ``3M``."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def plural(n: int, word: str) -> str:
    """``plural(1, "request")`` → ``1 request``; ``plural(2, "request")`` → ``2 requests``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def fmt_time(iso: str | None) -> str:
    """``2026-11-21T23:54:42.123Z`` → ``2026-11-21 23:54:42``."""
    return "–" if not iso else iso[:19].replace("T", " ")


env.filters.update(num=fmt_num, usd=fmt_usd, ms=fmt_ms, time=fmt_time, ratio=fmt_ratio)
env.globals.update(pct=fmt_pct, plural=plural)


# -- the aggregates ----------------------------------------------------------------------------

SUMS = tuple(DAILY_SUMS)


@dataclass(frozen=True)
class Totals:
    """Totals over the selected range: counted requests, from ``daily`` (pruned days too).

    ``cost_usd`` sums priced requests only; ``unpriced`` counts requests with tokens and no
    price. Tokens of estimate-only requests are calibrated when their model has a ratio
    (``calibrated`` of the ``estimated`` requests).
    """

    requests: int = 0
    ok: int = 0
    error: int = 0
    incomplete: int = 0
    client_abort: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    unpriced: int = 0
    estimated: int = 0
    fallbacks: int = 0
    first: str | None = None
    last: str | None = None
    calibrated: int = 0
    saved_tokens: int = 0
    duplicates: int = 0
    provider_prompt_tokens: int = 0  # prompt tokens of rows with provider usage
    provider_cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cache_hit_rate(self) -> float | None:
        """Cached over prompt tokens, among requests the provider reported usage for."""
        if not self.provider_prompt_tokens:
            return None
        return self.provider_cached_tokens / self.provider_prompt_tokens

    def summary(self) -> str:
        """One line: ``3 requests, 1,234 tokens (…), $1.25 (1 unpriced)``."""
        cost = "cost unknown" if self.cost_usd is None else fmt_usd(self.cost_usd)
        line = (
            f"{plural(self.requests, 'request')}, "
            f"{self.total_tokens:,} tokens ({self.prompt_tokens:,} prompt + "
            f"{self.completion_tokens:,} completion), {cost}"
        )
        return line + (f" ({self.unpriced:,} unpriced)" if self.unpriced else "")


def _zero() -> dict[str, Any]:
    return {
        **{s: 0 for s in SUMS},
        "cost_usd": None,
        "calibrated": 0,
        "provider_prompt_tokens": 0,
        "provider_cached_tokens": 0,
    }


def _add(acc: dict[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    for name in (*SUMS, "calibrated", "provider_prompt_tokens", "provider_cached_tokens"):
        if name == "cost_usd":
            if row["cost_usd"] is not None:
                acc["cost_usd"] = (acc["cost_usd"] or 0.0) + row["cost_usd"]
        else:
            acc[name] += row.get(name) or 0
    return acc


@dataclass
class Facts:
    """The range's groups (day × provider × model × client × route × usage source), with
    estimate-only groups already calibrated, and the sanitizer's savings per day."""

    rows: list[dict[str, Any]]
    saved_by_day: dict[str, int] = field(default_factory=dict)
    first: str | None = None
    last: str | None = None
    duplicates: int = 0
    calibrations: dict[tuple[str, str], calibration.Calibration] = field(default_factory=dict)

    def total(self, keep: Callable[[Mapping[str, Any]], bool] = lambda r: True) -> dict[str, Any]:
        acc = _zero()
        for r in self.rows:
            if keep(r):
                _add(acc, r)
        return acc

    def group(self, *keys: str) -> list[dict[str, Any]]:
        """Sums per distinct value of ``keys`` ("" shown as NULL: ``None``), most requests
        first."""
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in self.rows:
            k = tuple(r[key] for key in keys)
            if k not in groups:
                groups[k] = {key: (r[key] or None) for key in keys} | _zero()
            _add(groups[k], r)
        return sorted(
            groups.values(), key=lambda g: (-g["requests"], *(str(g[k] or "") for k in keys))
        )

    def totals(self) -> Totals:
        t = self.total()
        return Totals(
            requests=t["requests"],
            ok=t["ok"],
            error=t["errors"],
            incomplete=t["incomplete"],
            client_abort=t["client_abort"],
            prompt_tokens=t["prompt_tokens"],
            completion_tokens=t["completion_tokens"],
            cached_tokens=t["cached_tokens"],
            reasoning_tokens=t["reasoning_tokens"],
            cost_usd=t["cost_usd"],
            unpriced=t["unpriced"],
            estimated=t["estimated"],
            fallbacks=t["fallbacks"],
            first=self.first,
            last=self.last,
            calibrated=t["calibrated"],
            saved_tokens=sum(self.saved_by_day.values()),
            duplicates=self.duplicates,
            provider_prompt_tokens=t["provider_prompt_tokens"],
            provider_cached_tokens=t["provider_cached_tokens"],
        )


def read_facts(
    db: sqlite_utils.Database,
    since: str | None = None,
    until: str | None = None,
    cfg: Config | None = None,
) -> Facts:
    """The range's ``daily`` totals (kept by the store's triggers), calibrated. Read-only."""
    if not db.table("daily").exists():
        return Facts([])
    where_d, params_d = _where(since, until, "requests != 0", column="day")
    rows = list(db.query(f"SELECT * FROM daily {where_d}", params_d))
    cals = calibration.learn(db)
    for r in rows:
        if not r["priced"]:
            r["cost_usd"] = None  # not 0.0 left over by an update
        _calibrate(r, cals, cfg)
    where, params = _where(since, until)
    first = db.execute(f"SELECT min(started_at) FROM requests {where}", params).fetchone()[0]
    last = db.execute(f"SELECT max(started_at) FROM requests {where}", params).fetchone()[0]
    if rows:  # days whose raw rows were pruned
        first_day, last_day = min(r["day"] for r in rows), max(r["day"] for r in rows)
        first = first_day if first is None or first_day < first[:10] else first
        last = last_day if last is None or last_day > last[:10] else last
    where_dup, params_dup = _where(since, until, "duplicate_of IS NOT NULL")
    duplicates = db.execute(f"SELECT count(*) FROM requests {where_dup}", params_dup).fetchone()[0]
    where_s, params_s = _where(since, until, column="day")
    saved: dict[str, int] = {}
    for r in db.query(
        f"SELECT day, sum(tokens_before - tokens_after) AS saved FROM daily_savings {where_s} "
        "GROUP BY day",
        params_s,
    ):
        saved[r["day"]] = r["saved"] or 0
    return Facts(rows, saved, first, last, duplicates, cals)


def _calibrate(
    r: dict[str, Any], cals: Mapping[tuple[str, str], calibration.Calibration], cfg: Config | None
) -> None:
    r["calibrated"] = 0
    if r["usage_source"] == "provider":
        r["provider_prompt_tokens"] = r["prompt_tokens"]
        r["provider_cached_tokens"] = r["cached_tokens"]
    if r["usage_source"] != "estimate":
        return
    cal = cals.get((r["provider"], r["model"]))
    if cal is None or not cal.usable:
        return
    info = _model_info(cfg, r["model"], r["provider"], r["day"])
    factor = cal.cost_factor(r["prompt_tokens"], r["completion_tokens"], info)
    r["prompt_tokens"], r["completion_tokens"] = cal.apply(
        r["prompt_tokens"], r["completion_tokens"]
    )
    if r["cost_usd"] is not None:
        r["cost_usd"] *= factor
    r["calibrated"] = r["estimated"]


def _model_info(
    cfg: Config | None, model: str | None, provider: str | None, day: str
) -> ModelInfo | None:
    if cfg is None or not model:
        return None
    try:
        return price_book(cfg).model_info_at(model, day, provider or None)
    except ValueError:  # a malformed [prices] table: the CLI reports it; the report goes on
        return cfg.model_info(model, provider or None)


def read_totals(
    db: sqlite_utils.Database,
    since: str | None = None,
    until: str | None = None,
    cfg: Config | None = None,
) -> Totals:
    """Totals over the range (an empty :class:`Totals` if the store has no tables yet)."""
    return read_facts(db, since, until, cfg).totals()


def windows(
    facts: Facts, end: date, spans: tuple[tuple[str, int], ...] = WINDOWS
) -> list[dict[str, Any]]:
    """The overview rows: for each ``(label, days)`` of ``spans`` (today, the last 7 and the
    last 30 days), the sums of the days up to ``end`` (inclusive, UTC) within the facts'
    range."""
    out = []
    for label, days in spans:
        start = (end - timedelta(days=days - 1)).isoformat()
        stop = end.isoformat()
        t = facts.total(lambda r, a=start, b=stop: a <= r["day"] <= b)
        saved = sum(v for d, v in facts.saved_by_day.items() if start <= d <= stop)
        hit = (
            t["provider_cached_tokens"] / t["provider_prompt_tokens"]
            if t["provider_prompt_tokens"]
            else None
        )
        out.append({"label": label, "start": start, "end": stop, **t, "saved_tokens": saved,
                    "cache_hit_rate": hit})  # fmt: skip
    return out


# -- other queries -----------------------------------------------------------------------------


@dataclass
class Latency:
    """TTFT and duration samples per ``(provider, model)``; ``every`` > 1 when the range had
    more than :data:`SAMPLE_ROWS` requests and every ``every``-th row (by rowid) was taken."""

    ttft: dict[tuple[Any, ...], list[float]]
    duration: dict[tuple[Any, ...], list[float]]
    every: int = 1

    def percentiles(
        self, metric: str, by_provider: bool = False, qs: tuple[float, ...] = (0.5, 0.95)
    ) -> dict[tuple[Any, ...], list[float]]:
        """``{group: [value at q for q in qs]}`` (linear interpolation between the closest
        ranks: the median of an even count is the mean of the middle two)."""
        groups: dict[tuple[Any, ...], list[float]] = {}
        for key, values in getattr(self, metric).items():
            groups.setdefault(key[:1] if by_provider else key, []).extend(values)
        return {k: [_quantile(sorted(v), q) for q in qs] for k, v in groups.items()}


def read_latency(
    db: sqlite_utils.Database, since: str | None, until: str | None, rows: int
) -> Latency:
    """TTFT and duration of the counted requests in the range (a systematic sample of about
    :data:`SAMPLE_ROWS` when there are more), fetched in one pass."""
    every = max(1, math.ceil(rows / SAMPLE_ROWS))
    extra = ["duplicate_of IS NULL", "(ttft_ms IS NOT NULL OR duration_ms IS NOT NULL)"]
    if every > 1:
        extra.append(f"rowid % {every} = 0")
    where, params = _where(since, until, *extra)
    lat = Latency({}, {}, every)
    sql = f"SELECT provider, model, ttft_ms, duration_ms FROM requests {where}"
    for provider, model, ttft, duration in db.execute(sql, params):
        if ttft is not None:
            lat.ttft.setdefault((provider, model), []).append(ttft)
        if duration is not None:
            lat.duration.setdefault((provider, model), []).append(duration)
    return lat


def _quantile(values: list[float], q: float) -> float:
    pos = (len(values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


# Failed attempts (the partial index idx_attempts_failed): the class is the error's prefix.
_ERROR_CLASS = """CASE
  WHEN instr(a.error, ':') > 1 AND instr(a.error, ':') < 32
    THEN lower(trim(substr(a.error, 1, instr(a.error, ':') - 1)))
  WHEN a.status_code IS NOT NULL THEN 'http_' || a.status_code
  ELSE 'other' END"""

_ERRORS_BY_CLASS_SQL = f"""
SELECT coalesce(a.provider, '') AS provider, {_ERROR_CLASS} AS class, count(*) AS n
FROM attempts a JOIN requests r ON r.id = a.request_id
{{where}}
GROUP BY 1, 2
ORDER BY n DESC
"""

# Requests a provider failed (not skipped) that another provider then answered.
_RESCUED_SQL = """
SELECT coalesce(a.provider, '') AS provider, count(DISTINCT r.id) AS n
FROM attempts a JOIN requests r ON r.id = a.request_id
{where}
GROUP BY 1
"""

_ERRORS_SQL = """
SELECT outcome, status_code, substr(error, 1, 300) AS error, count(*) AS n,
  max(started_at) AS last_seen
FROM requests {where}
GROUP BY outcome, status_code, substr(error, 1, 300)
ORDER BY n DESC, last_seen DESC
LIMIT 20
"""

_FAILED_ATTEMPTS_SQL = """
SELECT a.provider, a.model, a.status_code, substr(a.error, 1, 300) AS error, count(*) AS n
FROM attempts a JOIN requests r ON r.id = a.request_id
{where}
GROUP BY a.provider, a.model, a.status_code, substr(a.error, 1, 300)
ORDER BY n DESC
LIMIT 20
"""

_LATEST_SQL = """
SELECT id, started_at, client, host, client_model, provider, model, outcome, status_code,
  attempts, fallback_used, route, prompt_tokens, completion_tokens, cached_tokens,
  reasoning_tokens, usage_source, cost_usd, cost_source, ttft_ms, duration_ms, error,
  duplicate_of, conversation_id
FROM requests {where}
ORDER BY started_at DESC, id DESC
LIMIT {limit}
"""

_FIRST_TURN_SQL = """
SELECT conversation_title AS title, client, route FROM requests
WHERE conversation_id = ? AND duplicate_of IS NULL ORDER BY started_at, id LIMIT 1
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

_TOOL_SAVINGS_SQL = """
SELECT tool, sum(items) AS items, sum(tokens_before) AS tokens_before,
  sum(tokens_after) AS tokens_after
FROM daily_savings {where}
GROUP BY tool
ORDER BY sum(tokens_before - tokens_after) DESC, tool
"""


def range_where(
    since: str | None, until: str | None, *extra: str, column: str = "started_at"
) -> tuple[str, dict[str, str]]:
    """A ``WHERE`` clause for the date range (``until`` inclusive) plus ``extra`` conditions,
    and its parameters.

    :raises ValueError: if ``since`` or ``until`` is not a ``YYYY-MM-DD`` date
    """
    clauses = list(extra)
    params: dict[str, str] = {}
    if since:
        clauses.append(f"{column} >= :since")
        params["since"] = _parse_day(since, "since").isoformat()
    if until:
        clauses.append(f"{column} < :until")
        params["until"] = (_parse_day(until, "until") + timedelta(days=1)).isoformat()
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


_where = range_where


def _parse_day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--{name} must be a date like 2026-11-21, got {value!r}") from None


def page_name(conversation_id: str) -> str:
    """The file of a conversation's page, inside ``conversations/``: the id itself when it is
    a hex digest (as the proxy writes them), else a hash of it."""
    if re.fullmatch(r"[0-9a-f]{16,64}", conversation_id):
        return conversation_id + ".html"
    return hashlib.sha256(conversation_id.encode()).hexdigest() + ".html"


# -- contexts of the pages ---------------------------------------------------------------------


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    path: Path  # index.html
    pages: list[Path]
    totals: Totals


def provider_rows(
    db: sqlite_utils.Database,
    facts: Facts,
    latency: Latency,
    classes: Mapping[str, Any],
    since: str | None,
    until: str | None,
) -> list[dict[str, Any]]:
    """The provider comparison: the facts per provider plus latency and failed attempts
    (``classes``: :func:`errors_by_class`)."""
    rows = facts.group("provider")
    ttft = latency.percentiles("ttft", by_provider=True)
    duration = latency.percentiles("duration", by_provider=True)
    where, params = _where(
        since,
        until,
        "a.error IS NOT NULL",
        "a.error NOT LIKE 'skipped:%'",
        "r.outcome = 'ok'",
        "r.provider IS NOT a.provider",
        column="r.started_at",
    )
    rescued = {r["provider"]: r["n"] for r in db.query(_RESCUED_SQL.format(where=where), params)}
    failed = {(c["provider"] or ""): c["counts"] for c in classes["rows"]}  # provider -> {class: n}
    seen = set()
    for r in rows:
        key = r["provider"] or ""
        seen.add(key)
        r["p50_ttft_ms"], r["p95_ttft_ms"] = ttft.get((r["provider"],), [None, None])
        r["p50_duration_ms"], r["p95_duration_ms"] = duration.get((r["provider"],), [None, None])
        counts = failed.get(key, {})
        r["skipped"] = counts.get("skipped", 0)
        r["failed_attempts"] = sum(counts.values()) - r["skipped"]
        r["rescued"] = rescued.get(key, 0)
        r["cost_per_request"] = r["cost_usd"] / r["priced"] if r["priced"] else None
    for key, counts in failed.items():  # it only failed: every request went elsewhere
        if key in seen:
            continue
        skipped = counts.get("skipped", 0)
        rows.append(
            {"provider": key or None, **_zero(), "failed_attempts": sum(counts.values()) - skipped,
             "skipped": skipped, "rescued": rescued.get(key, 0), "p50_ttft_ms": None,
             "p95_ttft_ms": None, "p50_duration_ms": None, "p95_duration_ms": None,
             "cost_per_request": None}
        )  # fmt: skip
    return rows


def errors_by_class(
    db: sqlite_utils.Database, since: str | None, until: str | None
) -> dict[str, Any]:
    """``{"classes": [...], "rows": [{"provider", "counts": {class: n}, "total"}]}`` of failed
    upstream attempts (``skipped`` ones included); classes from the error's prefix
    (``rate_limit:`` …)."""
    where, params = _where(since, until, "a.error IS NOT NULL", column="r.started_at")
    by_provider: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for e in db.query(_ERRORS_BY_CLASS_SQL.format(where=where), params):
        by_provider.setdefault(e["provider"], {})[e["class"]] = e["n"]
        totals[e["class"]] = totals.get(e["class"], 0) + e["n"]
    classes = sorted(totals, key=lambda c: (-totals[c], c))
    rows = [
        {"provider": p or None, "counts": counts, "total": sum(counts.values())}
        for p, counts in sorted(by_provider.items(), key=lambda kv: -sum(kv[1].values()))
    ]
    return {"classes": classes, "rows": rows}


def model_rows(facts: Facts, latency: Latency) -> list[dict[str, Any]]:
    rows = facts.group("provider", "model")
    ttft = latency.percentiles("ttft", qs=(0.5,))
    duration = latency.percentiles("duration", qs=(0.5,))
    for r in rows:
        key = (r["provider"], r["model"])
        r["p50_ttft_ms"] = ttft.get(key, [None])[0]
        r["p50_duration_ms"] = duration.get(key, [None])[0]
        cal = facts.calibrations.get((r["provider"] or "", r["model"] or ""))
        r["calibration"] = cal if cal is not None and cal.usable else None
    return rows


def conversation_rows(
    db: sqlite_utils.Database,
    since: str | None,
    until: str | None,
    cfg: Config | None,
    limit: int = CONVERSATION_LIST_LIMIT,
) -> tuple[list[dict[str, Any]], int]:
    """The ``limit`` most recently active conversations in the range with their sums, and how
    many conversations the range has. The list comes from the (conversation_id, started_at)
    index alone; the sums from each conversation's own rows."""
    where, params = _where(since, until, "conversation_id IS NOT NULL")
    activity = db.execute(
        "SELECT conversation_id, max(started_at) FROM requests "
        f"INDEXED BY idx_requests_conversation_id_started_at {where} GROUP BY conversation_id",
        params,
    ).fetchall()
    recent = sorted(activity, key=lambda a: (a[1] or "", a[0]), reverse=True)[:limit]
    where_c, params_c = _where(since, until, "conversation_id = :id", "duplicate_of IS NULL")
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
    return {
        "conv": conv,
        "turns": turns,
        "turn_chart": _turn_bars(counted),
        "gauge_chart": _gauge_line(counted),
        "masked": list(db.query(_MASKED_SQL, [conv["id"]])),
        "savings": list(db.query(_CONVERSATION_SAVINGS_SQL, [conv["id"]])),
        "clipped": len(turns) >= TURN_LIMIT,
        "turn_limit": TURN_LIMIT,
    }


def report_context(
    db: sqlite_utils.Database,
    since: str | None = None,
    until: str | None = None,
    cfg: Config | None = None,
) -> dict[str, Any]:
    """Everything the pages show, from aggregate queries. Read-only."""
    facts = read_facts(db, since, until, cfg)
    totals = facts.totals()
    now = datetime.now(timezone.utc)
    context: dict[str, Any] = {
        "totals": totals,
        "since": since,
        "until": until,
        "generated_at": now.strftime("%Y-%m-%d %H:%M UTC"),
        "empty": totals.requests == 0,
        "max_chart_days": MAX_CHART_DAYS,
        "facts": facts,
    }
    if totals.requests == 0:
        return context
    end = _parse_day(until, "until") if until else now.date()
    where, params = _where(since, until)
    where_err, params_err = _where(since, until, "outcome != 'ok'")
    where_att, params_att = _where(
        since, until, "a.error IS NOT NULL", "a.error NOT LIKE 'skipped:%'", column="r.started_at"
    )
    where_sav, params_sav = _where(since, until, column="day")
    latency = read_latency(db, since, until, totals.requests)
    models = model_rows(facts, latency)
    classes = errors_by_class(db, since, until)
    providers = provider_rows(db, facts, latency, classes, since, until)
    context.update(
        end=end.isoformat(),
        windows=windows(facts, end),
        charts=_day_charts(facts),
        model_chart=_model_bars(models),
        provider_charts=_provider_bars(providers),
        providers=providers,
        models=models,
        clients=facts.group("client"),
        sources=facts.group("route"),
        usage_sources=facts.group("usage_source"),
        error_classes=classes,
        errors=list(db.query(_ERRORS_SQL.format(where=where_err), params_err)),
        failed_attempts=list(db.query(_FAILED_ATTEMPTS_SQL.format(where=where_att), params_att)),
        latest=list(db.query(_LATEST_SQL.format(where=where, limit=LATEST_LIMIT), params)),
        tool_savings=list(db.query(_TOOL_SAVINGS_SQL.format(where=where_sav), params_sav)),
        calibrations=sorted(
            facts.calibrations.values(), key=lambda c: (-c.samples, c.provider, c.model)
        ),
        latency_every=latency.every,
        min_samples=calibration.MIN_SAMPLES,
        holdout_every=calibration.HOLDOUT_EVERY,
    )
    conversations, count = conversation_rows(db, since, until, cfg)
    context.update(conversations=conversations, conversation_count=count)
    context.update(pairs=compare.pairs(db, since), agree_at=compare.AGREE_AT)
    context.update(sanitizer_value(db, since, until, cfg))
    return context


def sanitizer_value(
    db: sqlite_utils.Database, since: str | None, until: str | None, cfg: Config | None
) -> dict[str, Any]:
    """What the sanitizer saved in dollars (saved prompt tokens × the input price of each
    request's model on its day; raw rows only, so within the retention period) and how many
    prompt tokens MCP memory content took (``memory_tokens``)."""
    where, params = range_where(
        since, until, "duplicate_of IS NULL", "tokens_before_sanitize IS NOT NULL"
    )
    found = db.execute(
        "SELECT model, provider, substr(started_at, 1, 10) AS day,"
        " sum(tokens_before_sanitize - tokens_after_sanitize), sum(coalesce(memory_tokens, 0))"
        f" FROM requests {where} GROUP BY model, provider, day",
        params,
    ).fetchall()
    saved_usd, unpriced, memory = 0.0, 0, 0
    book = price_book(cfg) if cfg is not None else None
    for model, provider, day, saved, mem in found:
        memory += mem or 0
        info = book.model_info_at(model, day, provider) if book else None
        if info and info.input_per_mtok is not None:
            saved_usd += (saved or 0) * info.input_per_mtok / 1e6
        elif saved:
            unpriced += saved
    return {"saved_usd": round(saved_usd, 6), "saved_unpriced_tokens": unpriced,
            "memory_tokens": memory}  # fmt: skip


PAGES = {
    "index.html": "Overview",
    "providers.html": "Providers",
    "models.html": "Models",
    "clients.html": "Clients",
    "conversations.html": "Conversations",
    "compare.html": "Shadow",
}


def render_report(
    db: sqlite_utils.Database,
    since: str | None = None,
    until: str | None = None,
    cfg: Config | None = None,
) -> str:
    """The overview page as a string."""
    return render_pages(report_context(db, since, until, cfg), db, cfg)["index.html"]


def render_pages(
    context: dict[str, Any], db: sqlite_utils.Database, cfg: Config | None = None
) -> dict[str, str]:
    """Every page of a :func:`report_context` as ``{path relative to the output: html}``."""
    nav = [{"href": name, "label": label} for name, label in PAGES.items()]
    pages = {}
    for name in PAGES:
        pages[name] = env.get_template(name).render(**context, nav=nav, page=name, root="")
    if not context["empty"]:
        conv_nav = [{"href": "../" + n["href"], "label": n["label"]} for n in nav]
        template = env.get_template("conversation.html")
        for conv in context["conversations"][:CONVERSATION_PAGES]:
            pages[conv["page"]] = template.render(
                **context,
                **conversation_context(db, conv, cfg),
                nav=conv_nav,
                page="conversation",
                root="../",
            )
    return pages


def build_report(
    db_path: Path,
    out_dir: Path,
    since: str | None = None,
    until: str | None = None,
    cfg: Config | None = None,
) -> Report:
    """Write every page into ``out_dir`` (each atomically) from the database at ``db_path``;
    conversation pages of an earlier run that are no longer listed are removed.

    A database from an older release is migrated first (the one write this makes).

    :param since: first day to include, ``YYYY-MM-DD`` (UTC)
    :param until: last day to include, ``YYYY-MM-DD`` (UTC), inclusive
    :param cfg: the config, for prices (calibrated costs) and context windows of old rows
    :raises store.DatabaseNotFound: if there is no database at ``db_path``
    :raises ValueError: if ``since`` or ``until`` is not a date
    """
    _where(since, until)  # reject a bad date before touching anything
    db_path = Path(db_path)
    if not db_path.is_file():
        raise DatabaseNotFound(
            f"No database at {db_path.resolve()} - run the proxy or `kimi-intercept demo` first"
        )
    open_db(db_path).close()  # apply pending migrations
    db = open_readonly(db_path)
    try:
        context = report_context(db, since, until, cfg)
        pages = render_pages(context, db, cfg)
    finally:
        db.close()
    out_dir = Path(out_dir)
    written = [_write(out_dir / name, html) for name, html in pages.items()]
    conv_dir = out_dir / "conversations"
    if conv_dir.is_dir():
        keep = {p.name for p in written if p.parent == conv_dir}
        for stale in conv_dir.glob("*.html"):
            if stale.name not in keep:
                stale.unlink()
    return Report(out_dir / "index.html", written, context["totals"])


def write_report(
    db_path: Path,
    out_dir: Path,
    since: str | None = None,
    until: str | None = None,
    cfg: Config | None = None,
) -> Path:
    """Write the report (see :func:`build_report`) and return the path of ``index.html``."""
    return build_report(db_path, out_dir, since, until, cfg).path


def _write(path: Path, html: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path


# -- chart data (geometry is in templates/_charts.html) -----------------------------------------


def _axis(top_value: float, ticks: int = 4) -> tuple[float, list[dict[str, Any]]]:
    """A rounded axis maximum and its tick marks, for ``top_value`` >= 0."""
    if top_value <= 0:
        return 1.0, [{"value": 0, "label": "0"}]
    raw = top_value / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    top = step * math.ceil(top_value / step - 1e-9)
    count = round(top / step)
    return top, [{"value": i * step, "label": fmt_compact(i * step)} for i in range(count + 1)]


def _bars(bars: list[dict[str, Any]], money: bool = False) -> dict[str, Any]:
    top, ticks = _axis(max((sum(s["value"] for s in b["segments"]) for b in bars), default=0))
    if money:
        for tick in ticks:
            tick["label"] = "$" + fmt_compact(tick["value"])
    return {"bars": bars, "top": top, "ticks": ticks}


def _day_charts(facts: Facts) -> dict[str, Any]:
    """Per-day charts: every day from the first to the last one with data (capped)."""
    by_day = {d["day"]: d for d in facts.group("day")}
    days = sorted(by_day)
    first, last = date.fromisoformat(days[0]), date.fromisoformat(days[-1])
    span = (last - first).days + 1
    clipped = span > MAX_CHART_DAYS
    if clipped:
        first = last - timedelta(days=MAX_CHART_DAYS - 1)
    tokens, cost, saved = [], [], []
    for i in range((last - first).days + 1):
        day = (first + timedelta(days=i)).isoformat()
        d = by_day.get(day) or {"day": day, **_zero()}
        prompt, completion = d["prompt_tokens"], d["completion_tokens"]
        tokens.append(
            {
                "key": day,
                "label": day[5:],
                "segments": [
                    {"value": prompt, "title": f"{day}: {prompt:,} prompt tokens"},
                    {"value": completion, "title": f"{day}: {completion:,} completion tokens"},
                ],
                "title": f"{day}: {prompt + completion:,} tokens in "
                + plural(d["requests"], "request"),
            }
        )
        note = f" (+{plural(d['unpriced'], 'unpriced request')})" if d["unpriced"] else ""
        value = d["cost_usd"] or 0.0
        title = f"{day}: {fmt_usd(value)}{note}"
        cost.append(
            {"key": day, "label": day[5:], "title": title,
             "segments": [{"value": value, "title": title}]}
        )  # fmt: skip
        s = facts.saved_by_day.get(day, 0)
        title = f"{day}: {s:,} prompt tokens saved by the sanitizer"
        saved.append(
            {"key": day, "label": day[5:], "title": title,
             "segments": [{"value": s, "title": title}]}
        )  # fmt: skip
    return {
        "clipped": span if clipped else None,
        "tokens": _bars(tokens),
        "cost": _bars(cost, money=True),
        "saved": _bars(saved) if facts.saved_by_day else None,
    }


def _hbars(rows: list[dict[str, Any]], value: Callable[[dict], float | None], label: Callable,
           display: Callable[[float], str], limit: int = 12) -> dict[str, Any]:  # fmt: skip
    bars = []
    for r in rows:
        v = value(r)
        if v is None:
            continue
        text = label(r)
        bars.append(
            {
                "label": text if len(text) <= 32 else text[:31] + "…",
                "value": v,
                "display": display(v),
                "title": f"{text}: {display(v)}",
            }
        )
    bars = sorted(bars, key=lambda b: -b["value"])[:limit]
    return {"bars": bars, "top": max((b["value"] for b in bars), default=0) or 1}


def _model_bars(models: list[dict[str, Any]]) -> dict[str, Any]:
    chart = _hbars(
        models,
        lambda m: m["prompt_tokens"] + m["completion_tokens"],
        lambda m: f"{m['provider'] or '?'} / {m['model'] or '?'}",
        lambda v: fmt_compact(v) if v else "0",
        limit=10,
    )
    requests = {f"{m['provider'] or '?'} / {m['model'] or '?'}": m["requests"] for m in models}
    for bar in chart["bars"]:
        name = bar["title"].rsplit(": ", 1)[0]
        bar["title"] = (
            f"{name}: {bar['value']:,} tokens in {plural(requests.get(name, 0), 'request')}"
        )
    return chart


def _provider_bars(providers: list[dict[str, Any]]) -> dict[str, Any]:
    name = lambda p: p["provider"] or "?"  # noqa: E731
    return {
        "cost_per_request": _hbars(providers, lambda p: p["cost_per_request"], name, fmt_usd),
        "p95_duration": _hbars(providers, lambda p: p["p95_duration_ms"], name, fmt_ms),
        "p50_ttft": _hbars(providers, lambda p: p["p50_ttft_ms"], name, fmt_ms),
    }


def _turn_bars(turns: list[dict[str, Any]]) -> dict[str, Any]:
    bars = []
    for t in turns:
        prompt, completion = t["prompt_tokens"] or 0, t["completion_tokens"] or 0
        cached = min(t["cached_tokens"] or 0, prompt)
        title = (
            f"turn {t['n']} ({fmt_time(t['started_at'])}): {prompt:,} prompt "
            f"({cached:,} cached) + {completion:,} completion tokens"
        )
        bars.append(
            {
                "key": str(t["n"]),
                "label": str(t["n"]),
                "title": title,
                "segments": [
                    {"value": cached, "title": f"turn {t['n']}: {cached:,} cached prompt tokens"},
                    {"value": prompt - cached,
                     "title": f"turn {t['n']}: {prompt - cached:,} uncached prompt tokens"},
                    {"value": completion,
                     "title": f"turn {t['n']}: {completion:,} completion tokens"},
                ],
            }
        )  # fmt: skip
    return _bars(bars)


def _gauge_line(turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Context used per turn (prompt tokens / the model's window), in percent."""
    points = [
        {
            "label": str(t["n"]),
            "value": round(100 * t["gauge"], 2),
            "title": f"turn {t['n']}: {t['prompt_tokens']:,} of {t['window']:,} tokens "
            f"({100 * t['gauge']:.1f}% of the context window)",
        }
        for t in turns
        if t["gauge"] is not None
    ]
    if not points:
        return None
    top = max(100.0, max(p["value"] for p in points))
    top, ticks = _axis(top)
    for tick in ticks:
        tick["label"] = f"{tick['value']:g}%"
    return {"points": points, "top": top, "ticks": ticks}
