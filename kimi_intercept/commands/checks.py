"""One validation of the whole configuration, shared by the proxy and the CLI.

:func:`check_config` loads ``config.toml`` and runs every table's own validation — the
settings (``[intercept]``, ``[routing]`` with its shadow and rules, ``[storage]``, ``[proxy]``,
``[models]``, ``[providers.NAME]``), ``[sanitizer]`` and ``[context]`` (the :class:`Preparer`),
``[prices]`` (:func:`price_book`), ``[storage] retention_days`` and ``spool``, and ``[import]``
— so a config the CLI accepts is one the proxy accepts, and the other way round. The addon's
``configure`` and the CLI's ``load`` both call it.

:func:`unusable_chain_warning` is the one line the proxy logs when no provider of the routing
chain has its API key.

Errors: :class:`~kimi_intercept.config.settings.ConfigError` naming the key and the fix, with
any expanded ``${VAR}`` value written back as ``${VAR}``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kimi_intercept.accounting.prices import price_book
from kimi_intercept.commands.importers import import_config
from kimi_intercept.config.budget import budget_settings
from kimi_intercept.config.cache import cache_settings
from kimi_intercept.config.env import env_refs
from kimi_intercept.config.settings import Config, ConfigError, load_config
from kimi_intercept.config.team import otel_settings, team_settings
from kimi_intercept.sanitizer.prepare import Preparer
from kimi_intercept.storage import retention_days, spool_path


@dataclass(frozen=True)
class Checked:
    """A configuration every table of which is valid, with the :class:`Preparer` built from
    its ``[sanitizer]`` and ``[context]`` tables (the proxy keeps it; the CLI ignores it)."""

    cfg: Config
    preparer: Preparer


def check_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Checked:
    """Load ``path`` (missing file or ``None``: defaults only) and validate every table.

    :raises ConfigError: for the first problem found, naming the key and the fix
    """
    cfg = load_config(path, os.environ if env is None else env)
    try:
        preparer = Preparer(cfg)  # [sanitizer], [context]
        price_book(cfg)  # [prices]
        retention_days(cfg)  # [storage] retention_days
        spool_path(cfg)  # [storage] spool
        budget_settings(cfg)  # [budget]
        cache_settings(cfg)  # [cache]
        otel_settings(cfg)  # [otel]
        team_settings(cfg)  # [team]
        import_config(cfg)  # [import]
        return Checked(cfg, preparer)
    except ConfigError as e:
        redacted = ConfigError(cfg.redact(str(e)))
    raise redacted  # outside the except: no __context__ holding the expanded secret


def unusable_chain_warning(cfg: Config) -> str | None:
    """``None`` if a provider that can answer — of the default chain (primary, then fallbacks)
    or of a ``[[routing.rules]]`` chain — has an API key; else one line naming the variables to
    set, e.g. ``kimi-intercept: no provider can be used — set MOONSHOT_API_KEY (kimi) or
    DEEPSEEK_API_KEY (deepseek)``."""
    names = [p.name for p in cfg.chain] + [e.provider for r in cfg.rules for e in r.chain]
    chain = [cfg.providers[n] for n in dict.fromkeys(names)]
    if any(p.api_key for p in chain):
        return None
    fixes: dict[str, list[str]] = {}
    for p in chain:
        names = sorted(env_refs(p.api_key_ref))
        fix = names[0] if names else f"providers.{p.name}.api_key"
        fixes.setdefault(fix, []).append(p.name)
    wanted = [f"{fix} ({', '.join(names)})" for fix, names in fixes.items()]
    return "kimi-intercept: no provider can be used — set " + " or ".join(wanted)
