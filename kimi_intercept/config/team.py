"""Team scale: the ``[otel]`` and ``[team]`` tables.

```toml
[otel]
enabled = false           # export one span per LLM call (+ metrics) over OTLP/HTTP
capture_content = false   # also export prompt/answer text (the conversation's title)
# where to: the standard OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ENDPOINT / _HEADERS variables

[team]
url = "${KIMI_TEAM_DATABASE_URL}"   # postgresql://user:password@host/db; empty: no team store
developer = ""                      # the name rows are shipped under; empty: the OS user
sync_interval_s = 30                # seconds between background shipments
```

Errors: :class:`~kimi_intercept.config.values.ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import getpass
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kimi_intercept.config.keys import unknown_key_message
from kimi_intercept.config.values import ConfigError, _bool, _number

if TYPE_CHECKING:
    from kimi_intercept.config.settings import Config

OTEL_KEYS = ("enabled", "capture_content")
TEAM_KEYS = ("url", "developer", "sync_interval_s")


@dataclass(frozen=True)
class OtelSettings:
    """``[otel]``: off by default; the endpoint comes from ``OTEL_EXPORTER_OTLP_*``."""

    enabled: bool = False
    capture_content: bool = False


@dataclass(frozen=True)
class TeamSettings:
    """``[team]``: ``url`` empty means no team store; ``sync_interval_s`` in seconds."""

    url: str = ""
    developer: str = ""
    sync_interval_s: float = 30.0

    @property
    def enabled(self) -> bool:
        return bool(self.url)


def _dict(cfg: Config, name: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    t: Any = cfg.raw.get(name) or {}
    if not isinstance(t, dict):
        raise ConfigError(f"[{name}] must be a table, e.g. [{name}] enabled = true")
    if message := unknown_key_message(t, allowed, f"[{name}]"):
        raise ConfigError(message)
    return t


def otel_settings(cfg: Config) -> OtelSettings:
    """The ``[otel]`` table of ``cfg``, checked."""
    t = _dict(cfg, "otel", OTEL_KEYS)
    settings = OtelSettings(_bool(t, "otel.enabled"), _bool(t, "otel.capture_content"))
    if settings.enabled and not _installed("opentelemetry.sdk", "opentelemetry.exporter"):
        raise ConfigError(
            "[otel] enabled = true needs the OpenTelemetry packages: "
            "pip install 'kimi-intercept[otel]' (or set enabled = false)"
        )
    return settings


def team_settings(cfg: Config) -> TeamSettings:
    """The ``[team]`` table of ``cfg``, checked (``developer`` defaults to the OS user)."""
    t = _dict(cfg, "team", TEAM_KEYS)
    url = t.get("url", "")
    if not isinstance(url, str) or (url and not url.startswith(("postgresql://", "postgres://"))):
        raise ConfigError(
            'team.url must be a PostgreSQL URL, e.g. url = "${KIMI_TEAM_DATABASE_URL}" '
            "holding postgresql://user:password@host/db"
        )
    developer = t.get("developer", "")
    if not isinstance(developer, str):
        raise ConfigError(
            f'team.developer must be a name, e.g. developer = "ada", got {developer!r}'
        )
    interval = _number(t, "team.sync_interval_s", 1, 86400) if "sync_interval_s" in t else 30.0
    if url and not _installed("psycopg"):
        raise ConfigError(
            "[team] url needs the PostgreSQL driver: pip install 'kimi-intercept[team]'"
        )
    return TeamSettings(url, developer.strip() or default_developer(), interval)


def _installed(*modules: str) -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):
        return False


def default_developer() -> str:
    """The OS user's login name (``"unknown"`` if the system has none)."""
    try:
        return getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        return "unknown"
