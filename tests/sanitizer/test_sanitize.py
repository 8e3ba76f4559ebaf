"""Sanitizer: real-shaped requests of each dialect, the marker, determinism, prefix stability."""

from __future__ import annotations

import copy
import hashlib
import json
import random

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kimi_intercept.accounting import tokens
from kimi_intercept.config.settings import ConfigError
from kimi_intercept.sanitizer.sanitize import (
    DEFAULT_SKIP_TOOLS,
    END_OF_ERRORS,
    MARKER_RE,
    MaskCache,
    SanitizeSettings,
    content_id,
    count_prompt_tokens,
    mask_text,
    sanitize_request,
)

S = SanitizeSettings()
WORDS = (
    "alpha beta gamma delta parser lexer codegen runtime util net http json yaml core io".split()
)


def sha16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_log(lines: int = 50_000, seed: int = 1) -> str:
    """A make/cc build log: varied short lines, one error in the middle, the failure at the end."""
    rnd = random.Random(seed)
    out = []
    for i in range(lines):
        if i == lines // 2:
            out.append("src/net.c:12:5: error: implicit declaration of function 'foo'")
        else:
            a, b = rnd.choice(WORDS), rnd.choice(WORDS)
            out.append(f"cc -c src/{a}/{b}{i % 7}.c")
    out += ["collect2: error: ld returned 1 exit status", "make: *** [Makefile:9: app] Error 1"]
    return "\n".join(out)


def pytest_run() -> str:
    rnd = random.Random(7)
    lines = ["============================= test session starts ==============================",
             "platform linux -- Python 3.11.9, pytest-8.4.1, pluggy-1.6.0",
             "collected 2400 items", ""]  # fmt: skip
    for i in range(2400):
        lines.append(f"tests/test_{rnd.choice(WORDS)}.py::test_{rnd.choice(WORDS)}_{i} PASSED")
    lines += [
        "",
        "=================================== FAILURES ===================================",
        "_________________________________ test_login __________________________________",
        "",
        "    def test_login():",
        ">       assert login('u', 'p') == 200",
        "E       AssertionError: assert 401 == 200",
        "",
        "tests/test_api.py:14: AssertionError",
        "=========================== short test summary info ============================",
        "FAILED tests/test_api.py::test_login - AssertionError: assert 401 == 200",
        "======================= 1 failed, 2400 passed in 41.07s ========================",
    ]
    return "\n".join(lines)


def npm_install() -> tuple[str, list[str]]:
    """``npm install`` as a TTY writes it (ANSI colours, ``\\r`` progress), and what must remain."""

    def state(i: int, colour: bool) -> str:
        def c(code: object, end: str = "m") -> str:
            return f"\x1b[{code}{end}" if colour else ""

        return (
            f"{c('2K', '')}{c('1G', '')}{c(36)}⸨{'█' * (i // 30)}{'░' * (10 - i // 30)}⸩{c(0)} ⠙ "
            f"reify:{WORDS[i % 15]}: {c(33)}timing{c(0)} reifyNode:node_modules/"
            f"{WORDS[(i * 7) % 15]} Completed in {i * 13}ms"
        )

    bar = "".join(state(i, True) + "\r" for i in range(300))
    tail = [
        "added 1432 packages, and audited 1433 packages in 41s",
        "",
        "231 packages are looking for funding",
        "  run `npm fund` for details",
        "",
        "found 0 vulnerabilities",
    ]
    return bar + "\n" + "\n".join(tail), [state(299, False), *tail]


def environment_details(files: int = 400) -> str:
    paths = [f"src/{WORDS[i % 15]}/{WORDS[(i * 3) % 15]}_{i}.ts" for i in range(files)]
    return (
        "<environment_details>\n# VSCode Visible Files\nsrc/app.ts\n\n# VSCode Open Tabs\n"
        "src/app.ts\npackage.json\n\n# Current Time\n8/22/2026, 1:03:18 PM (America/Los_Angeles, "
        "UTC-7:00)\n\n# Current Working Directory (/home/u/proj) Files\n"
        + "\n".join(paths)
        + "\n\n# Context Window Usage\n41,337 / 200K tokens used (21%)\n\n# Current Mode\n"
        "ACT MODE\n</environment_details>"
    )


def file_with_line_numbers(n: int = 600) -> str:
    return "\n".join(f"{i:>6}→export const value{i} = compute({i}, 'ü→日本');" for i in range(1, n))


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def reminder(inner: str) -> str:
    return f"<system-reminder>\n{inner}\n</system-reminder>"


def marker_of(masked: str) -> dict[str, str]:
    found = [m.groupdict() for line in masked.split("\n") if (m := MARKER_RE.fullmatch(line))]
    assert len(found) == 1, masked[:500]
    return found[0]


# --- mask_text ------------------------------------------------------------------------------


def test_build_log_keeps_head_tail_and_errors_with_an_exact_marker():
    log = build_log()
    item = mask_text(log, S, tool="Bash", kind="tool_result")
    lines = log.split("\n")
    head, tail = lines[:40], lines[-80:]
    errors = ["src/net.c:12:5: error: implicit declaration of function 'foo'"]
    kept = "\n".join(head + errors + tail)
    before = tokens.count_text(log)
    masked_bytes = len(log.encode()) - len(kept.encode())
    marker = (
        f"[kimi-intercept: {len(lines) - 121:,} lines / {masked_bytes / 1e6:.1f} MB "
        f"masked — id {sha16(log)}; 1 error line kept below]"
    )
    assert item is not None
    assert item.masked == "\n".join([*head, marker, *errors, END_OF_ERRORS, *tail])
    assert (item.id, item.tool, item.kind, item.original) == (
        sha16(log),
        "Bash",
        "tool_result",
        log,
    )
    assert (item.tokens_before, item.lines, item.bytes) == (before, 50_002, len(log.encode()))
    assert item.tokens_after == tokens.count_text(item.masked) < 2_000
    assert marker_of(item.masked) == {
        "lines": f"{len(lines) - 121:,}",
        "size": f"{masked_bytes / 1e6:.1f} MB",
        "tokens": None,
        "action": "masked",
        "id": sha16(log),
        "errors": "1",
    }


def test_failing_pytest_run_keeps_the_failure_at_the_end_visible():
    run = pytest_run()
    item = mask_text(run, S, tool="Bash", kind="tool_result")
    assert item is not None
    assert item.masked.endswith("\n".join(run.split("\n")[-12:]))
    head = item.masked.split("\n[kimi-intercept: ")[0]
    assert run.startswith(head + "\n") and head.count("\n") >= 20
    assert "FAILED tests/test_api.py::test_login" in item.masked.split("\n")[-2]
    assert marker_of(item.masked)["action"] == "masked"


def test_npm_install_progress_and_ansi_collapse_to_the_last_state():
    text, remaining = npm_install()
    item = mask_text(text, S, tool="execute_command", kind="tool_result")
    assert item is not None
    first, rest = item.masked.split("\n", 1)
    assert rest == "\n".join(remaining)
    marker = MARKER_RE.fullmatch(first)
    assert marker is not None
    assert (marker["action"], marker["id"], marker["lines"]) == ("collapsed", sha16(text), "0")
    assert "\x1b" not in item.masked and "\r" not in item.masked


def test_repeated_and_similar_lines_are_collapsed_but_error_lines_are_not_merged():
    lines = ["Downloading https://files.example/pkg.tar.gz"] * 400
    lines += [f"Unpacking layer {i}/300 sha256:{i:064d}" for i in range(1, 301)]
    lines += [f"FAILED step {i}" for i in range(1, 7)]
    item = mask_text("\n".join(lines), S, tool=None, kind="tool_result")
    assert item is not None
    assert item.masked.split("\n")[1:] == [
        "Downloading https://files.example/pkg.tar.gz",
        "[kimi-intercept: previous line repeated 399 more times]",
        "Unpacking layer 1/300 sha256:" + "0" * 63 + "1",
        "[kimi-intercept: 298 similar lines]",
        "Unpacking layer 300/300 sha256:" + "0" * 61 + "300",
        *[f"FAILED step {i}" for i in range(1, 7)],
    ]


def test_long_single_line_is_cut_in_the_middle_on_character_boundaries():
    text = json.dumps({"rows": [{"name": "日本語テキスト🙂", "n": i} for i in range(3000)]})
    item = mask_text(text, S, tool="mcp__db__query", kind="tool_result")
    assert item is not None
    _, line = item.masked.split("\n")
    cut = len(text) - 1960
    assert line == f"{text[:980]} [kimi-intercept: {cut:,} chars cut] {text[-980:]}"
    assert item.masked.encode("utf-8").decode("utf-8") == item.masked


def test_small_outputs_stay_untouched():
    assert mask_text("ok\n" * 100, S, tool="Bash", kind="tool_result") is None
    assert mask_text(build_log(200), SanitizeSettings(enabled=False), tool=None, kind="x") is None
    almost = " ".join(WORDS * 60)  # about 960 tokens
    assert tokens.count_text(almost) <= 1000
    assert mask_text(almost, S, tool=None, kind="tool_result") is None


# --- requests of each dialect ---------------------------------------------------------------

TOOLS_OPENAI = [
    {"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}},
]


def openai_request() -> dict:
    return {
        "model": "kimi-k2",
        "tools": TOOLS_OPENAI,
        "messages": [
            {"role": "system", "content": "You are Continue. " + build_log(300)},
            {"role": "user", "content": "build it please"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "run_terminal_command", "arguments": "{}"},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "read_file", "arguments": "{}"},
                    },
                ],
            },  # fmt: skip
            {"role": "tool", "tool_call_id": "call_1", "content": build_log(5_000)},
            {"role": "tool", "tool_call_id": "call_2", "content": file_with_line_numbers()},
            {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
        ],
    }


def test_openai_request_masks_tool_messages_only():
    body = openai_request()
    pristine = copy.deepcopy(body)
    result = sanitize_request("openai", body, S)
    assert body == pristine  # input never mutated
    out = result.body["messages"]
    expected = mask_text(build_log(5_000), S, tool="run_terminal_command", kind="tool_result")
    assert expected is not None
    assert out[3] == {"role": "tool", "tool_call_id": "call_1", "content": expected.masked}
    assert [out[i] is body["messages"][i] for i in range(6)] == [1, 1, 1, 0, 1, 1]
    assert result.body["tools"] is body["tools"]
    assert result.items == (expected,)
    assert (result.tokens_before, result.tokens_after) == (
        expected.tokens_before,
        expected.tokens_after,
    )


def claude_code_request() -> dict:
    return {
        "model": "claude-sonnet-4-6",
        "system": [{**text("You are Claude Code."), "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": [
                text(reminder("# claudeMd\n" + build_log(400))),
                text(reminder("Called the Read tool with the following input: {}")),
                text(reminder("Result of calling the Read tool:\n" + file_with_line_numbers())),
                text("run the tests"),
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "…", "signature": "Eqg"},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "x"}},
                {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"file_path": "a"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                 "content": pytest_run(), "cache_control": {"type": "ephemeral"}},
                {"type": "tool_result", "tool_use_id": "toolu_2",
                 "content": file_with_line_numbers()},
                text(reminder(build_log(600))),
            ]},
        ],
    }  # fmt: skip


def test_claude_code_request_masks_results_keeps_read_instructions_and_cache_control():
    body = claude_code_request()
    pristine = copy.deepcopy(body)
    result = sanitize_request("anthropic", body, S)
    assert body == pristine
    bash = mask_text(pytest_run(), S, tool="Bash", kind="tool_result")
    reminder = mask_text(build_log(600), S, tool="system_reminder", kind="system_reminder")
    assert bash is not None and reminder is not None
    assert result.body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
             "content": bash.masked, "cache_control": {"type": "ephemeral"}},
            body["messages"][2]["content"][1],  # Read: byte-identical
            {"type": "text", "text": f"<system-reminder>\n{reminder.masked}\n</system-reminder>"},
        ],
    }  # fmt: skip
    # CLAUDE.md instructions and an attached Read stay exact; so do system, tools, assistant turns
    assert result.body["messages"][0] is body["messages"][0]
    assert result.body["messages"][1] is body["messages"][1]
    assert (result.body["system"], result.body["tools"]) == (body["system"], body["tools"])
    assert result.items == (bash, reminder)


def cline_request() -> dict:
    """Cline (pre-SDK text protocol) over the Anthropic dialect."""
    return {
        "model": "claude-sonnet-4-6",
        "system": "You are Cline, a highly skilled software engineer.",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<task>\nfix the build\n</task>"},
                {"type": "text", "text": environment_details()},
            ]},
            {"role": "assistant", "content": "<execute_command>make</execute_command>"},
            {"role": "user", "content": [
                {"type": "text", "text": "[execute_command for 'make'] Result:"},
                text("Command failed with exit code 2.\nOutput:\n" + build_log(3000)),
                {"type": "text", "text": "[read_file for 'src/app.ts'] Result:"},
                {"type": "text", "text": file_with_line_numbers()},
                {"type": "text", "text": environment_details(20)},
            ]},
        ],
    }  # fmt: skip


def test_cline_text_results_and_environment_details():
    body = cline_request()
    result = sanitize_request("anthropic", body, S)
    first, _, second = result.body["messages"]
    env = mask_text(environment_details()[22:-23], S, tool="environment_details", kind="x")
    cmd_output = "Command failed with exit code 2.\nOutput:\n" + build_log(3000)
    cmd = mask_text(cmd_output, S, tool="execute_command", kind="tool_result")
    assert env is not None and cmd is not None
    assert first["content"] == [
        {"type": "text", "text": "<task>\nfix the build\n</task>"},
        {"type": "text", "text": f"<environment_details>\n{env.masked}\n</environment_details>"},
    ]
    assert env.masked.endswith("# Current Mode\nACT MODE")
    assert second["content"][1] == {"type": "text", "text": cmd.masked}
    assert cmd.masked.startswith("Command failed with exit code 2.\nOutput:\n")
    # read_file output and a small environment_details block: unchanged objects
    original = body["messages"][2]["content"]
    assert [second["content"][i] is original[i] for i in range(5)] == [1, 0, 1, 1, 1]
    assert [(i.tool, i.kind) for i in result.items] == [
        ("environment_details", "environment_details"),
        ("execute_command", "tool_result"),
    ]


def test_cline_result_in_one_text_ends_at_the_next_wrapper():
    output = build_log(2000)
    text = f"[execute_command for 'make all'] Result:\n{output}\n\n{environment_details(3)}"
    body = {"messages": [{"role": "user", "content": text}]}
    result = sanitize_request("openai", body, S)
    cmd = mask_text(output + "\n\n", S, tool=None, kind="tool_result")
    assert cmd is not None
    expected = f"[execute_command for 'make all'] Result:\n{cmd.masked}{environment_details(3)}"
    assert result.body["messages"][0]["content"] == expected


def gemini_request() -> dict:
    return {
        "systemInstruction": {"parts": [{"text": "You are gemini-cli."}]},
        "tools": [{"functionDeclarations": [{"name": "run_shell_command"}]}],
        "contents": [
            {"role": "user", "parts": [{"text": "build"}]},
            {"role": "model", "parts": [
                {"functionCall": {"id": "c1", "name": "run_shell_command", "args": {}}},
                {"functionCall": {"id": "c2", "name": "read_file", "args": {}}},
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"id": "c1", "name": "run_shell_command",
                                      "response": {"output": build_log(2000), "exit_code": 2}}},
                {"functionResponse": {"id": "c2", "name": "read_file",
                                      "response": {"output": file_with_line_numbers()}}},
            ]},
        ],
    }  # fmt: skip


def test_gemini_function_response_strings_are_masked_in_place():
    body = gemini_request()
    result = sanitize_request("gemini", body, S)
    shell = mask_text(build_log(2000), S, tool="run_shell_command", kind="tool_result")
    assert shell is not None
    parts = result.body["contents"][2]["parts"]
    assert parts[0] == {
        "functionResponse": {
            "id": "c1",
            "name": "run_shell_command",
            "response": {"output": shell.masked, "exit_code": 2},
        }
    }
    assert parts[1] is body["contents"][2]["parts"][1]
    assert result.body["contents"][:2] == body["contents"][:2]
    assert result.body["tools"] is body["tools"]


def test_kimi_cli_tool_parts_keep_the_system_status():
    body = {
        "messages": [
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "Shell:0", "type": "function",
                 "function": {"name": "Shell", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "Shell:0", "content": [
                text("<system>ERROR: Command failed with exit code: 1.</system>"),
                text(pytest_run()),
            ]},
        ]
    }  # fmt: skip
    result = sanitize_request("openai", body, S)
    run = mask_text(pytest_run(), S, tool="Shell", kind="tool_result")
    assert run is not None
    assert result.body["messages"][1]["content"] == [
        {"type": "text", "text": "<system>ERROR: Command failed with exit code: 1.</system>"},
        {"type": "text", "text": run.masked},
    ]


# --- determinism, cache, memory ---------------------------------------------------------------


def test_same_message_masks_identically_at_any_position_and_with_or_without_cache():
    output = pytest_run()
    fn = {"name": "Bash", "arguments": "{}"}
    call = {"role": "assistant", "content": "", "tool_calls": [{"id": "x", "function": fn}]}
    tool_msg = {"role": "tool", "tool_call_id": "x", "content": output}
    filler = [
        {"role": "user", "content": f"question {i} " + build_log(50, seed=i)} for i in range(6)
    ]
    a = {"messages": [call, tool_msg]}
    b = {"messages": [*filler, call, tool_msg, *filler[::-1]]}
    cache = MaskCache()
    outs = [
        sanitize_request("openai", a, S).body["messages"][1],
        sanitize_request("openai", b, S, cache).body["messages"][7],
        sanitize_request("openai", b, S, cache).body["messages"][7],  # cache hit
        sanitize_request("openai", a, S, cache).body["messages"][1],
    ]
    assert outs[0]["content"] == mask_text(output, S, tool="Bash", kind="tool_result").masked
    assert all(o == outs[0] for o in outs)
    assert cache.hits > 0


def test_marker_names_the_sha_of_the_original_for_every_dialect():
    results = [
        sanitize_request("openai", openai_request(), S),
        sanitize_request("anthropic", claude_code_request(), S),
        sanitize_request("anthropic", cline_request(), S),
        sanitize_request("gemini", gemini_request(), S),
    ]
    items = [i for r in results for i in r.items]
    assert len(items) == 6
    for item in items:
        assert item.id == content_id(item.original) == sha16(item.original)
        assert marker_of(item.masked)["id"] == item.id
        assert item.tokens_after < item.tokens_before


def test_mcp_memory_is_accounted_whether_masked_or_not():
    graph = json.dumps(
        {"entities": [{"type": "entity", "name": f"E{i}", "entityType": "person",
                       "observations": ["likes tea"]} for i in range(3)],
         "relations": [{"type": "relation", "from": "E0", "to": "E1", "relationType": "knows"}]},
        indent=2,
    )  # fmt: skip
    big_graph = graph.replace("likes tea", "likes tea " * 400)
    body = {
        "messages": [
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "mcp__memory__read_graph", "input": {}},
                {"type": "tool_use", "id": "t2", "name": "mcp__kb__fetch", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [text(big_graph)]},
                {"type": "tool_result", "tool_use_id": "t2", "content": graph},
                {"type": "text", "text": "[use_mcp_tool for 'memory'] Result:"},
                {"type": "text", "text": "Alice prefers tabs."},
            ]},
        ]
    }  # fmt: skip
    result = sanitize_request("anthropic", body, S)
    assert result.memory_by_tool == {
        "mcp__memory__read_graph": tokens.count_text(big_graph),
        "mcp__kb__fetch": tokens.count_text(graph),
        "use_mcp_tool": tokens.count_text("Alice prefers tabs."),
    }
    assert result.memory_tokens == sum(result.memory_by_tool.values())
    assert [i.tool for i in result.items] == ["mcp__memory__read_graph"]
    disabled = sanitize_request("anthropic", body, SanitizeSettings(enabled=False))
    assert (disabled.memory_by_tool, disabled.items) == (result.memory_by_tool, ())


def test_count_prompt_tokens_equals_the_uncached_estimate():
    body = openai_request()
    body["messages"].append({"role": "assistant", "content": None, "name": "bot",
                             "reasoning_content": "thinking " * 50})  # fmt: skip
    cache = MaskCache()
    expected = tokens.estimate_prompt_tokens(body)
    assert count_prompt_tokens(body, cache) == expected
    assert count_prompt_tokens(copy.deepcopy(body), cache) == expected
    assert cache.hits >= 4


def test_cache_is_bounded_by_entries_and_bytes():
    cache = MaskCache(max_entries=3, max_bytes=1 << 30)
    for i in range(10):
        cache.count(f"{i} " + "word " * 40)
    assert len(cache) == 3
    small = MaskCache(max_entries=100, max_bytes=2_000)
    for i in range(10):
        small.count(f"{i} " + "word " * 40)
    assert small.bytes <= 2_000 and 0 < len(small) < 10


def test_settings_from_table():
    table = {"threshold_tokens": 500, "skip_tools": ["Read"], "store_originals": True}
    assert SanitizeSettings.from_table(table) == SanitizeSettings(
        threshold_tokens=500, skip_tools=frozenset({"Read"})
    )
    assert SanitizeSettings.from_table({}).skip_tools == DEFAULT_SKIP_TOOLS
    with pytest.raises(ConfigError, match=r"\[sanitizer\] head_lines has the wrong type"):
        SanitizeSettings.from_table({"head_lines": "40"})
    with pytest.raises(ConfigError, match=r"\[sanitizer\] threshold_tokens must be at least 1"):
        SanitizeSettings.from_table({"threshold_tokens": 0})
    with pytest.raises(ConfigError, match="skip_kinds"):
        SanitizeSettings.from_table({"skip_kinds": ["logs"]})


def test_unknown_dialect_is_refused():
    with pytest.raises(ValueError, match="unknown dialect 'responses'"):
        sanitize_request("responses", {}, S)


# --- property: prefix stability and pairing -------------------------------------------------

SMALL = SanitizeSettings(
    threshold_tokens=60, head_lines=4, tail_lines=6, keep_chars=600, max_line_chars=100
)
TOOL_NAMES = ["Bash", "Read", "run_terminal_command", "mcp__memory__read_graph", "Shell"]
chunk = st.sampled_from(
    ["abc", " ", "xyz", "0", "19", "_:/.-=", "日本", "ü", "🙂", "\x1b[31m", "\r"]
)
line_text = st.lists(chunk, max_size=20).map("".join)
output_st = st.one_of(
    st.text(max_size=40),
    st.lists(line_text, min_size=1, max_size=120).map("\n".join),
    st.builds(lambda n, w: f"{w}\n" * n + "Error: boom", st.integers(1, 200), line_text),
)
turn_st = st.tuples(
    st.text(max_size=30),  # what the user typed
    st.lists(st.tuples(st.sampled_from(TOOL_NAMES), output_st), min_size=0, max_size=3),
)


def conversation(dialect: str, turns: list) -> dict:
    msgs: list[dict] = []
    for t, (user, calls) in enumerate(turns):
        ids = [f"c{t}_{k}" for k in range(len(calls))]
        if dialect == "openai":
            msgs.append({"role": "user", "content": user})
            tool_calls = [{"id": i, "type": "function", "function": {"name": n, "arguments": "{}"}}
                          for i, (n, _) in zip(ids, calls, strict=True)]  # fmt: skip
            msgs.append({"role": "assistant", "content": "ok", "tool_calls": tool_calls})
            msgs += [{"role": "tool", "tool_call_id": i, "content": out}
                     for i, (_, out) in zip(ids, calls, strict=True)]  # fmt: skip
        elif dialect == "anthropic":
            msgs.append({"role": "user", "content": [{"type": "text", "text": user}]})
            uses = [{"type": "tool_use", "id": i, "name": n, "input": {}}
                    for i, (n, _) in zip(ids, calls, strict=True)]  # fmt: skip
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": "ok"}, *uses]})
            if calls:
                results = [{"type": "tool_result", "tool_use_id": i, "content": out}
                           for i, (_, out) in zip(ids, calls, strict=True)]  # fmt: skip
                msgs.append({"role": "user", "content": results})
                msgs.append({"role": "assistant", "content": "done"})
        else:
            msgs.append({"role": "user", "parts": [{"text": user}]})
            calls_parts = [{"functionCall": {"id": i, "name": n, "args": {}}}
                           for i, (n, _) in zip(ids, calls, strict=True)]  # fmt: skip
            msgs.append({"role": "model", "parts": [{"text": "ok"}, *calls_parts]})
            if calls:
                msgs.append({"role": "user", "parts": [
                    {"functionResponse": {"id": i, "name": n, "response": {"output": out}}}
                    for i, (n, out) in zip(ids, calls, strict=True)]})  # fmt: skip
                msgs.append({"role": "model", "parts": [{"text": "done"}]})
    return {"contents" if dialect == "gemini" else "messages": msgs}


def pairs(dialect: str, messages: list) -> list[tuple[str, str]]:
    """(call id, result id) in order of appearance, as the upstream would check them."""
    out = []
    for m in messages:
        if dialect == "openai":
            out += [("call", c["id"]) for c in m.get("tool_calls", [])]
            out += [("result", m["tool_call_id"])] if m["role"] == "tool" else []
        elif dialect == "anthropic":
            for b in m["content"] if isinstance(m["content"], list) else []:
                if b["type"] in ("tool_use", "tool_result"):
                    out.append(
                        ("call", b["id"])
                        if b["type"] == "tool_use"
                        else ("result", b["tool_use_id"])
                    )
        else:
            for p in m["parts"]:
                if "functionCall" in p or "functionResponse" in p:
                    fc = p.get("functionCall") or p["functionResponse"]
                    out.append(("call" if "functionCall" in p else "result", fc["id"]))
    return out  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dialect=st.sampled_from(["openai", "anthropic", "gemini"]),
    turns=st.lists(turn_st, min_size=1, max_size=5),
    extra=turn_st,
    use_cache=st.booleans(),
)
def test_property_next_turn_keeps_the_sanitized_prefix_and_pairing(
    dialect, turns, extra, use_cache
):
    cache = MaskCache() if use_cache else None
    key = "contents" if dialect == "gemini" else "messages"
    now = conversation(dialect, turns)
    then = conversation(dialect, [*turns, extra])
    first = sanitize_request(dialect, now, SMALL, cache)
    second = sanitize_request(dialect, then, SMALL, MaskCache() if use_cache else None)
    n = len(now[key])
    assert second.body[key][:n] == first.body[key]
    event(f"masked texts: {min(len(second.items), 3)}+")
    event("a line cut" if "chars cut]" in json.dumps(second.body) else "no line cut")
    for original, result in ((now, first), (then, second)):
        assert pairs(dialect, result.body[key]) == pairs(dialect, original[key])
        for item in result.items:
            assert marker_of(item.masked)["id"] == content_id(item.original)
            item.masked.encode("utf-8")  # whole characters only
            assert item.tool in TOOL_NAMES and item.tool != "Read"
            assert item.tokens_after < item.tokens_before
        masked = json.dumps(result.body[key], ensure_ascii=False)
        assert masked.count("kimi-intercept: ") >= len(result.items)


def test_masking_a_big_log_counts_only_a_little_of_it_and_its_savings_after(monkeypatch):
    """The first turn of a conversation full of long logs must not tokenize them whole before
    sending: the decisions count only as far as they need; the original's whole count (the
    savings) is made on first use of ``tokens_before`` — and is exact."""
    log = build_log(60_000, seed=5)  # ~1.6 MB
    expected = tokens.count_text(log)
    real = tokens.encoding()
    encoded: list[int] = []

    class Spy:
        def encode_ordinary(self, text: str) -> list[int]:
            encoded.append(len(text))
            return real.encode_ordinary(text)

    monkeypatch.setattr(tokens, "encoding", lambda: Spy())
    item = mask_text(log, S, tool="Bash", kind="tool_result", cache=MaskCache())
    assert item is not None and marker_of(item.masked)["action"] == "masked"
    assert sum(encoded) < len(log) // 20  # a few pieces of the original, and the masked text
    encoded.clear()
    assert item.tokens_before == expected
    assert sum(encoded) >= len(log)  # counted now, once
    encoded.clear()
    assert item.tokens_before == expected and not encoded


@pytest.mark.parametrize("threshold", [200, 1000, 3000])
def test_partial_counting_takes_the_same_decisions_as_whole_counts(threshold):
    """Texts whose first pieces carry few tokens (long runs of one character) and whose tokens
    come later, just under and just over the threshold: masked exactly when the whole count is
    over it, and then exactly counted."""
    settings = SanitizeSettings(threshold_tokens=threshold)
    rnd = random.Random(threshold)
    for run in (0, 9_000, 20_000):
        for words in (threshold // 8, threshold // 2, threshold, 3 * threshold):
            lines = [" ".join(rnd.choice(WORDS) for _ in range(8)) for _ in range(words // 8 + 1)]
            text = "-" * run + "\n" + "\n".join(lines)
            whole = tokens.count_text(text)
            item = mask_text(text, settings, tool="Bash", kind="tool_result", cache=MaskCache())
            if whole <= threshold:
                assert item is None, (run, words, whole)
            else:  # over it by 15 % or more here, so masking saves tokens
                assert item is not None, (run, words, whole)
                assert item.tokens_before == whole > item.tokens_after
                assert item.tokens_after == tokens.count_text(item.masked)
