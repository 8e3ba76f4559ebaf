"""``kimi-intercept report --watch`` as a user runs it: a subprocess that writes the pages,
writes them again when a row arrives, and stops on Ctrl-C (SIGINT) with exit 0 and no
traceback; the pages reload themselves only when watched."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from proxyproc import clean_env
from reportrows import row, write_rows

KIMI_INTERCEPT = Path(sys.executable).with_name("kimi-intercept")
REFRESH = re.compile(r'<meta http-equiv="refresh" content="(\d+)">')


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _requests_card(index: Path) -> str | None:
    """The overview's total request count, as its card says it."""
    try:
        html = index.read_text()
    except FileNotFoundError:
        return None
    m = re.search(r'id="total-requests" data-value="(\d+)"', html)
    return m.group(1) if m else None


def test_watch_rewrites_the_pages_on_a_new_row_and_stops_cleanly_on_ctrl_c(tmp_path):
    db, out = tmp_path / "kimi.db", tmp_path / "report"
    write_rows(db, [(row("r1", "2026-11-21T10:00:00.000Z", prompt_tokens=10), [])])
    proc = subprocess.Popen(
        [str(KIMI_INTERCEPT), "report", "--watch", "--db", str(db), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
    )
    try:
        index = out / "index.html"
        assert _wait(lambda: _requests_card(index) == "1"), _requests_card(index)
        assert _wait((out / "compare.html").exists)  # the last page of a build
        first = index.read_text()
        assert REFRESH.search(first).group(1) == "5"
        conversations = (out / "conversations.html").read_text()
        assert REFRESH.search(conversations)  # every page, not only the overview
        write_rows(db, [(row("r2", "2026-11-21T11:00:00.000Z", prompt_tokens=20), [])])
        assert _wait(lambda: _requests_card(index) == "2"), _requests_card(index)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert stdout.splitlines()[-1] == "Stopped watching."
    assert len([line for line in stdout.splitlines() if "report written to" in line]) == 2


def test_pages_have_no_auto_refresh_without_watch(tmp_path):
    db, out = tmp_path / "kimi.db", tmp_path / "report"
    write_rows(db, [(row("r1", "2026-11-21T10:00:00.000Z", prompt_tokens=10), [])])
    result = subprocess.run(
        [str(KIMI_INTERCEPT), "report", "--db", str(db), "--out", str(out)],
        capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pages = list(out.rglob("*.html"))
    assert pages and not any("http-equiv" in p.read_text() for p in pages)
