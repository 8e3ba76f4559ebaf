"""Storage faults lose no rows (issue #11, item 4): every case ends with requests sent == rows
stored (after the fault clears, or after a restart replays the spool).

Most cases drive :class:`StoreWriter` on a real SQLite file; the deleted-folder, locked and
disk-full cases also run through a real mitmdump with the addon, a FakeUpstream and the openai
SDK. Faults are real: a second process holding the write lock, ``RLIMIT_FSIZE`` (Python ignores
SIGXFSZ, so writes fail with EFBIG), a read-only mount, ``kill -9``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import resource
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from proxyproc import render_config, wait_rows

from kimi_intercept.storage import StoreWriter, open_db, read_masked
from kimi_intercept.storage import store as store_module
from kimi_intercept.storage.spool import fallback_spool, spool_path

MESSAGES = [{"role": "user", "content": "Say OK."}]
LOGGER = "kimi_intercept.storage.store"


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "data" / "kimi.db"


def spool_of(db: Path) -> Path:
    return db.with_name(db.name + ".spool.jsonl")


def request(n: int) -> dict:
    return {"id": f"req-{n:04d}", "started_at": "2026-11-21T12:00:00.000Z", "outcome": "ok"}


def attempts(n: int) -> list[dict]:
    return [{"provider": "kimi", "status_code": 502}, {"provider": "deepseek", "status_code": 200}]


def masked(n: int) -> dict:
    return {"masked": [{"id": f"sha256:{n}", "tool": "Bash", "original": f"output {n} " * 40}]}


def count(db: Path, table: str = "requests") -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"select count(*) from {table}").fetchone()[0]


def spooled(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class Locker:
    """Another process holding the database's write lock (``BEGIN IMMEDIATE``) until released."""

    CODE = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
        "c.execute('COMMIT')\n"
    )

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)
        self.proc.stdout.close()


# A writer in its own process, driven line by line over stdin ("put A B", "lift", "close");
# each command answers "ok". Its rows carry attempts and masked originals (bytes once stored).
DRIVER = """
import logging, resource, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from kimi_intercept.storage import StoreWriter
w = StoreWriter(sys.argv[1], busy_timeout_ms=100, retries=1, backoff_s=0.01, retry_s=0.2)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "put":
        for n in range(int(args[0]), int(args[1])):
            w.put(
                {"id": f"req-{n:04d}", "started_at": "2026-11-21T12:00:00.000Z", "outcome": "ok"},
                [{"provider": "kimi", "status_code": 502},
                 {"provider": "deepseek", "status_code": 200}],
                {"masked": [{"id": f"sha256:{n}", "tool": "Bash",
                             "original": f"output {n} " * 40}]},
            )
            w.flush(30)  # one transaction per request
    elif cmd == "lift":
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    elif cmd == "close":
        w.close()
    print("ok", flush=True)
"""


class Driver:
    def __init__(self, db: Path, log: Path, fsize: int | None = None) -> None:
        def limit() -> None:
            if fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
            preexec_fn=limit,
        )

    def cmd(self, line: str, timeout: float = 60.0) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"driver did not answer {line!r}:\n{self.log.read_text()}"
        assert self.proc.stdout.readline().strip() == "ok", self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


@pytest.fixture
def driver():
    started: list[Driver] = []

    def make(*args, **kwargs) -> Driver:
        started.append(Driver(*args, **kwargs))
        return started[-1]

    yield make
    for d in started:
        d.stop()


# -- the writer on a real SQLite file ----------------------------------------------------------


def test_deleted_folder_is_recreated_and_later_rows_land_in_it(db_path, caplog):
    w = StoreWriter(db_path, backoff_s=0.01)
    for n in range(5):
        w.put(request(n))
    assert w.flush(10) and count(db_path) == 5
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        shutil.rmtree(db_path.parent)
        for n in range(5, 12):
            w.put(request(n), attempts(n), masked(n))
            assert w.flush(10)
    assert w.close()
    # The first 5 went with the folder the user deleted; all 7 sent after it are stored.
    assert count(db_path) == 7
    assert count(db_path, "attempts") == 14
    assert [r.getMessage() for r in caplog.records] == [
        f"store: the database {db_path} was deleted or replaced while running; recreating it"
    ]


def test_a_batch_committed_into_a_just_deleted_file_is_written_again(db_path, monkeypatch):
    w = StoreWriter(db_path, backoff_s=0.01)
    w.put(request(0))
    assert w.flush(10)
    real = store_module.insert_entries
    deleted = []

    def delete_then_insert(db, entries, **kwargs):
        if not deleted:  # the folder goes away between the check and the commit
            deleted.append(True)
            shutil.rmtree(db_path.parent)
        return real(db, entries, **kwargs)

    monkeypatch.setattr(store_module, "insert_entries", delete_then_insert)
    for n in range(1, 4):
        w.put(request(n), attempts(n))
    assert w.flush(10)
    assert w.close()
    assert deleted
    assert count(db_path) == 3
    assert count(db_path, "attempts") == 6


def test_a_lock_held_by_another_process_spools_then_everything_is_written(db_path, caplog):
    w = StoreWriter(db_path, busy_timeout_ms=100, retries=2, backoff_s=0.02, retry_s=0.2)
    locker = Locker(db_path)
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            for n in range(20):
                w.put(request(n), attempts(n), masked(n))
            assert w.flush(30)
            assert count(db_path) == 0
            assert len(spooled(spool_of(db_path))) == 20
    finally:
        locker.release()
    # No new request needed: the writer tries again by itself and replays the spool.
    assert wait_for(lambda: count(db_path) == 20)
    assert w.flush(10)
    assert not spool_of(db_path).exists()
    assert count(db_path, "attempts") == 40
    assert count(db_path, "masked") == 20
    assert w.close()
    assert "database is locked" in caplog.text


def test_memory_is_bounded_while_the_database_is_locked(db_path):
    w = StoreWriter(
        db_path, busy_timeout_ms=100, retries=3, backoff_s=1.0, retry_s=0.2, max_pending=50,
        linger_s=0,  # request 0 is a batch of its own, as the test forms it
    )  # fmt: skip
    locker = Locker(db_path)
    try:
        w.put(request(0))
        time.sleep(0.2)  # the writer holds request 0 and backs off
        for n in range(1, 300):
            w.put(request(n))
        # Long before the retries of request 0 run out (about 7 s), the spool takes the rest.
        assert wait_for(lambda: len(spooled(spool_of(db_path))) >= 250, timeout=2.0)
        assert w._queue.qsize() <= 50
    finally:
        locker.release()
    assert w.flush(30)
    assert wait_for(lambda: count(db_path) == 300)
    assert w.close()
    assert not spool_of(db_path).exists()


def test_disk_full_spools_and_the_rows_are_written_once_there_is_room(db_path, tmp_path, driver):
    db = open_db(db_path)  # full size; the limit lets no file grow beyond it
    db.close()
    d = driver(db_path, tmp_path / "driver.log", fsize=db_path.stat().st_size)
    d.cmd("put 0 40")
    log = (tmp_path / "driver.log").read_text()
    assert "cannot be written" in log, log
    assert 0 < len(spooled(spool_of(db_path))) <= 40
    assert count(db_path) + len(spooled(spool_of(db_path))) == 40
    d.cmd("lift")
    assert wait_for(lambda: count(db_path) == 40), (tmp_path / "driver.log").read_text()
    d.cmd("close")
    assert count(db_path) == 40
    assert count(db_path, "attempts") == 80
    assert not spool_of(db_path).exists()
    original = read_masked(open_db(db_path), "sha256:39")
    assert original == ("output 39 " * 40).encode()


def test_rows_spooled_before_kill_9_are_replayed_on_restart_once(db_path, tmp_path, driver):
    open_db(db_path).close()
    locker = Locker(db_path)
    try:
        d = driver(db_path, tmp_path / "driver.log")
        d.cmd("put 0 25")
        lines = spooled(spool_of(db_path))
        assert len(lines) == 25
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
    finally:
        locker.release()
    # Exactly the rows the writer would have written; bytes as base64.
    first = lines[0]
    assert first["request"]["id"] == "req-0000"
    assert [a["provider"] for a in first["attempts"]] == ["kimi", "deepseek"]
    blob = first["extra"]["masked"][0]["original"]["$b64"]
    assert zlib.decompress(base64.b64decode(blob)) == ("output 0 " * 40).encode()
    copy = spool_of(db_path).read_bytes()

    w = StoreWriter(db_path)
    assert w.flush(10)
    assert count(db_path) == 25 and count(db_path, "attempts") == 50
    assert not spool_of(db_path).exists()
    assert read_masked(open_db(db_path), "sha256:7") == ("output 7 " * 40).encode()
    assert w.close()
    # A replay that is interrupted and runs again never duplicates a row.
    spool_of(db_path).write_bytes(copy)
    w = StoreWriter(db_path)
    assert w.close()
    assert count(db_path) == 25 and count(db_path, "attempts") == 50
    assert not spool_of(db_path).exists()


def test_a_torn_last_line_from_a_kill_is_kept_and_nothing_is_glued_to_it(db_path, caplog):
    open_db(db_path).close()
    spool_of(db_path).write_text('{"request": {"id": "req-0001"}, "attempts": [], "extr')
    locker = Locker(db_path)
    try:
        w = StoreWriter(db_path, busy_timeout_ms=100, retries=0, retry_s=60)
        w.put(request(2))
        assert w.flush(10)
        assert w.close()
    finally:
        locker.release()
    w = StoreWriter(db_path)
    assert w.close()
    assert count(db_path) == 1  # req-0002; the torn line was never a whole row
    assert spool_of(db_path).read_text().startswith('{"request": {"id": "req-0001"}')
    assert "an unreadable line is kept as it is" in caplog.text


def test_one_bad_row_does_not_lose_its_neighbours(db_path, caplog):
    w = StoreWriter(db_path, busy_timeout_ms=100, backoff_s=0.01)
    locker = Locker(db_path)  # makes the 10 rows queue up into one batch
    w.put(request(0))
    for n in range(1, 10):
        w.put(request(n) | ({"client": object()} if n == 5 else {}), attempts(n))
    time.sleep(0.3)
    locker.release()
    assert w.flush(10)
    assert w.close()
    assert count(db_path) == 9
    (refused,) = spooled(spool_of(db_path))
    assert refused["request"]["id"] == "req-0005"
    assert refused["error"].startswith("ProgrammingError: Error binding parameter")
    # Sent 10 = 9 stored + 1 kept with its error; a restart does not try it again.
    w = StoreWriter(db_path)
    assert w.close()
    assert count(db_path) == 9 and len(spooled(spool_of(db_path))) == 1


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder whose filesystem can be switched read-only and back: ``(path, set_ro)``."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        yield path, lambda ro: path.chmod(0o555 if ro else 0o755)
        path.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)]).returncode:
        pytest.skip("root without permission to mount a tmpfs: no read-only filesystem")

    def set_ro(ro: bool) -> None:
        opts = "remount,ro" if ro else "remount,rw"
        subprocess.run(["mount", "-o", opts, str(path)], check=True)

    try:
        yield path, set_ro
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_read_only_database_at_start_spools_and_is_written_when_writable(readonly_dir, caplog):
    folder, set_ro = readonly_dir
    db = folder / "kimi.db"
    w = StoreWriter(db)
    for n in range(3):
        w.put(request(n))
    assert w.close()
    fallback = fallback_spool(db)
    fallback.unlink(missing_ok=True)
    set_ro(True)
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            w = StoreWriter(db, retry_s=0.2)
        assert w.open_error is not None
        # One loud line says where the rows go: beside the database is read-only too.
        (line,) = [r.getMessage() for r in caplog.records]
        assert line.startswith(f"store: CANNOT OPEN THE DATABASE {db} (")
        assert f"requests are recorded in {fallback}" in line
        for n in range(3, 13):
            w.put(request(n), attempts(n))
        assert w.flush(10)
        assert len(spooled(fallback)) == 10
        set_ro(False)
        assert wait_for(lambda: count(db) == 13)
        assert w.close()
        assert count(db, "attempts") == 20
        assert not fallback.exists()
    finally:
        set_ro(False)
        fallback.unlink(missing_ok=True)


# -- through a real mitmdump with the addon ----------------------------------------------------


@pytest.fixture
def proxied(tmp_path, fake_upstream, start_proxy, openai_client):
    """A proxy whose database is ``tmp_path/data/kimi.db``, routing to a kimi fake."""
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "data" / "kimi.db"
    proxy = start_proxy(render_config(db, kimi.url, deepseek.url))
    client = openai_client(proxy)

    def call() -> None:
        r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert r.choices[0].message.content == "Hello from the fake Kimi upstream."

    call()  # the tables exist, one row stored
    assert len(wait_rows(db, 1)) == 1
    return proxy, db, call


def test_proxy_deleted_database_folder(proxied):
    proxy, db, call = proxied
    shutil.rmtree(db.parent)
    for _ in range(4):
        call()
    assert len(wait_rows(db, 4)) == 4
    time.sleep(0.3)
    assert count(db) == 4
    assert proxy.log_text().count("was deleted or replaced while running; recreating it") == 1


def test_proxy_database_locked_longer_than_the_busy_timeout(proxied):
    proxy, db, call = proxied
    locker = Locker(db)
    try:
        t0 = time.monotonic()
        for _ in range(3):
            call()  # answered while the database is locked
        assert time.monotonic() - t0 < 5
        time.sleep(6.0)  # longer than the 5 s busy timeout
        assert count(db) == 1
    finally:
        locker.release()
    assert len(wait_rows(db, 4, timeout=40)) == 4
    assert "database is locked" in proxy.log_text()


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux prlimit")
def test_proxy_disk_full(proxied):
    proxy, db, call = proxied
    [pid] = proxy.relay_pids()  # the relay process writes the rows
    wal = db.with_name(db.name + "-wal")
    room = max(db.stat().st_size, wal.stat().st_size if wal.exists() else 0)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (room, resource.RLIM_INFINITY))
    try:
        for _ in range(5):
            call()
        assert wait_for(lambda: len(spooled(spool_of(db))) == 5), proxy.log_text()
        assert count(db) == 1
        assert "cannot be written" in proxy.log_text()
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    assert len(wait_rows(db, 6, timeout=20)) == 6
    assert wait_for(lambda: not spool_of(db).exists())


def test_proxy_starts_and_answers_with_a_read_only_database(
    readonly_dir, fake_upstream, start_proxy, openai_client
):
    folder, set_ro = readonly_dir
    db = folder / "kimi.db"
    open_db(db).close()
    fallback = fallback_spool(db)
    fallback.unlink(missing_ok=True)
    set_ro(True)
    try:
        kimi, deepseek = fake_upstream(), fake_upstream()
        proxy = start_proxy(render_config(db, kimi.url, deepseek.url))
        client = openai_client(proxy)
        for _ in range(3):
            r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert r.choices[0].message.content == "Hello from the fake Kimi upstream."
        assert wait_for(lambda: len(spooled(fallback)) == 3), proxy.log_text()
        loud = [line for line in proxy.log_text().splitlines() if "CANNOT OPEN" in line]
        assert len(loud) == 1 and str(fallback) in loud[0], proxy.log_text()
        assert "Traceback" not in proxy.log_text()
        set_ro(False)
        assert len(wait_rows(db, 3, timeout=20)) == 3
        assert wait_for(lambda: not fallback.exists())
    finally:
        set_ro(False)
        fallback.unlink(missing_ok=True)


@pytest.mark.parametrize(
    "toml, expected",
    [
        ("", None),
        ('[storage]\nspool = ""\n', None),
        ('[storage]\nspool = "/var/spool/kimi.jsonl"\n', Path("/var/spool/kimi.jsonl")),
        ('[storage]\nspool = "~/kimi.jsonl"\n', Path("~/kimi.jsonl").expanduser()),
    ],
)
def test_spool_key(tmp_path, toml, expected):
    from kimi_intercept.config.settings import load_config

    (tmp_path / "c.toml").write_text(toml)
    assert spool_path(load_config(tmp_path / "c.toml")) == expected


def test_spool_key_rejects_a_non_path(tmp_path):
    from kimi_intercept.config.settings import ConfigError, load_config

    (tmp_path / "c.toml").write_text("[storage]\nspool = 5\n")
    with pytest.raises(ConfigError) as e:
        spool_path(load_config(tmp_path / "c.toml"))
    assert str(e.value) == (
        'storage.spool must be a file path (or "" for <database>.spool.jsonl); got 5'
    )
