from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from reportrows import Tables, by_id, row, write_rows

from kimi_intercept.commands.cli import main, resolve_db_path
from kimi_intercept.reports import pages as report
from kimi_intercept.storage import DatabaseNotFound, open_db, open_readonly

XSS = "<script>alert(1)</script>"


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    # The CLI's defaults (config.toml, kimi_intercept.db, reports/) resolve inside tmp_path.
    monkeypatch.chdir(tmp_path)


# 3 requests on 2 days: one with a fallback, one unpriced, one estimated.
SEED = [
    (
        row(
            "r1",
            "2026-11-20T09:15:00.000Z",
            client=XSS,
            prompt_tokens=1000,
            completion_tokens=200,
            cached_tokens=400,
            reasoning_tokens=50,
            cost_usd=0.123,
            ttft_ms=300.0,
            duration_ms=1200.0,
        ),
        [{"provider": "moonshot", "model": "kimi-k2", "status_code": 200}],
    ),
    (
        row(
            "r2",
            "2026-11-21T10:00:00.000Z",
            provider="openrouter",
            attempts=2,
            fallback_used=1,
            prompt_tokens=2000,
            completion_tokens=300,
            cost_usd=0.456,
            ttft_ms=500.0,
            duration_ms=2000.0,
        ),
        [
            {
                "provider": "moonshot",
                "model": "kimi-k2",
                "status_code": 429,
                "error": "rate limited",
            },
            {"provider": "openrouter", "model": "kimi-k2", "status_code": 200},
        ],
    ),
    (
        row(
            "r3",
            "2026-11-21T23:59:59.999Z",
            model="kimi-k2-thinking",
            outcome="error",
            status_code=502,
            prompt_tokens=50,
            completion_tokens=0,
            usage_source="estimate",
            cost_usd=None,
            error="upstream <b>closed</b>",
            ttft_ms=None,
            duration_ms=100.0,
        ),
        [],
    ),
]


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "kimi.db"
    write_rows(path, SEED)
    return path


@pytest.fixture
def page(db_path, tmp_path):
    return report.write_report(db_path, tmp_path / "out").read_text("utf-8")


def test_totals(page):
    assert by_id(page, "total-requests") == ("3", "3")
    assert by_id(page, "count-ok") == ("2", "2 ok")
    assert by_id(page, "count-error") == ("1", "1 error")
    assert by_id(page, "total-tokens") == ("3550", "3,550")
    assert by_id(page, "total-prompt-tokens") == ("3050", "3,050 prompt")
    assert by_id(page, "total-completion-tokens") == ("500", "500 completion")
    assert by_id(page, "total-cached-tokens") == ("400", "400")
    assert by_id(page, "total-reasoning-tokens") == ("50", "50")
    # 0.123 + 0.456; the unpriced request is counted apart, never as $0.
    value, text = by_id(page, "total-cost")
    assert round(float(value), 2) == 0.58
    assert text == "$0.58"
    assert by_id(page, "unpriced-count") == ("1", "unpriced: 1 request")
    assert by_id(page, "fallback-count") == ("1", "1")
    assert by_id(page, "estimated-count") == ("1", "1")


def test_svg_charts_inline_one_bar_per_day(page):
    tokens = re.search(r'<svg id="chart-tokens-per-day".*?</svg>', page, re.S).group(0)
    assert re.findall(r'<g class="bar" data-day="([^"]+)">', tokens) == ["2026-11-20", "2026-11-21"]
    # Stacked: prompt and completion segments, values straight from the data.
    assert re.findall(r'<rect class="(s-\w+)"[^>]*data-value="(\d+)"', tokens) == [
        ("s-prompt", "1000"),
        ("s-completion", "200"),
        ("s-prompt", "2050"),
        ("s-completion", "300"),
    ]
    assert "<title>2026-11-21: 2,350 tokens in 2 requests</title>" in tokens
    cost = re.search(r'<svg id="chart-cost-per-day".*?</svg>', page, re.S).group(0)
    assert len(re.findall(r'<g class="bar"', cost)) == 2
    assert "2026-11-21: $0.46 (+1 unpriced request)" in cost
    assert 'id="chart-tokens-by-model"' in page


def test_self_contained(page):
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page


def test_user_content_escaped(page):
    assert XSS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "upstream &lt;b&gt;closed&lt;/b&gt;" in page


def test_provider_and_model_tables(page):
    tables = Tables(page).tables
    assert tables["providers"] == [
        [
            "Provider",
            "Requests",
            "Success",
            "Fallbacks",
            "Prompt",
            "Completion",
            "Cached",
            "Cost",
            "p50 TTFT",
            "p50 duration",
        ],
        [
            "moonshot",
            "2",
            "50%",
            "0",
            "1,050 est.",
            "200",
            "400",
            "$0.12 +1 unpriced",
            "300 ms",
            "650 ms",
        ],
        ["openrouter", "1", "100%", "1", "2,000", "300", "0", "$0.46", "500 ms", "2,000 ms"],
    ]
    assert [r[:4] for r in tables["models"]] == [
        ["Provider", "Model", "Requests", "Success"],
        ["moonshot", "kimi-k2", "1", "100%"],
        ["moonshot", "kimi-k2-thinking", "1", "0%"],
        ["openrouter", "kimi-k2", "1", "100%"],
    ]


def test_errors_and_fallbacks(page):
    tables = Tables(page).tables
    assert tables["errors"][1:] == [
        ["error", "502", "upstream <b>closed</b>", "1", "2026-11-21 23:59:59"]
    ]
    assert tables["failed-attempts"][1:] == [["moonshot", "kimi-k2", "429", "rate limited", "1"]]
    assert '<span id="fallback-summary">1 request</span>' in page


def test_latest_requests(page):
    latest = Tables(page).tables["latest"]
    assert latest[0] == [
        "Time (UTC)",
        "Client",
        "Host",
        "Model",
        "Outcome",
        "Status",
        "Tokens",
        "Cached",
        "Cost",
        "TTFT",
        "Duration",
    ]
    assert latest[1:] == [
        [
            "2026-11-21 23:59:59",
            "openai-python/1.2",
            "api.openai.com",
            "gpt-4o → moonshot/kimi-k2-thinking",
            "error",
            "502",
            "50 + 0 est.",
            "–",
            "unpriced",
            "–",
            "100 ms",
        ],
        [
            "2026-11-21 10:00:00",
            "openai-python/1.2",
            "api.openai.com",
            "gpt-4o → openrouter/kimi-k2 fallback after 1 failed attempt",
            "ok",
            "200",
            "2,000 + 300",
            "–",
            "$0.46",
            "500 ms",
            "2,000 ms",
        ],
        [
            "2026-11-20 09:15:00",
            XSS,
            "api.openai.com",
            "gpt-4o → moonshot/kimi-k2",
            "ok",
            "200",
            "1,000 + 200",
            "400",
            "$0.12",
            "300 ms",
            "1,200 ms",
        ],
    ]


def test_latest_is_limited_to_50_newest(tmp_path):
    path = tmp_path / "many.db"
    write_rows(
        path,
        [
            (
                row(
                    f"r{n:03d}",
                    f"2026-11-21T10:{n // 60:02d}:{n % 60:02d}.000Z",
                    prompt_tokens=1,
                    completion_tokens=1,
                    cost_usd=0.01,
                ),
                [],
            )
            for n in range(120)
        ],
    )
    page = report.write_report(path, tmp_path / "out").read_text("utf-8")
    latest = Tables(page).tables["latest"][1:]
    assert len(latest) == 50
    assert latest[0][0] == "2026-11-21 10:01:59"
    assert latest[-1][0] == "2026-11-21 10:01:10"
    assert by_id(page, "total-requests") == ("120", "120")
    assert by_id(page, "total-cost")[1] == "$1.20"
    assert "The latest 50 of 120 requests." in page


def test_days_without_requests_still_get_a_bar(tmp_path):
    path = tmp_path / "gaps.db"
    write_rows(
        path,
        [
            (row("a", "2026-11-20T01:00:00.000Z", prompt_tokens=5), []),
            (row("b", "2026-11-23T01:00:00.000Z", prompt_tokens=7), []),
        ],
    )
    page = report.write_report(path, tmp_path / "out").read_text("utf-8")
    tokens = re.search(r'<svg id="chart-tokens-per-day".*?</svg>', page, re.S).group(0)
    assert re.findall(r'<g class="bar" data-day="([^"]+)">', tokens) == [
        "2026-11-20",
        "2026-11-21",
        "2026-11-22",
        "2026-11-23",
    ]
    assert len(re.findall(r"<rect ", tokens)) == 2


@pytest.mark.parametrize(
    "since, until, ids",
    [
        ("2026-11-21", None, ["r3", "r2"]),
        (None, "2026-11-20", ["r1"]),
        ("2026-11-21", "2026-11-21", ["r3", "r2"]),  # until is inclusive, to the last ms
        ("2026-11-20", "2026-11-21", ["r3", "r2", "r1"]),
    ],
)
def test_since_until(db_path, tmp_path, since, until, ids):
    page = report.write_report(db_path, tmp_path / "out", since=since, until=until).read_text()
    assert re.findall(r'<tr id="request-(\w+)">', page) == ids
    assert by_id(page, "total-requests")[0] == str(len(ids))


def test_range_with_nothing_in_it(db_path, tmp_path):
    page = report.write_report(db_path, tmp_path / "out", since="2027-01-01").read_text()
    assert "Nothing recorded yet" in page
    assert "No requests were recorded in this date range" in page


def test_bad_date(db_path, tmp_path):
    with pytest.raises(ValueError, match="2026-11-21"):
        report.write_report(db_path, tmp_path / "out", since="21/11/2026")


def test_empty_database(tmp_path):
    path = tmp_path / "empty.db"
    open_db(path).close()
    page = report.write_report(path, tmp_path / "out").read_text("utf-8")
    assert 'id="empty"' in page
    assert "Nothing recorded yet" in page
    assert "<code>kimi-intercept demo</code>" in page
    assert "<svg" not in page


def test_database_without_tables_is_empty(tmp_path):
    path = tmp_path / "blank.db"
    path.write_bytes(b"")
    page = report.write_report(path, tmp_path / "out").read_text("utf-8")
    assert "Nothing recorded yet" in page


def test_missing_database(tmp_path):
    with pytest.raises(DatabaseNotFound, match="kimi-intercept demo"):
        report.write_report(tmp_path / "missing.db", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_median_is_middle_value_per_group(tmp_path):
    path = tmp_path / "median.db"
    write_rows(
        path,
        [
            (row(f"m{n}", "2026-11-21T10:00:00.000Z", ttft_ms=t, duration_ms=t * 2), [])
            for n, t in enumerate([100.0, 1000.0, 200.0, 300.0])
        ],
    )
    db = open_readonly(path)
    providers = report.report_context(db)["providers"]
    assert [(p["provider"], p["p50_ttft_ms"], p["p50_duration_ms"]) for p in providers] == [
        ("moonshot", 250.0, 500.0)
    ]


def test_totals_summary():
    totals = report.Totals(
        requests=3, prompt_tokens=3050, completion_tokens=500, cost_usd=0.579, unpriced=1
    )
    assert (
        totals.summary()
        == "3 requests, 3,550 tokens (3,050 prompt + 500 completion), $0.58 (1 unpriced)"
    )
    assert report.Totals(requests=1, unpriced=1).summary() == (
        "1 request, 0 tokens (0 prompt + 0 completion), cost unknown (1 unpriced)"
    )


def test_formatters():
    assert report.fmt_usd(None) == "unpriced"
    assert report.fmt_usd(0) == "$0.00"
    assert report.fmt_usd(0.0042) == "$0.0042"
    assert report.fmt_usd(0.0000484) == "$0.000048"
    assert report.fmt_usd(1234.567) == "$1,234.57"
    assert report.fmt_ms(12_345) == "12.3 s"
    assert report.fmt_compact(2500) == "2.5k"


# -- CLI --------------------------------------------------------------------------------------


def test_cli_report(db_path, tmp_path):
    result = CliRunner().invoke(main, ["report", "--db", str(db_path), "--out", "site"])
    assert result.exit_code == 0, result.output
    index = (tmp_path / "site" / "index.html").resolve()
    assert result.output == (
        f"Report written to {index}\n"
        "3 requests, 3,550 tokens (3,050 prompt + 500 completion), $0.58 (1 unpriced)\n"
    )
    assert by_id(index.read_text(), "total-tokens")[0] == "3550"


def test_cli_report_defaults(tmp_path):
    # No config anywhere: the default database (user data folder, see conftest) and reports/.
    write_rows(tmp_path / "xdg" / "data" / "kimi-intercept" / "kimi_intercept.db", SEED[:1])
    result = CliRunner().invoke(main, ["report", "--since", "2026-11-20", "--until", "2026-11-20"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "index.html").is_file()
    assert result.output.splitlines()[1].startswith("1 request, 1,200 tokens")


def test_cli_report_missing_database(tmp_path):
    result = CliRunner().invoke(main, ["report", "--db", "nope.db"])
    assert result.exit_code == 1
    assert f"No database at {tmp_path.resolve() / 'nope.db'}" in result.output
    assert "kimi-intercept demo" in result.output
    assert "Traceback" not in result.output


def test_cli_report_not_a_database(tmp_path):
    (tmp_path / "junk.db").write_text("this is not sqlite" * 100)
    result = CliRunner().invoke(main, ["report", "--db", "junk.db"])
    assert result.exit_code == 1
    assert "Cannot read" in result.output and "junk.db" in result.output


def test_cli_report_bad_date(db_path):
    result = CliRunner().invoke(main, ["report", "--db", str(db_path), "--since", "yesterday"])
    assert result.exit_code == 2
    assert "--since" in result.output


def test_resolve_db_path(tmp_path):
    assert resolve_db_path(Path("config.toml"), Path("x.db")) == Path("x.db")
    default = tmp_path / "xdg" / "data" / "kimi-intercept" / "kimi_intercept.db"
    assert resolve_db_path(Path("missing.toml"), None) == default


def test_cli_report_database_from_config(tmp_path):
    (tmp_path / "my.toml").write_text('[storage]\ndatabase = "data/usage.db"\n')
    write_rows(tmp_path / "data" / "usage.db", SEED)
    result = CliRunner().invoke(main, ["report", "--config", "my.toml"])
    assert result.exit_code == 0, result.output
    assert "3 requests" in result.output
