"""``kimi-intercept top``: a live dashboard in the terminal, refreshed every second.

Three views (``1``-``3`` or ``tab``): **overview** (spend today / this month, tokens per minute,
cache-hit rate over the last 5 minutes against the last hour, calls in flight, the last hour per
provider/model with errors and fallbacks, the latest calls, the providers' breakers),
**calls** (the calls in flight and the latest calls) and **conversations** (those active in the
last hour, with a gauge of how full the context window was at their last call). ``c`` cycles a
client filter over the clients seen in the last day; ``q`` quits. The numbers come from
:mod:`.top_data` (the database, read-only, and the running proxy's status file).

Why Rich (``rich.live.Live``) and not Textual: Rich is well kept and already a dependency of
many CLIs (pip vendors it), draws plain ANSI that works over SSH in an 80×24 terminal, and a
``Live`` that redraws only when told to costs a few milliseconds a second; Textual's app model
(its own event loop, widgets, CSS, a 60 fps compositor) is more than a read-only table that
changes once a second needs. The screen is :mod:`.top_screen`, imported only when ``top`` runs
(the other commands, ``statusline`` above all, start without Rich).
"""

from __future__ import annotations

from pathlib import Path

import click

from kimi_intercept.commands.options import common_options, load
from kimi_intercept.commands.status import status_file_for


@click.command(name="top")
@common_options
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True,
              help="Seconds between refreshes")  # fmt: skip
@click.option("--once", is_flag=True, help="Print one screen of the overview and exit")
def top_command(config_path: Path, db: Path | None, interval: float, once: bool) -> None:
    """Live dashboard: spend, tokens per minute, cache-hit rate, calls in flight, per-model
    errors and fallbacks, latest calls, conversations, provider health (q quits)."""
    from kimi_intercept.commands.top_data import Reader
    from kimi_intercept.commands.top_screen import State, render, run
    from kimi_intercept.config.budget import budget_settings
    from kimi_intercept.config.settings import ConfigError

    cfg = load(config_path)
    try:
        budget = budget_settings(cfg)
    except ConfigError as e:
        raise click.ClickException(f"{config_path}: {e}") from e
    db_path = db if db is not None else cfg.database
    reader = Reader(db_path, status_file_for(db_path), budget=budget)
    try:
        if once:
            from rich.console import Console

            Console().print(render(reader.snapshot(), State()))
        else:
            run(reader, interval)
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
