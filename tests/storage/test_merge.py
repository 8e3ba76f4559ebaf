"""Several --db files as one: report, stats and export over ada.db + bob.db equal the sum of the
files, a request present in both is counted once, and the report has a developers page."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from reportrows import row, write_rows

from kimi_intercept.commands.cli import main as cli_main


def at(minutes_ago: int) -> str:
    t = datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def req(id: str, n: int, cost: float, client: str = "openai-python/1.2", **extra) -> dict:
    return row(id, at(n + 1), prompt_tokens=100 * n, completion_tokens=10 * n, cached_tokens=50 * n,
               cost_usd=cost, client=client, response_id=f"resp-{id}", **extra)  # fmt: skip


@pytest.fixture
def files(tmp_path):
    ada, bob = tmp_path / "ada.db", tmp_path / "bob.db"
    shared = req("shared", 3, 0.03)  # the same request in both files (a copied file)
    write_rows(ada, [(req("a1", 1, 0.01), [{"attempt": 1, "provider": "moonshot"}]),
                     (req("a2", 2, 0.02, client="claude-cli/2.0"), []), (shared, [])])  # fmt: skip
    write_rows(bob, [(req("b1", 4, 0.04), [{"attempt": 1, "provider": "moonshot"}]),
                     (shared, [])])  # fmt: skip
    return ada, bob


def run(*args):
    result = CliRunner().invoke(cli_main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_export_of_two_files_has_every_request_once_with_totals_equal_to_the_sum(files):
    ada, bob = files
    rows = json.loads(run("export", "--db", str(ada), "--db", str(bob), "--format", "json"))
    assert sorted(r["id"] for r in rows) == ["a1", "a2", "b1", "shared"]
    assert sum(r["prompt_tokens"] for r in rows) == 100 * (1 + 2 + 3 + 4)
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(0.10)


def test_stats_of_two_files_counts_the_shared_request_once(files):
    ada, bob = files
    out = run("stats", "--db", str(ada), "--db", str(bob), "--days", "2")
    last = out.splitlines()[-1] if "estimated" not in out else out.splitlines()[-2]
    # 2 days: 4 requests, 1,000 prompt tokens, 100 completion, 500 cached, $0.10
    assert last.split()[:6] == ["2", "days", "4", "1,000", "100", "500"]
    assert "$0.10" in last


def test_report_of_two_files_has_a_developers_page_and_the_summed_totals(files, tmp_path):
    ada, bob = files
    out = run("report", "--db", str(ada), "--db", str(bob), "--out", str(tmp_path / "r"))
    assert "4 requests, 1,100 tokens (1,000 prompt + 100 completion), $0.10" in out
    page = (tmp_path / "r" / "developers.html").read_text()
    ada_row = page[page.index("<td>ada</td>") : page.index("</tr>", page.index("<td>ada</td>"))]
    assert ">3<" in ada_row and "claude-cli/2.0, openai-python/1.2" in ada_row
    assert "<td>bob</td>" in page
    assert 'href="developers.html"' in (tmp_path / "r" / "index.html").read_text()


def test_one_file_reports_as_before_without_a_developers_page(files, tmp_path):
    ada, _ = files
    run("report", "--db", str(ada), "--out", str(tmp_path / "r"))
    assert not (tmp_path / "r" / "developers.html").exists()


def test_a_missing_file_among_several_is_a_clear_error(files, tmp_path):
    ada, _ = files
    result = CliRunner().invoke(cli_main, ["stats", "--db", str(ada), "--db", "nope.db"])
    assert result.exit_code == 1 and "No database at" in result.output
    assert "Traceback" not in result.output
