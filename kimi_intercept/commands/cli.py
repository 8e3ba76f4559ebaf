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
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
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
    source = team_store(cfg, day_of(since), developers) if team else one_store(dbs, cfg.database)
    with source as db_path:
        if not db_path.is_file():
            raise click.ClickException(no_database(db_path))
        writable_dir(out_dir, "the report")
        result = _build(cfg, config_path, db_path, out_dir, since, until)
    click.echo(f"Report written to {result.path.resolve()}")
    click.echo(result.totals.summary())


def _build(
    cfg: Any, config_path: Path, db_path: Path, out_dir: Path, since: Any, until: Any
) -> Any:
    from kimi_intercept.accounting.prices import price_book
    from kimi_intercept.config.settings import ConfigError
    from kimi_intercept.reports.pages import build_report
    from kimi_intercept.storage import DatabaseNotFound

    try:
        price_book(cfg)
        return build_report(db_path, out_dir, since=day_of(since), until=day_of(until), cfg=cfg)
    except ConfigError as e:
        raise click.ClickException(f"{config_path}: {e}") from e
    except DatabaseNotFound:
        raise click.ClickException(no_database(db_path)) from None
    except OSError as e:  # the folder became unwritable, the disk is full …
        raise cannot_write("the report", out_dir, e) from None
    except sqlite3.DatabaseError as e:  # not a database, or not readable
        raise click.ClickException(f"Cannot read {db_path.resolve()}: {e}") from e


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Plain-text columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for r in [headers, *rows]:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _cost(value: float | None, unpriced: int) -> str:
    from kimi_intercept.reports.pages import fmt_usd

    text = "unpriced" if value is None else fmt_usd(value)
    return text + (f" (+{unpriced:,} unpriced)" if unpriced and value is not None else "")


@main.command()
@stores_options
@click.option(
    "--days", type=click.IntRange(1, 36500), default=30, show_default=True,
    help="How many days, up to today (UTC)",
)  # fmt: skip
@click.option(
    "--by",
    type=click.Choice(["provider", "model", "client", "day"]),
    help="One row per provider, model, client or day instead of the overview",
)
def stats(config_path: Path, dbs: tuple[Path, ...], days: int, by: str | None) -> None:
    """Token, cost and cache totals as a table: today, the last 7 and the last N days
    (--days), or per provider/model/client/day over the last N days (--by)."""
    from kimi_intercept.reports.pages import WINDOWS, fmt_num, fmt_ratio, read_facts, windows

    cfg = load(config_path)
    today = datetime.now(timezone.utc).date()
    since = (today - timedelta(days=days - 1)).isoformat()
    with one_store(dbs, cfg.database) as merged, reading(merged) as ro:
        facts = read_facts(ro, since, None, cfg)
    db_path = " + ".join(map(str, dbs)) if dbs else cfg.database
    if by is None:
        rows = []
        last = ("today", 1) if days == 1 else (f"{days} days", days)
        spans = tuple((label, n) for label, n in WINDOWS if n < days) + (last,)
        for (label, _), w in zip(spans, windows(facts, today, spans), strict=True):
            rows.append(
                [label.capitalize(), fmt_num(w["requests"]), fmt_num(w["prompt_tokens"]),
                 fmt_num(w["completion_tokens"]), fmt_num(w["cached_tokens"]),
                 _cost(w["cost_usd"], w["unpriced"]), fmt_num(w["saved_tokens"]),
                 fmt_ratio(w["cache_hit_rate"], 0)]
            )  # fmt: skip
        headers = ["Period (UTC)", "Requests", "Tokens in", "Tokens out", "Cached", "Cost",
                   "Saved", "Cache hit"]  # fmt: skip
    else:
        key = {"provider": "provider", "model": "model", "client": "client", "day": "day"}[by]
        groups = facts.group("provider", "model") if by == "model" else facts.group(key)
        if by == "day":
            groups.sort(key=lambda g: g["day"])
        rows = []
        for g in groups:
            name = (
                f"{g['provider'] or '–'} / {g['model'] or '–'}" if by == "model" else g[key] or "–"
            )
            priced = g["priced"]
            per = _cost(g["cost_usd"] / priced, 0) if g["cost_usd"] is not None and priced else "–"
            rows.append(
                [name, fmt_num(g["requests"]), f"{100 * g['ok'] / g['requests']:.0f}%",
                 fmt_num(g["fallbacks"]), fmt_num(g["prompt_tokens"]),
                 fmt_num(g["completion_tokens"]), fmt_num(g["cached_tokens"]),
                 _cost(g["cost_usd"], g["unpriced"]), per]
            )  # fmt: skip
        headers = [by.capitalize(), "Requests", "Success", "Fallbacks", "Tokens in",
                   "Tokens out", "Cached", "Cost", "Cost/request"]  # fmt: skip
    click.echo(f"Last {days} days ({since} to {today.isoformat()}, UTC), {db_path}")
    if not rows and by is not None:
        click.echo("No requests in this period.")
        return
    for line in _table(headers, rows):
        click.echo(line)
    if facts.totals().estimated:
        t = facts.totals()
        click.echo(
            f"{t.estimated:,} requests have estimated usage ({t.calibrated:,} calibrated); "
            f"{t.duplicates:,} duplicate responses not counted."
        )


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
def compare(config_path: Path, db: Path | None, since: str) -> None:
    """Shadow mode: per provider pair, success, latency, cost per request and how often the
    answers agree."""
    from kimi_intercept.reports.compare import pairs, since_iso, table

    try:
        bound = since_iso(since)
    except ValueError as e:
        raise click.BadParameter(f"use 7d, 24h or YYYY-MM-DD ({e})", param_hint="--since") from e
    with reading(resolve_db_path(config_path, db)) as ro:
        for line in table(pairs(ro, bound)):
            click.echo(line)


@main.command()
@common_options
def status(config_path: Path, db: Path | None) -> None:
    """Each provider's state (available, circuit open, cooling down, rate-limited) from the
    running proxy, and the last hour of upstream attempts from the database."""
    from kimi_intercept.commands.status import render, status_file_for

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
    from kimi_intercept.commands.demo import run_demo
    from kimi_intercept.commands.mitmdump import ProxyStartError

    writable_dir(out_dir, "the report")
    try:
        run_demo(db or Path(DEMO_DB), out_dir, echo=click.echo)
    except ProxyStartError as e:
        raise click.ClickException(str(e)) from e
