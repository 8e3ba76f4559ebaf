"""Where kimi-intercept keeps its files (``platformdirs``; XDG folders on Linux).

The default database lives in the user data folder, so every command finds the same one from
any folder; the proxy's CA (mitmproxy ``confdir``) sits beside it; running proxies are recorded
in the user state folder.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

APP = "kimi-intercept"
CONFIG_NAME = "config.toml"
DATABASE_NAME = "kimi_intercept.db"


def user_config_dir() -> Path:
    """Folder of the user's ``config.toml`` (``$XDG_CONFIG_HOME/kimi-intercept`` on Linux)."""
    return Path(platformdirs.user_config_dir(APP))


def user_data_dir() -> Path:
    """Folder of the default database and the proxy's CA (``$XDG_DATA_HOME/kimi-intercept``)."""
    return Path(platformdirs.user_data_dir(APP))


def user_state_dir() -> Path:
    """Folder of the running proxies' records and logs (``$XDG_STATE_HOME/kimi-intercept``)."""
    return Path(platformdirs.user_state_dir(APP))


def default_database() -> Path:
    """The database used when the config names none: ``<user data dir>/kimi_intercept.db``."""
    return user_data_dir() / DATABASE_NAME
