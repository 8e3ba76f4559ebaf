"""``kimi-intercept stats``: the rows it prints as a table or as JSON.

Views: the overview (today, the last 7 and the last N days), or one row per ``provider``,
``model``, ``client``, ``day`` or ``month`` (from the ``daily`` rollups) or per ``session``
(conversation) or 5-hour ``block`` (ccusage's billing windows, from raw rows:
:mod:`kimi_intercept.reports.views`). JSON carries the same numbers unformatted: token counts,
``cost_usd`` in USD (``null`` when nothing was priced) and ``unpriced`` request counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import sqlite_utils

from kimi_intercept.config.settings import Config

BY_CHOICES = ("provider", "model", "client", "day", "month", "session", "block")


@dataclass
class StatsOutput:
    headers: list[str]
    rows: list[list[str]]
    json: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return table(self.headers, self.rows)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Plain-text columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for r in [headers, *rows]:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def cost_text(value: float | None, unpriced: int) -> str:
    from kimi_intercept.reports.formatting import fmt_usd

    text = "unpriced" if value is None else fmt_usd(value)
    return text + (f" (+{unpriced:,} unpriced)" if unpriced and value is not None else "")


def _num(v: Any) -> str:
    from kimi_intercept.reports.formatting import fmt_num

    return fmt_num(v)


_KEEP = ("requests", "ok", "fallbacks", "prompt_tokens", "completion_tokens", "cached_tokens",
         "cost_usd", "priced", "unpriced")  # fmt: skip


def stats_output(
    ro: sqlite_utils.Database, cfg: Config, by: str | None, since: str, today: date, days: int
) -> StatsOutput:
    """The rows of one ``stats`` view over ``since`` .. ``today`` (UTC days)."""
    from kimi_intercept.reports.pages import WINDOWS, fmt_ratio, read_facts, windows
    from kimi_intercept.reports.views import block_rows, month_rows, session_rows

    facts = read_facts(ro, since, None, cfg)
    meta: dict[str, Any] = {"since": since, "until": today.isoformat(), "by": by or "period"}
    if by is None:
        rows, out = [], []
        last = ("today", 1) if days == 1 else (f"{days} days", days)
        spans = tuple((label, n) for label, n in WINDOWS if n < days) + (last,)
        for (label, _), w in zip(spans, windows(facts, today, spans), strict=True):
            rows.append(
                [label.capitalize(), _num(w["requests"]), _num(w["prompt_tokens"]),
                 _num(w["completion_tokens"]), _num(w["cached_tokens"]),
                 cost_text(w["cost_usd"], w["unpriced"]), _num(w["saved_tokens"]),
                 fmt_ratio(w["cache_hit_rate"], 0)]
            )  # fmt: skip
            out.append({"period": label, "start": w["start"], "end": w["end"],
                        **{k: w[k] for k in _KEEP}, "saved_tokens": w["saved_tokens"],
                        "cache_hit_rate": w["cache_hit_rate"]})  # fmt: skip
        headers = ["Period (UTC)", "Requests", "Tokens in", "Tokens out", "Cached", "Cost",
                   "Saved", "Cache hit"]  # fmt: skip
    elif by in ("month", "session", "block"):
        if by == "month":
            out = month_rows(facts)
        elif by == "session":
            out = session_rows(ro, since, None)
        else:
            out = block_rows(ro, since, None)
        rows = [
            [_label(by, r), _num(r["requests"]), _num(r["prompt_tokens"]),
             _num(r["completion_tokens"]), _num(r["cached_tokens"]),
             cost_text(r["cost_usd"], r["unpriced"])]
            for r in out
        ]  # fmt: skip
        headers = [by.capitalize() + (" (UTC)" if by != "session" else ""), "Requests",
                   "Tokens in", "Tokens out", "Cached", "Cost"]  # fmt: skip
    else:
        groups = facts.group("provider", "model") if by == "model" else facts.group(by)
        if by == "day":
            groups.sort(key=lambda g: g["day"])
        rows, out = [], []
        for g in groups:
            name = f"{g['provider'] or '–'} / {g['model'] or '–'}" if by == "model" else g[by]
            priced = g["priced"]
            per = g["cost_usd"] / priced if g["cost_usd"] is not None and priced else None
            rows.append(
                [name or "–", _num(g["requests"]), f"{100 * g['ok'] / g['requests']:.0f}%",
                 _num(g["fallbacks"]), _num(g["prompt_tokens"]),
                 _num(g["completion_tokens"]), _num(g["cached_tokens"]),
                 cost_text(g["cost_usd"], g["unpriced"]),
                 cost_text(per, 0) if per is not None else "–"]
            )  # fmt: skip
            keys = ("provider", "model") if by == "model" else (by,)
            out.append({**{k: g[k] for k in keys}, **{k: g[k] for k in _KEEP},
                        "cost_per_request_usd": per})  # fmt: skip
        headers = [by.capitalize(), "Requests", "Success", "Fallbacks", "Tokens in",
                   "Tokens out", "Cached", "Cost", "Cost/request"]  # fmt: skip
    notes = []
    t = facts.totals()
    if t.estimated:
        notes.append(
            f"{t.estimated:,} requests have estimated usage ({t.calibrated:,} calibrated); "
            f"{t.duplicates:,} duplicate responses not counted."
        )
    return StatsOutput(headers, rows, {**meta, "rows": out}, notes)


def _label(by: str, r: dict[str, Any]) -> str:
    if by == "month":
        return r["month"]
    if by == "block":
        return f"{r['block'][:16].replace('T', ' ')} – {r['end'][11:16]}"
    title = r.get("title") or ""
    title = title if len(title) <= 40 else title[:39] + "…"
    return f"{r['session'][:8]} {title}".rstrip()
