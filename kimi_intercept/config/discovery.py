"""Which config file a command (or the proxy) uses.

First match wins: an explicit path (``--config``, ``--set kimi_config=``), then
``$KIMI_INTERCEPT_CONFIG``, then ``./config.toml``, then ``config.toml`` in the user config folder
(``platformdirs.user_config_dir("kimi-intercept")``, e.g. ``~/.config/kimi-intercept``). A file
named explicitly (the first two) must exist; the last two may be missing (built-in defaults).

Errors: :class:`~kimi_intercept.config.settings.ConfigError` for a named file that is missing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kimi_intercept.config.dirs import CONFIG_NAME, user_config_dir
from kimi_intercept.config.settings import ConfigError

CONFIG_ENV = "KIMI_INTERCEPT_CONFIG"


@dataclass(frozen=True)
class ConfigLocation:
    """The config file a command uses. ``path`` may not exist when ``origin`` is
    ``"./config.toml"`` or ``"user config dir"`` (then the built-in defaults apply)."""

    path: Path
    origin: str  # "--config", "$KIMI_INTERCEPT_CONFIG", "./config.toml" or "user config dir"

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    def describe(self) -> str:
        """``/abs/config.toml (from --config)`` or ``built-in defaults (no /abs/config.toml)``."""
        if self.exists:
            return f"{self.path} (from {self.origin})"
        return f"built-in defaults (no {self.path})"


def find_config(
    explicit: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    flag: str = "--config",
) -> ConfigLocation:
    """The config to use (order in the module docstring); paths are made absolute.

    :raises ConfigError: when ``explicit`` or ``$KIMI_INTERCEPT_CONFIG`` names a missing file
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    for value, origin in ((explicit, flag), (env.get(CONFIG_ENV) or None, f"${CONFIG_ENV}")):
        if value is None or str(value) == "":
            continue
        path = (cwd / Path(value).expanduser()).absolute()
        if not path.is_file():
            raise ConfigError(
                f"{origin} names {path}, which does not exist; create it with "
                f"`kimi-intercept init`, fix the path, or leave {origin} unset"
            )
        return ConfigLocation(path, origin)
    local = cwd / CONFIG_NAME
    if local.is_file():
        return ConfigLocation(local.absolute(), f"./{CONFIG_NAME}")
    return ConfigLocation(user_config_dir() / CONFIG_NAME, "user config dir")
