"""The report's totals over a date range: :func:`read_facts` reads the ``daily`` rollups (pruned
days included) into :class:`Facts` — one group per day × provider × model × client × route ×
usage source, estimate-only groups calibrated — that the overview, tables and charts sum in
Python; :class:`Totals` and :func:`read_totals`, :func:`windows` (today / 7 / 30 days) and
:func:`range_where`, the ``WHERE`` clause of a date range that every report query uses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import sqlite_utils

from kimi_intercept.accounting import calibration
from kimi_intercept.accounting.prices import price_book
from kimi_intercept.config.settings import Config, ModelInfo
from kimi_intercept.reports.formatting import fmt_usd, plural
from kimi_intercept.storage.rollup import DAILY_SUMS

WINDOWS = (("today", 1), ("7 days", 7), ("30 days", 30))
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


def zero_sums() -> dict[str, Any]:
    """An empty group: every sum 0, ``cost_usd`` ``None``."""
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
        acc = zero_sums()
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
                groups[k] = {key: (r[key] or None) for key in keys} | zero_sums()
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
    where_d, params_d = range_where(since, until, "requests != 0", column="day")
    rows = list(db.query(f"SELECT * FROM daily {where_d}", params_d))
    cals = calibration.learn(db)
    for r in rows:
        if not r["priced"]:
            r["cost_usd"] = None  # not 0.0 left over by an update
        _calibrate(r, cals, cfg)
    where, params = range_where(since, until)
    first = db.execute(f"SELECT min(started_at) FROM requests {where}", params).fetchone()[0]
    last = db.execute(f"SELECT max(started_at) FROM requests {where}", params).fetchone()[0]
    if rows:  # days whose raw rows were pruned
        first_day, last_day = min(r["day"] for r in rows), max(r["day"] for r in rows)
        first = first_day if first is None or first_day < first[:10] else first
        last = last_day if last is None or last_day > last[:10] else last
    where_dup, params_dup = range_where(since, until, "duplicate_of IS NOT NULL")
    duplicates = db.execute(f"SELECT count(*) FROM requests {where_dup}", params_dup).fetchone()[0]
    where_s, params_s = range_where(since, until, column="day")
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
        params["since"] = parse_day(since, "since").isoformat()
    if until:
        clauses.append(f"{column} < :until")
        params["until"] = (parse_day(until, "until") + timedelta(days=1)).isoformat()
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def parse_day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--{name} must be a date like 2026-11-21, got {value!r}") from None
