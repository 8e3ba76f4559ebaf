"""The report suite over a seeded database: exact totals per day, provider and conversation,
a replayed response counted once, unpriced models, calibration, every page escaped."""

from __future__ import annotations

import re

import pytest
from reportrows import BAD_CLIENT, BAD_MODEL, C1, C2, SUITE, TITLE, Tables, by_id, kimi, row, write

from kimi_intercept.accounting.pricing import cost_usd_at
from kimi_intercept.accounting.usage import Usage
from kimi_intercept.config.settings import load_config
from kimi_intercept.reports import pages as report
from kimi_intercept.storage import open_readonly


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "suite.db"
    write(path, SUITE)
    return path


@pytest.fixture
def site(db_path, tmp_path):
    out = tmp_path / "site"
    result = report.build_report(db_path, out, until="2026-11-21")
    return out, result


def read(site, name: str) -> str:
    return (site[0] / name).read_text("utf-8")


def test_totals_count_the_replayed_response_once(site):
    totals = site[1].totals
    assert totals == report.Totals(
        requests=6,
        ok=5,
        error=1,
        prompt_tokens=4650,
        completion_tokens=365,
        cached_tokens=1200,
        cost_usd=totals.cost_usd,
        unpriced=1,
        estimated=1,
        fallbacks=1,
        first="2026-11-19T10:00:00.000Z",
        last="2026-11-21T11:00:00.000Z",
        saved_tokens=4500,
        duplicates=1,
        provider_prompt_tokens=4550,
        provider_cached_tokens=1200,
    )
    assert round(totals.cost_usd, 9) == 0.004335
    index = read(site, "index.html")
    assert by_id(index, "total-requests") == ("6", "6")
    assert by_id(index, "duplicate-count") == ("1", "1")
    assert by_id(index, "saved-tokens") == ("4500", "4,500")
    assert by_id(index, "unpriced-count") == ("1", "unpriced: 1 request")
    assert by_id(index, "cache-hit-rate")[1] == "26%"  # 1,200 of 4,550 provider prompt tokens


def test_overview_windows_and_per_day(site):
    tables = Tables(read(site, "index.html")).tables
    assert tables["windows"][1:] == [
        ["Today", "3", "150 est.", "15", "0", "$0.0001 +1 unpriced", "0", "0%"],
        ["7 days (2026-11-15 – 2026-11-21)", "6", "4,650 est.", "365", "1,200",
         "$0.0043 +1 unpriced", "4,500", "26%"],
        ["30 days (2026-10-23 – 2026-11-21)", "6", "4,650 est.", "365", "1,200",
         "$0.0043 +1 unpriced", "4,500", "26%"],
    ]  # fmt: skip
    index = read(site, "index.html")
    tokens = re.search(r'<svg id="chart-tokens-per-day".*?</svg>', index, re.S).group(0)
    assert re.findall(r'data-day="([^"]+)"', tokens) == ["2026-11-19", "2026-11-20", "2026-11-21"]
    assert re.findall(r'<rect class="(s-\w+)"[^>]*data-value="(\d+)"', tokens) == [
        ("s-prompt", "1000"),
        ("s-completion", "100"),
        ("s-prompt", "3500"),
        ("s-completion", "250"),
        ("s-prompt", "150"),
        ("s-completion", "15"),
    ]
    saved = re.search(r'<svg id="chart-saved-per-day".*?</svg>', index, re.S).group(0)
    assert re.findall(r'data-value="(\d+)"', saved) == ["4500"]
    assert tables["tool-savings"][1:] == [["Bash", "1", "5,000", "500", "4,500"]]
    assert tables["sources"][1:] == [
        ["reroute", "6", "83%", "1", "4,650 est.", "365", "1,200", "$0.0043 +1 unpriced",
         "$0.0011"],  # $0.004335 over the 4 priced requests
    ]  # fmt: skip


def test_per_day_totals_exact(db_path):
    facts = report.read_facts(open_readonly(db_path))
    days = {
        d["day"]: (d["requests"], d["prompt_tokens"], d["completion_tokens"], d["cached_tokens"],
                   round(d["cost_usd"], 9), d["unpriced"], d["errors"])
        for d in facts.group("day")
    }  # fmt: skip
    assert days == {
        "2026-11-19": (1, 1000, 100, 200, 0.001, 0, 0),
        "2026-11-20": (2, 3500, 250, 1000, 0.0032, 0, 0),
        "2026-11-21": (3, 150, 15, 0, 0.000135, 1, 1),
    }


def test_provider_comparison(site):
    tables = Tables(read(site, "providers.html")).tables
    assert tables["provider-comparison"] == [
        ["Provider", "Requests", "Success", "Fallback rate", "Failed attempts", "Rescued",
         "Latency p50 · p95", "TTFT p50 · p95", "Tokens", "Cost", "Cost / request"],
        # latency p50 of 1000, 2000, 1500 ms; p95 interpolated; TTFT 100/200/400 -> 200, 380
        ["kimi", "5", "80%", "0%", "3", "1", "1,500 ms · 1,950 ms", "200 ms · 380 ms",
         "4,465 est.", "$0.0041 +1 unpriced", "$0.0014"],
        ["deepseek", "1", "100%", "100%", "0 +1 skipped", "0", "900 ms · 900 ms",
         "300 ms · 300 ms", "550", "$0.0002", "$0.0002"],
    ]  # fmt: skip
    assert tables["error-classes"] == [
        ["Provider", "rate_limit", "server_error", "skipped", "timeout", "Total"],
        ["kimi", "1", "1", "0", "1", "3"],
        ["deepseek", "0", "0", "1", "0", "1"],
    ]


def test_models_and_clients(site):
    models = Tables(read(site, "models.html")).tables["models"]
    assert [r[:5] for r in models] == [
        ["Provider", "Model", "Requests", "Success", "Fallbacks"],
        ["kimi", "kimi-k2.6", "4", "75%", "0"],
        ["deepseek", "deepseek-chat", "1", "100%", "1"],
        ["kimi", BAD_MODEL, "1", "100%", "0"],
    ]
    assert models[3][5:9] == ["50", "5", "0", "unpriced"]  # never $0
    calibration = Tables(read(site, "models.html")).tables["calibration-table"]
    assert calibration[1][:3] == ["kimi", "kimi-k2.6", "2 (too few, not applied)"]
    clients = Tables(read(site, "clients.html")).tables
    assert [r[:3] for r in clients["clients"]] == [
        ["Client", "Requests", "Success"],
        ["claude-cli/2.1", "4", "75%"],
        [BAD_CLIENT, "1", "100%"],
        ["OpenAI/Python 2.54.0", "1", "100%"],
    ]
    assert [r[:2] for r in clients["usage-sources"]] == [
        ["Usage source", "Requests"],
        ["provider", "4"],
        ["–", "1"],
        ["estimate", "1"],
    ]


def test_conversations_list_and_pages(site):
    out, _ = site
    conversations = Tables(read(site, "conversations.html")).tables["conversations"]
    assert conversations[1:] == [
        [TITLE, "claude-cli/2.1", "2026-11-19 10:00:00", "2026-11-21 09:00:00", "3", "4,100",
         "310", "$0.0041", "0", "0%"],
        ["hello", "OpenAI/Python 2.54.0", "2026-11-20 12:00:00", "2026-11-20 12:00:00", "1",
         "500", "50", "$0.0002", "1", "–"],
    ]  # fmt: skip
    page = (out / "conversations" / f"{C1}.html").read_text("utf-8")
    turns = Tables(page).tables["turns"]
    assert [t[:8] for t in turns[1:]] == [
        ["1", "2026-11-19 10:00:00", "kimi/kimi-k2.6", "ok", "1,000", "200", "100", "$0.0010"],
        ["2", "2026-11-20 10:00:00", "kimi/kimi-k2.6", "ok", "3,000", "1,000", "200", "$0.0030"],
        ["3", "2026-11-20 10:00:05", "kimi/kimi-k2.6", "ok", "3,000", "–", "200", "$0.0030"],
        ["4", "2026-11-21 09:00:00", "kimi/kimi-k2.6", "ok", "100 est.", "–", "10", "$0.0001"],
    ]
    assert 'id="turn-3" class="dup"' in page
    gauge = re.search(r'<svg id="chart-context-gauge".*?</svg>', page, re.S).group(0)
    # 1,000 / 3,000 / 100 of 262,144 tokens, the replay left out
    assert re.findall(r'<g class="point" data-value="([^"]+)"', gauge) == ["0.38", "1.14", "0.04"]
    bars = re.search(r'<svg id="chart-tokens-per-turn".*?</svg>', page, re.S).group(0)
    assert re.findall(r'data-turn="(\d+)"', bars) == ["1", "2", "4"]
    assert Tables(page).tables["conversation-savings"][1:] == [
        ["Bash", "1", "5,000", "500", "4,500"]
    ]
    assert Tables(page).tables["masked"][1:] == [
        ["2026-11-20 10:00:00", "Bash", "truncate", "900", "40,000", "5,000", "500", "h1"]
    ]
    assert sorted(p.name for p in (out / "conversations").iterdir()) == [f"{C1}.html", f"{C2}.html"]


def test_every_page_escapes_user_content(site):
    out, result = site
    assert len(result.pages) == 8  # 6 pages (compare.html included) + 2 conversations
    for path in result.pages:
        html = path.read_text("utf-8")
        assert "<script" not in html.lower(), path.name
        assert "<img" not in html.lower(), path.name
        assert "onerror=alert" not in html.replace("&lt;img src=x onerror=alert", ""), path.name
        assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", html, re.I), path.name
        assert "http://" not in html and "https://" not in html, path.name
    assert "&lt;script&gt;alert(&#39;t&#39;)&lt;/script&gt; fix the tests" in read(
        site, "conversations.html"
    )
    assert "&lt;img src=x onerror=alert(1)&gt;" in read(site, "clients.html")
    assert "&lt;script&gt;m&lt;/script&gt;" in read(site, "models.html")


def test_range_filters_every_page(db_path, tmp_path):
    result = report.build_report(db_path, tmp_path / "day", since="2026-11-20", until="2026-11-20")
    assert (result.totals.requests, result.totals.prompt_tokens) == (2, 3500)
    conversations = Tables((tmp_path / "day" / "conversations.html").read_text()).tables
    assert [r[0] for r in conversations["conversations"][1:]] == ["hello", TITLE]
    assert [r[4] for r in conversations["conversations"][1:]] == ["1", "1"]


def test_stale_conversation_pages_are_removed(db_path, tmp_path):
    out = tmp_path / "site"
    report.build_report(db_path, out)
    (out / "conversations" / "notes.txt").write_text("mine")
    report.build_report(db_path, out, since="2026-11-21")
    assert sorted(p.name for p in (out / "conversations").iterdir()) == [f"{C1}.html", "notes.txt"]


def test_price_change_mid_period_is_applied_per_day(tmp_path):
    (tmp_path / "c.toml").write_text(
        '[[prices."kimi-k2.6"]]\nsince = "2026-11-21"\ninput_per_mtok = 0.5\n'
        "output_per_mtok = 2.0\n"
    )
    cfg = load_config(tmp_path / "c.toml")
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=100_000, cached_tokens=0)
    rows = []
    for n, day in enumerate(["2026-11-20", "2026-11-21"]):
        started = f"{day}T12:00:00.000Z"
        cost = cost_usd_at("kimi-k2.6", usage, started, cfg, "kimi")
        rows.append((kimi(f"p{n}", started, prompt_tokens=1_000_000, completion_tokens=100_000,
                          cached_tokens=0, cost_usd=cost), [], None))  # fmt: skip
    write(tmp_path / "p.db", rows)
    facts = report.read_facts(open_readonly(tmp_path / "p.db"), cfg=cfg)
    # 0.95 + 0.1 * 4.00 before; 0.50 + 0.1 * 2.00 from the 21st
    assert {d["day"]: d["cost_usd"] for d in facts.group("day")} == {
        "2026-11-20": 1.35,
        "2026-11-21": 0.7,
    }


def test_estimated_rows_are_calibrated_in_totals(tmp_path):
    # 10 samples of kimi-k2.6: the provider counts 1.25x our estimate (prompt) and 1.1x
    # (completion); then one estimate-only request of 1,000 + 100 tokens.
    rows = [
        (kimi(f"c{n}", f"2026-11-20T10:{n:02d}:00.000Z", prompt_tokens=1250, completion_tokens=110,
              prompt_tokens_estimate=1000, completion_tokens_estimate=100, cost_usd=0.0),
         [], None)
        for n in range(10)
    ]  # fmt: skip
    rows.append((kimi("e", "2026-11-21T10:00:00.000Z", prompt_tokens=1000, completion_tokens=100,
                      usage_source="estimate", cost_usd=0.00135), [], None))  # fmt: skip
    write(tmp_path / "c.db", rows)
    cfg = load_config(None)
    out = tmp_path / "site"
    result = report.build_report(tmp_path / "c.db", out, cfg=cfg)
    assert (result.totals.prompt_tokens, result.totals.completion_tokens) == (13_750, 1_210)
    assert result.totals.calibrated == 1
    # (1,250 * 0.95 + 110 * 4.00) / (1,000 * 0.95 + 100 * 4.00) of $0.00135
    assert round(result.totals.cost_usd, 9) == round(0.00135 * (1187.5 + 440) / 1350, 9)
    index = (out / "index.html").read_text()
    assert by_id(index, "calibrated-count") == ("1", "1")
    calibration = Tables((out / "models.html").read_text()).tables["calibration-table"]
    assert calibration[1:] == [
        ["kimi", "kimi-k2.6", "10", "1.250", "1.100", "2", "20.0% → 0.0%", "9.1% → 0.0%"]
    ]


def test_a_provider_that_only_failed_is_in_the_comparison(tmp_path):
    write(tmp_path / "g.db", [
        (row("g1", "2026-11-21T10:00:00.000Z", provider="deepseek", fallback_used=1),
         [{"provider": "groq", "error": "auth: invalid key"},
          {"provider": "groq", "error": "timeout: no first byte"},
          {"provider": "deepseek", "status_code": 200}], None),
    ])  # fmt: skip
    report.build_report(tmp_path / "g.db", tmp_path / "site")
    table = Tables((tmp_path / "site" / "providers.html").read_text()).tables
    assert [r[:6] for r in table["provider-comparison"][1:]] == [
        ["deepseek", "1", "100%", "100%", "0", "0"],
        ["groq", "0", "–", "–", "2", "1"],  # one request rescued by deepseek
    ]
