"""Spending limits: the ``[budget]`` table.

```toml
[budget]
daily_usd = 5.0          # per UTC day, over every client; omit for no daily limit
monthly_usd = 100.0      # per UTC calendar month
alerts = [75, 90, 100]   # percent of a limit at which a warning is logged, once each
action = "warn"          # at 100 %: "warn" (log only), "block" (the client gets an error
                         # in its own dialect), or "downgrade" (use the chain below)
downgrade = ["deepseek"] # the cheaper chain for action = "downgrade", as a rule's chain
```

No ``[budget]`` table (or neither limit) means no budget. Errors:
:class:`~kimi_intercept.config.settings.ConfigError` naming the key and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kimi_intercept.config.keys import unknown_key_message
from kimi_intercept.config.rules import ChainEntry, RuleError, _chain
from kimi_intercept.config.settings import ConfigError

if TYPE_CHECKING:
    from kimi_intercept.config.settings import Config

ACTIONS = ("warn", "block", "downgrade")
KEYS = ("daily_usd", "monthly_usd", "alerts", "action", "downgrade")
DEFAULT_ALERTS = (75.0, 90.0, 100.0)


@dataclass(frozen=True)
class Budget:
    """Limits in USD (``None``: no limit), alert thresholds in percent of a limit."""

    daily_usd: float | None = None
    monthly_usd: float | None = None
    alerts: tuple[float, ...] = DEFAULT_ALERTS
    action: str = "warn"
    downgrade: tuple[ChainEntry, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.daily_usd is not None or self.monthly_usd is not None


def budget_settings(cfg: Config) -> Budget:
    """The ``[budget]`` table of ``cfg``, checked."""
    t: Any = cfg.raw.get("budget") or {}
    if not isinstance(t, dict):
        raise ConfigError("[budget] must be a table, e.g. [budget] daily_usd = 5.0")
    if message := unknown_key_message(t, KEYS, "[budget]"):
        raise ConfigError(message)
    limits = {k: _usd(t, k) for k in ("daily_usd", "monthly_usd")}
    alerts = t.get("alerts", list(DEFAULT_ALERTS))
    if (
        not isinstance(alerts, list)
        or not alerts
        or not all(isinstance(a, int | float) and 0 < a <= 100 for a in alerts)
    ):
        raise ConfigError("budget.alerts must list percentages in (0, 100], e.g. [75, 90, 100]")
    action = t.get("action", "warn")
    if action not in ACTIONS:
        raise ConfigError(f"budget.action must be one of {list(ACTIONS)}, got {action!r}")
    downgrade: tuple[ChainEntry, ...] = ()
    if "downgrade" in t:
        try:
            downgrade = _chain("budget.downgrade", t["downgrade"], cfg.providers)
        except RuleError as e:
            raise ConfigError(str(e)) from e
    if action == "downgrade" and not downgrade:
        raise ConfigError(
            'budget.action = "downgrade" needs budget.downgrade, the cheaper chain, '
            'e.g. downgrade = ["deepseek"]'
        )
    return Budget(
        limits["daily_usd"],
        limits["monthly_usd"],
        tuple(sorted(float(a) for a in alerts)),
        action,
        downgrade,
    )


def _usd(t: dict[str, Any], key: str) -> float | None:
    v = t.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
        raise ConfigError(f"budget.{key} must be a positive number of US dollars, got {v!r}")
    return float(v)
