"""Chart data for the report's inline SVG (the geometry is in ``templates/_charts.html``): bars
per day (tokens, cost, the sanitizer's savings), horizontal bars per model and per provider, bars
per conversation turn and the context-gauge line, each with its rounded axis and tooltips."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from kimi_intercept.reports.data import Facts, zero_sums
from kimi_intercept.reports.formatting import fmt_compact, fmt_ms, fmt_time, fmt_usd, plural

MAX_CHART_DAYS = 92


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


def day_charts(facts: Facts) -> dict[str, Any]:
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
        d = by_day.get(day) or {"day": day, **zero_sums()}
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


def model_bars(models: list[dict[str, Any]]) -> dict[str, Any]:
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


def provider_bars(providers: list[dict[str, Any]]) -> dict[str, Any]:
    name = lambda p: p["provider"] or "?"  # noqa: E731
    return {
        "cost_per_request": _hbars(providers, lambda p: p["cost_per_request"], name, fmt_usd),
        "p95_duration": _hbars(providers, lambda p: p["p95_duration_ms"], name, fmt_ms),
        "p50_ttft": _hbars(providers, lambda p: p["p50_ttft_ms"], name, fmt_ms),
    }


def turn_bars(turns: list[dict[str, Any]]) -> dict[str, Any]:
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


def gauge_line(turns: list[dict[str, Any]]) -> dict[str, Any] | None:
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
