"""The ``kimi-intercept`` command line.

Every subcommand takes ``--config`` (default ``config.toml`` in the current folder; a missing
file means built-in defaults) and ``--db`` (default: the database the config names).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kimi_intercept import __version__

DEFAULT_CONFIG = "config.toml"
DEMO_DB = "kimi_intercept_demo.db"

F = TypeVar("F", bound=Callable[..., Any])


def resolve_db_path(config_path: Path, db: Path | None) -> Path:
    """The database to use: ``--db`` if given, else ``[storage] database`` of the config
    (a missing config file means the built-in defaults)."""
    if db is not None:
        return db
    from kimi_intercept.config import ConfigError, load_config

    try:
        return load_config(config_path).database
    except ConfigError as e:  # the message names the key and the fix
        raise click.ClickException(f"{config_path}: {e}") from e


def common_options(f: F) -> F:
    """``--config`` and ``--db``, shared by every subcommand."""
    f = click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="SQLite database [default: the one named in the config]",
    )(f)
    f = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_CONFIG,
        show_default=True,
        help="Config file; built-in defaults if it does not exist",
    )(f)
    return f


out_option = click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="Folder to write index.html into",
)


@click.group()
@click.version_option(__version__, prog_name="kimi-intercept")
def main() -> None:
    """Reroute IDE LLM calls to Kimi, count every token, report on it."""


@main.command()
@common_options
@out_option
@click.option(
    "--since", type=click.DateTime(["%Y-%m-%d"]), help="First day to include (UTC, YYYY-MM-DD)"
)
@click.option(
    "--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day to include (UTC, YYYY-MM-DD)"
)
def report(
    config_path: Path,
    db: Path | None,
    out_dir: Path,
    since: Any,
    until: Any,
) -> None:
    """Write a static HTML report of recorded requests."""
    from kimi_intercept.report import read_totals, write_report
    from kimi_intercept.store import DatabaseNotFound, open_readonly

    db_path = resolve_db_path(config_path, db)
    since_s = since.date().isoformat() if since else None
    until_s = until.date().isoformat() if until else None
    try:
        path = write_report(db_path, out_dir, since=since_s, until=until_s)
        ro = open_readonly(db_path)
        try:
            totals = read_totals(ro, since_s, until_s)
        finally:
            ro.close()
    except DatabaseNotFound:
        raise click.ClickException(
            f"No database at {db_path.resolve()} - run the proxy or `kimi-intercept demo` "
            "first, or pass --db"
        ) from None
    except sqlite3.DatabaseError as e:  # not a database, or not readable
        raise click.ClickException(f"Cannot read {db_path.resolve()}: {e}") from e
    click.echo(f"Report written to {path.resolve()}")
    click.echo(totals.summary())


@main.command()
@common_options
def status(config_path: Path, db: Path | None) -> None:
    """Each provider's state (available, circuit open, cooling down, rate-limited) from the
    running proxy, and the last hour of upstream attempts from the database."""
    from kimi_intercept.status import render, status_file_for

    db_path = resolve_db_path(config_path, db)
    for line in render(status_file_for(db_path), db_path):
        click.echo(line)


@main.command()
@common_options
@out_option
def demo(config_path: Path, db: Path | None, out_dir: Path) -> None:
    """Run the whole path locally without an API key: simulated Kimi and DeepSeek upstreams,
    a real mitmdump with the addon, real openai SDK calls, then the report.

    The demo's rows go to their own database (kimi_intercept_demo.db unless --db is given), never
    to the one your config names. --config is accepted for symmetry and not read.
    """
    from kimi_intercept.demo import run_demo
    from kimi_intercept.mitmdump import ProxyStartError

    try:
        run_demo(db or Path(DEMO_DB), out_dir, echo=click.echo)
    except ProxyStartError as e:
        raise click.ClickException(str(e)) from e
