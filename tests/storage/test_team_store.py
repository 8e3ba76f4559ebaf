"""The PostgreSQL team store against a real server: a throwaway cluster (``initdb`` + ``pg_ctl``
on a free loopback port under a temp folder, run as the ``postgres`` OS user when the tests run
as root), two real proxies with different ``[team] developer`` names, one cut off while the
server is stopped and catching up when it is back, and ``report --team`` over both."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner
from proxyproc import clean_env, render_config, rows, start_proxy_process, wait_rows

from kimi_intercept.commands.cli import main as cli_main

psycopg = pytest.importorskip("psycopg", reason="needs the team extra (psycopg)")

PG_BIN = next(
    (Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)),
    Path(os.path.dirname(shutil.which("pg_ctl") or "/nonexistent/pg_ctl")),
)
MESSAGES = [{"role": "user", "content": "Say OK."}]
PASSWORD = "team-secret-password"


class Cluster:
    """A throwaway PostgreSQL cluster; ``url`` of its database ``team``."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
            pytest.skip(
                "PostgreSQL binaries (initdb, pg_ctl) not found (apt-get install postgresql)"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="kimi-pg-"))
        self.data = self.dir / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "kimi", "--no-sync")
        self.start()
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute("CREATE DATABASE team")
        self.url = f"postgresql://kimi:{PASSWORD}@127.0.0.1:{self.port}/team"

    @property
    def admin_url(self) -> str:
        return f"postgresql://kimi@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(PG_BIN / tool), *args], check=True,
                       capture_output=True, timeout=120)  # fmt: skip

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"),
                  "-w", "start")  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def query(self, sql: str) -> list[tuple]:
        with psycopg.connect(self.url) as c:
            return c.execute(sql).fetchall()

    def requests(self) -> int:
        """Rows in the team store's ``requests`` (-1 before the proxies created it)."""
        try:
            return self.query("SELECT count(*) FROM requests")[0][0]
        except psycopg.errors.UndefinedTable:
            return -1


@pytest.fixture(scope="module")
def pg() -> Iterator[Cluster]:
    cluster = Cluster()
    yield cluster
    try:
        cluster.stop()
    except subprocess.CalledProcessError:
        pass  # already stopped
    shutil.rmtree(cluster.dir, ignore_errors=True)


def team_config(db: Path, kimi_url: str, deepseek_url: str, developer: str) -> str:
    return render_config(db, kimi_url, deepseek_url) + (
        f'\n[team]\nurl = "${{KIMI_TEAM_DATABASE_URL}}"\ndeveloper = "{developer}"\n'
        "sync_interval_s = 1\n"
    )


def wait_for(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_two_developers_ship_rows_one_catches_up_after_an_outage(
    pg, tmp_path, fake_upstream, monkeypatch
):
    kimi, deepseek = fake_upstream(), fake_upstream()
    env = clean_env({"KIMI_TEAM_DATABASE_URL": pg.url})
    confdir = tmp_path / "confdir"
    procs, clients, dbs = [], {}, {}
    try:
        for dev in ("ada", "bob"):
            dbs[dev] = tmp_path / f"{dev}.db"
            config = tmp_path / f"{dev}.toml"
            config.write_text(team_config(dbs[dev], kimi.url, deepseek.url, dev))
            proc = start_proxy_process(config, confdir, (), env=env, cwd=tmp_path)
            procs.append(proc)
            for name, value in proc.client_env().items():
                monkeypatch.setenv(name, value)
            clients[dev] = openai.OpenAI(api_key="sk-client", max_retries=0)

        def ask(dev: str, n: int) -> None:
            for _ in range(n):
                assert clients[dev].chat.completions.create(model="gpt-4o", messages=MESSAGES)

        ask("ada", 2)
        ask("bob", 2)
        wait_for(lambda: pg.requests() == 4)

        pg.stop()  # ada is cut off: her rows wait in her outbox
        ask("ada", 3)
        wait_rows(dbs["ada"], 5)
        assert procs[0].wait_for_log("cannot reach the team store", timeout=10)
        assert rows(dbs["ada"], "team_outbox") != []
        pg.start()
        wait_for(lambda: pg.requests() == 7)
        assert pg.query(
            "SELECT developer, count(*), count(DISTINCT id) FROM requests GROUP BY developer "
            "ORDER BY developer"
        ) == [("ada", 5, 5), ("bob", 2, 2)]
        wait_for(lambda: rows(dbs["ada"], "team_outbox") == [])
        attempts = pg.query("SELECT developer, count(*) FROM attempts GROUP BY 1 ORDER BY 1")
        assert attempts == [("ada", len(rows(dbs["ada"], "attempts"))),
                            ("bob", len(rows(dbs["bob"], "attempts")))]  # fmt: skip
        for proc in procs:
            assert PASSWORD not in proc.log_text()
    finally:
        for proc in procs:
            proc.stop()

    # Backfill is idempotent: every row shipped again, none duplicated.
    monkeypatch.setenv("KIMI_TEAM_DATABASE_URL", pg.url)
    sync = CliRunner().invoke(cli_main, ["team", "sync", "--config", str(tmp_path / "ada.toml")])
    assert sync.exit_code == 0, sync.output
    assert "Shipped 5 requests" in sync.output and "as developer 'ada'" in sync.output
    assert pg.query("SELECT count(*), count(DISTINCT id) FROM requests") == [(7, 7)]

    # report --team: both developers, totals equal to the sum of the two SQLite files.
    local = rows(dbs["ada"]) + rows(dbs["bob"])
    prompt = sum(r["prompt_tokens"] for r in local)
    completion = sum(r["completion_tokens"] for r in local)
    out = tmp_path / "team-report"
    result = CliRunner().invoke(
        cli_main, ["report", "--team", "--config", str(tmp_path / "ada.toml"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (
        f"7 requests, {prompt + completion:,} tokens ({prompt:,} prompt + {completion:,} "
        "completion)" in result.output
    )
    page = (out / "developers.html").read_text()
    assert "<td>ada</td>" in page and "<td>bob</td>" in page
    assert PASSWORD not in result.output


def test_an_unreachable_team_store_is_one_clear_line(tmp_path, monkeypatch):
    from kimi_intercept.commands.simulator import closed_port

    db = tmp_path / "x.db"
    from reportrows import row, write_rows

    write_rows(db, [(row("r1", "2026-11-21T10:00:00.000Z"), [])])
    url = f"postgresql://kimi:{PASSWORD}@127.0.0.1:{closed_port()}/team"
    monkeypatch.setenv("KIMI_TEAM_DATABASE_URL", url)
    (tmp_path / "c.toml").write_text(
        f'[storage]\ndatabase = "{db}"\n[team]\nurl = "${{KIMI_TEAM_DATABASE_URL}}"\n'
    )
    for args in (["team", "sync"], ["report", "--team", "--out", str(tmp_path / "r")]):
        result = CliRunner().invoke(cli_main, [*args, "--config", str(tmp_path / "c.toml")])
        assert result.exit_code == 1, result.output
        assert "cannot reach the team store postgresql://kimi:***@127.0.0.1" in result.output
        assert PASSWORD not in result.output and "Traceback" not in result.output


def test_totals_of_pruned_days_reach_the_team_report_once(pg, tmp_path, monkeypatch):
    from reportrows import row, write_rows

    db = tmp_path / "carol.db"
    old = [row(f"old{i}", "2020-01-0{}T10:00:00.000Z".format(i + 1), prompt_tokens=1000,
               completion_tokens=100, cost_usd=0.5) for i in range(2)]  # fmt: skip
    recent = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    write_rows(db, [(r, []) for r in old] + [(row("new1", recent, prompt_tokens=10,
                                                    completion_tokens=1), [])])  # fmt: skip
    (tmp_path / "c.toml").write_text(
        f'[storage]\ndatabase = "{db}"\n[team]\nurl = "${{KIMI_TEAM_DATABASE_URL}}"\n'
        'developer = "carol"\n'
    )
    monkeypatch.setenv("KIMI_TEAM_DATABASE_URL", pg.url)
    config = ["--config", str(tmp_path / "c.toml")]
    assert CliRunner().invoke(cli_main, ["prune", "--days", "30", *config]).exit_code == 0
    assert [r["id"] for r in rows(db)] == ["new1"]  # the 2020 rows live on in daily only
    for _ in range(2):  # shipping twice changes nothing
        sync = CliRunner().invoke(cli_main, ["team", "sync", *config])
        assert sync.exit_code == 0, sync.output
    assert pg.query("SELECT count(*), sum(requests) FROM daily WHERE developer = 'carol'") == [
        (2, 2)
    ]
    out = tmp_path / "r"
    report = CliRunner().invoke(
        cli_main, ["report", "--team", *config, "--out", str(out), "--since", "2020-01-01"]
    )
    assert report.exit_code == 0, report.output
    carol = pg.query("SELECT count(*) FROM requests WHERE developer <> 'carol'")[0][0]
    # carol's 3 (2 pruned, counted from daily) plus the other developers' raw rows
    assert f"{3 + carol} requests" in report.output
    only = CliRunner().invoke(
        cli_main,
        ["report", "--team", "--developer", "carol", *config, "--out", str(out), "--since",
         "2020-01-01"],
    )  # fmt: skip
    assert only.exit_code == 0, only.output
    assert "3 requests, 2,211 tokens (2,010 prompt + 201 completion)" in only.output
