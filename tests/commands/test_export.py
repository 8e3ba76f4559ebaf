from __future__ import annotations

import csv
import io
import json
import tracemalloc

import pytest
from click.testing import CliRunner
from reportrows import C1, C2, SUITE, write

from kimi_intercept.commands import export
from kimi_intercept.commands.cli import main
from kimi_intercept.storage import REQUEST_COLUMNS, open_db, open_readonly


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "suite.db"
    write(path, SUITE)
    return path


def test_csv_requests(db_path):
    out = io.StringIO()
    n = export.write(out, open_readonly(db_path), "csv", since="2026-11-20", until="2026-11-20")
    assert n == 3
    records = list(csv.reader(io.StringIO(out.getvalue())))
    assert records[0] == list(REQUEST_COLUMNS)
    by_name = [dict(zip(records[0], r, strict=True)) for r in records[1:]]
    assert [(r["id"], r["prompt_tokens"], r["cost_usd"], r["duplicate_of"]) for r in by_name] == [
        ("s2", "3000", "0.003", ""),
        ("s3", "3000", "0.003", "s2"),  # exported, marked: the report does not count it
        ("s4", "500", "0.0002", ""),
    ]


def test_json_requests_is_one_valid_array(db_path):
    out = io.StringIO()
    assert export.write(out, open_readonly(db_path), "json") == 7
    records = json.loads(out.getvalue())
    assert [r["id"] for r in records] == ["s1", "s2", "s3", "s4", "s5", "s6", "s7"]
    assert records[0]["details"] is None
    assert records[3]["conversation_title"] == "hello"
    assert list(records[0]) == list(REQUEST_COLUMNS)
    empty = io.StringIO()
    assert export.write(empty, open_readonly(db_path), "json", since="2030-01-01") == 0
    assert json.loads(empty.getvalue()) == []


def test_conversations(db_path):
    out = io.StringIO()
    assert export.write(out, open_readonly(db_path), "json", "conversations") == 2
    records = json.loads(out.getvalue())
    assert [(r["id"], r["turns"], r["prompt_tokens"], r["title"]) for r in records] == [
        (C1, 3, 4100, "<script>alert('t')</script> fix the tests"),
        (C2, 1, 500, "hello"),
    ]
    out = io.StringIO()
    assert (
        export.write(out, open_readonly(db_path), "csv", "conversations", since="2026-11-21") == 1
    )


def test_bad_arguments(db_path):
    with pytest.raises(ValueError, match="unknown format 'xml'; choose one of csv, json"):
        export.write(io.StringIO(), open_readonly(db_path), "xml")
    with pytest.raises(ValueError, match="unknown table 'attempts'"):
        export.write(io.StringIO(), open_readonly(db_path), "csv", "attempts")


class CountingSink(io.TextIOBase):
    """Counts characters and drops them, like a pipe to another program."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, s: str) -> int:
        self.n += len(s)
        return len(s)


def test_export_streams_in_flat_memory(tmp_path):
    path = tmp_path / "big.db"
    db = open_db(path)
    with db.conn:
        db.conn.executemany(
            "INSERT INTO requests (id, started_at, model, prompt_tokens, details) "
            "VALUES (?, ?, ?, ?, ?)",
            ((f"r{n:06d}", f"2026-11-21T10:00:{n % 60:02d}.000Z", "kimi-k2.6", n, "x" * 200)
             for n in range(40_000)),
        )  # fmt: skip
    db.close()
    ro = open_readonly(path)
    tracemalloc.start()
    sink = CountingSink()
    n = export.write(sink, ro, "csv")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 40_000
    assert sink.n > 40_000 * 200  # ~9 MB went through
    assert peak < 2_000_000, peak  # all rows at once would be well over that


def test_cli_export(db_path, tmp_path):
    result = CliRunner().invoke(main, ["export", "--db", str(db_path), "--format", "csv",
                                       "--until", "2026-11-19"])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("id,started_at,client,")
    assert lines[1].startswith("s1,2026-11-19T10:00:00.000Z,claude-cli/2.1,")
    assert len(lines) == 2
    result = CliRunner().invoke(
        main,
        ["export", "--db", str(db_path), "--format", "json", "--table", "conversations",
         "--out", "conv.json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Exported 2 conversations rows to conv.json" in result.output
    assert len(json.loads((tmp_path / "conv.json").read_text())) == 2
    missing = CliRunner().invoke(main, ["export", "--db", "nope.db"])
    assert missing.exit_code == 1 and "No database at" in missing.output
