"""The static HTML report suite: SQL aggregates over the store, rendered by Jinja2.

Pages, all in the output folder: ``index.html`` (overview: today / 7 / 30 days, per-day charts,
sources, errors, latest requests), ``providers.html`` (comparison: success and fallback rates,
p50/p95 latency and TTFT, cost per request, errors by class), ``models.html`` (with the
calibration of estimates), ``clients.html``, ``conversations.html`` and one
``conversations/<id>.html`` per recent conversation (turn by turn, context gauge, masked items).

Speed at a million rows: one SQL pass groups the range's counted requests by day × provider ×
model × client × route × usage source (:func:`read_facts`, plus the ``daily`` rollups of pruned
days); every overview, table and chart is a sum over those few groups in Python. Latency
percentiles come from the counted rows' TTFT and duration (a systematic sample above
:data:`SAMPLE_ROWS` rows), the conversation list from one grouped query, single rows only for
the latest 50 requests and the conversation pages. Only ``duplicate_of IS NULL`` rows are
counted (a replayed response once).

No page has an external URL, a script or a font: charts are inline SVG (``templates/_charts.html``)
and every value from the database is escaped by Jinja's autoescape.

This module renders and writes the pages; what they show comes from
:mod:`kimi_intercept.reports.data` (the range's totals), :mod:`kimi_intercept.reports.tables`
(latency, providers, models, errors), :mod:`kimi_intercept.reports.conversations` and
:mod:`.charts`, shown through :mod:`.formatting`. Their public names
are importable from here too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from kimi_intercept.accounting import calibration
from kimi_intercept.config.settings import Config
from kimi_intercept.reports import compare
from kimi_intercept.reports.cache_breaks import client_breaks
from kimi_intercept.reports.charts import MAX_CHART_DAYS, day_charts, model_bars, provider_bars
from kimi_intercept.reports.conversations import (
    CONVERSATION_LIST_LIMIT,
    CONVERSATION_PAGES,
    TURN_LIMIT,
    conversation_context,
    conversation_rows,
    page_name,
)
from kimi_intercept.reports.data import (
    SUMS,
    WINDOWS,
    Facts,
    Totals,
    parse_day,
    range_where,
    read_facts,
    read_totals,
    windows,
)
from kimi_intercept.reports.developers import developer_rows
from kimi_intercept.reports.formatting import (
    finalize,
    fmt_compact,
    fmt_ms,
    fmt_num,
    fmt_pct,
    fmt_ratio,
    fmt_time,
    fmt_usd,
    plural,
)
from kimi_intercept.reports.money import money_context
from kimi_intercept.reports.tables import (
    LATEST_LIMIT,
    SAMPLE_ROWS,
    Latency,
    errors_by_class,
    model_rows,
    overview_tables,
    provider_rows,
    read_latency,
    sanitizer_value,
)
from kimi_intercept.storage import DatabaseNotFound, open_db, open_readonly

__all__ = [
    "CONVERSATION_LIST_LIMIT",
    "CONVERSATION_PAGES",
    "LATEST_LIMIT",
    "MAX_CHART_DAYS",
    "PAGES",
    "SAMPLE_ROWS",
    "SUMS",
    "TURN_LIMIT",
    "WINDOWS",
    "Facts",
    "Latency",
    "Report",
    "Totals",
    "build_report",
    "conversation_context",
    "conversation_rows",
    "env",
    "errors_by_class",
    "fmt_compact",
    "fmt_ms",
    "fmt_num",
    "fmt_pct",
    "fmt_ratio",
    "fmt_time",
    "fmt_usd",
    "model_rows",
    "page_name",
    "plural",
    "provider_rows",
    "range_where",
    "read_facts",
    "read_latency",
    "read_totals",
    "render_pages",
    "render_report",
    "report_context",
    "sanitizer_value",
    "windows",
    "write_report",
]

env = Environment(
    loader=PackageLoader("kimi_intercept.reports"),
    autoescape=select_autoescape(default_for_string=True, default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    finalize=finalize,  # bidi controls in user text are shown, not obeyed
)

env.filters.update(num=fmt_num, usd=fmt_usd, ms=fmt_ms, time=fmt_time, ratio=fmt_ratio)
env.globals.update(pct=fmt_pct, plural=plural)


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    path: Path  # index.html
    pages: list[Path]
    totals: Totals


def report_context(
    db: sqlite_utils.Database,
    since: str | None = None,
    until: str | None = None,
    cfg: Config | None = None,
) -> dict[str, Any]:
    """Everything the pages show, from aggregate queries. Read-only."""
    facts = read_facts(db, since, until, cfg)
    totals = facts.totals()
    now = datetime.now(timezone.utc)
    context: dict[str, Any] = {
        "totals": totals,
        "since": since,
        "until": until,
        "generated_at": now.strftime("%Y-%m-%d %H:%M UTC"),
        "empty": totals.requests == 0,
        "max_chart_days": MAX_CHART_DAYS,
        "facts": facts,
    }
    if totals.requests == 0:
        return context
    end = parse_day(until, "until") if until else now.date()
    latency = read_latency(db, since, until, totals.requests)
    models = model_rows(facts, latency)
    classes = errors_by_class(db, since, until)
    providers = provider_rows(db, facts, latency, classes, since, until)
    context.update(
        end=end.isoformat(),
        windows=windows(facts, end),
        charts=day_charts(facts),
        model_chart=model_bars(models),
        provider_charts=provider_bars(providers),
        providers=providers,
        models=models,
        clients=facts.group("client"),
        sources=facts.group("route"),
        usage_sources=facts.group("usage_source"),
        error_classes=classes,
        calibrations=sorted(
            facts.calibrations.values(), key=lambda c: (-c.samples, c.provider, c.model)
        ),
        latency_every=latency.every,
        min_samples=calibration.MIN_SAMPLES,
        holdout_every=calibration.HOLDOUT_EVERY,
    )
    context.update(overview_tables(db, since, until))
    conversations, count = conversation_rows(db, since, until, cfg)
    context.update(conversations=conversations, conversation_count=count)
    context.update(pairs=compare.pairs(db, since), agree_at=compare.AGREE_AT)
    context.update(sanitizer_value(db, since, until, cfg))
    context.update(money_context(db, facts, since, until, cfg))
    context.update(cache_breaks=client_breaks(db, since, until))
    context.update(developers=developer_rows(db, since, until))  # merged stores only
    return context


PAGES = {
    "index.html": "Overview",
    "providers.html": "Providers",
    "models.html": "Models",
    "clients.html": "Clients",
    "conversations.html": "Conversations",
    "compare.html": "Shadow",
}


def render_report(
    db: sqlite_utils.Database,
    since: str | None = None,
    until: str | None = None,
    cfg: Config | None = None,
) -> str:
    """The overview page as a string."""
    return render_pages(report_context(db, since, until, cfg), db, cfg)["index.html"]


def render_pages(
    context: dict[str, Any], db: sqlite_utils.Database, cfg: Config | None = None
) -> dict[str, str]:
    """Every page of a :func:`report_context` as ``{path relative to the output: html}``."""
    names = {**PAGES, **({"developers.html": "Developers"} if context.get("developers") else {})}
    nav = [{"href": name, "label": label} for name, label in names.items()]
    pages = {}
    for name in names:
        pages[name] = env.get_template(name).render(**context, nav=nav, page=name, root="")
    if not context["empty"]:
        conv_nav = [{"href": "../" + n["href"], "label": n["label"]} for n in nav]
        template = env.get_template("conversation.html")
        for conv in context["conversations"][:CONVERSATION_PAGES]:
            pages[conv["page"]] = template.render(
                **context,
                **conversation_context(db, conv, cfg),
                nav=conv_nav,
                page="conversation",
                root="../",
            )
    return pages


def build_report(
    db_path: Path,
    out_dir: Path,
    since: str | None = None,
    until: str | None = None,
    cfg: Config | None = None,
    refresh_s: int | None = None,
) -> Report:
    """Write every page into ``out_dir`` (each atomically) from the database at ``db_path``;
    conversation pages of an earlier run that are no longer listed are removed.

    A database from an older release is migrated first (the one write this makes).

    :param since: first day to include, ``YYYY-MM-DD`` (UTC)
    :param until: last day to include, ``YYYY-MM-DD`` (UTC), inclusive
    :param cfg: the config, for prices (calibrated costs) and context windows of old rows
    :param refresh_s: pages ask the browser to reload them every this many seconds
        (``<meta http-equiv="refresh">``; ``None``: they do not)
    :raises store.DatabaseNotFound: if there is no database at ``db_path``
    :raises ValueError: if ``since`` or ``until`` is not a date
    """
    range_where(since, until)  # reject a bad date before touching anything
    db_path = Path(db_path)
    if not db_path.is_file():
        raise DatabaseNotFound(
            f"No database at {db_path.resolve()} - run the proxy or `kimi-intercept demo` first"
        )
    open_db(db_path).close()  # apply pending migrations
    db = open_readonly(db_path)
    try:
        context = report_context(db, since, until, cfg)
        context["refresh_s"] = refresh_s
        pages = render_pages(context, db, cfg)
    finally:
        db.close()
    out_dir = Path(out_dir)
    written = [_write(out_dir / name, html) for name, html in pages.items()]
    conv_dir = out_dir / "conversations"
    if conv_dir.is_dir():
        keep = {p.name for p in written if p.parent == conv_dir}
        for stale in conv_dir.glob("*.html"):
            if stale.name not in keep:
                stale.unlink()
    return Report(out_dir / "index.html", written, context["totals"])


def write_report(
    db_path: Path,
    out_dir: Path,
    since: str | None = None,
    until: str | None = None,
    cfg: Config | None = None,
) -> Path:
    """Write the report (see :func:`build_report`) and return the path of ``index.html``."""
    return build_report(db_path, out_dir, since, until, cfg).path


def _write(path: Path, html: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path
