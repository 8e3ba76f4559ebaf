"""The ``kimi-intercept`` command line.

Every subcommand takes ``--config`` (default: ``$KIMI_INTERCEPT_CONFIG``, ``./config.toml``, then
the user config folder; built-in defaults if none exists) and ``--db`` (default: the database
the config names, else the one in the user data folder). The launcher's commands (``proxy``,
``init``, ``run``, ``env``) come from :mod:`.launcher`, ``doctor`` from :mod:`.doctor`.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click

from kimi_intercept import __version__
from kimi_intercept.commands.doctor import doctor
from kimi_intercept.commands.launcher import env, init, proxy, run
from kimi_intercept.commands.options import (
    DEMO_DB,
    cannot_write,
    common_options,
    day_of,
    echo_json,
    json_option,
    load,
    no_database,
    out_option,
    reading,
    resolve_db_path,
    since_option,
    until_option,
    writable_dir,
)
from kimi_intercept.commands.sanitizer_commands import compress, masked
from kimi_intercept.commands.stats import BY_CHOICES
from kimi_intercept.commands.statusline import statusline_command
from kimi_intercept.commands.stores import one_store, stores_options
from kimi_intercept.commands.team import team as team_group
from kimi_intercept.commands.top import top_command


class _Group(click.Group):
    """Output piped into a reader that stops early (``| head -1``) ends the command quietly
    with exit code 0, as the Python docs recommend
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a pipe closed early fails here, not at interpreter exit
            return result
        except BrokenPipeError:
            # Python flushes stdout again at exit: point it at devnull so that cannot fail.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="kimi-intercept")
def main() -> None:
    """Reroute IDE LLM calls to Kimi, count every token, report on it."""


main.add_command(masked)
main.add_command(compress)
for _command in (proxy, init, run, env, doctor):
    main.add_command(_command)
main.add_command(statusline_command)
main.add_command(top_command)
main.add_command(team_group)


@main.command()
@stores_options
@out_option
@since_option
@until_option
@click.option(
    "--watch",
    is_flag=True,
    help="Write the pages again whenever the database changes (Ctrl-C stops); the pages "
    "reload themselves in the browser",
)
@click.option(
    "--refresh",
    "refresh_s",
    type=click.IntRange(1, 3600),
    default=None,
    help="Seconds between the pages' own reloads in the browser (default: 5 with --watch, "
    "none without)",
)
@click.option("--team", is_flag=True, help="Report on the team store ([team] url): every "
              "developer's rows, with a per-developer page")  # fmt: skip
@click.option("--developer", "developers", multiple=True,
              help="With --team: only this developer's rows (repeatable)")  # fmt: skip
def report(
    config_path: Path,
    dbs: tuple[Path, ...],
    out_dir: Path,
    since: Any,
    until: Any,
    watch: bool,
    refresh_s: int | None,
    team: bool,
    developers: tuple[str, ...],
) -> None:
    """Write the static HTML report (overview, providers, models, clients, conversations;
    developers when several --db files are combined or with --team)."""
    from kimi_intercept.commands.team import team_store

    cfg = load(config_path)
    if team and dbs:
        raise click.ClickException("--team reads the team store: leave out --db")
    if developers and not team:
        raise click.ClickException("--developer filters the team store: add --team")
    if watch and (team or len(dbs) > 1):
        raise click.ClickException("--watch follows one database file: give one --db")
    if watch and refresh_s is None:
        refresh_s = WATCH_REFRESH_S
    source = team_store(cfg, day_of(since), developers) if team else one_store(dbs, cfg.database)
    with source as db_path:
        if not db_path.is_file():
            raise click.ClickException(no_database(db_path))
        writable_dir(out_dir, "the report")

        def build() -> Any:
            return _build(cfg, config_path, db_path, out_dir, since, until, refresh_s)

        if watch:
            _watch_report(db_path, build)
            return
        result = build()
    click.echo(f"Report written to {result.path.resolve()}")
    click.echo(result.totals.summary())


def _build(
    cfg: Any,
    config_path: Path,
    db_path: Path,
    out_dir: Path,
    since: Any,
    until: Any,
    refresh_s: int | None = None,
) -> Any:
    from kimi_intercept.accounting.prices import price_book
    from kimi_intercept.config.settings import ConfigError
    from kimi_intercept.reports.pages import build_report
    from kimi_intercept.storage import DatabaseNotFound

    try:
        price_book(cfg)
        return build_report(
            db_path, out_dir, since=day_of(since), until=day_of(until), cfg=cfg,
            refresh_s=refresh_s,
        )  # fmt: skip
    except ConfigError as e:
        raise click.ClickException(f"{config_path}: {e}") from e
    except DatabaseNotFound:
        raise click.ClickException(no_database(db_path)) from None
    except OSError as e:  # the folder became unwritable, the disk is full …
        raise cannot_write("the report", out_dir, e) from None
    except sqlite3.DatabaseError as e:  # not a database, or not readable
        raise click.ClickException(f"Cannot read {db_path.resolve()}: {e}") from e


WATCH_REFRESH_S = 5


def _watch_report(db_path: Path, build: Callable[[], Any]) -> None:
    """``report --watch``: build now and on every change until Ctrl-C (then exit 0)."""
    import signal
    import threading

    from kimi_intercept.reports.watch import watch

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def built() -> None:
        result = build()
        click.echo(
            f"{datetime.now():%H:%M:%S} report written to {result.path.resolve()} "
            f"({result.totals.summary().splitlines()[0]})"
        )

    def failed(e: Exception) -> None:
        message = e.format_message() if isinstance(e, click.ClickException) else str(e)
        click.echo(f"kimi-intercept: the report could not be written: {message}", err=True)

    click.echo(f"Watching {db_path.resolve()} — Ctrl-C stops")
    watch(db_path, built, stop, on_error=failed)
    click.echo("Stopped watching.")


@main.command()
@stores_options
@click.option(
    "--days", type=click.IntRange(1, 36500), default=30, show_default=True,
    help="How many days, up to today (UTC)",
)  # fmt: skip
@since_option
@click.option(
    "--by",
    type=click.Choice(list(BY_CHOICES)),
    help="One row per provider, model, client, day, month, session (conversation) or 5-hour "
    "block instead of the overview",
)
@json_option
def stats(
    config_path: Path, dbs: tuple[Path, ...], days: int, since: str | None, by: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Token, cost and cache totals as a table: today, the last 7 and the last N days
    (--days, or from --since), or one row per provider/model/client/day/month/session/block
    (--by). --json prints the same rows as JSON."""
    from kimi_intercept.commands.stats import stats_output

    cfg = load(config_path)
    today = datetime.now(timezone.utc).date()
    if since is not None:
        days = max(1, (today - date.fromisoformat(since)).days + 1)
    since = (today - timedelta(days=days - 1)).isoformat()
    with one_store(dbs, cfg.database) as merged, reading(merged) as ro:
        out = stats_output(ro, cfg, by, since, today, days)
    db_path = " + ".join(map(str, dbs)) if dbs else cfg.database
    if as_json:
        echo_json(out.json)
        return
    click.echo(f"Last {days} days ({since} to {today.isoformat()}, UTC), {db_path}")
    if not out.rows and by is not None:
        click.echo("No requests in this period.")
        return
    for line in out.lines():
        click.echo(line)
    for line in out.notes:
        click.echo(line)


@main.command()
@stores_options
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv",
              show_default=True)  # fmt: skip
@click.option(
    "--table",
    type=click.Choice(["requests", "conversations"]),
    default="requests",
    show_default=True,
)
@since_option
@until_option
@click.option(
    "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
    help="File to write [default: standard output]",
)  # fmt: skip
def export(
    config_path: Path,
    dbs: tuple[Path, ...],
    fmt: str,
    table: str,
    since: Any,
    until: Any,
    out_file: Path | None,
) -> None:
    """Stream requests (or conversations) as CSV or JSON, row by row."""
    from kimi_intercept.commands import export as exporter

    default = resolve_db_path(config_path, None) if not dbs else Path()
    with one_store(dbs, default) as db_path, reading(db_path) as ro:
        if out_file is None:
            n = exporter.write(sys.stdout, ro, fmt, table, day_of(since), day_of(until))
        else:
            try:
                with open(out_file, "w", encoding="utf-8", newline="") as f:
                    n = exporter.write(f, ro, fmt, table, day_of(since), day_of(until))
            except OSError as e:
                raise cannot_write(f"the {table}", out_file, e) from None
    if out_file is not None:
        click.echo(f"Exported {n:,} {table} rows to {out_file}", err=True)


@main.command()
@common_options
@click.option(
    "--days", type=click.IntRange(1, 36500), default=None,
    help="Days of raw rows to keep [default: [storage] retention_days, 90]",
)  # fmt: skip
def prune(config_path: Path, db: Path | None, days: int | None) -> None:
    """Delete raw rows older than the retention (their totals stay in the daily table),
    then VACUUM the file."""
    from kimi_intercept.config.settings import ConfigError
    from kimi_intercept.storage import prune as prune_db
    from kimi_intercept.storage import retention_days

    cfg = load(config_path)
    db_path = db if db is not None else cfg.database
    if days is None:
        try:
            days = retention_days(cfg)
        except ConfigError as e:
            raise click.ClickException(f"{config_path}: {e}") from e
        if days is None:
            click.echo("Retention is off ([storage] retention_days = 0); nothing pruned.")
            return
    if not db_path.is_file():
        raise click.ClickException(no_database(db_path))
    try:
        result = prune_db(db_path, days)
    except sqlite3.DatabaseError as e:
        raise click.ClickException(f"Cannot prune {db_path.resolve()}: {e}") from e
    click.echo(result.summary())


@main.command(name="import")
@common_options
@click.argument("source", type=click.Choice(["cline", "continue"]))
@click.argument("path", required=False, type=click.Path(path_type=Path))
def import_(config_path: Path, db: Path | None, source: str, path: Path | None) -> None:
    """Import another tool's local usage ledger (numbers only, read-only): Cline's
    taskHistory.json or Continue's tokensGenerated.jsonl. PATH defaults to [import] SOURCE
    in the config, then the tool's usual location. Importing again updates, never duplicates."""
    from kimi_intercept.commands.importers import LedgerError, import_ledger
    from kimi_intercept.config.settings import ConfigError

    cfg = load(config_path)
    db_path = db if db is not None else cfg.database
    try:
        result = import_ledger(source, db_path, cfg, path)
    except (LedgerError, ConfigError) as e:
        raise click.ClickException(str(e)) from e
    except sqlite3.DatabaseError as e:
        raise click.ClickException(f"Cannot write {db_path.resolve()}: {e}") from e
    click.echo(result.summary())


@main.command()
@common_options
@click.option(
    "--since",
    "since",
    default="7d",
    show_default=True,
    help="Window: 7d, 24h or a day YYYY-MM-DD (UTC)",
)
@json_option
def compare(config_path: Path, db: Path | None, since: str, as_json: bool) -> None:
    """Shadow mode: per provider pair, success, latency, cost per request and how often the
    answers agree."""
    from dataclasses import asdict

    from kimi_intercept.reports.compare import pairs, since_iso, table

    try:
        bound = since_iso(since)
    except ValueError as e:
        raise click.BadParameter(f"use 7d, 24h or YYYY-MM-DD ({e})", param_hint="--since") from e
    with reading(resolve_db_path(config_path, db)) as ro:
        found = pairs(ro, bound)
    if as_json:
        echo_json({"since": bound, "pairs": [asdict(p) for p in found]})
        return
    for line in table(found):
        click.echo(line)


@main.command()
@common_options
@json_option
def status(config_path: Path, db: Path | None, as_json: bool) -> None:
    """Each provider's state (available, circuit open, cooling down, rate-limited) from the
    running proxy, and the last hour of upstream attempts from the database."""
    from kimi_intercept.commands.status import read_live, recent_attempts, render, status_file_for

    db_path = resolve_db_path(config_path, db)
    if as_json:
        live = read_live(status_file_for(db_path))
        echo_json({"database": str(db_path), "proxy": live,
                   "last_hour": recent_attempts(db_path)})  # fmt: skip
        return
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
    from kimi_intercept.commands.demo import run_demo
    from kimi_intercept.commands.mitmdump import ProxyStartError

    writable_dir(out_dir, "the report")
    try:
        run_demo(db or Path(DEMO_DB), out_dir, echo=click.echo)
    except ProxyStartError as e:
        raise click.ClickException(str(e)) from e
