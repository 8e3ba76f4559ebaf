"""Cache breaks end to end: conversations replayed with the real openai SDK through a real
mitmdump + addon to a fake Kimi whose prompt cache works by prefix
(:class:`~kimi_intercept.commands.fake_cache.PrefixCache`): an edit anywhere in what the
provider receives drops its reported cached tokens to the prefix before the edit.

Each broken conversation is detected at the right position with the right hint (a row in
``cache_breaks`` and the console line); a stable one gives none; and a long conversation with big
tool outputs (masked by the sanitizer) keeps its cache: the sanitizer's prefix is stable.
"""

from __future__ import annotations

import copy
import io
import itertools
from collections.abc import Iterator

import pytest
from proxyproc import render_config, rows, wait_rows
from reportrows import Tables
from rich.console import Console

from kimi_intercept.commands.fake_cache import BLOCK_TOKENS
from kimi_intercept.commands.simulator import FakeUpstream
from kimi_intercept.commands.top_data import Reader
from kimi_intercept.commands.top_screen import State, render
from kimi_intercept.reports.conversations import page_name
from kimi_intercept.reports.pages import build_report

SYSTEM = (
    "You are a careful coding agent working in the repository /src/app. Today is 2026-12-01. "
    "Answer briefly and use the tools to read files and run commands."
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} — a tool of the agent",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
    for name in ("read_file", "run_command", "write_file")
]
# A file the agent read: big next to the prefix before it, small enough not to be masked.
TOOL_OUTPUT = "\n".join(f"line {i}: def function_{i}(): return {i} * 2" for i in range(70))


def _call(i: int, tool: str = "read_file") -> dict:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": tool, "arguments": f'{{"path": "f{i}.py"}}'},
            }
        ],
    }


def _turns(output: str = TOOL_OUTPUT) -> list[list[dict]]:
    """Four requests of one agent conversation, each extending the one before."""
    m = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Fix the tests."}]
    turns = [copy.deepcopy(m)]
    for i in range(3):
        m += [_call(i), {"role": "tool", "tool_call_id": f"call_{i}", "content": f"{i}\n{output}"}]
        turns.append(copy.deepcopy(m))
    return turns


@pytest.fixture
def proxied(tmp_path, start_proxy, openai_client) -> Iterator:
    kimi, deepseek = FakeUpstream(prefix_cache=True).start(), FakeUpstream().start()
    db = tmp_path / "kimi.db"
    config = render_config(db, kimi.url, deepseek.url) + "\n[cache]\nmin_prompt_tokens = 0\n"
    proxy = start_proxy(config)
    try:
        yield (
            proxy,
            db,
            lambda session: openai_client(proxy, default_headers={"x-kimi-session": session}),
        )
    finally:
        kimi.stop()
        deepseek.stop()


def _kept_cached(requests: list[dict]) -> bool:
    """Each request had everything its predecessor sent cached (within one cache block)."""
    pairs = itertools.pairwise(requests)
    return all(now["cached_tokens"] >= prev["prompt_tokens"] - BLOCK_TOKENS for prev, now in pairs)


def _replay(client, turns: list[list[dict]], tools_per_turn: list[list[dict]] | None = None):
    for n, messages in enumerate(turns):
        tools = tools_per_turn[n] if tools_per_turn else TOOLS
        client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)


def test_breaks_are_found_at_the_first_changed_position_with_their_cause(proxied):
    proxy, db, client_for = proxied
    stable = _turns()
    _replay(client_for("stable"), stable)

    edited = _turns()
    edited[3][0] = {"role": "system", "content": SYSTEM.replace("briefly", "in detail")}
    _replay(client_for("system"), edited)

    stamped = _turns()
    stamped[3][0] = {"role": "system", "content": SYSTEM.replace("2026-12-01", "2026-12-02")}
    _replay(client_for("stamp"), stamped)

    reordered = [TOOLS, TOOLS, TOOLS, [TOOLS[2], TOOLS[0], TOOLS[1]]]
    _replay(client_for("tools"), _turns(), reordered)

    rewritten = _turns()
    rewritten[3][3] = {**rewritten[3][3], "content": "0\n(output elided by the agent)"}
    _replay(client_for("result"), rewritten)

    requests = wait_rows(db, 20)
    assert len(requests) == 20 and {r["outcome"] for r in requests} == {"ok"}
    by_id = {r["id"]: r for r in requests}
    breaks = {by_id[b["request_id"]]["conversation_id"]: b for b in rows(db, "cache_breaks")}
    sessions = {}
    for r in requests:
        sessions.setdefault(r["conversation_id"], []).append(r)
    # the stable conversation's cache kept hitting, and it has no break
    stable_conv = requests[0]["conversation_id"]
    assert stable_conv not in breaks
    assert _kept_cached(sessions[stable_conv])

    found = {
        (b["position"], b["message_index"], b["role"], b["kind"], b["hint"], b["caused_by_us"])
        for b in breaks.values()
    }
    assert found == {
        ("messages[0]", 0, "system", "system", "system prompt edited", 0),
        ("messages[0]", 0, "system", "system", "timestamp in the system prompt", 0),
        ("tools[0]", None, None, "tools", "tool list reordered", 0),
        ("messages[3]", 3, "tool", "tool_result", "an earlier tool result rewritten", 0),
    }
    for b in breaks.values():
        # the 4th request of its conversation, compared with the 3rd
        turns = sessions[b["conversation_id"]]
        assert b["request_id"] == turns[3]["id"] and b["previous_request_id"] == turns[2]["id"]
        assert b["previous_cached_ratio"] > 0.8 and b["cached_ratio"] < 0.4
        assert b["changed_by"] is None
        assert b["cached_ratio"] == round(turns[3]["cached_tokens"] / turns[3]["prompt_tokens"], 4)
    assert proxy.wait_for_log("an earlier tool result rewritten")
    lines = [line for line in proxy.log_text().splitlines() if "CACHE BREAK" in line]
    assert len(lines) == 4, lines
    [line] = [line for line in lines if "tool result" in line]
    assert "at messages[3] (tool_result): an earlier tool result rewritten" in line
    assert "kimi/kimi-k2.6" in line and "BUG" not in proxy.log_text()

    # the report: counted per client, and each conversation's page shows its break
    out = db.parent / "report"
    build_report(db, out)
    clients = Tables((out / "clients.html").read_text()).tables["cache-breaks"]
    assert clients[1][:4] == ["OpenAI/Python 2.54.0", "4", "4", "0"]
    page = out / "conversations" / page_name(requests[16]["conversation_id"])
    tables = Tables(page.read_text()).tables
    assert tables["cache-breaks"][1][0] == "4"  # the 4th turn
    assert tables["cache-breaks"][1][2:] == [
        "99.6%", "13.0%", "messages[3] (tool_result)", "an earlier tool result rewritten", "no",
    ]  # fmt: skip
    assert tables["turns"][4][5].endswith("cache break")
    stable_page = out / "conversations" / page_name(stable_conv)
    assert "cache-breaks" not in Tables(stable_page.read_text()).tables

    # `top`: the conversations view lists the latest breaks, the calls view flags the call
    reader = Reader(db, db.parent / "no-status.json")
    snap = reader.snapshot()
    reader.close()
    screens = []
    for view in (2, 1):
        console = Console(width=80, height=24, file=io.StringIO(), color_system=None)
        console.print(render(snap, State(view=view)))
        screens.append(console.file.getvalue())
    lines = [line.rstrip() for line in screens[0].splitlines()]
    at = lines.index("Cache breaks (latest)")
    assert lines[at + 2].split()[1:] == [
        "100%→13%", "messages[3]", "(tool_result)", "an", "earlier", "tool", "result", "rewritten",
    ]  # fmt: skip
    assert len(lines[at + 2 : at + 6]) == 4 and len(lines) <= 24
    assert screens[1].splitlines()[6].rstrip().endswith("cachebrk")  # the newest call


def test_the_sanitizers_masking_keeps_the_prefix_cached_over_a_long_conversation(proxied):
    """Big tool outputs are masked (head + tail) on every turn the same way: what the provider
    receives only grows, so its cache keeps hitting and no break is recorded (ours or not)."""
    proxy, db, client_for = proxied
    big = "\n".join(
        f"PASSED tests/test_mod_{i}.py::test_case_{i} in 0.{i % 10}s" for i in range(3000)
    )
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Run it."}]
    client = client_for("long")
    for i in range(8):
        client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS)
        messages += [
            _call(i, "run_command"),
            {"role": "tool", "tool_call_id": f"call_{i}", "content": big},
        ]
    # rows are built after each answer, so two of them may be written out of order
    requests = sorted(wait_rows(db, 8), key=lambda r: r["started_at"])
    assert [r["outcome"] for r in requests] == ["ok"] * 8
    masked = [
        r for r in requests if (r["tokens_before_sanitize"] or 0) > r["tokens_after_sanitize"]
    ]
    assert len(masked) == 7  # every request with a tool output had it masked
    assert _kept_cached(requests)
    assert rows(db, "cache_breaks") == []
    assert "CACHE BREAK" not in proxy.log_text() and "BUG" not in proxy.log_text()


def test_a_claude_code_style_conversation_moving_its_cache_marker_breaks_only_on_a_new_date(
    tmp_path, start_proxy, monkeypatch
):
    """The anthropic SDK as Claude Code uses it: the system prompt and the last message carry
    ``cache_control`` (the marker moves to the newest message every turn, which is no change),
    then the date in the system prompt changes: a break at ``messages[0]`` (the system prompt
    is the first message of the OpenAI form the provider receives)."""
    import anthropic

    kimi, deepseek = FakeUpstream(prefix_cache=True).start(), FakeUpstream().start()
    try:
        db = tmp_path / "kimi.db"
        config = render_config(db, kimi.url, deepseek.url, hosts=("api.anthropic.com",))
        proxy = start_proxy(config + "\n[cache]\nmin_prompt_tokens = 0\n")
        for name, value in proxy.client_env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
        client = anthropic.Anthropic(
            api_key="sk-ant-client-key", max_retries=0,
            default_headers={"x-claude-code-session-id": "3f0c9a52-session"},
        )  # fmt: skip
        tools = [
            {"name": t["function"]["name"], "description": t["function"]["description"],
             "input_schema": t["function"]["parameters"]}
            for t in TOOLS
        ]  # fmt: skip
        messages: list[dict] = [{"role": "user", "content": [{"type": "text", "text": "Fix it."}]}]
        for turn in range(5):
            date = "2026-12-01" if turn < 4 else "2026-12-02"
            marked = copy.deepcopy(messages)
            marked[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
            client.messages.create(
                model="claude-sonnet-4-5", max_tokens=256, tools=tools, messages=marked,
                system=[{"type": "text", "text": SYSTEM.replace("2026-12-01", date),
                         "cache_control": {"type": "ephemeral"}}],
            )  # fmt: skip
            messages += [
                {"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{turn}",
                 "name": "read_file", "input": {"path": f"f{turn}.py"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{turn}",
                 "content": f"{turn}\n{TOOL_OUTPUT}"}]},
            ]  # fmt: skip
        requests = wait_rows(db, 5)
        assert [r["outcome"] for r in requests] == ["ok"] * 5
        assert _kept_cached(requests[:4])
        [brk] = rows(db, "cache_breaks")
        assert (brk["request_id"], brk["position"], brk["hint"], brk["caused_by_us"]) == (
            requests[4]["id"], "messages[0]", "timestamp in the system prompt", 0,
        )  # fmt: skip
    finally:
        kimi.stop()
        deepseek.stop()
