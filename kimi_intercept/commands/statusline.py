"""``kimi-intercept statusline``: one short line for Claude Code's ``statusLine`` setting.

Claude Code runs the command after each turn and passes the session as JSON on stdin
(https://docs.anthropic.com/en/docs/claude-code/statusline)::

    {"hook_event_name": "Status", "session_id": "abc123…", "transcript_path": "…",
     "cwd": "…", "model": {"id": "claude-opus-4-1", "display_name": "Opus"},
     "workspace": {"current_dir": "…", "project_dir": "…"}, "version": "1.0.80",
     "cost": {"total_cost_usd": 0.01234, …}}

Claude Code sends the same session id to the API (the ``x-claude-code-session-id`` header and
the ``_session_<id>`` suffix of ``metadata.user_id``), and the proxy keys the conversation on it
(:func:`kimi_intercept.routing.plan.conversation_key`). So this command hashes the id the same
ways and sums that conversation's counted rows (``duplicate_of IS NULL``) read-only::

    kimi $0.0421 · ctx 37% of 262k · cache 88% · 14 calls · kimi-k2.6

Cost in USD (exact: the recorded ``cost_usd``), context used = the last call's prompt plus
output tokens over the context window of the model that answered it, cache hit = cached over
prompt tokens over the session. It never fails: a missing database, an unknown session or bad
input prints a short line saying so (Claude Code shows whatever the command prints).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from kimi_intercept.commands.options import common_options, load

PREFIX = "kimi"


def conversation_ids(session_id: str) -> list[str]:
    """The conversation ids the proxy may have recorded for a Claude Code session id: each
    way it keys a session, as 32 hex (rows since m009) and as the 64 hex of older rows."""
    from kimi_intercept.routing.conversations import conversation_digest
    from kimi_intercept.routing.plan import SESSION_HEADERS

    keys = [f"{header}:{session_id}" for header in SESSION_HEADERS]
    keys.append(f"session:{session_id}")
    return [conversation_digest(k, n) for k in keys for n in (32, 64)]


_SESSION_SQL = """
select count(*) as calls,
       sum(cost_usd) as cost_usd,
       coalesce(sum(cost_usd is null and (prompt_tokens > 0 or completion_tokens > 0)), 0)
         as unpriced,
       coalesce(sum(prompt_tokens), 0) as prompt_tokens,
       coalesce(sum(cached_tokens), 0) as cached_tokens
from requests where conversation_id in ({marks}) and duplicate_of is null
"""
_LAST_SQL = """
select model, prompt_tokens, completion_tokens, context_window from requests
where conversation_id in ({marks}) and duplicate_of is null and prompt_tokens is not null
order by started_at desc, id desc limit 1
"""


_SPEND_SQL = """
select sum(case when day = ? then cost_usd end) as today, sum(cost_usd) as month
from daily where day >= ?
"""


def session_numbers(
    db_path: Path, session_id: str, limits: tuple[float | None, float | None] = (None, None)
) -> dict[str, Any] | None:
    """The session's totals and its last call, or ``None`` if the proxy saw none of it.
    With ``limits`` (``[budget]`` daily and monthly USD), ``budget_left`` is what is left of the
    tighter one today (UTC), as ``(period, usd)``.

    :raises DatabaseNotFound: no database at ``db_path``
    :raises sqlite3.Error: the file is not a readable kimi-intercept database
    """
    from kimi_intercept.storage.schema import open_readonly

    ids = conversation_ids(session_id)
    marks = ", ".join("?" * len(ids))
    db = open_readonly(db_path)
    try:
        conn = db.conn
        conn.row_factory = sqlite3.Row
        totals = dict(conn.execute(_SESSION_SQL.format(marks=marks), ids).fetchone())
        if not totals["calls"]:
            return None
        last = conn.execute(_LAST_SQL.format(marks=marks), ids).fetchone()
        totals["last"] = dict(last) if last else None
        if any(limits):
            today = datetime.now(timezone.utc).date()
            spent = conn.execute(_SPEND_SQL, (today.isoformat(), today.isoformat()[:8] + "01"))
            row = spent.fetchone()
            left = [
                (period, limit - (row[key] or 0.0))
                for period, key, limit in (("today", "today", limits[0]),
                                           ("this month", "month", limits[1]))
                if limit is not None
            ]  # fmt: skip
            totals["budget_left"] = min(left, key=lambda p: p[1])
        return totals
    finally:
        db.close()


def render(numbers: dict[str, Any] | None) -> str:
    """The line for :func:`session_numbers`' result."""
    if numbers is None:
        return f"{PREFIX}: no calls through the proxy in this session yet"
    parts = [f"{PREFIX} {_usd(numbers['cost_usd'])}"]
    if numbers["unpriced"]:
        parts[0] += f" (+{numbers['unpriced']} unpriced)"
    last = numbers.get("last")
    if last and last.get("context_window"):
        used = (last["prompt_tokens"] or 0) + (last["completion_tokens"] or 0)
        window = last["context_window"]
        parts.append(f"ctx {100 * used / window:.0f}% of {_k(window)}")
    if numbers["prompt_tokens"]:
        parts.append(f"cache {100 * numbers['cached_tokens'] / numbers['prompt_tokens']:.0f}%")
    parts.append(f"{numbers['calls']} call{'' if numbers['calls'] == 1 else 's'}")
    if last and last.get("model"):
        parts.append(last["model"])
    if numbers.get("budget_left"):
        period, left = numbers["budget_left"]
        parts.append(f"budget {_usd(left)} left {period}" if left > 0 else "BUDGET SPENT")
    return " · ".join(parts)


def statusline(
    stdin_text: str, db_path: Path, limits: tuple[float | None, float | None] = (None, None)
) -> str:
    """The whole command: Claude Code's session JSON in, one line out; never raises."""
    from kimi_intercept.storage.schema import DatabaseNotFound

    try:
        doc = json.loads(stdin_text or "{}")
    except ValueError:
        return f"{PREFIX}: stdin is not Claude Code's status JSON"
    session_id = doc.get("session_id") if isinstance(doc, dict) else None
    if not isinstance(session_id, str) or not session_id:
        return f"{PREFIX}: no session_id on stdin"
    try:
        return render(session_numbers(db_path, session_id, limits))
    except DatabaseNotFound:
        return f"{PREFIX}: no database at {db_path}"
    except sqlite3.Error as e:
        return f"{PREFIX}: cannot read {db_path}: {e}"


def _usd(v: float | None) -> str:
    if v is None:
        return "unpriced"
    return f"${v:.4f}" if v < 1 else f"${v:,.2f}"


def _k(tokens: int) -> str:
    return f"{tokens / 1_000_000:g}M" if tokens >= 1_000_000 else f"{tokens / 1000:.0f}k"


@click.command(name="statusline")
@common_options
def statusline_command(config_path: Path, db: Path | None) -> None:
    """One line for Claude Code's statusLine setting: this session's cost, context used,
    cache-hit rate (reads Claude Code's session JSON on stdin)."""
    text = click.get_text_stream("stdin").read()
    from kimi_intercept.config.budget import budget_settings
    from kimi_intercept.config.settings import ConfigError

    try:
        cfg = load(config_path)
        budget = budget_settings(cfg)
    except click.ClickException as e:  # a bad config: say so on the status line
        click.echo(f"{PREFIX}: {e.message}")
        return
    except ConfigError as e:
        click.echo(f"{PREFIX}: {config_path}: {e}")
        return
    db_path = db if db is not None else cfg.database
    click.echo(statusline(text, db_path, (budget.daily_usd, budget.monthly_usd)))
