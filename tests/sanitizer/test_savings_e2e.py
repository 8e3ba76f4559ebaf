"""Measured savings end to end: a real mitmdump + addon, the openai SDK, a Kimi fake that reports
cache hits for the unchanged prefix; the stored dollar saving is position-aware, rerouting
savings are priced at the requested model, and a holdout conversation is sent unmasked."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from click.testing import CliRunner
from proxyproc import render_config, wait_rows

from kimi_intercept.accounting import tokens
from kimi_intercept.commands.cli import main as cli_main
from kimi_intercept.commands.simulator import Reply, kimi_completion

# kimi-k2.6 (render_config's primary): input 0.95, cached 0.16, output 4.00 USD / 1M tokens.
K26_IN, K26_CACHED, K26_OUT = 0.95, 0.16, 4.00
# What the test config prices the client's requested model at.
GPT41 = '\n[[prices."gpt-4.1*"]]\nsince = "2025-01-01"\ninput_per_mtok = 2.00\n' \
        'cached_input_per_mtok = 0.50\noutput_per_mtok = 8.00\n'  # fmt: skip


def build_log(tag: str, lines: int = 2500) -> str:
    return "\n".join(f"[{tag}] step {i}: compiling module_{i % 50}.c ... ok" for i in range(lines))


def call(n: int) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [{
        "id": f"call_{n}", "type": "function",
        "function": {"name": "run_command", "arguments": '{"cmd": "make"}'}}]}  # fmt: skip


def usage(prompt: int, cached: int, completion: int = 20) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}  # fmt: skip


def removed(con: sqlite3.Connection) -> dict[str, int]:
    """Tokens removed per masked text, keyed by its content (from the ``masked`` table)."""
    return {
        row[0]: row[1] - row[2]
        for row in con.execute("select id, tokens_before, tokens_after from masked")
    }


def test_stored_saving_prices_each_removed_token_at_its_position(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    client = openai_client(start_proxy(render_config(db, kimi.url, deepseek.url) + GPT41))
    first = [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Build it."},
        call(1),
        {"role": "tool", "tool_call_id": "call_1", "content": build_log("a")},
    ]
    kimi.enqueue(Reply.json(kimi_completion("kimi-k2.6", usage(900, 0), "Building.")))
    client.chat.completions.create(model="gpt-4.1", messages=first)
    second = first + [call(2), {"role": "tool", "tool_call_id": "call_2",
                                "content": build_log("b")}]  # fmt: skip
    # the provider serves the unchanged prefix (turn 1's whole prompt) from its cache
    kimi.enqueue(Reply.json(kimi_completion("kimi-k2.6", usage(1500, 900), "Done.")))
    client.chat.completions.create(model="gpt-4.1", messages=second)
    one, two = wait_rows(db, 2)

    sent = [q.json["messages"] for q in kimi.received]
    assert json.dumps(sent[1][:4]) == json.dumps(sent[0])  # the masked prefix is byte-identical
    con = sqlite3.connect(db)
    gone = removed(con)
    [(log_a,)] = con.execute("select id from masked where request_id = ?", (one["id"],))
    [(log_b,)] = con.execute("select id from masked where request_id = ?", (two["id"],))
    con.close()
    assert gone[log_a] > 1000 and gone[log_b] > 1000
    # each original's whole count (made after the answer, not before sending) is exact
    con = sqlite3.connect(db)
    befores = dict(con.execute("select id, tokens_before from masked"))
    con.close()
    assert befores[log_a] == tokens.count_text(build_log("a"))
    assert befores[log_b] == tokens.count_text(build_log("b"))
    # turn 1: log a is new (input price); turn 2: log a was in turn 1's cached prefix (cached
    # price), log b is new (input price)
    assert one["sanitizer_saved_usd"] == round(gone[log_a] * K26_IN / 1e6, 9)
    assert two["sanitizer_saved_usd"] == round(
        (gone[log_a] * K26_CACHED + gone[log_b] * K26_IN) / 1e6, 9
    )
    assert one["sanitizer_holdout"] == 0
    assert json.loads(two["details"])["sanitizer_tokens"] == {
        "removed_cached": gone[log_a], "removed_new": gone[log_b], "rebilled": 0}  # fmt: skip

    # rerouting: the client asked for gpt-4.1; Kimi answered at its own price
    assert (two["client_model"], two["model"]) == ("gpt-4.1", "kimi-k2.6")
    assert two["cost_usd"] == round((600 * K26_IN + 900 * K26_CACHED + 20 * K26_OUT) / 1e6, 9)
    assert two["requested_cost_usd"] == round((600 * 2.00 + 900 * 0.50 + 20 * 8.00) / 1e6, 9)


def test_a_holdout_conversation_is_measured_but_sent_unmasked(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    config = render_config(db, kimi.url, deepseek.url) + "\n[sanitizer]\nholdout_share = 100\n"
    client = openai_client(start_proxy(config))
    messages = [
        {"role": "user", "content": "Build it."},
        call(1),
        {"role": "tool", "tool_call_id": "call_1", "content": build_log("c")},
    ]
    client.chat.completions.create(model="gpt-4o", messages=messages)
    assert kimi.received[0].json["messages"] == messages  # the original, byte for byte
    [row] = wait_rows(db, 1)
    assert row["sanitizer_holdout"] == 1
    assert row["sanitizer_saved_usd"] is None  # nothing removed, nothing saved
    assert row["tokens_before_sanitize"] == row["tokens_after_sanitize"]
    would = json.loads(row["details"])["sanitizer_tokens"]
    assert would["removed_new"] > 1000 and would["removed_cached"] == 0
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from masked").fetchone() == (0,)
    assert con.execute("select count(*) from savings").fetchone() == (0,)
    con.close()


def test_holdout_half_of_the_conversations_and_the_report_compares_both_groups(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    config = render_config(db, kimi.url, deepseek.url) + "\n[sanitizer]\nholdout_share = 50\n"
    client = openai_client(start_proxy(config + GPT41))
    for n in range(24):  # 24 conversations (distinct first messages), two turns each
        first = [
            {"role": "user", "content": f"Build target {n}."},
            call(1),
            {"role": "tool", "tool_call_id": "call_1", "content": build_log(f"t{n}", 1500)},
        ]
        client.chat.completions.create(model="gpt-4.1", messages=first)
        client.chat.completions.create(
            model="gpt-4.1", messages=first + [{"role": "user", "content": "Again."}]
        )
    got = wait_rows(db, 48)
    assert len(got) == 48
    groups = {r["conversation_id"]: r["sanitizer_holdout"] for r in got}
    held = sum(groups.values())
    assert len(groups) == 24 and 4 <= held <= 20  # about half, by conversation id
    for r in got:  # a conversation stays in its group on every turn
        assert r["sanitizer_holdout"] == groups[r["conversation_id"]]
    sent = [q.json["messages"][2]["content"] for q in kimi.received]
    assert sum(len(s) > 30_000 for s in sent) == 2 * held  # held-out logs went unmasked

    out = tmp_path / "report"
    done = CliRunner().invoke(cli_main, ["report", "--db", str(db), "--out", str(out),
                                         "--config", str(tmp_path / "config.toml")])  # fmt: skip
    assert done.exit_code == 0, done.output
    page = (out / "index.html").read_text()
    masked_row = re.search(r'<tr id="holdout-masked">(.*?)</tr>', page, re.S).group(1)
    holdout_row = re.search(r'<tr id="holdout-holdout">(.*?)</tr>', page, re.S).group(1)
    numbers = lambda html: re.findall(r'<td class="n">([^<]*)</td>', html)  # noqa: E731
    assert numbers(masked_row)[:2] == [str(24 - held), str(2 * (24 - held))]
    assert numbers(holdout_row)[:2] == [str(held), str(2 * held)]
    assert "difference (95 % CI)" in page
    # rerouting: you asked for gpt-4.1, Kimi answered
    rerouted = re.search(r'<table id="rerouted">(.*?)</table>', page, re.S).group(1)
    assert "<td>gpt-4.1</td><td>kimi-k2.6</td>" in rerouted
    con = sqlite3.connect(db)
    requested, cost = con.execute(
        "select sum(requested_cost_usd), sum(cost_usd) from requests"
    ).fetchone()
    con.close()
    assert requested > cost > 0
    saved = re.search(r'id="saved-rerouting" data-value="([^"]*)"', page).group(1)
    assert float(saved) == pytest.approx(requested - cost, abs=1e-9)
