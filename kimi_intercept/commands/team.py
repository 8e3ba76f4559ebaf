"""``kimi-intercept team sync`` (ship this machine's history to the team store) and the team
store as a store the reading commands can read (:func:`team_store`, used by ``report --team``):
its rows are copied into a temporary SQLite store labelled by developer, so the report's pages
are computed by the same code as for one file (:mod:`kimi_intercept.commands.stores`)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from kimi_intercept.commands.options import common_options, load, no_database


def _team(cfg: Any) -> Any:
    from kimi_intercept.config.team import team_settings

    team = team_settings(cfg)  # checked by load() already
    if not team.enabled:
        raise click.ClickException(
            'No team store configured - set [team] url = "${KIMI_TEAM_DATABASE_URL}" in the '
            "config and that variable to postgresql://user:password@host/db"
        )
    return team


@contextmanager
def team_store(
    cfg: Any, since: str | None = None, developers: tuple[str, ...] = ()
) -> Iterator[Path]:
    """A temporary store holding every developer's rows of the team store (removed after);
    only those of ``developers`` when given.

    :raises click.ClickException: no ``[team] url``, or the server cannot be read
    """
    from kimi_intercept.storage import open_db
    from kimi_intercept.storage.merge import DEVELOPERS_SQL
    from kimi_intercept.storage.schema import ATTEMPT_COLUMNS, REQUEST_COLUMNS, SAVINGS_COLUMNS
    from kimi_intercept.storage.team import TeamStoreError, pull

    team = _team(cfg)
    try:
        rows = pull(team.url, since)
    except TeamStoreError as e:
        raise click.ClickException(str(e)) from None
    if developers:
        rows = {t: [r for r in rs if r["developer"] in developers] for t, rs in rows.items()}
    with tempfile.TemporaryDirectory(prefix="kimi-team-") as tmp:
        path = Path(tmp) / "team.db"
        db = open_db(path)
        try:
            db.execute(DEVELOPERS_SQL)
            db["developers"].insert_all(
                {"request_id": r["id"], "developer": r["developer"]} for r in rows["requests"]
            )
            for table, cols in (
                ("requests", REQUEST_COLUMNS),
                ("attempts", {k: v for k, v in ATTEMPT_COLUMNS.items() if k != "id"}),
                ("savings", SAVINGS_COLUMNS),
            ):
                ordered = rows[table]
                if table == "requests":
                    ordered = sorted(ordered, key=lambda r: r.get("started_at") or "")
                db[table].insert_all(({k: r.get(k) for k in cols} for r in ordered), batch_size=500)
            _add_pruned_days(db, rows)
            db.conn.commit()
        finally:
            db.close()
        yield path


def _add_pruned_days(db: Any, rows: dict[str, list[dict[str, Any]]]) -> None:
    """Add the shipped ``daily`` totals of each developer's pruned days — only for days the
    team store holds none of that developer's raw rows (those are counted from the rows)."""
    from kimi_intercept.storage.rollup import DAILY_KEYS, DAILY_SUMS

    raw = {(r["developer"], (r.get("started_at") or "")[:10]) for r in rows["requests"]}
    cols = [*DAILY_KEYS, *DAILY_SUMS]
    add = ", ".join(
        f"{c} = CASE WHEN excluded.{c} IS NULL THEN {c} WHEN {c} IS NULL THEN excluded.{c} "
        f"ELSE {c} + excluded.{c} END"
        for c in DAILY_SUMS
    )
    sql = (
        f"INSERT INTO daily ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
        f"ON CONFLICT ({', '.join(DAILY_KEYS)}) DO UPDATE SET {add}"
    )
    for d in rows["daily"]:
        if (d["developer"], d["day"]) not in raw:
            db.execute(sql, [d.get(c) if c in DAILY_SUMS else (d.get(c) or "") for c in cols])


@click.group()
def team() -> None:
    """The PostgreSQL team store ([team] in the config; docs/teams.md)."""


@team.command()
@common_options
def sync(config_path: Path, db: Path | None) -> None:
    """Ship every row of this machine's database to the team store (idempotent: rows already
    there are updated, never duplicated), then report how many went."""
    from kimi_intercept.storage.team import TeamStoreError, backfill

    cfg = load(config_path)
    settings = _team(cfg)
    db_path = db if db is not None else cfg.database
    if not db_path.is_file():
        raise click.ClickException(no_database(db_path))
    try:
        n = backfill(db_path, settings.url, settings.developer)
    except TeamStoreError as e:
        raise click.ClickException(f"{e} - the rows stay queued; run `team sync` again") from None
    click.echo(f"Shipped {n:,} requests from {db_path} as developer {settings.developer!r}")
