"""What every subcommand shares: ``--config`` / ``--db``, the range options (``--since`` takes
``7d`` / ``24h`` as well as a day) and ``--json``, loading the
config with a message that names the fix, and opening the database read-only.

``--config`` follows :func:`kimi_intercept.config.discovery.find_config`: the option, then
``$KIMI_INTERCEPT_CONFIG``, then ``./config.toml``, then the user config folder; a file named by
the first two must exist."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    import sqlite_utils

    from kimi_intercept.config.settings import Config

DEMO_DB = "kimi_intercept_demo.db"

F = TypeVar("F", bound=Callable[..., Any])


def discover(explicit: Path | str | None) -> Path:
    """The config file to use (see the module docstring); it may not exist (built-in
    defaults), unless it was named explicitly."""
    from kimi_intercept.config.discovery import find_config
    from kimi_intercept.config.settings import ConfigError

    try:
        return find_config(explicit).path
    except ConfigError as e:
        raise click.ClickException(str(e)) from e


def _discover_option(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path:
    return discover(value)


def resolve_db_path(config_path: Path, db: Path | None) -> Path:
    """The database to use: ``--db`` if given, else ``[storage] database`` of the config
    (a missing config file means the built-in defaults)."""
    if db is not None:
        return db
    return load(config_path).database


def load(config_path: Path) -> Config:
    """The config at ``config_path`` (built-in defaults if the file does not exist), every
    table checked exactly as the proxy checks it (:func:`.checks.check_config`)."""
    from kimi_intercept.commands.checks import check_config
    from kimi_intercept.config.settings import ConfigError

    try:
        return check_config(config_path).cfg
    except ConfigError as e:  # the message names the key and the fix
        raise click.ClickException(f"{config_path}: {e}") from None


@contextmanager
def reading(db_path: Path) -> Iterator[sqlite_utils.Database]:
    """A read-only connection to ``db_path`` (an older schema is migrated first), with the
    CLI's messages for a missing or unreadable database."""
    from kimi_intercept.storage import open_db, open_readonly

    if not db_path.is_file():
        raise click.ClickException(no_database(db_path))
    try:
        open_db(db_path).close()
        db = open_readonly(db_path)
    except sqlite3.DatabaseError as e:
        raise click.ClickException(f"Cannot read {db_path.resolve()}: {e}") from e
    try:
        yield db
    except sqlite3.DatabaseError as e:
        raise click.ClickException(f"Cannot read {db_path.resolve()}: {e}") from e
    finally:
        db.close()


def cannot_write(what: str, path: Path, e: OSError) -> click.ClickException:
    """One line naming ``path`` and the problem, e.g. ``Cannot write the report to out:
    Permission denied (out/index.html)``."""
    where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
    return click.ClickException(f"Cannot write {what} to {path}: {e.strerror or e}{where}")


def writable_dir(path: Path, what: str) -> None:
    """Create ``path`` if needed and check a file can be written in it, before any work.

    :raises click.ClickException: naming the path and the problem
    """
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise cannot_write(what, path, e) from None


def no_database(db_path: Path) -> str:
    return (
        f"No database at {db_path.resolve()} - run the proxy or `kimi-intercept demo` first, "
        "or pass --db"
    )


def common_options(f: F) -> F:
    """``--config`` and ``--db``, shared by every subcommand."""
    f = click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="SQLite database [default: the one the config names, else the user data folder's]",
    )(f)
    f = config_option(f)
    return f


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=_discover_option,
    help="Config file [default: $KIMI_INTERCEPT_CONFIG, ./config.toml, then the user "
    "config folder; built-in defaults if none exists]",
)

out_option = click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="Folder to write index.html into",
)


def day_of(value: Any) -> str | None:
    """``YYYY-MM-DD`` of a ``--since``/``--until`` value, or ``None``."""
    if isinstance(value, str):
        return value
    return value.date().isoformat() if value else None


def since_day(spec: str, now: datetime | None = None) -> str:
    """The first UTC day of a ``--since`` value: ``YYYY-MM-DD`` as given; ``7d`` the last 7
    days, today included (from 6 days ago); ``24h`` the day 24 hours ago (reports count whole
    UTC days).

    :raises ValueError: for anything else
    """
    now = now or datetime.now(timezone.utc)
    m = re.fullmatch(r"\s*(\d+)\s*([dh])\s*", spec)
    if m:
        n = int(m[1])
        if m[2] == "d":
            if n < 1:
                raise ValueError("0d selects no day; use 1d for today")
            return (now.date() - timedelta(days=n - 1)).isoformat()
        return (now - timedelta(hours=n)).date().isoformat()
    return date.fromisoformat(spec.strip()).isoformat()


def _since_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return since_day(value)
    except ValueError:
        raise click.BadParameter(
            f"use 7d, 24h or a day YYYY-MM-DD, got {value!r}", param_hint="--since"
        ) from None


since_option = click.option(
    "--since",
    callback=_since_callback,
    help="First day to include (UTC): YYYY-MM-DD, 7d (the last 7 days, today included) or "
    "24h (from the UTC day 24 hours ago)",
)
until_option = click.option(
    "--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day to include (UTC, YYYY-MM-DD)"
)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON instead of a table (for scripts)"
)


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON (UTF-8 text kept as is)."""
    import json

    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))
