"""``[budget]``: alerts once per threshold, ``block`` (an error in the client's dialect naming
the budget and the fix) and ``downgrade`` (the cheaper chain answers), end to end through a real
mitmdump with the addon; the spend so far is read back from the database at start."""

from __future__ import annotations

import re
from pathlib import Path

import openai
import pytest
from proxyproc import render_config, rows, wait_rows

from kimi_intercept.commands.simulator import Reply
from kimi_intercept.config.budget import Budget, budget_settings
from kimi_intercept.config.settings import ConfigError, load_config

WIRE = Path(__file__).parents[1] / "wire" / "documented"
MOONSHOT_STREAM = (WIRE / "moonshot_stream.sse").read_bytes()  # priced: $0.00023
MESSAGES = [{"role": "user", "content": "Say OK."}]


@pytest.fixture
def budgeted(tmp_path, fake_upstream, start_proxy, openai_client):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"

    def make(budget_toml: str):
        proxy = start_proxy(render_config(db, kimi.url, deepseek.url) + budget_toml)
        return kimi, deepseek, proxy, openai_client(proxy), db

    return make


def test_block_alerts_once_then_refuses_in_the_clients_dialect(budgeted):
    kimi, deepseek, proxy, client, db = budgeted(
        '\n[budget]\ndaily_usd = 0.0002\naction = "block"\n'
    )
    kimi.enqueue(Reply.sse_file(MOONSHOT_STREAM))
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    wait_rows(db, 1)
    assert proxy.wait_for_log("daily budget 100% reached")

    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert e.value.status_code == 402
        assert e.value.body["code"] == "budget_exceeded"
        assert e.value.body["message"] == (
            "kimi-intercept: the daily budget of $0.0002 is spent ($0.0002); raise [budget] "
            "daily_usd in the proxy's config.toml and restart it, or wait until tomorrow (UTC)"
        )
    assert len(kimi.received) == 1 and deepseek.received == []
    recorded = wait_rows(db, 3)
    assert [(r["status_code"], r["outcome"]) for r in recorded] == [
        (200, "ok"), (402, "error"), (402, "error")
    ]  # fmt: skip
    assert "FAILED 402: kimi-intercept: the daily budget" in proxy.log_text()
    log = proxy.log_text()
    for pct in (75, 90, 100):
        assert log.count(f"daily budget {pct}% reached") == 1, log


def test_spend_is_read_back_at_start(budgeted, start_proxy):
    kimi, deepseek, proxy, client, db = budgeted("")
    kimi.enqueue(Reply.sse_file(MOONSHOT_STREAM))
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    wait_rows(db, 1)
    proxy.stop()
    kimi, deepseek, proxy, client, db = budgeted(
        '\n[budget]\nmonthly_usd = 0.0001\naction = "block"\n'
    )
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "the monthly budget of $0.0001 is spent ($0.0002)" in e.value.body["message"]
    assert len(kimi.received) == 1  # only the first proxy's call


def test_downgrade_sends_calls_to_the_cheaper_chain(budgeted):
    kimi, deepseek, proxy, client, db = budgeted(
        '\n[budget]\ndaily_usd = 0.0002\naction = "downgrade"\ndowngrade = ["deepseek"]\n'
    )
    kimi.enqueue(Reply.sse_file(MOONSHOT_STREAM))
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    wait_rows(db, 1)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers["x-kimi-intercept-provider"] == "deepseek"
    assert raw.parse().choices[0].message.content
    assert len(kimi.received) == 1 and len(deepseek.received) == 1
    assert deepseek.received[0].json["model"] == "deepseek-chat"
    wait_rows(db, 2)
    assert [(r["provider"], r["fallback_used"]) for r in rows(db)] == [
        ("kimi", 0), ("deepseek", 0)
    ]  # fmt: skip


def _budget(tmp_path: Path, toml: str) -> Budget:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    return budget_settings(load_config(path, env={}))


def test_budget_config(tmp_path):
    assert _budget(tmp_path, "") == Budget()
    b = _budget(tmp_path, "[budget]\ndaily_usd = 5\nalerts = [90, 50]\n")
    assert (b.daily_usd, b.monthly_usd, b.alerts, b.action) == (5.0, None, (50.0, 90.0), "warn")
    for toml, message in [
        ("[budget]\ndaily_usd = -1\n", "budget.daily_usd must be a positive number"),
        ('[budget]\naction = "stop"\n', "budget.action must be one of"),
        ('[budget]\naction = "downgrade"\n', 'budget.action = "downgrade" needs budget.downgrade'),
        ('[budget]\ndowngrade = ["nope"]\n', "chain names provider 'nope'"),
        ("[budget]\nalerts = [0]\n", "budget.alerts must list percentages"),
        ("[budget]\ndayly_usd = 1\n", "unknown key `dayly_usd` — did you mean `daily_usd`?"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            _budget(tmp_path, toml)


def test_tracker_alerts_once_per_period_and_starts_over_each_day():
    from datetime import datetime, timezone

    from kimi_intercept.relay.budget import BudgetTracker, Over

    t = BudgetTracker(Budget(daily_usd=1.0, monthly_usd=10.0))
    day1 = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
    assert t.add({"cost_usd": 0.8}, day1) == [
        "kimi-intercept: daily budget 75% reached: $0.8000 of $1.00"
    ]
    assert t.add({"cost_usd": None}, day1) == []  # unpriced: nothing to add
    assert t.add({"cost_usd": 0.3}, day1) == [
        "kimi-intercept: daily budget 90% reached: $1.10 of $1.00",
        "kimi-intercept: daily budget 100% reached: $1.10 of $1.00 (action: warn)",
    ]
    assert t.over(day1) == Over("daily", 1.0, 1.1)
    day2 = datetime(2026, 12, 1, 0, 1, tzinfo=timezone.utc)  # a new day and a new month
    assert t.over(day2) is None
    assert t.add({"cost_usd": 0.9}, day2) == [
        "kimi-intercept: daily budget 75% reached: $0.9000 of $1.00",
        "kimi-intercept: daily budget 90% reached: $0.9000 of $1.00",
    ]
    assert (t.spent_day, t.spent_month) == (0.9, 0.9)
