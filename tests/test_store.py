from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time

import pytest
import sqlite_utils

from kimi_intercept import store
from kimi_intercept.store import REQUEST_COLUMNS, StoreWriter, open_db, open_readonly


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    # Nothing a test does may land in the user's working directory.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "data" / "kimi.db"


@pytest.fixture
def writer(db_path):
    w = StoreWriter(db_path, backoff_s=0.01)
    yield w
    w.close()


def request(n: int, **extra):
    row = {
        "id": f"req-{n:04d}",
        "started_at": f"2026-11-21T12:00:{n % 60:02d}.000Z",
        "client": "openai-python/1.2",
        "provider": "moonshot",
        "model": "kimi-k2",
        "outcome": "ok",
        "prompt_tokens": 10,
        "completion_tokens": 5,
    }
    row.update(extra)
    return row


def count(db_path, table="requests"):
    with sqlite3.connect(db_path) as conn:
        return conn.execute(f"select count(*) from {table}").fetchone()[0]


def test_migrate_columns(db_path):
    db = open_db(db_path)
    assert db.table("requests").columns_dict == {
        "id": str,
        "started_at": str,
        "client": str,
        "client_host": str,
        "client_model": str,
        "provider": str,
        "model": str,
        "status_code": int,
        "outcome": str,
        "attempts": int,
        "fallback_used": int,
        "ttft_ms": float,
        "duration_ms": float,
        "prompt_tokens": int,
        "completion_tokens": int,
        "cached_tokens": int,
        "reasoning_tokens": int,
        "usage_source": str,
        "cost_usd": float,
        "route": str,
        "stream": int,
        "response_id": str,
        "host": str,
        "error": str,
        "details": str,
        "dialect": str,
    }
    assert db.table("attempts").columns_dict == {
        "id": int,
        "request_id": str,
        "attempt": int,
        "provider": str,
        "model": str,
        "started_at": str,
        "status_code": int,
        "error": str,
        "duration_ms": float,
    }
    # The declared SQL types are part of the contract too (REAL, not FLOAT).
    assert {c.type for c in db.table("requests").columns} == {"TEXT", "INTEGER", "REAL"}
    assert db.table("requests").pks == ["id"]
    assert db.table("attempts").pks == ["id"]
    assert [
        (fk.column, fk.other_table, fk.other_column) for fk in db.table("attempts").foreign_keys
    ] == [("request_id", "requests", "id")]
    assert sorted(
        i.columns for i in db.table("requests").indexes if not i.name.startswith("sqlite_")
    ) == [
        ["model", "started_at"],
        ["provider", "started_at"],
        ["started_at"],
    ]
    assert [i.columns for i in db.table("attempts").indexes] == [["request_id"]]


def test_open_db_pragmas_and_parent_dirs(db_path):
    db = open_db(db_path)
    assert db_path.is_file()
    assert db.journal_mode == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_migrations_idempotent_on_reopen(db_path):
    db = open_db(db_path)
    db.table("requests").insert(request(1))
    db.close()
    db = open_db(db_path)
    assert [m.name for m in store.migrations.applied(db)] == [
        "m001_initial",
        "m002_requests_dialect",
    ]
    assert store.migrations.pending(db) == []
    assert db.table("requests").count == 1


def test_a_database_made_by_the_first_release_is_upgraded_in_place(db_path):
    db_path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(db_path)
    store.migrations.apply(db, stop_before="m002_requests_dialect")  # the schema of 0.1
    db.table("requests").insert(request(1))
    db.close()
    db = open_db(db_path)
    assert list(db.table("requests").columns_dict) == list(REQUEST_COLUMNS)
    assert db.table("requests").get("req-0001")["dialect"] is None


def test_open_readonly(db_path):
    open_db(db_path).table("requests").insert(request(1))
    ro = open_readonly(db_path)
    assert ro.execute("select id from requests").fetchall() == [("req-0001",)]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("delete from requests")


def test_open_readonly_missing(tmp_path):
    missing = tmp_path / "nope.db"
    with pytest.raises(FileNotFoundError) as e:
        open_readonly(missing)
    assert isinstance(e.value, store.DatabaseNotFound)
    assert str(missing) in str(e.value)
    assert "kimi-intercept demo" in str(e.value)
    assert not missing.exists()


def test_writer_1000_rows_from_another_thread(writer, db_path):
    def produce():
        for n in range(1000):
            writer.put(request(n), [{"provider": "moonshot", "model": "kimi-k2"}])

    t = threading.Thread(target=produce)
    t.start()
    t.join()
    assert writer.flush(10)
    assert count(db_path) == 1000
    assert count(db_path, "attempts") == 1000


def test_writer_row_contents(writer, db_path):
    writer.put(
        request(
            1,
            fallback_used=True,
            stream=True,
            cost_usd=0.25,
            details={"moonshot": {"cached": 3}, "note": "ünïcode"},
            api_key="sk-secret",
            authorization="Bearer sk-secret",
        ),
        [
            {"provider": "moonshot", "status_code": 429, "error": "rate limited"},
            {"provider": "openrouter", "status_code": 200, "api_key": "sk-secret"},
        ],
    )
    assert writer.flush(5)
    db = open_readonly(db_path)
    row = next(db.query("select * from requests"))
    assert row == {
        **{column: None for column in store.REQUEST_COLUMNS},
        **request(1),
        "fallback_used": 1,
        "stream": 1,
        "cost_usd": 0.25,
        "details": '{"moonshot": {"cached": 3}, "note": "ünïcode"}',
    }
    attempts = list(db.query("select * from attempts order by id"))
    assert attempts == [
        {
            "id": 1,
            "request_id": "req-0001",
            "attempt": 1,
            "provider": "moonshot",
            "model": None,
            "started_at": None,
            "status_code": 429,
            "error": "rate limited",
            "duration_ms": None,
        },
        {
            "id": 2,
            "request_id": "req-0001",
            "attempt": 2,
            "provider": "openrouter",
            "model": None,
            "started_at": None,
            "status_code": 200,
            "error": None,
            "duration_ms": None,
        },
    ]
    dump = "\n".join(open_readonly(db_path).iterdump())
    assert "sk-secret" not in dump


def test_writer_locked_database_delays_but_loses_nothing(writer, db_path):
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        for n in range(50):
            writer.put(request(n))
        time.sleep(1.0)
        assert count(db_path) == 0  # WAL readers still read; the writer waits for the lock
    finally:
        other.execute("COMMIT")
        other.close()
    assert writer.flush(10)
    assert count(db_path) == 50


def test_writer_retries_after_busy_timeout(db_path, caplog):
    w = StoreWriter(db_path, busy_timeout_ms=50, retries=6, backoff_s=0.05)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.store"):
        w.put(request(7))
        time.sleep(0.6)
        other.execute("COMMIT")
        other.close()
        assert w.flush(10)
    w.close()
    assert count(db_path) == 1
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert retries
    assert all("req-0007" in m and "locked" in m for m in retries)


def test_bad_row_is_logged_and_the_rest_of_the_batch_written(db_path, caplog):
    w = StoreWriter(db_path, backoff_s=0.01)
    good = [request(n) for n in range(1, 6)]
    bad_unbindable = request(100, client=object())
    bad_overflow = request(101, prompt_tokens=2**70)
    duplicate = request(1)
    other = sqlite3.connect(db_path, isolation_level=None)
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.store"):
        # While the lock is held the writer waits on its first batch (good[0]) and the
        # rest queue up behind it, so they form one batch of 7.
        other.execute("BEGIN EXCLUSIVE")
        w.put(good[0])
        time.sleep(0.1)
        for item in [bad_unbindable, good[1], bad_overflow, good[2], duplicate, *good[3:]]:
            w.put(item)
        time.sleep(0.2)
        other.execute("COMMIT")
        other.close()
        assert w.flush(10)
        # The thread survived: later rows are still written.
        w.put(request(6))
        assert w.flush(10)
    w.close()
    db = open_readonly(db_path)
    assert [r[0] for r in db.execute("select id from requests order by id")] == [
        "req-0001",
        "req-0002",
        "req-0003",
        "req-0004",
        "req-0005",
        "req-0006",
    ]
    assert "batch of 7 requests failed" in caplog.text
    dropped = [r.getMessage() for r in caplog.records if "not recorded" in r.getMessage()]
    assert len(dropped) == 3
    assert any("req-0100" in m and "ProgrammingError" in m for m in dropped)
    assert any("req-0101" in m and "OverflowError" in m for m in dropped)
    assert any("req-0001" in m and "IntegrityError" in m for m in dropped)


def test_non_number_in_numeric_column_written_as_null(writer, db_path, caplog):
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.store"):
        writer.put(request(1, prompt_tokens={"oops": 1}, ttft_ms="fast"))
        assert writer.flush(5)
    row = next(open_readonly(db_path).query("select prompt_tokens, ttft_ms from requests"))
    assert row == {"prompt_tokens": None, "ttft_ms": None}
    messages = [r.getMessage() for r in caplog.records]
    assert any("req-0001" in m and "prompt_tokens" in m for m in messages)
    assert any("req-0001" in m and "ttft_ms" in m for m in messages)


def test_unknown_keys_logged_once_at_debug(writer, caplog):
    with caplog.at_level(logging.DEBUG, logger="kimi_intercept.store"):
        writer.put(request(1, api_key="x"))
        writer.put(request(2, api_key="y"))
        assert writer.flush(5)
    assert [r.getMessage() for r in caplog.records if "api_key" in r.getMessage()] == [
        "store: requests has no column 'api_key'; that key is not written"
    ]


def test_put_never_raises(writer, caplog):
    writer.put(None)  # type: ignore[arg-type]
    writer.put(request(1), None)  # type: ignore[arg-type]
    assert writer.flush(5)
    writer.close()
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.store"):
        writer.put(request(2))
    assert "store closed; request req-0002 was not recorded" in caplog.text


def test_put_copies_its_input(writer, db_path):
    row = request(1)
    writer.put(row)
    row["model"] = "changed-after-put"
    assert writer.flush(5)
    assert next(open_readonly(db_path).query("select model from requests"))["model"] == "kimi-k2"


def test_close_writes_queue_and_truncates_wal(db_path):
    w = StoreWriter(db_path)
    for n in range(20):
        w.put(request(n))
    assert w.close()
    assert count(db_path) == 20
    wal = db_path.with_name(db_path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert w.flush(0.1)  # nothing pending after close
    assert w.close()  # closing twice is harmless


def test_writer_open_error_raised_in_constructor(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OSError):
        StoreWriter(tmp_path / "a-file" / "kimi.db")


def test_writer_gives_up_loudly_when_locked_too_long(db_path, caplog):
    w = StoreWriter(db_path, busy_timeout_ms=20, retries=2, backoff_s=0.01)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.store"):
        for n in range(1, 4):
            w.put(request(n))
        assert w.flush(10)
        other.execute("COMMIT")
        other.close()
        # The thread lives on and writes once the lock is gone.
        w.put(request(4))
        assert w.flush(10)
    w.close()
    assert count(db_path) == 1
    given_up = [r for r in caplog.records if "not recorded" in r.getMessage()]
    assert {"req-0001", "req-0002", "req-0003"} <= {
        id for r in given_up for id in re.findall(r"req-\d{4}", r.getMessage())
    }
    assert all("locked" in r.getMessage() for r in given_up)


def test_request_without_id_gets_one(writer, db_path, caplog):
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.store"):
        writer.put({"model": "kimi-k2"}, [{"provider": "moonshot"}])
        assert writer.flush(5)
    db = open_readonly(db_path)
    (id,) = db.execute("select id from requests").fetchone()
    assert len(id) == 32
    assert db.execute("select request_id from attempts").fetchone() == (id,)
    assert f"request without an id; recorded as {id}" in caplog.text
