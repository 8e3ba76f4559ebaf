"""`kimi-intercept demo` as a newcomer runs it: the console script, in an empty folder."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from proxyproc import clean_env


def test_demo_runs_the_whole_path_and_writes_the_report(tmp_path):
    script = Path(sys.executable).with_name("kimi-intercept")
    env = clean_env()
    for key in ("MOONSHOT_API_KEY", "DEEPSEEK_API_KEY"):
        env.pop(key)  # the demo needs no key of the user's
    done = subprocess.run(
        [str(script), "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "served by deepseek" in done.stdout
    report = tmp_path / "reports" / "index.html"
    assert f"Report written to {report}" in done.stdout
    assert "<svg" in report.read_text()

    con = sqlite3.connect(tmp_path / "kimi_intercept_demo.db")
    got = con.execute(
        "select provider, stream, fallback_used, outcome, usage_source from requests"
        " order by started_at"
    ).fetchall()
    con.close()
    assert got == [
        ("kimi", 1, 0, "ok", "provider"),
        ("kimi", 0, 0, "ok", "provider"),
        ("deepseek", 1, 1, "ok", "provider"),
    ]
    assert not (tmp_path / "kimi_intercept.db").exists()  # the user's own database is untouched
