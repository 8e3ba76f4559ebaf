"""``kimi-intercept stats`` and ``prune`` on a database with rows relative to today."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from reportrows import row, write_rows

from kimi_intercept.commands.cli import main
from kimi_intercept.storage import open_readonly

TODAY = datetime.now(timezone.utc).date()


def at(days_ago: int) -> str:
    return f"{(TODAY - timedelta(days=days_ago)).isoformat()}T00:30:00.000Z"


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "kimi.db"
    write_rows(
        path,
        [
            (row("t1", at(0), prompt_tokens=1000, completion_tokens=100, cached_tokens=500,
                 cost_usd=0.5, response_id="x"), []),
            (row("t2", at(0), prompt_tokens=1000, completion_tokens=100, cached_tokens=500,
                 cost_usd=0.5, response_id="x"), []),  # the same response again: counted once
            (row("t3", at(3), provider="deepseek", model="deepseek-chat", client="cline",
                 prompt_tokens=2000, completion_tokens=200, cost_usd=0.25, fallback_used=1), []),
            (row("t4", at(20), model="mystery", prompt_tokens=10, completion_tokens=1), []),
            (row("t5", at(40), prompt_tokens=99999, completion_tokens=1, cost_usd=9.0), []),
        ],
    )  # fmt: skip
    return path


OVERVIEW = """\
Period (UTC)  Requests  Tokens in  Tokens out  Cached                 Cost  Saved  Cache hit
Today                1      1,000         100     500                $0.50      0        50%
7 days               2      3,000         300     500                $0.75      0        17%
30 days              3      3,010         301     500  $0.75 (+1 unpriced)      0        17%"""

BY_PROVIDER = """\
Provider  Requests  Success  Fallbacks  Tokens in  Tokens out  Cached   Cost  Cost/request
deepseek         1     100%          1      2,000         200       0  $0.25         $0.25
moonshot         1     100%          0      1,000         100     500  $0.50         $0.50"""

BY_MODEL = """\
Model                     Requests  Success  Fallbacks  Tokens in  Tokens out  Cached      Cost  Cost/request
deepseek / deepseek-chat         1     100%          1      2,000         200       0     $0.25         $0.25
moonshot / kimi-k2               1     100%          0      1,000         100     500     $0.50         $0.50
moonshot / mystery               1     100%          0         10           1       0  unpriced             –"""  # noqa: E501


def stats(db_path, *args):
    result = CliRunner().invoke(main, ["stats", "--db", str(db_path), *args])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_overview(db_path):
    lines = stats(db_path)
    since = (TODAY - timedelta(days=29)).isoformat()
    assert lines[0] == f"Last 30 days ({since} to {TODAY.isoformat()}, UTC), {db_path}"
    assert lines[1:] == OVERVIEW.splitlines()


def test_by_provider_model_client_day(db_path):
    assert stats(db_path, "--by", "provider", "--days", "7")[1:] == BY_PROVIDER.splitlines()
    assert stats(db_path, "--by", "model")[1:] == BY_MODEL.splitlines()
    assert [line.split()[0] for line in stats(db_path, "--by", "client")[2:]] == [
        "openai-python/1.2",  # 2 requests
        "cline",
    ]
    days = stats(db_path, "--by", "day", "--days", "90")[2:]
    assert [line.split()[0] for line in days] == [at(40)[:10], at(20)[:10], at(3)[:10], at(0)[:10]]
    assert stats(db_path, "--days", "1")[2].startswith("Today   ")
    assert stats(db_path, "--days", "1")[3:] == []


def test_empty_period_and_missing_database(tmp_path):
    write_rows(tmp_path / "old.db", [(row("o", at(50), prompt_tokens=1), [])])
    assert stats(tmp_path / "old.db", "--by", "day", "--days", "7")[1:] == [
        "No requests in this period."
    ]
    missing = CliRunner().invoke(main, ["stats", "--db", "missing.db"])
    assert missing.exit_code == 1 and "No database at" in missing.output


def test_prune_command(db_path, tmp_path):
    (tmp_path / "c.toml").write_text("[storage]\nretention_days = 10\n")
    result = CliRunner().invoke(main, ["prune", "--db", str(db_path), "--config", "c.toml"])
    assert result.exit_code == 0, result.output
    cutoff = (TODAY - timedelta(days=9)).isoformat()
    assert result.output.startswith(
        f"Pruned rows older than {cutoff}: 2 requests (their totals stay in daily), "
        "0 attempts, 0 savings rows, 0 masked originals. Database "
    )
    ids = [r[0] for r in open_readonly(db_path).execute("select id from requests order by id")]
    assert ids == ["t1", "t2", "t3"]
    # The pruned days still count in stats.
    assert stats(db_path, "--days", "60")[-1].split()[:2] == ["60", "days"]
    assert stats(db_path, "--days", "60")[-1].split()[2] == "4"
    again = CliRunner().invoke(main, ["prune", "--db", str(db_path), "--days", "10"])
    assert again.output == f"Nothing older than {cutoff} to prune.\n"
    (tmp_path / "off.toml").write_text("[storage]\nretention_days = 0\n")
    off = CliRunner().invoke(main, ["prune", "--db", str(db_path), "--config", "off.toml"])
    assert off.output == "Retention is off ([storage] retention_days = 0); nothing pruned.\n"
    (tmp_path / "bad.toml").write_text('[storage]\nretention_days = "x"\n')
    bad = CliRunner().invoke(main, ["prune", "--db", str(db_path), "--config", "bad.toml"])
    assert bad.exit_code == 1 and "storage.retention_days must be a whole number" in bad.output
