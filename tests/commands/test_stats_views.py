"""``stats --by month|session|block``, ``--json`` on stats/status/compare and ``--since`` as
``7d`` / ``24h`` / a day on every command that takes it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from reportrows import row, write_rows

from kimi_intercept.commands.cli import main
from kimi_intercept.commands.options import since_day

NOW = datetime.now(timezone.utc)
TODAY = NOW.date()


def stamp(days_ago: int, hh: int, mm: int = 0) -> str:
    return f"{(TODAY - timedelta(days=days_ago)).isoformat()}T{hh:02d}:{mm:02d}:00.000Z"


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "kimi.db"
    c = dict(prompt_tokens=1000, completion_tokens=100)
    write_rows(
        path,
        [
            # one conversation in the 01:00–06:00 block, yesterday
            (row("a1", stamp(1, 1, 10), conversation_id="aa" * 32,
                 conversation_title="fix the login bug", cost_usd=0.25, **c), []),
            (row("a2", stamp(1, 5, 59), conversation_id="aa" * 32, cost_usd=0.25, **c), []),
            # 06:00 is past that block's end: a new block; another conversation, unpriced
            (row("b1", stamp(1, 6, 0), conversation_id="bb" * 32, model="mystery",
                 conversation_title="write docs", **c), []),
            # 40 days ago: another month (unless today is early in a 31-day month: not asserted)
            (row("o1", stamp(40, 12), conversation_id="cc" * 32, cost_usd=1.0, **c), []),
        ],
    )  # fmt: skip
    return path


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_stats_by_block_follows_ccusage_five_hour_windows(db_path):
    out = json.loads(run("stats", "--db", str(db_path), "--by", "block", "--json"))
    day = (TODAY - timedelta(days=1)).isoformat()
    assert out["by"] == "block"
    assert [(b["block"], b["end"], b["requests"], b["cost_usd"], b["unpriced"])
            for b in out["rows"]] == [
        (f"{day}T01:00:00Z", f"{day}T06:00:00Z", 2, 0.5, 0),
        (f"{day}T06:00:00Z", f"{day}T11:00:00Z", 1, None, 1),
    ]  # fmt: skip
    text = run("stats", "--db", str(db_path), "--by", "block").splitlines()
    assert text[1].split() == ["Block", "(UTC)", "Requests", "Tokens", "in", "Tokens", "out",
                               "Cached", "Cost"]  # fmt: skip
    assert text[2].endswith("$0.50")
    assert text[3].endswith("unpriced")


def test_stats_by_session_and_month(db_path):
    out = json.loads(run("stats", "--db", str(db_path), "--by", "session", "--json",
                         "--days", "90"))  # fmt: skip
    sessions = {s["session"]: s for s in out["rows"]}
    assert sessions["aa" * 32]["requests"] == 2
    assert sessions["aa" * 32]["title"] == "fix the login bug"
    assert sessions["aa" * 32]["cost_usd"] == 0.5
    assert sessions["bb" * 32]["cost_usd"] is None and sessions["bb" * 32]["unpriced"] == 1
    text = run("stats", "--db", str(db_path), "--by", "session")
    assert "aaaaaaaa fix the login bug" in text and "cccccccc" not in text  # 30 days
    months = json.loads(run("stats", "--db", str(db_path), "--by", "month", "--json",
                            "--days", "90"))["rows"]  # fmt: skip
    assert sum(m["requests"] for m in months) == 4
    assert sum(m["cost_usd"] or 0 for m in months) == pytest.approx(1.5)
    assert [m["month"] for m in months] == sorted(m["month"] for m in months)


def test_stats_json_overview_and_since(db_path):
    out = json.loads(run("stats", "--db", str(db_path), "--json", "--since", "7d"))
    assert out["since"] == (TODAY - timedelta(days=6)).isoformat()
    last = out["rows"][-1]
    assert (last["requests"], last["cost_usd"], last["unpriced"]) == (3, 0.5, 1)
    out = json.loads(run("stats", "--db", str(db_path), "--json", "--since",
                         (TODAY - timedelta(days=45)).isoformat()))  # fmt: skip
    assert out["rows"][-1]["requests"] == 4


def test_since_accepts_days_hours_and_dates():
    now = datetime(2026, 11, 21, 3, 0, tzinfo=timezone.utc)
    assert since_day("7d", now) == "2026-11-15"
    assert since_day("1d", now) == "2026-11-21"
    assert since_day("24h", now) == "2026-11-20"
    assert since_day("2026-10-01", now) == "2026-10-01"
    for bad in ("0d", "7w", "yesterday", "2026-13-01"):
        with pytest.raises(ValueError):
            since_day(bad, now)


@pytest.mark.parametrize("command", ["stats", "report", "export"])
def test_every_since_option_takes_7d_and_names_the_fix(db_path, tmp_path, command):
    args = [command, "--db", str(db_path)] + (["--out", str(tmp_path / "r")]
                                              if command == "report" else [])  # fmt: skip
    assert CliRunner().invoke(main, [*args, "--since", "7d"]).exit_code == 0
    bad = CliRunner().invoke(main, [*args, "--since", "last week"])
    assert bad.exit_code == 2
    assert "use 7d, 24h or a day YYYY-MM-DD, got 'last week'" in bad.output
    assert "Traceback" not in bad.output


def test_export_since_7d_leaves_older_rows_out(db_path):
    out = json.loads(run("export", "--db", str(db_path), "--format", "json", "--since", "7d"))
    assert sorted(r["id"] for r in out) == ["a1", "a2", "b1"]


def test_status_and_compare_json(db_path):
    status = json.loads(run("status", "--db", str(db_path), "--json"))
    assert status["proxy"] is None and status["last_hour"] == []
    assert status["database"] == str(db_path)
    compare = json.loads(run("compare", "--db", str(db_path), "--json", "--since", "24h"))
    assert compare["pairs"] == [] and compare["since"].endswith("Z")
