"""`kimi-intercept masked list` and `kimi-intercept compress`."""

from __future__ import annotations

import json

from click.testing import CliRunner

from kimi_intercept.commands.cli import main as cli_main
from kimi_intercept.storage import StoreWriter


def test_masked_list_shows_each_item_once(tmp_path):
    db = tmp_path / "k.db"
    w = StoreWriter(db)
    row = {"id": "r1", "started_at": "2026-11-21T10:00:00.000Z", "outcome": "ok"}
    item = {"id": "7f3a9c0e12ab34cd", "created_at": "2026-11-21T10:00:00.000Z", "tool": "Bash",
            "kind": "tool_result", "lines": 18304, "bytes": 1_200_000, "tokens_before": 310_000,
            "tokens_after": 900, "original": "x" * 10}  # fmt: skip
    w.put(row, [], {"masked": [item]})
    w.put({**row, "id": "r2"}, [], {"masked": [item]})  # the same content again: stored once
    w.close()
    out = CliRunner().invoke(cli_main, ["masked", "list", "--db", str(db)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert len(lines) == 2
    assert lines[1].split()[:5] == ["7f3a9c0e12ab34cd", "2026-11-21", "10:00:00", "Bash",
                                    "tool_result"]  # fmt: skip
    assert "310,000 → 900" in lines[1] and lines[1].endswith("kept")
    shown = CliRunner().invoke(cli_main, ["masked", "show", "--db", str(db), "7f3a9c"])
    assert shown.output == "x" * 10


def test_compress_explains_without_changing_the_file(tmp_path):
    log = "\n".join(f"line {i} of a long build log with some words" for i in range(4000))
    body = {"model": "kimi-k2.6", "messages": [{"role": "system", "content": "sys"},
            {"role": "user", "content": "build"}]}  # fmt: skip
    for n in range(6):
        body["messages"] += [
            {"role": "assistant", "content": None, "tool_calls": [{"id": f"c{n}", "type":
             "function", "function": {"name": "run", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": f"c{n}", "content": log},
        ]  # fmt: skip
    body["messages"].append({"role": "user", "content": "and now?"})
    path = tmp_path / "req.json"
    path.write_text(json.dumps(body))
    before = path.read_bytes()
    (tmp_path / "x").write_text("")  # an empty config: the built-in defaults
    out = CliRunner().invoke(
        cli_main, ["compress", str(path), "--window", "100000", "--config", str(tmp_path / "x")]
    )
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"{path} (openai), context window 100,000 tokens:")
    assert "messages[3]: run output, 50,999 tokens → drop marker" in out.output  # oldest first
    assert "messages[13]" not in out.output  # the last turns are kept
    assert path.read_bytes() == before
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    err = CliRunner().invoke(cli_main, ["compress", str(bad), "--window", "1000"])
    assert err.exit_code == 1 and "not a JSON request body" in err.output
