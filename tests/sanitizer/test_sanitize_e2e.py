"""The sanitizer end to end: a real mitmdump + addon, the openai SDK, a Kimi fake that records
what it received, and the SQLite file with the originals and the savings ledger."""

from __future__ import annotations

import json
import sqlite3

from click.testing import CliRunner
from proxyproc import render_config, wait_rows

from kimi_intercept.commands.cli import main as cli_main
from kimi_intercept.commands.simulator import Reply
from kimi_intercept.sanitizer.mask import MARKER_RE
from kimi_intercept.storage import open_readonly, read_masked


def pytest_log(lines: int) -> str:
    body = "\n".join(f"tests/test_mod_{i % 40}.py::test_case_{i} PASSED [{i * 100 // lines}%]"
                     for i in range(lines))  # fmt: skip
    return (
        "============ test session starts ============\n" + body + "\n"
        "FAILED tests/test_api.py::test_login - AssertionError: expected 200, got 500\n"
        "============ 1 failed, 2999 passed in 41.2s ============"
    )


def conversation(log: str) -> list[dict]:
    return [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Run the tests and fix what fails."},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "run_command", "arguments": '{"cmd": "pytest"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": log},
    ]  # fmt: skip


def test_a_long_log_is_masked_upstream_and_its_original_kept(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    client = openai_client(start_proxy(render_config(db, kimi.url, deepseek.url)))
    log = pytest_log(3000)
    first = conversation(log)
    r = client.chat.completions.create(model="gpt-4o", messages=first)
    assert r.choices[0].message.content == "Hello from the fake Kimi upstream."

    sent = kimi.received[0].json["messages"]
    assert sent[:3] == first[:3]  # system, user, assistant untouched
    masked = sent[3]["content"]
    assert sent[3]["tool_call_id"] == "call_1"
    assert len(masked) < len(log) / 10
    assert "============ test session starts" in masked[:300]  # the head is kept
    assert "FAILED tests/test_api.py::test_login - AssertionError" in masked  # the end is kept
    marker = MARKER_RE.search(masked)
    assert marker is not None

    [row] = wait_rows(db, 1)
    assert row["tokens_before_sanitize"] > row["tokens_after_sanitize"] * 5
    ro = open_readonly(db)
    assert read_masked(ro, marker.group("id")) == log.encode()  # byte for byte
    savings = [dict(zip(("tool", "items", "before", "after"), s, strict=True)) for s in ro.execute(
        "select tool, items, tokens_before, tokens_after from savings").fetchall()]  # fmt: skip
    ro.close()
    assert [(s["tool"], s["items"]) for s in savings] == [("run_command", 1)]
    assert savings[0]["before"] > savings[0]["after"] * 10

    # Next turn: the same history plus one more exchange. The masked message is byte-identical,
    # so the provider's prefix cache keeps hitting.
    second = first + [{"role": "assistant", "content": "Looking."},
                      {"role": "user", "content": "Go on."}]  # fmt: skip
    client.chat.completions.create(model="gpt-4o", messages=second)
    again = kimi.received[1].json["messages"]
    assert json.dumps(again[:4]) == json.dumps(sent)
    wait_rows(db, 2)
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from masked").fetchone() == (1,)  # stored once
    saved = con.execute(
        "select sum(tokens_before_sanitize - tokens_after_sanitize) from requests"
    ).fetchone()[0]
    saved_usd = con.execute("select sum(sanitizer_saved_usd) from requests").fetchone()[0]
    con.close()
    out = tmp_path / "report"
    done = CliRunner().invoke(cli_main, ["report", "--db", str(db), "--out", str(out),
                                         "--config", str(tmp_path / "config.toml")])  # fmt: skip
    assert done.exit_code == 0, done.output
    page = (out / "index.html").read_text()
    assert f'id="saved-tokens" data-value="{saved}"' in page
    # the measured saving (position-aware: tests/sanitizer/test_savings_e2e.py), not tokens × input
    assert f'id="saved-usd" data-value="{round(saved_usd, 9)}"' in page


def test_short_tool_output_and_file_reads_are_sent_exactly(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    client = openai_client(start_proxy(render_config(db, kimi.url, deepseek.url)))
    big_file = "\n".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(3000))
    messages = [
        {"role": "user", "content": "Read it."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "read_file", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": big_file},
        {"role": "tool", "tool_call_id": "b", "content": "src\ntests\nREADME.md"},
    ]  # fmt: skip
    client.chat.completions.create(model="gpt-4o", messages=messages)
    assert kimi.received[0].json["messages"] == messages


def test_context_length_exceeded_compresses_and_retries_the_same_provider(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    client = openai_client(start_proxy(render_config(db, kimi.url, deepseek.url)))
    too_long = {"error": {"message": "Your request exceeded model token limit: 262144",
                          "type": "invalid_request_error"}}  # fmt: skip
    kimi.enqueue(Reply.error(400, too_long))
    code = "\n".join(f"    value_{i} = compute({i}) + offset_{i % 7}" for i in range(1500))
    messages = [{"role": "system", "content": "You are a coding agent."},
                {"role": "user", "content": "Refactor it."}]  # fmt: skip
    for n in range(8):  # older file reads (exact, never masked) fill the context
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [{"id": f"r{n}", "type":
             "function", "function": {"name": "read_file", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": f"r{n}", "content": code},
            {"role": "assistant", "content": f"Read part {n}."},
            {"role": "user", "content": "Go on."},
        ]  # fmt: skip
    r = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert r.choices[0].message.content == "Hello from the fake Kimi upstream."
    first, second = (q.json["messages"] for q in kimi.received)
    assert first == messages and len(json.dumps(second)) < len(json.dumps(first)) * 0.75
    assert second[0] == messages[0] and second[-4:] == messages[-4:]  # system + last turns kept
    assert deepseek.received == []  # the same provider, retried compressed
    [row] = wait_rows(db, 1)
    assert (row["provider"], row["outcome"], row["attempts"]) == ("kimi", "ok", 2)


def test_mcp_memory_content_is_counted_per_request_and_shown_per_conversation(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    client = openai_client(start_proxy(render_config(db, kimi.url, deepseek.url)))
    graph = json.dumps({"entities": [{"type": "entity", "name": f"Person_{i}",
                                      "entityType": "person",
                                      "observations": [f"likes topic {i}"]} for i in range(40)],
                        "relations": []}, indent=2)  # fmt: skip
    messages = [
        {"role": "user", "content": "What do you remember?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "m1", "type": "function",
         "function": {"name": "mcp__memory__read_graph", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "m1", "content": graph},
    ]  # fmt: skip
    client.chat.completions.create(model="gpt-4o", messages=messages)
    [row] = wait_rows(db, 1)
    assert row["memory_tokens"] is not None and row["memory_tokens"] > 300
    out = tmp_path / "report"
    assert (
        CliRunner().invoke(cli_main, ["report", "--db", str(db), "--out", str(out)]).exit_code == 0
    )
    page = next((out / "conversations").glob("*.html")).read_text()
    assert f'<td class="n">{row["memory_tokens"]:,}</td>' in page
