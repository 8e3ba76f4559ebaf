"""The configuration: ``config.toml`` merged over the packaged ``default_config.toml``, checked
once and turned into frozen dataclasses.

Modules: :mod:`.settings` (:func:`load_config`, :class:`Config` with its providers, models and
``[routing]``; ``${VAR}`` secrets resolved from the environment) and :mod:`.rules` (the
``[[routing.rules]]`` syntax: match, chain, overrides, validation), :mod:`.kimi` (``[kimi]``
switches and ``system_prepend`` / ``system_append`` texts, ``@file`` read), :mod:`.keys` (strict
keys: an unknown key names the closest valid one), :mod:`.env` (``${VAR}`` expansion, and
redaction of expanded values from error messages), :mod:`.discovery` (which config file:
``--config``, ``$KIMI_INTERCEPT_CONFIG``, ``./config.toml``, the user config folder) and
:mod:`.dirs` (the user folders, the default database). Everything else reads the config through
these names; this package imports nothing else of kimi-intercept.

Errors: :class:`ConfigError` (a ``ValueError``) whose message names the key and the fix;
:class:`RuleError` for a bad routing rule.
"""

from __future__ import annotations

from kimi_intercept.config.rules import ChainEntry, Rule, RuleError, Validation, parse_rules
from kimi_intercept.config.settings import (
    Config,
    ConfigError,
    ModelInfo,
    Provider,
    Routing,
    allow_hosts_patterns,
    default_config_text,
    load_config,
)

__all__ = [
    "ChainEntry",
    "Config",
    "ConfigError",
    "ModelInfo",
    "Provider",
    "Routing",
    "Rule",
    "RuleError",
    "Validation",
    "allow_hosts_patterns",
    "default_config_text",
    "load_config",
    "parse_rules",
]
