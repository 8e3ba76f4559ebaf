"""Where the money went, for the top of the overview: cost per day stacked by provider/model,
cost by model and by client, the most expensive conversations, and what was saved — by the
provider's prompt cache, by the sanitizer (net, measured: ``requests.sanitizer_saved_usd``) and
by rerouting (``requests.requested_cost_usd`` − ``cost_usd``: the client's own model at its price
vs what answered) — plus the sanitizer holdout comparison.

All amounts are USD. Cost charts sum the stored ``cost_usd`` of counted requests (the ``daily``
rollups); the savings read raw rows, so they cover the retention period.
"""

from __future__ import annotations

import math
import statistics
from datetime import date, timedelta
from typing import Any

import sqlite_utils

from kimi_intercept.accounting.prices import price_book
from kimi_intercept.config.settings import Config
from kimi_intercept.reports.charts import MAX_CHART_DAYS, _bars, _hbars
from kimi_intercept.reports.data import Facts, range_where
from kimi_intercept.reports.formatting import fmt_usd
from kimi_intercept.storage.titles import conversation_titles

STACKED_MODELS = 6  # series in the stacked chart; the rest is "other"
Z95 = 1.959964  # two-sided 95 % normal quantile (Welch's interval, large-sample form)


def _name(r: dict[str, Any]) -> str:
    return f"{r['provider'] or '?'} / {r['model'] or '?'}"


def cost_charts(facts: Facts) -> dict[str, Any]:
    """``per_day`` (stacked by provider/model; ``series`` names the segments in order),
    ``by_model`` and ``by_client`` (horizontal bars; ``data-value`` = USD)."""
    models = [m for m in facts.group("provider", "model") if m["cost_usd"]]
    models.sort(key=lambda m: -m["cost_usd"])
    top = [_name(m) for m in models[:STACKED_MODELS]]
    series = top + (["other"] if len(models) > STACKED_MODELS else [])
    per: dict[str, dict[str, float]] = {}
    for r in facts.rows:
        if r["cost_usd"]:
            name = _name(r) if _name(r) in top else "other"
            day = per.setdefault(r["day"], {})
            day[name] = day.get(name, 0.0) + r["cost_usd"]
    bars = []
    if per:
        first, last = date.fromisoformat(min(per)), date.fromisoformat(max(per))
        first = max(first, last - timedelta(days=MAX_CHART_DAYS - 1))
        for i in range((last - first).days + 1):
            day = (first + timedelta(days=i)).isoformat()
            values = per.get(day, {})
            total = sum(values.values())
            bars.append({
                "key": day, "label": day[5:], "title": f"{day}: {fmt_usd(total)}",
                "segments": [{"value": values.get(s, 0.0),
                              "title": f"{day}, {s}: {fmt_usd(values.get(s, 0.0))}"}
                             for s in series],
            })  # fmt: skip
    clients = [c for c in facts.group("client") if c["cost_usd"]]
    return {
        "series": series,
        "series_css": [f"s-m{i}" for i in range(len(series))],
        "per_day": _bars(bars, money=True) if bars else None,
        "by_model": _hbars(models, lambda m: m["cost_usd"], _name, fmt_usd, limit=12),
        "by_client": _hbars(
            clients, lambda c: c["cost_usd"], lambda c: c["client"] or "?", fmt_usd, limit=12
        ),  # fmt: skip
    }


_TOP_CONVERSATIONS = """
SELECT conversation_id AS id, max(conversation_title) AS title, count(*) AS requests,
       sum(cost_usd) AS cost_usd, sum(cost_usd IS NULL AND prompt_tokens > 0) AS unpriced,
       group_concat(DISTINCT model) AS models, min(started_at) AS first, max(started_at) AS last
FROM requests {where} GROUP BY conversation_id HAVING sum(cost_usd) > 0
ORDER BY sum(cost_usd) DESC LIMIT 10
"""

_REROUTED = """
SELECT client_model, model, count(*) AS requests, sum(cost_usd) AS cost_usd,
       sum(requested_cost_usd) AS requested_cost_usd
FROM requests {where} GROUP BY client_model, model ORDER BY sum(requested_cost_usd) DESC
"""


def savings(
    db: sqlite_utils.Database, facts: Facts, since: str | None, until: str | None,
    cfg: Config | None,
) -> dict[str, Any]:  # fmt: skip
    """``caching_usd`` (cached prompt tokens × (input − cached price) of each day's model),
    ``sanitizer_usd`` (sum of measured net savings; ``None`` when nothing was measured),
    ``rerouting_usd`` (requested − actual cost of rerouted requests priced both ways) with
    ``rerouted`` rows per requested/answering model."""
    caching = 0.0
    book = price_book(cfg) if cfg is not None else None
    for r in facts.rows:
        cached = r.get("cached_tokens") or 0
        if not cached or book is None or not r["model"]:
            continue
        info = book.model_info_at(r["model"], r["day"], r["provider"] or None)
        if info and info.input_per_mtok is not None and info.cached_input_per_mtok is not None:
            caching += cached * (info.input_per_mtok - info.cached_input_per_mtok) / 1e6
    where, params = range_where(since, until, "duplicate_of IS NULL")
    sanitizer = db.execute(
        f"SELECT sum(sanitizer_saved_usd), count(sanitizer_saved_usd) FROM requests {where}",
        params,
    ).fetchone()
    where_r, params_r = range_where(
        since, until, "duplicate_of IS NULL", "route = 'reroute'",
        "requested_cost_usd IS NOT NULL", "cost_usd IS NOT NULL",
    )  # fmt: skip
    rerouted = list(db.query(_REROUTED.format(where=where_r), params_r))
    for r in rerouted:
        r["saved_usd"] = r["requested_cost_usd"] - r["cost_usd"]
    return {
        "caching_usd": round(caching, 9),
        "sanitizer_usd": round(sanitizer[0], 9) if sanitizer[1] else None,
        "sanitizer_measured": sanitizer[1],
        "rerouting_usd": round(sum(r["saved_usd"] for r in rerouted), 9) if rerouted else None,
        "rerouted": rerouted,
    }


def top_conversations(
    db: sqlite_utils.Database, since: str | None, until: str | None
) -> list[dict[str, Any]]:
    """The 10 conversations that cost the most (USD), with their request count and models."""
    # ``+``: the range's rows along started_at, not every row along the conversation index
    where, params = range_where(
        since, until, "duplicate_of IS NULL", "+conversation_id IS NOT NULL"
    )
    top = list(db.query(_TOP_CONVERSATIONS.format(where=where), params))
    # Only a conversation's first stored row carries its title (m009), maybe outside the range.
    titles = conversation_titles(db, [c["id"] for c in top if c["title"] is None])
    for c in top:
        c["title"] = c["title"] if c["title"] is not None else titles.get(c["id"])
    return top


_HOLDOUT = """
SELECT sanitizer_holdout AS holdout, client, cost_usd, prompt_tokens, cached_tokens
FROM requests {where}
"""


def holdout(db: sqlite_utils.Database, since: str | None, until: str | None) -> dict | None:
    """Masked vs held-out requests of the clients seen in both groups: per group ``n``
    (requests), ``conversations``, mean cost per turn (USD) and cache-hit rate (cached over
    prompt tokens, per request), and the difference masked − holdout of each with a 95 %
    confidence interval (Welch, normal quantile; ``None`` below 2 requests a group).
    ``None`` when there is no holdout row."""
    where, params = range_where(
        since, until, "duplicate_of IS NULL", "sanitizer_holdout IS NOT NULL",
        "cost_usd IS NOT NULL", "prompt_tokens > 0",
    )  # fmt: skip
    sql = _HOLDOUT.format(where=where).replace("cost_usd, prompt", "cost_usd, prompt")
    rows = list(db.query(sql, params))
    clients = [{r["client"] for r in rows if r["holdout"] == h} for h in (0, 1)]
    both = clients[0] & clients[1]
    if not any(r["holdout"] == 1 for r in rows):
        return None
    conv = _conversations(db, since, until)
    groups = {}
    for h, label in ((0, "masked"), (1, "holdout")):
        mine = [r for r in rows if r["holdout"] == h and r["client"] in both]
        groups[label] = {
            "n": len(mine),
            "conversations": conv.get(h, 0),
            "cost": [r["cost_usd"] for r in mine],
            "hit": [(r["cached_tokens"] or 0) / r["prompt_tokens"] for r in mine],
        }
    out: dict[str, Any] = {"clients": sorted(c or "?" for c in both)}
    for key in ("cost", "hit"):
        a, b = groups["masked"][key], groups["holdout"][key]
        out[key] = {
            "masked": statistics.fmean(a) if a else None,
            "holdout": statistics.fmean(b) if b else None,
            "diff": _welch(a, b),
        }
    out["groups"] = {k: {"n": g["n"], "conversations": g["conversations"]}
                     for k, g in groups.items()}  # fmt: skip
    return out


def _conversations(db: sqlite_utils.Database, since: str | None, until: str | None) -> dict:
    where, params = range_where(since, until, "duplicate_of IS NULL",
                                "sanitizer_holdout IS NOT NULL")  # fmt: skip
    return dict(db.execute(
        f"SELECT sanitizer_holdout, count(DISTINCT conversation_id) FROM requests {where} "
        "GROUP BY sanitizer_holdout", params,
    ).fetchall())  # fmt: skip


def _welch(a: list[float], b: list[float]) -> dict[str, float] | None:
    """Mean difference a − b and its 95 % interval (Welch's standard error)."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return {"value": diff, "low": diff - Z95 * se, "high": diff + Z95 * se}


def money_context(
    db: sqlite_utils.Database, facts: Facts, since: str | None, until: str | None,
    cfg: Config | None,
) -> dict[str, Any]:  # fmt: skip
    """Everything the "Where the money went" section shows."""
    return {
        "money": cost_charts(facts),
        "money_saved": savings(db, facts, since, until, cfg),
        "top_conversations": top_conversations(db, since, until),
        "holdout": holdout(db, since, until),
    }
