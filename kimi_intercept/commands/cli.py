"""The ``kimi-intercept`` command line.

Every subcommand takes ``--config`` (default ``config.toml`` in the current folder; a missing
file means built-in defaults) and ``--db`` (default: the database the config names).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kimi_intercept import __version__

if TYPE_CHECKING:
    import sqlite_utils

    from kimi_intercept.config.settings import Config

DEFAULT_CONFIG = "config.toml"
DEMO_DB = "kimi_intercept_demo.db"

F = TypeVar("F", bound=Callable[..., Any])


def resolve_db_path(config_path: Path, db: Path | None) -> Path:
    """The database to use: ``--db`` if given, else ``[storage] database`` of the config
    (a missing config file means the built-in defaults)."""
    if db is not None:
        return db
    return load(config_path).database


def load(config_path: Path) -> Config:
    """The config at ``config_path`` (built-in defaults if the file does not exist)."""
    from kimi_intercept.config.settings import ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as e:  # the message names the key and the fix
        raise click.ClickException(f"{config_path}: {e}") from e


@contextmanager
def reading(db_path: Path) -> Iterator[sqlite_utils.Database]:
    """A read-only connection to ``db_path`` (an older schema is migrated first), with the
    CLI's messages for a missing or unreadable database."""
    from kimi_intercept.storage.store import open_db, open_readonly

    if not db_path.is_file():
        raise click.ClickException(_no_database(db_path))
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


def _no_database(db_path: Path) -> str:
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


def _day(value: Any) -> str | None:
    return value.date().isoformat() if value else None


since_option = click.option(
    "--since", type=click.DateTime(["%Y-%m-%d"]), help="First day to include (UTC, YYYY-MM-DD)"
)
until_option = click.option(
    "--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day to include (UTC, YYYY-MM-DD)"
)


@main.command()
@common_options
@out_option
@since_option
@until_option
def report(
    config_path: Path,
    db: Path | None,
    out_dir: Path,
    since: Any,
    until: Any,
) -> None:
    """Write the static HTML report (overview, providers, models, clients, conversations)."""
    from kimi_intercept.accounting.prices import price_book
    from kimi_intercept.config.settings import ConfigError
    from kimi_intercept.reports.pages import build_report
    from kimi_intercept.storage.store import DatabaseNotFound

    cfg = load(config_path)
    db_path = db if db is not None else cfg.database
    try:
        price_book(cfg)
        result = build_report(db_path, out_dir, since=_day(since), until=_day(until), cfg=cfg)
    except ConfigError as e:
        raise click.ClickException(f"{config_path}: {e}") from e
    except DatabaseNotFound:
        raise click.ClickException(_no_database(db_path)) from None
    except sqlite3.DatabaseError as e:  # not a database, or not readable
        raise click.ClickException(f"Cannot read {db_path.resolve()}: {e}") from e
    click.echo(f"Report written to {result.path.resolve()}")
    click.echo(result.totals.summary())


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
@common_options
@click.option(
    "--days", type=click.IntRange(1, 36500), default=30, show_default=True,
    help="How many days, up to today (UTC)",
)  # fmt: skip
@click.option(
    "--by",
    type=click.Choice(["provider", "model", "client", "day"]),
    help="One row per provider, model, client or day instead of the overview",
)
def stats(config_path: Path, db: Path | None, days: int, by: str | None) -> None:
    """Token, cost and cache totals as a table: today, the last 7 and the last N days
    (--days), or per provider/model/client/day over the last N days (--by)."""
    from kimi_intercept.reports.pages import WINDOWS, fmt_num, fmt_ratio, read_facts, windows

    cfg = load(config_path)
    db_path = db if db is not None else cfg.database
    today = datetime.now(timezone.utc).date()
    since = (today - timedelta(days=days - 1)).isoformat()
    with reading(db_path) as ro:
        facts = read_facts(ro, since, None, cfg)
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
@common_options
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
    db: Path | None,
    fmt: str,
    table: str,
    since: Any,
    until: Any,
    out_file: Path | None,
) -> None:
    """Stream requests (or conversations) as CSV or JSON, row by row."""
    from kimi_intercept.commands import export as exporter

    db_path = resolve_db_path(config_path, db)
    with reading(db_path) as ro:
        if out_file is None:
            n = exporter.write(sys.stdout, ro, fmt, table, _day(since), _day(until))
        else:
            with open(out_file, "w", encoding="utf-8", newline="") as f:
                n = exporter.write(f, ro, fmt, table, _day(since), _day(until))
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
    from kimi_intercept.storage.store import prune as prune_db
    from kimi_intercept.storage.store import retention_days

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
        raise click.ClickException(_no_database(db_path))
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

    try:
        run_demo(db or Path(DEMO_DB), out_dir, echo=click.echo)
    except ProxyStartError as e:
        raise click.ClickException(str(e)) from e


@main.group()
def masked() -> None:
    """Tool outputs the sanitizer shortened (the masked table)."""


@masked.command()
@common_options
@click.argument("item_id")
def show(config_path: Path, db: Path | None, item_id: str) -> None:
    """Print the original of masked item ITEM_ID (the id in the marker
    "[kimi-intercept: … — id ITEM_ID]", or a unique start of it) exactly as it was."""
    db_path = resolve_db_path(config_path, db)
    with reading(db_path) as ro:
        found = ro.execute(
            "SELECT id FROM masked WHERE id >= ? AND id < ? ORDER BY id LIMIT 2",
            [item_id, item_id + "\U0010ffff"],
        ).fetchall()
        if not found or len(item_id) < 6:
            raise click.ClickException(
                f"No masked item {item_id!r} in {db_path} (give at least 6 characters of the id; "
                "originals are kept while [sanitizer] store_originals is on, for "
                "[storage] retention_days)"
            )
        if len(found) > 1:
            raise click.ClickException(f"{item_id!r} matches several items; give more of the id")
        from kimi_intercept.storage.store import read_masked

        original = read_masked(ro, found[0][0])
    if original is None:
        raise click.ClickException(
            f"Masked item {found[0][0]} was recorded without its original "
            "([sanitizer] store_originals = false)"
        )
    click.echo(original, nl=False)


@masked.command(name="list")
@common_options
@click.option("--limit", default=50, show_default=True, help="Newest first, at most this many")
def list_masked(config_path: Path, db: Path | None, limit: int) -> None:
    """The masked items: id, when, tool, kind, size and tokens before → after."""
    with reading(resolve_db_path(config_path, db)) as ro:
        found = ro.execute(
            "SELECT id, created_at, tool, kind, lines, bytes, tokens_before, tokens_after,"
            " original IS NOT NULL FROM masked ORDER BY created_at DESC, id LIMIT ?",
            [limit],
        ).fetchall()
    if not found:
        click.echo("Nothing masked yet.")
        return
    click.echo(f"{'id':<16}  {'created (UTC)':<19}  {'tool':<18} {'kind':<19} "
               f"{'lines':>7} {'bytes':>9} {'tokens before → after':>22}  original")  # fmt: skip
    for ident, at, tool, kind, lines, size, before, after, kept in found:
        click.echo(
            f"{ident:<16}  {(at or '')[:19].replace('T', ' '):<19}  {(tool or '–')[:18]:<18} "
            f"{(kind or '–')[:19]:<19} {lines or 0:>7,} {size or 0:>9,} "
            f"{f'{before or 0:,} → {after or 0:,}':>22}  {'kept' if kept else 'not kept'}"
        )


@main.command()
@common_options
@click.argument("request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dialect", type=click.Choice(["openai", "anthropic", "gemini"]),
              help="The request's dialect [default: guessed from its shape]")  # fmt: skip
@click.option(
    "--window",
    "window",
    type=int,
    help="Context window in tokens [default: the request model's, from the config]",
)
@click.option("--target", "target", type=float,
              help="Share of the window to compress down to [default: compress_at - 0.10; "
                   "0 lists everything that could go]")  # fmt: skip
def compress(
    config_path: Path,
    db: Path | None,
    request_file: Path,
    dialect: str | None,
    window: int | None,
    target: float | None,
) -> None:
    """Show what context compression would remove from a saved request body (JSON), and in
    which order — the request is not changed or sent."""
    import json

    from kimi_intercept.sanitizer.compress import ContextSettings, explain

    cfg = load(config_path)
    try:
        body = json.loads(request_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise click.ClickException(f"{request_file}: not a JSON request body ({e})") from e
    if not isinstance(body, dict):
        raise click.ClickException(f"{request_file}: a request body is a JSON object")
    dialect = dialect or _guess_dialect(body)
    if window is None:
        info = cfg.model_info(body.get("model") if isinstance(body.get("model"), str) else None)
        window = info.context_window if info else None
        if window is None:
            info = cfg.model_info(cfg.providers[cfg.routing.primary].model)
            window = info.context_window if info else None
    if not window:
        raise click.ClickException("Unknown context window: pass --window TOKENS")
    try:
        settings = ContextSettings.from_table(cfg.raw.get("context", {}) or {})
        lines = explain(dialect, body, context_window=window, settings=settings,
                        target_share=target)  # fmt: skip
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{request_file} ({dialect}), context window {window:,} tokens:")
    for line in lines:
        click.echo(f"  {line}")


def _guess_dialect(body: dict[str, Any]) -> str:
    """Gemini has ``contents``; Anthropic a top-level ``system`` or content blocks of its own
    kinds (``tool_use``, ``tool_result``, ``thinking``); else OpenAI."""
    if "contents" in body:
        return "gemini"
    if "system" in body:
        return "anthropic"
    for m in body.get("messages") or []:
        blocks = m.get("content") if isinstance(m, dict) else None
        if isinstance(blocks, list) and any(
            isinstance(b, dict) and b.get("type") in ("tool_use", "tool_result", "thinking")
            for b in blocks
        ):
            return "anthropic"
    return "openai"
