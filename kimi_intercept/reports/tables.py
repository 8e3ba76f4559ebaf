"""The report's tables beyond the totals: latency percentiles per provider and model (the
counted rows' TTFT and duration, sampled above :data:`SAMPLE_ROWS` rows), the provider
comparison, the model rows, failed upstream attempts by error class, the overview's error,
latest-request and savings-per-tool tables, and what the sanitizer saved in dollars."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from kimi_intercept.accounting.prices import price_book
from kimi_intercept.config.settings import Config
from kimi_intercept.reports.data import Facts, range_where, zero_sums

LATEST_LIMIT = 50
SAMPLE_ROWS = 100_000


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
    where, params = range_where(since, until, *extra)
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

_TOOL_SAVINGS_SQL = """
SELECT tool, sum(items) AS items, sum(tokens_before) AS tokens_before,
  sum(tokens_after) AS tokens_after
FROM daily_savings {where}
GROUP BY tool
ORDER BY sum(tokens_before - tokens_after) DESC, tool
"""


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
    where, params = range_where(
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
            {"provider": key or None, **zero_sums(),
             "failed_attempts": sum(counts.values()) - skipped, "skipped": skipped,
             "rescued": rescued.get(key, 0), "p50_ttft_ms": None, "p95_ttft_ms": None,
             "p50_duration_ms": None, "p95_duration_ms": None, "cost_per_request": None}
        )  # fmt: skip
    return rows


def errors_by_class(
    db: sqlite_utils.Database, since: str | None, until: str | None
) -> dict[str, Any]:
    """``{"classes": [...], "rows": [{"provider", "counts": {class: n}, "total"}]}`` of failed
    upstream attempts (``skipped`` ones included); classes from the error's prefix
    (``rate_limit:`` …)."""
    where, params = range_where(since, until, "a.error IS NOT NULL", column="r.started_at")
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


def overview_tables(
    db: sqlite_utils.Database, since: str | None, until: str | None
) -> dict[str, list[dict[str, Any]]]:
    """The overview's tables of raw rows: errors by outcome and message, failed upstream
    attempts (``skipped`` ones left out), the latest :data:`LATEST_LIMIT` requests, and the
    sanitizer's savings per tool."""
    where, params = range_where(since, until)
    where_err, params_err = range_where(since, until, "outcome != 'ok'")
    where_att, params_att = range_where(
        since, until, "a.error IS NOT NULL", "a.error NOT LIKE 'skipped:%'", column="r.started_at"
    )
    where_sav, params_sav = range_where(since, until, column="day")
    return {
        "errors": list(db.query(_ERRORS_SQL.format(where=where_err), params_err)),
        "failed_attempts": list(db.query(_FAILED_ATTEMPTS_SQL.format(where=where_att), params_att)),
        "latest": list(db.query(_LATEST_SQL.format(where=where, limit=LATEST_LIMIT), params)),
        "tool_savings": list(db.query(_TOOL_SAVINGS_SQL.format(where=where_sav), params_sav)),
    }


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
