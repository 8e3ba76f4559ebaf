"""``kimi-intercept statusline`` as Claude Code runs it: a process fed the documented status JSON
on stdin (https://docs.anthropic.com/en/docs/claude-code/statusline), printing one line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from reportrows import row, write_rows

from kimi_intercept.routing.plan import conversation_key

CLI = Path(sys.executable).with_name("kimi-intercept")
SESSION_A = "5b8e0a52-1f0e-4c43-9d1e-0c1f3f6a2b11"
SESSION_B = "c0ffee00-aaaa-4bbb-8ccc-123456789abc"


def claude_code_stdin(session_id: str) -> str:
    """The documented example input, with this session id."""
    return json.dumps(
        {
            "hook_event_name": "Status",
            "session_id": session_id,
            "transcript_path": "/path/to/transcript.json",
            "cwd": "/current/working/directory",
            "model": {"id": "claude-opus-4-1", "display_name": "Opus"},
            "workspace": {
                "current_dir": "/current/working/directory",
                "project_dir": "/original/project/directory",
            },
            "version": "1.0.80",
            "output_style": {"name": "default"},
            "cost": {
                "total_cost_usd": 0.01234,
                "total_duration_ms": 45000,
                "total_api_duration_ms": 2300,
                "total_lines_added": 156,
                "total_lines_removed": 23,
            },
        }
    )


def run(db: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "statusline", "--db", str(db)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_prints_the_sessions_numbers(tmp_path):
    db = tmp_path / "kimi.db"
    # Session A as the proxy keys it from Claude Code's session header; session B from the
    # session suffix of metadata.user_id (translated to `user`).
    conv_a = conversation_key([("X-Claude-Code-Session-Id", SESSION_A)], {})
    conv_b = conversation_key([], {"user": f"user_ab12_account_cd34_session_{SESSION_B}"})
    common = {"client": "claude-cli/2.1.3", "context_window": 262144}
    write_rows(
        db,
        [
            (row("a1", "2026-11-21T10:00:00.000Z", conversation_id=conv_a, prompt_tokens=20000,
                 cached_tokens=0, completion_tokens=500, cost_usd=0.0125, **common), []),
            (row("b1", "2026-11-21T10:00:01.000Z", conversation_id=conv_b, prompt_tokens=9000,
                 cached_tokens=0, completion_tokens=100, cost_usd=1.5, **common), []),
            (row("a2", "2026-11-21T10:01:00.000Z", conversation_id=conv_a, prompt_tokens=30000,
                 cached_tokens=20000, completion_tokens=1000, cost_usd=0.0075, **common), []),
        ],
    )  # fmt: skip

    a = run(db, claude_code_stdin(SESSION_A))
    assert (a.returncode, a.stderr) == (0, "")
    # $0.02 over both turns; last turn 31k of 262,144 = 12 %; cache 20k of 50k prompt = 40 %
    assert a.stdout == "kimi $0.0200 · ctx 12% of 262k · cache 40% · 2 calls · kimi-k2\n"

    b = run(db, claude_code_stdin(SESSION_B))
    assert b.stdout == "kimi $1.50 · ctx 3% of 262k · cache 0% · 1 call · kimi-k2\n"


def test_unknown_session_bad_input_and_no_database_print_a_line_not_a_traceback(tmp_path):
    db = tmp_path / "kimi.db"
    assert run(db, claude_code_stdin(SESSION_A)).stdout == f"kimi: no database at {db}\n"
    write_rows(db, [(row("x", "2026-11-21T10:00:00.000Z", conversation_id="other"), [])])
    unknown = run(db, claude_code_stdin(SESSION_A))
    assert (unknown.returncode, unknown.stdout) == (
        0,
        "kimi: no calls through the proxy in this session yet\n",
    )
    assert run(db, "not json").stdout == "kimi: stdin is not Claude Code's status JSON\n"
    assert run(db, "{}").stdout == "kimi: no session_id on stdin\n"


def test_budget_left_when_a_budget_is_configured(tmp_path):
    db = tmp_path / "kimi.db"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    conv = conversation_key([("x-claude-code-session-id", SESSION_A)], {})
    write_rows(db, [
        (row("a1", now, conversation_id=conv, prompt_tokens=1000, cost_usd=0.5), []),
        (row("o1", now, conversation_id="other", prompt_tokens=1000, cost_usd=0.25), []),
    ])  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text("[budget]\ndaily_usd = 2.0\nmonthly_usd = 50\n")
    done = subprocess.run(
        [str(CLI), "statusline", "--config", str(config), "--db", str(db)],
        input=claude_code_stdin(SESSION_A), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    # the tighter limit: $2 today minus $0.75 spent today by every session
    assert done.stdout.endswith(" · budget $1.25 left today\n"), done.stdout
    assert done.stdout.startswith("kimi $0.5000 · ")


def test_a_session_recorded_before_and_after_the_upgrade_counts_as_one(tmp_path):
    # Rows written before m009 carry the whole 64-hex SHA-256 as the conversation id, newer ones
    # its first 32 digits: the statusline sums both.
    db = tmp_path / "kimi.db"
    new = conversation_key([("x-claude-code-session-id", SESSION_A)], {})
    old = hashlib.sha256(f"x-claude-code-session-id:{SESSION_A}".encode()).hexdigest()
    assert old[:32] == new
    common = {"client": "claude-cli/2.1.3", "context_window": 262144}
    write_rows(db, [
        (row("0123456789abcdef0123456789abcdef", "2026-11-21T10:00:00.000Z", conversation_id=old,
             prompt_tokens=1000, cached_tokens=0, completion_tokens=10, cost_usd=0.25, **common),
         []),
        (row("01kbf0v8q3x7m2c9d4e5f6g7h8", "2026-11-21T10:05:00.000Z", conversation_id=new,
             prompt_tokens=3000, cached_tokens=1000, completion_tokens=10, cost_usd=0.5,
             **common), []),
    ])  # fmt: skip
    done = run(db, claude_code_stdin(SESSION_A))
    assert done.stdout == "kimi $0.7500 · ctx 1% of 262k · cache 25% · 2 calls · kimi-k2\n"
