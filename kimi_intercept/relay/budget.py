"""Keeping to ``[budget]`` (:mod:`kimi_intercept.config.budget`): what was spent today and this
month (UTC), in memory, and what to do with the next call.

The spend is read once from the store's ``daily`` rollup when the proxy starts
(:meth:`BudgetTracker.reconcile`: exact recorded costs, duplicates excluded) and then grows by
each recorded row's ``cost_usd`` (:meth:`BudgetTracker.add`), so checking a call costs nothing.
Crossing an alert threshold returns one message per threshold and period (logged by the relay
as a console line). At 100 % of a limit :meth:`BudgetTracker.over` names the limit; the relay
then applies ``action``: ``warn`` (nothing more), ``block`` (:func:`block_message`, sent to the
client in its own dialect with status 402) or ``downgrade`` (the cheaper chain).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kimi_intercept.config.budget import Budget
from kimi_intercept.routing.plan import RoutePlan, retarget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Over:
    """A limit that is spent: ``period`` is ``daily`` or ``monthly``; USD."""

    period: str
    limit_usd: float
    spent_usd: float


class BudgetTracker:
    """Spend per UTC day and month against one :class:`Budget`."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.day = ""  # "2026-11-21"
        self.spent_day = 0.0
        self.spent_month = 0.0
        self._alerted: set[tuple[str, str, float]] = set()  # (period key, period, threshold)

    def reconcile(self, db_path: Path, now: datetime | None = None) -> None:
        """Read today's and this month's spend from the ``daily`` table (read-only; a missing
        or new database means nothing spent). Thresholds already passed are not re-announced."""
        now = now or datetime.now(timezone.utc)
        self._roll(now)
        if not db_path.is_file():
            return
        try:
            conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True)
            try:
                day, month = conn.execute(
                    "select sum(case when day = ? then cost_usd end), sum(cost_usd) "
                    "from daily where day >= ?",
                    (self.day, self.day[:8] + "01"),
                ).fetchone()
            finally:
                conn.close()
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):  # a new database: nothing spent yet
                log.warning("kimi-intercept: budget starts from $0, cannot read %s: %s", db_path, e)
            return
        except sqlite3.Error as e:  # a damaged file: start from zero, say so
            log.warning("kimi-intercept: budget starts from $0, cannot read %s: %s", db_path, e)
            return
        self.spent_day, self.spent_month = day or 0.0, month or 0.0
        self.alerts()  # mark what is already passed, without logging it again

    def _roll(self, now: datetime) -> None:
        day = now.strftime("%Y-%m-%d")
        if day[:7] != self.day[:7]:
            self.spent_month = 0.0
        if day != self.day:
            self.spent_day = 0.0
            self.day = day

    def add(self, row: dict[str, Any], now: datetime | None = None) -> list[str]:
        """Count a recorded ``requests`` row; returns the alert messages it triggered."""
        self._roll(now or datetime.now(timezone.utc))
        cost = row.get("cost_usd")
        if isinstance(cost, int | float) and cost > 0:
            self.spent_day += cost
            self.spent_month += cost
        return self.alerts()

    def _periods(self) -> list[tuple[str, str, float | None, float]]:
        b = self.budget
        return [
            ("daily", self.day, b.daily_usd, self.spent_day),
            ("monthly", self.day[:7], b.monthly_usd, self.spent_month),
        ]

    def alerts(self) -> list[str]:
        """Messages for thresholds newly reached (each once per day / month)."""
        out = []
        for period, key, limit, spent in self._periods():
            if limit is None:
                continue
            for pct in self.budget.alerts:
                if spent >= limit * pct / 100 and (key, period, pct) not in self._alerted:
                    self._alerted.add((key, period, pct))
                    out.append(
                        f"kimi-intercept: {period} budget {pct:g}% reached: "
                        f"{_usd(spent)} of {_usd(limit)}"
                        + (f" (action: {self.budget.action})" if pct >= 100 else "")
                    )
        return out

    def over(self, now: datetime | None = None) -> Over | None:
        """The first spent limit (daily before monthly), or ``None``."""
        self._roll(now or datetime.now(timezone.utc))
        for period, _, limit, spent in self._periods():
            if limit is not None and spent >= limit:
                return Over(period, limit, spent)
        return None

    def status(self) -> dict[str, Any] | None:
        """For the status file: limits, spend and action (``None`` without a budget)."""
        if not self.budget.enabled:
            return None
        return {
            "daily_usd": self.budget.daily_usd,
            "monthly_usd": self.budget.monthly_usd,
            "spent_today_usd": round(self.spent_day, 6),
            "spent_month_usd": round(self.spent_month, 6),
            "action": self.budget.action,
        }


def block_message(over: Over) -> str:
    """What a blocked client is told: which budget, how much, and how to go on."""
    until = "tomorrow (UTC)" if over.period == "daily" else "next month (UTC)"
    return (
        f"kimi-intercept: the {over.period} budget of {_usd(over.limit_usd)} is spent "
        f"({_usd(over.spent_usd)}); raise [budget] {over.period}_usd in the proxy's config.toml "
        f"and restart it, or wait until {until}"
    )


def _usd(v: float) -> str:
    return f"${v:,.2f}" if v >= 1 else f"${v:.4f}"


def gate(tracker: BudgetTracker, plan: RoutePlan) -> str | None:
    """Apply the budget to a call about to be served: the message to block it with, or
    ``None`` (under budget, ``warn``, or sent to the ``downgrade`` chain in place)."""
    if not tracker.budget.enabled:
        return None
    over = tracker.over()
    if over is None:
        return None
    if tracker.budget.action == "block":
        return block_message(over)
    if tracker.budget.action == "downgrade" and not retarget(plan, tracker.budget.downgrade):
        log.warning("kimi-intercept: budget spent, but a %s call cannot be downgraded", plan.kind)
    return None
