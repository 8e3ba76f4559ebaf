"""Shadow-mode comparison: per (primary provider, shadow provider) pair, from the ``shadow``
table — success rates, median latency and time to first byte, cost per request, and how often
the two answers agree (similarity ≥ :data:`AGREE_AT`). Used by ``kimi-intercept compare`` and
the report's ``compare.html``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlite_utils

AGREE_AT = 0.5  # word-set Jaccard at or above which two answers count as agreeing


@dataclass(frozen=True)
class Pair:
    primary: str
    shadow: str
    requests: int
    primary_ok: float  # share of requests, 0..1
    shadow_ok: float
    primary_ttft_ms: float | None  # medians
    shadow_ttft_ms: float | None
    primary_duration_ms: float | None
    shadow_duration_ms: float | None
    primary_cost: float | None  # USD per request (priced rows)
    shadow_cost: float | None
    agree: float | None  # share of compared answers with similarity ≥ AGREE_AT
    similarity: float | None  # mean


def since_iso(spec: str | None, now: datetime | None = None) -> str | None:
    """``"7d"`` / ``"24h"`` / ``"2026-11-01"`` → an ISO 8601 UTC bound; raises ValueError."""
    if not spec:
        return None
    now = now or datetime.now(timezone.utc)
    m = re.fullmatch(r"(\d+)([dh])", spec)
    if m:
        delta = timedelta(days=int(m[1])) if m[2] == "d" else timedelta(hours=int(m[1]))
        return (now - delta).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    day = datetime.strptime(spec, "%Y-%m-%d")
    return day.strftime("%Y-%m-%dT00:00:00.000Z")


def pairs(db: sqlite_utils.Database, since: str | None = None) -> list[Pair]:
    """One :class:`Pair` per provider pair (empty when there is no ``shadow`` table)."""
    if "shadow" not in db.table_names():
        return []
    where, params = ("WHERE started_at >= ?", [since]) if since else ("", [])
    found = db.execute(
        f"""
        SELECT primary_provider, shadow_provider, count(*),
               avg(primary_outcome = 'ok'), avg(outcome = 'ok'),
               avg(primary_cost_usd), avg(cost_usd),
               avg(similarity >= {AGREE_AT}), avg(similarity)
        FROM shadow {where} GROUP BY primary_provider, shadow_provider
        ORDER BY count(*) DESC
        """,
        params,
    ).fetchall()
    out = []
    for primary, shadow, n, p_ok, s_ok, p_cost, s_cost, agree, sim in found:
        med = {
            col: _median(db, col, primary, shadow, where, params)
            for col in ("primary_ttft_ms", "ttft_ms", "primary_duration_ms", "duration_ms")
        }
        out.append(
            Pair(
                primary or "–", shadow or "–", n, p_ok or 0.0, s_ok or 0.0,
                med["primary_ttft_ms"], med["ttft_ms"], med["primary_duration_ms"],
                med["duration_ms"], p_cost, s_cost, agree, sim,
            )
        )  # fmt: skip
    return out


def _median(
    db: sqlite_utils.Database, col: str, primary: Any, shadow: Any, where: str, params: list
) -> float | None:
    cond = (where + " AND" if where else "WHERE") + (
        f" primary_provider IS ? AND shadow_provider IS ? AND {col} IS NOT NULL"
    )
    n = db.execute(f"SELECT count(*) FROM shadow {cond}", [*params, primary, shadow]).fetchone()[0]
    if not n:
        return None
    row = db.execute(
        f"SELECT {col} FROM shadow {cond} ORDER BY {col} LIMIT 1 OFFSET ?",
        [*params, primary, shadow, (n - 1) // 2],
    ).fetchone()
    return row[0]


def table(rows: list[Pair]) -> list[str]:
    """The lines ``kimi-intercept compare`` prints."""
    if not rows:
        return ["No shadow-mode comparisons recorded (enable [routing.shadow] in the config)."]

    def ms(v: float | None) -> str:
        return "–" if v is None else f"{v:,.0f}"

    def usd(v: float | None) -> str:
        return "–" if v is None else f"${v:.6f}"

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v * 100:.0f}%"

    head = (
        f"{'primary → shadow':<24} {'requests':>8} {'ok':>11} {'TTFT ms':>13} "
        f"{'total ms':>15} {'cost/request':>23} {'agree':>6}"
    )
    lines = [head]
    for p in rows:
        lines.append(
            f"{p.primary + ' → ' + p.shadow:<24} {p.requests:>8} "
            f"{pct(p.primary_ok) + '/' + pct(p.shadow_ok):>11} "
            f"{ms(p.primary_ttft_ms) + '/' + ms(p.shadow_ttft_ms):>13} "
            f"{ms(p.primary_duration_ms) + '/' + ms(p.shadow_duration_ms):>15} "
            f"{usd(p.primary_cost) + '/' + usd(p.shadow_cost):>23} {pct(p.agree):>6}"
        )
    return lines
