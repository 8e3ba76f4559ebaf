"""The CLI's user errors are one line, never a Python traceback: an unwritable ``--out``, a bad
config (with its secrets kept out), and output piped into a reader that stops early."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from reportrows import row, write_rows

from kimi_intercept.commands.mitmdump import clean_env

KIMI_INTERCEPT = Path(sys.executable).with_name("kimi-intercept")
SECRET = "sk-live-4f9a8b7c6d5e-never-print-me"
DAYS = 1500  # one row a day: `stats --by day` prints more than a pipe buffer holds


@pytest.fixture(scope="module")
def big_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("db") / "kimi.db"
    today = datetime.now(timezone.utc).replace(hour=0, minute=30)
    write_rows(
        path,
        [
            (row(f"r{i}", (today - timedelta(days=i)).isoformat().replace("+00:00", "Z")), [])
            for i in range(DAYS)
        ],
    )
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KIMI_INTERCEPT), *args],
        capture_output=True,
        text=True,
        env=clean_env(env),
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``Error: …`` line of a failed command (exit code 1, nothing on stdout)."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_report_into_a_folder_under_a_file_names_the_path_and_the_problem(big_db, tmp_path):
    (tmp_path / "afile").write_text("x")
    line = one_line_error(cli("report", "--db", str(big_db), "--out", "afile/reports"))
    assert line == "Error: Cannot write the report to afile/reports: Not a directory"


def test_report_onto_a_file_is_refused_before_any_work(big_db, tmp_path):
    (tmp_path / "afile").write_text("x")
    result = cli("report", "--db", str(big_db), "--out", "afile")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Error: Invalid value for '--out': Directory 'afile' is a file." in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_report_into_a_read_only_folder_names_the_path_and_the_problem(big_db, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    line = one_line_error(cli("report", "--db", str(big_db), "--out", str(ro)))
    assert line == f"Error: Cannot write the report to {ro}: Permission denied"


def test_export_into_a_missing_folder_names_the_path_and_the_problem(big_db):
    line = one_line_error(cli("export", "--db", str(big_db), "--out", "nowhere/rows.csv"))
    assert line == "Error: Cannot write the requests to nowhere/rows.csv: No such file or directory"


def test_export_onto_a_folder_is_refused(big_db, tmp_path):
    (tmp_path / "folder").mkdir()
    result = cli("export", "--db", str(big_db), "--out", "folder")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Error: Invalid value for '--out': File 'folder' is a directory." in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["export"],
        ["export", "--format", "json"],
        ["stats", "--by", "day", "--days", str(DAYS + 10)],
    ],
    ids=["export-csv", "export-json", "stats"],
)
def test_output_piped_into_head_ends_quietly_with_exit_code_0(big_db, args):
    writer = subprocess.Popen(
        [str(KIMI_INTERCEPT), *args, "--db", str(big_db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    head = subprocess.Popen(["head", "-1"], stdin=writer.stdout, stdout=subprocess.PIPE)
    assert writer.stdout is not None
    writer.stdout.close()  # head alone holds the read end: its exit breaks the pipe
    first, _ = head.communicate(timeout=120)
    _, err = writer.communicate(timeout=120)
    assert first.count(b"\n") == 1 and first.strip()
    assert err == b""
    assert writer.returncode == 0


def test_a_bad_config_is_one_line_and_its_secret_is_not_shown(tmp_path):
    (tmp_path / "config.toml").write_text('[routing]\nshare = "${MOONSHOT_API_KEY}"\n')
    line = one_line_error(cli("stats", env={"MOONSHOT_API_KEY": SECRET}))
    assert line == (
        f"Error: {tmp_path / 'config.toml'}: routing.share must be a number from 0 to 100, "
        "got '${MOONSHOT_API_KEY}'"
    )
