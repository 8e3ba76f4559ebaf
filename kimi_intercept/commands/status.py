"""``kimi-intercept status``: each provider's state, from the running proxy or the database.

The running proxy publishes its circuit breakers, cooldowns and rate limits to
``<database>.status.json`` whenever they change, with the calls in flight
(:mod:`kimi_intercept.relay.live`). When no
proxy is running, the last hour of ``attempts`` rows tells how each provider has been doing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from kimi_intercept.commands.proxyrecord import pid_alive


def status_file_for(database: Path) -> Path:
    """``kimi_intercept.db`` → ``kimi_intercept.db.status.json`` (see ``Config.status_file``)."""
    return database.with_name(database.name + ".status.json")


def read_live(status_file: Path) -> dict[str, Any] | None:
    """The running proxy's published state, or ``None`` if no proxy is running."""
    try:
        doc = json.loads(status_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not pid_alive(doc.get("pid")):
        return None
    return doc


#: An attempt starts at most this long after its request (m009 dropped the index on
#: ``attempts.started_at``: recent attempts are found through their requests' ``started_at``).
REQUEST_MARGIN_MIN = 24 * 60

_RECENT_ATTEMPTS = """
with recent as (
  select * from attempts
  where request_id in (select id from requests where started_at >= :wide)
    and started_at >= :since
)
select provider,
       sum(coalesce(error, '') not like 'skipped: %') as tries,
       sum(error is not null and error not like 'skipped: %') as failures,
       sum(error like 'skipped: %') as skipped,
       max(case when error is null then started_at end) as last_success,
       (select a2.error from recent a2 where a2.provider = a.provider and a2.error is not null
        order by a2.started_at desc limit 1) as last_error
from recent a group by provider order by provider
"""


def recent_attempts(database: Path, minutes: int = 60) -> list[dict[str, Any]]:
    """Per provider over the last ``minutes``: tries, failures, skips (not tried: breaker open,
    cooling down, no key, context too small…), last error, last success."""
    if not database.exists():
        return []
    now = datetime.now(timezone.utc)
    since, wide = (
        (now - timedelta(minutes=m)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for m in (minutes, minutes + REQUEST_MARGIN_MIN)
    )
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        found = con.execute(_RECENT_ATTEMPTS, {"since": since, "wide": wide}).fetchall()
    except sqlite3.OperationalError:  # no tables yet
        return []
    finally:
        con.close()
    return [dict(r) for r in found]


def render(status_file: Path, database: Path) -> Iterator[str]:
    """The lines ``kimi-intercept status`` prints."""
    live = read_live(status_file)
    if live is None:
        yield f"No running proxy publishes its state at {status_file}."
    else:
        yield f"Running proxy (pid {live['pid']}), state as of {live.get('updated_at')}:"
        providers = live.get("providers") or []
        if not providers:
            yield "  every provider available (no failure seen yet)"
        for p in providers:
            until = p.get("until")
            when = (
                " until " + datetime.fromtimestamp(until, timezone.utc).strftime("%H:%M:%S UTC")
                if until
                else ""
            )
            reason = f" — {p['reason']}" if p.get("reason") else ""
            yield f"  {p['provider']:<12} {p['state']}{when}{reason}"
    recent = recent_attempts(database)
    yield ""
    if not recent:
        yield f"No upstream attempts in the last hour in {database}."
        return
    yield f"Last hour in {database}:"
    yield (
        f"  {'provider':<12} {'tries':>6} {'failed':>6} {'skipped':>7}  "
        "last success              last error"
    )
    for r in recent:
        yield (
            f"  {r['provider']:<12} {r['tries']:>6} {r['failures'] or 0:>6}"
            f" {r['skipped'] or 0:>7}  {r['last_success'] or '–':<25}"
            f" {(r['last_error'] or '–')[:80]}"
        )
