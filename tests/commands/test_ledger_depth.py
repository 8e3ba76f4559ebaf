"""A ledger nested deeper than Python's JSON parser can go is a one-line error naming the file,
never a RecursionError traceback."""

from __future__ import annotations

import json

from click.testing import CliRunner

from kimi_intercept.commands.cli import main

DEEP = "[" * 100_000 + "]" * 100_000


def test_a_deeply_nested_cline_file_is_one_clear_line(tmp_path):
    path = tmp_path / "state" / "taskHistory.json"
    path.parent.mkdir()
    path.write_text(DEEP)
    result = CliRunner().invoke(main, ["import", "cline", str(path), "--db", "k.db"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "RecursionError" not in result.output
    assert result.output == (
        f"Error: {path}: JSON nested too deeply to be a ledger (arrays or objects inside each "
        "other about a thousand times); check that this is the right file\n"
    )
    assert not (tmp_path / "k.db").exists()


def test_a_deeply_nested_continue_line_names_the_line(tmp_path):
    path = tmp_path / "dev_data" / "tokensGenerated.jsonl"
    path.parent.mkdir()
    good = {"timestamp": "2026-11-21T10:00:00Z", "model": "m", "promptTokens": 1}
    path.write_text(json.dumps(good) + "\n" + DEEP + "\n")
    result = CliRunner().invoke(main, ["import", "continue", str(path), "--db", "k.db"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {path}: line 2: JSON nested too deeply")
    assert "Traceback" not in result.output
