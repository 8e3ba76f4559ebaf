"""The static HTML report: SQL aggregates over the store, rendered by Jinja2 into one file.

Every number comes from an aggregate query on a read-only connection; rows are never loaded
into Python except the latest 50. The page has no external URL (no CDN, no fonts, no script):
charts are inline SVG built by the macros in ``templates/_charts.html``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlite_utils
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from kimi_intercept.store import open_readonly

MAX_CHART_DAYS = 92
LATEST_LIMIT = 50

env = Environment(
    loader=PackageLoader("kimi_intercept"),
    autoescape=select_autoescape(),
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


env.filters.update(num=fmt_num, usd=fmt_usd, ms=fmt_ms, time=fmt_time)
env.globals.update(pct=fmt_pct, plural=plural)


@dataclass(frozen=True)
class Totals:
    """Totals over the selected range. ``cost_usd`` sums priced requests only."""

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

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def summary(self) -> str:
        """One line: ``3 requests, 1,234 tokens (…), $1.25 (1 unpriced)``."""
        cost = "cost unknown" if self.cost_usd is None else fmt_usd(self.cost_usd)
        line = (
            f"{plural(self.requests, 'request')}, "
            f"{self.total_tokens:,} tokens ({self.prompt_tokens:,} prompt + "
            f"{self.completion_tokens:,} completion), {cost}"
        )
        return line + (f" ({self.unpriced:,} unpriced)" if self.unpriced else "")


_TOTALS_SQL = """
select
  count(*) as requests,
  coalesce(sum(outcome = 'ok'), 0) as ok,
  coalesce(sum(outcome = 'error'), 0) as error,
  coalesce(sum(outcome = 'incomplete'), 0) as incomplete,
  coalesce(sum(outcome = 'client_abort'), 0) as client_abort,
  coalesce(sum(prompt_tokens), 0) as prompt_tokens,
  coalesce(sum(completion_tokens), 0) as completion_tokens,
  coalesce(sum(cached_tokens), 0) as cached_tokens,
  coalesce(sum(reasoning_tokens), 0) as reasoning_tokens,
  sum(cost_usd) as cost_usd,
  coalesce(sum(cost_usd is null), 0) as unpriced,
  coalesce(sum(usage_source = 'estimate'), 0) as estimated,
  coalesce(sum(fallback_used), 0) as fallbacks,
  min(started_at) as first,
  max(started_at) as last
from requests {where}
"""

_GROUP_SQL = """
select {keys},
  count(*) as requests,
  coalesce(sum(outcome = 'ok'), 0) as ok,
  coalesce(sum(fallback_used), 0) as fallbacks,
  coalesce(sum(prompt_tokens), 0) as prompt_tokens,
  coalesce(sum(completion_tokens), 0) as completion_tokens,
  coalesce(sum(cached_tokens), 0) as cached_tokens,
  coalesce(sum(usage_source = 'estimate'), 0) as estimated,
  sum(cost_usd) as cost_usd,
  coalesce(sum(cost_usd is null), 0) as unpriced
from requests {where}
group by {keys}
order by requests desc, {keys}
"""

# The median of `value` per group: the middle row (or the mean of the two middle rows).
_MEDIAN_SQL = """
select {keys}, avg(value) as median from (
  select {keys}, {column} as value,
    row_number() over (partition by {keys} order by {column}) as rn,
    count(*) over (partition by {keys}) as n
  from requests {where}
)
where rn in ((n + 1) / 2, (n + 2) / 2)
group by {keys}
"""

_DAYS_SQL = """
select substr(started_at, 1, 10) as day,
  count(*) as requests,
  coalesce(sum(prompt_tokens), 0) as prompt_tokens,
  coalesce(sum(completion_tokens), 0) as completion_tokens,
  sum(cost_usd) as cost_usd,
  coalesce(sum(cost_usd is null), 0) as unpriced
from requests {where}
group by day
order by day
"""

_ERRORS_SQL = """
select outcome, status_code, substr(error, 1, 300) as error, count(*) as n,
  max(started_at) as last_seen
from requests {where}
group by outcome, status_code, substr(error, 1, 300)
order by n desc, last_seen desc
limit 20
"""

_FAILED_ATTEMPTS_SQL = """
select a.provider, a.model, a.status_code, substr(a.error, 1, 300) as error, count(*) as n
from attempts a join requests r on r.id = a.request_id
{where}
group by a.provider, a.model, a.status_code, substr(a.error, 1, 300)
order by n desc
limit 20
"""

_LATEST_SQL = """
select id, started_at, client, host, client_model, provider, model, outcome, status_code,
  attempts, fallback_used, route, prompt_tokens, completion_tokens, cached_tokens,
  reasoning_tokens, usage_source, cost_usd, ttft_ms, duration_ms, error
from requests {where}
order by started_at desc
limit {limit}
"""


def _where(
    since: str | None, until: str | None, *extra: str, column: str = "started_at"
) -> tuple[str, dict[str, str]]:
    """A ``where`` clause for the date range (``until`` inclusive) plus ``extra`` conditions."""
    clauses = list(extra)
    params: dict[str, str] = {}
    if since:
        clauses.append(f"{column} >= :since")
        params["since"] = _parse_day(since, "since").isoformat()
    if until:
        clauses.append(f"{column} < :until")
        params["until"] = (_parse_day(until, "until") + timedelta(days=1)).isoformat()
    return ("where " + " and ".join(clauses)) if clauses else "", params


def _parse_day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--{name} must be a date like 2026-11-21, got {value!r}") from None


def read_totals(
    db: sqlite_utils.Database, since: str | None = None, until: str | None = None
) -> Totals:
    """Totals over the range (an empty :class:`Totals` if the store has no tables yet)."""
    if not db.table("requests").exists():
        return Totals()
    where, params = _where(since, until)
    row = next(db.query(_TOTALS_SQL.format(where=where), params))
    return Totals(**row)


def _groups(
    db: sqlite_utils.Database, keys: list[str], since: str | None, until: str | None
) -> list[dict[str, Any]]:
    keys_sql = ", ".join(keys)
    where, params = _where(since, until)
    rows = list(db.query(_GROUP_SQL.format(keys=keys_sql, where=where), params))
    medians = {}
    for column in ("ttft_ms", "duration_ms"):
        where_m, params_m = _where(since, until, f"{column} is not null")
        sql = _MEDIAN_SQL.format(keys=keys_sql, column=column, where=where_m)
        medians[column] = {tuple(r[k] for k in keys): r["median"] for r in db.query(sql, params_m)}
    for row in rows:
        group = tuple(row[k] for k in keys)
        row["p50_ttft_ms"] = medians["ttft_ms"].get(group)
        row["p50_duration_ms"] = medians["duration_ms"].get(group)
    return rows


def _axis(top_value: float, ticks: int = 4) -> tuple[float, list[dict[str, Any]]]:
    """A rounded axis maximum and its tick marks, for ``top_value`` ≥ 0."""
    if top_value <= 0:
        return 1.0, [{"value": 0, "label": "0"}]
    raw = top_value / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    top = step * math.ceil(top_value / step)
    count = round(top / step)
    return top, [{"value": i * step, "label": fmt_compact(i * step)} for i in range(count + 1)]


def _day_charts(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-day charts: every day from the first to the last one with data (capped)."""
    by_day = {d["day"]: d for d in days}
    first, last = date.fromisoformat(days[0]["day"]), date.fromisoformat(days[-1]["day"])
    span = (last - first).days + 1
    clipped = span > MAX_CHART_DAYS
    if clipped:
        first = last - timedelta(days=MAX_CHART_DAYS - 1)
    tokens, cost = [], []
    for i in range((last - first).days + 1):
        day = (first + timedelta(days=i)).isoformat()
        d = by_day.get(day, {})
        prompt, completion = d.get("prompt_tokens", 0), d.get("completion_tokens", 0)
        tokens.append(
            {
                "day": day,
                "label": day[5:],
                "segments": [
                    {"value": prompt, "title": f"{day}: {prompt:,} prompt tokens"},
                    {"value": completion, "title": f"{day}: {completion:,} completion tokens"},
                ],
                "title": f"{day}: {prompt + completion:,} tokens in "
                + plural(d.get("requests", 0), "request"),
            }
        )
        unpriced = d.get("unpriced", 0)
        note = f" (+{plural(unpriced, 'unpriced request')})" if unpriced else ""
        value = d.get("cost_usd") or 0.0
        cost.append(
            {
                "day": day,
                "label": day[5:],
                "segments": [{"value": value, "title": f"{day}: {fmt_usd(value)}{note}"}],
                "title": f"{day}: {fmt_usd(value)}{note}",
            }
        )
    top_tokens = max(sum(s["value"] for s in b["segments"]) for b in tokens)
    top_cost = max(b["segments"][0]["value"] for b in cost)
    tokens_top, tokens_ticks = _axis(top_tokens)
    cost_top, cost_ticks = _axis(top_cost)
    for tick in cost_ticks:
        tick["label"] = "$" + fmt_compact(tick["value"])
    return {
        "clipped": span if clipped else None,
        "tokens": {"bars": tokens, "top": tokens_top, "ticks": tokens_ticks},
        "cost": {"bars": cost, "top": cost_top, "ticks": cost_ticks},
    }


def _model_chart(models: list[dict[str, Any]], limit: int = 10) -> dict[str, Any]:
    rows = sorted(models, key=lambda m: m["prompt_tokens"] + m["completion_tokens"], reverse=True)
    bars = []
    for m in rows[:limit]:
        total = m["prompt_tokens"] + m["completion_tokens"]
        label = f"{m['provider'] or '?'} / {m['model'] or '?'}"
        bars.append(
            {
                "label": label if len(label) <= 32 else label[:31] + "…",
                "value": total,
                "display": fmt_compact(total) if total else "0",
                "title": f"{label}: {total:,} tokens in {plural(m['requests'], 'request')}",
            }
        )
    top = max((b["value"] for b in bars), default=0) or 1
    return {"bars": bars, "top": top}


def report_context(
    db: sqlite_utils.Database, since: str | None = None, until: str | None = None
) -> dict[str, Any]:
    """Everything ``index.html`` shows, from aggregate queries. Read-only."""
    totals = read_totals(db, since, until)
    context: dict[str, Any] = {
        "totals": totals,
        "totals_dict": asdict(totals),
        "since": since,
        "until": until,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "empty": totals.requests == 0,
        "max_chart_days": MAX_CHART_DAYS,
    }
    if totals.requests == 0:
        return context
    where, params = _where(since, until)
    days = list(db.query(_DAYS_SQL.format(where=where), params))
    models = _groups(db, ["provider", "model"], since, until)
    where_err, params_err = _where(since, until, "outcome != 'ok'")
    where_att, params_att = _where(
        since,
        until,
        "(a.error is not null or a.status_code >= 400)",
        column="r.started_at",
    )
    context.update(
        charts=_day_charts(days),
        model_chart=_model_chart(models),
        providers=_groups(db, ["provider"], since, until),
        models=models,
        errors=list(db.query(_ERRORS_SQL.format(where=where_err), params_err)),
        failed_attempts=list(db.query(_FAILED_ATTEMPTS_SQL.format(where=where_att), params_att)),
        latest=list(db.query(_LATEST_SQL.format(where=where, limit=LATEST_LIMIT), params)),
    )
    return context


def render_report(
    db: sqlite_utils.Database, since: str | None = None, until: str | None = None
) -> str:
    """The report page as a string."""
    return env.get_template("index.html").render(**report_context(db, since, until))


def write_report(
    db_path: Path, out_dir: Path, since: str | None = None, until: str | None = None
) -> Path:
    """Write ``out_dir/index.html`` from the database at ``db_path`` and return its path.

    :param since: first day to include, ``YYYY-MM-DD`` (UTC)
    :param until: last day to include, ``YYYY-MM-DD`` (UTC), inclusive
    :raises store.DatabaseNotFound: if there is no database at ``db_path``
    :raises ValueError: if ``since`` or ``until`` is not a date
    """
    _where(since, until)  # reject a bad date before touching anything
    db = open_readonly(db_path)
    try:
        html = render_report(db, since, until)
    finally:
        db.close()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    tmp = out_dir / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path
