from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from datetime import datetime, timezone

import pytest
import sqlite_utils

from kimi_intercept import storage as store
from kimi_intercept.storage import REQUEST_COLUMNS, StoreWriter, open_db, open_readonly


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


def spool_of(db_path):
    return db_path.with_name(db_path.name + ".spool.jsonl")


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
        "conversation_id": str,
        "conversation_title": str,
        "context_window": int,
        "tokens_before_sanitize": int,
        "tokens_after_sanitize": int,
        "memory_tokens": int,
        "prompt_tokens_estimate": int,
        "completion_tokens_estimate": int,
        "cost_source": str,
        "duplicate_of": str,
        "rule": str,
        "cache_write_tokens": int,
        "cache_write_1h_tokens": int,
        "requested_cost_usd": float,
        "sanitizer_saved_usd": float,
        "sanitizer_holdout": int,
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
        (i.name, i.columns, i.partial)
        for i in db.table("requests").indexes
        if not i.name.startswith("sqlite_")
    ) == [
        ("idx_requests_conversation_id", ["conversation_id"], 1),
        ("idx_requests_duplicates", ["started_at"], 1),
        ("idx_requests_not_ok", ["started_at"], 1),
        ("idx_requests_response_id", ["response_id"], 1),
        ("idx_requests_started_at", ["started_at"], 0),
    ]
    assert sorted((i.columns, i.partial) for i in db.table("attempts").indexes) == [
        (["request_id"], 0),
        (["request_id"], 1),  # failed attempts only
    ]
    assert db.table("masked").columns_dict == {
        "id": str,
        "created_at": str,
        "tool": str,
        "kind": str,
        "dialect": str,
        "lines": int,
        "bytes": int,
        "tokens_before": int,
        "tokens_after": int,
        "original": bytes,
        "request_id": str,
    }
    assert db.table("masked").pks == ["id"]
    assert db.table("savings").columns_dict == {
        "request_id": str,
        "tool": str,
        "items": int,
        "tokens_before": int,
        "tokens_after": int,
    }
    assert db.table("savings").pks == ["request_id", "tool"]
    sums = {
        "requests": int,
        "ok": int,
        "errors": int,
        "incomplete": int,
        "client_abort": int,
        "fallbacks": int,
        "prompt_tokens": int,
        "completion_tokens": int,
        "cached_tokens": int,
        "reasoning_tokens": int,
        "cost_usd": float,
        "priced": int,
        "unpriced": int,
        "estimated": int,
        "calib_samples": int,
        "calib_prompt_tokens": int,
        "calib_prompt_estimate": int,
        "calib_completion_tokens": int,
        "calib_completion_estimate": int,
    }
    keys = ["day", "provider", "model", "client", "route", "usage_source"]
    assert db.table("daily").columns_dict == {**{k: str for k in keys}, **sums}
    assert db.table("daily").pks == keys
    assert db.table("daily_savings").columns_dict == {
        "day": str,
        "tool": str,
        "items": int,
        "tokens_before": int,
        "tokens_after": int,
    }
    assert db.table("daily_savings").pks == ["day", "tool"]
    assert db.view_names() == ["conversations"]
    assert list(db.view("conversations").columns_dict) == [
        "id",
        "title",
        "client",
        "first_at",
        "last_at",
        "turns",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost_usd",
        "unpriced",
        "fallbacks",
        "not_ok",
        "last_prompt_tokens",
        "context_window",
    ]
    assert sorted(t.name for t in db.triggers) == [
        "requests_insert",
        "requests_update",
        "savings_insert",
    ]


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
        "m003_accounting",
        "m004_shadow",
        "m005_requests_rule",
        "m006_cache_writes",
        "m007_money_savings",
        "m008_cache_breaks",
        "m009_smaller_rows",
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


def test_a_database_of_release_0_2_is_upgraded_in_place_and_its_duplicates_marked(db_path):
    db_path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(db_path)
    store.migrations.apply(db, stop_before="m003_accounting")  # the schema of 0.2
    db.table("requests").insert_all(
        [
            request(1, response_id="chatcmpl-a", started_at="2026-11-21T12:00:00.000Z"),
            request(2, response_id="chatcmpl-a", started_at="2026-11-21T12:00:05.000Z"),
            request(3, response_id="chatcmpl-a", started_at="2026-11-21T11:00:00.000Z"),
            request(4, response_id="chatcmpl-a", provider="deepseek"),  # another provider's id
            request(5, response_id=None),
            request(6, response_id="chatcmpl-b"),
        ]
    )
    db.close()
    db = open_db(db_path)
    assert list(db.table("requests").columns_dict) == list(REQUEST_COLUMNS)
    rows = db.execute("select id, duplicate_of, conversation_id from requests order by id")
    assert rows.fetchall() == [
        ("req-0001", "req-0003", None),
        ("req-0002", "req-0003", None),
        ("req-0003", None, None),  # the earliest copy is the one counted
        ("req-0004", None, None),
        ("req-0005", None, None),
        ("req-0006", None, None),
    ]
    # The counted rows of 0.2 are in the daily totals, exactly as the triggers would keep them.
    daily = list(db.query("select * from daily order by provider"))
    assert [(d["day"], d["provider"], d["requests"], d["prompt_tokens"]) for d in daily] == [
        ("2026-11-21", "deepseek", 1, 10),
        ("2026-11-21", "moonshot", 3, 30),
    ]
    assert daily == store.daily_from_requests(db)
    assert db.table("masked").count == 0


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
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.storage.store"):
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
    w = StoreWriter(db_path, backoff_s=0.01, linger_s=0)  # batches as the test forms them
    good = [request(n) for n in range(1, 6)]
    bad_unbindable = request(100, client=object())
    bad_overflow = request(101, prompt_tokens=2**70)
    duplicate = request(1)
    other = sqlite3.connect(db_path, isolation_level=None)
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.storage.store"):
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
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 3
    assert any("req-0100" in m and "ProgrammingError" in m for m in refused)
    assert any("req-0101" in m and "OverflowError" in m for m in refused)
    assert any("req-0001" in m and "IntegrityError" in m for m in refused)
    # Never dropped: the refused rows wait in the spool with their error.
    spooled = [json.loads(line) for line in spool_of(db_path).read_text().splitlines()]
    assert [(d["request"]["id"], d["error"].split(":")[0]) for d in spooled] == [
        ("req-0100", "ProgrammingError"),
        ("req-0101", "OverflowError"),
        ("req-0001", "IntegrityError"),
    ]


def test_non_number_in_numeric_column_written_as_null(writer, db_path, caplog):
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.storage.store"):
        writer.put(request(1, prompt_tokens={"oops": 1}, ttft_ms="fast"))
        assert writer.flush(5)
    row = next(open_readonly(db_path).query("select prompt_tokens, ttft_ms from requests"))
    assert row == {"prompt_tokens": None, "ttft_ms": None}
    messages = [r.getMessage() for r in caplog.records]
    assert any("req-0001" in m and "prompt_tokens" in m for m in messages)
    assert any("req-0001" in m and "ttft_ms" in m for m in messages)


def test_unknown_keys_logged_once_at_debug(writer, caplog):
    with caplog.at_level(logging.DEBUG, logger="kimi_intercept.storage.store"):
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
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.storage.store"):
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


def test_writer_that_cannot_open_its_database_spools_instead_of_raising(tmp_path, caplog):
    (tmp_path / "a-file").write_text("")
    spool = tmp_path / "spool.jsonl"
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.storage.store"):
        w = StoreWriter(tmp_path / "a-file" / "kimi.db", spool=spool)
    assert isinstance(w.open_error, OSError)
    assert f"CANNOT OPEN THE DATABASE {tmp_path / 'a-file' / 'kimi.db'}" in caplog.text
    assert str(spool) in caplog.text
    w.put(request(1))
    assert w.close()
    assert [json.loads(line)["request"]["id"] for line in spool.read_text().splitlines()] == [
        "req-0001"
    ]


def test_writer_spools_loudly_when_locked_too_long_and_replays_later(db_path, caplog):
    w = StoreWriter(db_path, busy_timeout_ms=20, retries=2, backoff_s=0.01, retry_s=0.1)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.storage.store"):
        for n in range(1, 4):
            w.put(request(n))
        assert w.flush(10)
        other.execute("COMMIT")
        other.close()
        assert len(spool_of(db_path).read_text().splitlines()) == 3
        # The thread lives on, writes once the lock is gone and replays the spool.
        w.put(request(4))
        assert w.flush(10)
    w.close()
    assert count(db_path) == 4
    assert not spool_of(db_path).exists()
    given_up = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert given_up == [
        f"store: the database {db_path} cannot be written (OperationalError: database is "
        "locked); requests go to the spool and are written to the database once it can be "
        "(tried every 0.1s)"
    ]
    retried = {id for r in caplog.records for id in re.findall(r"req-\d{4}", r.getMessage())}
    assert {"req-0001"} <= retried


def test_request_without_id_gets_one(writer, db_path, caplog):
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.storage.store"):
        writer.put({"model": "kimi-k2"}, [{"provider": "moonshot"}])
        assert writer.flush(5)
    db = open_readonly(db_path)
    (id,) = db.execute("select id from requests").fetchone()
    assert len(id) == 26
    assert db.execute("select request_id from attempts").fetchone() == (id,)
    assert f"request without an id; recorded as {id}" in caplog.text


# -- m003: duplicates, extra tables, conversations --------------------------------------------


def test_a_replayed_response_is_marked_as_a_duplicate_of_the_first(writer, db_path):
    writer.put(request(1, response_id="chatcmpl-x"))
    writer.put(request(2, response_id="chatcmpl-x"))  # the same answer, replayed
    writer.put(request(3, response_id="chatcmpl-x", provider="deepseek"))  # ids are per provider
    writer.put(request(4, response_id="chatcmpl-y"))
    writer.put(request(5))  # no response id: never a duplicate
    writer.put(request(6))
    assert writer.flush(5)
    db = open_readonly(db_path)
    assert db.execute("select id, duplicate_of from requests order by id").fetchall() == [
        ("req-0001", None),
        ("req-0002", "req-0001"),
        ("req-0003", None),
        ("req-0004", None),
        ("req-0005", None),
        ("req-0006", None),
    ]


def test_extra_rows_written_with_the_request(writer, db_path):
    original = "line\n" * 2000
    masked = {
        "id": "sha256:abc",
        "created_at": "2026-11-21T12:00:01.000Z",
        "tool": "Bash",
        "kind": "truncate",
        "dialect": "openai",
        "lines": 2000,
        "bytes": len(original),
        "tokens_before": 2001,
        "tokens_after": 120,
        "original": original,
        "secret": "not a column",
    }
    writer.put(
        request(1),
        extra={
            "masked": [masked],
            "savings": [
                {"tool": "Bash", "items": 1, "tokens_before": 2001, "tokens_after": 120},
                {"tool": "Bash", "items": 2, "tokens_before": 100, "tokens_after": 50},
                {"tool": "Grep", "items": 1, "tokens_before": 300, "tokens_after": 100},
            ],
            "nope": [{"x": 1}],
        },
    )
    # The same output in a later request: stored once, still pointing at the first request.
    writer.put(request(2), extra={"masked": [{**masked, "request_id": None}]})
    assert writer.flush(5)
    db = open_readonly(db_path)
    rows = list(db.query("select * from masked"))
    assert len(rows) == 1
    blob = rows[0].pop("original")
    assert rows == [
        {
            "id": "sha256:abc",
            "created_at": "2026-11-21T12:00:01.000Z",
            "tool": "Bash",
            "kind": "truncate",
            "dialect": "openai",
            "lines": 2000,
            "bytes": 10000,
            "tokens_before": 2001,
            "tokens_after": 120,
            "request_id": "req-0001",
        }
    ]
    assert len(blob) < 200  # zlib-compressed
    assert store.read_masked(db, "sha256:abc") == original.encode()
    assert store.read_masked(db, "missing") is None
    assert list(db.query("select * from savings order by tool")) == [
        {"request_id": "req-0001", "tool": "Bash", "items": 3, "tokens_before": 2101,
         "tokens_after": 170},
        {"request_id": "req-0001", "tool": "Grep", "items": 1, "tokens_before": 300,
         "tokens_after": 100},
    ]  # fmt: skip
    assert count(db_path) == 2


def test_a_refused_request_takes_its_extra_rows_with_it_to_the_spool(db_path, caplog):
    w = StoreWriter(db_path, backoff_s=0.01)
    w.put(request(1))
    w.put(request(1), extra={"savings": [{"tool": "Bash", "items": 1}]})  # duplicate id
    assert w.close()
    assert count(db_path) == 1
    assert count(db_path, "savings") == 0
    assert "req-0001" in caplog.text and "IntegrityError" in caplog.text
    (line,) = spool_of(db_path).read_text().splitlines()
    kept = json.loads(line)
    assert kept["extra"] == {
        "savings": [
            {"request_id": "req-0001", "tool": "Bash", "items": 1, "tokens_before": None,
             "tokens_after": None}
        ]
    }  # fmt: skip
    assert kept["error"] == "IntegrityError: UNIQUE constraint failed: requests.id"


def test_conversations_view(writer, db_path):
    conv = "c" * 64
    writer.put(request(1, conversation_id=conv, conversation_title="<b>fix</b> the test",
                       context_window=1000, prompt_tokens=100, cost_usd=0.5))  # fmt: skip
    writer.put(request(2, conversation_id=conv, conversation_title="ignored later title",
                       context_window=1000, prompt_tokens=400, response_id="r2", cost_usd=0.25,
                       fallback_used=1))  # fmt: skip
    writer.put(request(3, conversation_id=conv, prompt_tokens=999, response_id="r2"))  # replay
    writer.put(request(4, conversation_id="d" * 64, prompt_tokens=1, completion_tokens=0))
    writer.put(request(5))
    assert writer.flush(5)
    db = open_readonly(db_path)
    assert list(db.query("select * from conversations order by id")) == [
        {
            "id": conv,
            "title": "<b>fix</b> the test",
            "client": "openai-python/1.2",
            "first_at": "2026-11-21T12:00:01.000Z",
            "last_at": "2026-11-21T12:00:02.000Z",
            "turns": 2,
            "prompt_tokens": 500,
            "completion_tokens": 10,
            "cached_tokens": 0,
            "cost_usd": 0.75,
            "unpriced": 0,
            "fallbacks": 1,
            "not_ok": 0,
            "last_prompt_tokens": 400,
            "context_window": 1000,
        },
        {
            "id": "d" * 64,
            "title": None,
            "client": "openai-python/1.2",
            "first_at": "2026-11-21T12:00:04.000Z",
            "last_at": "2026-11-21T12:00:04.000Z",
            "turns": 1,
            "prompt_tokens": 1,
            "completion_tokens": 0,
            "cached_tokens": 0,
            "cost_usd": None,
            "unpriced": 1,
            "fallbacks": 0,
            "not_ok": 0,
            "last_prompt_tokens": 1,
            "context_window": None,
        },
    ]


# -- retention ---------------------------------------------------------------------------------

NOW = datetime(2026, 11, 21, 15, 0, tzinfo=timezone.utc)


def seed_for_pruning(db_path):
    w = StoreWriter(db_path)
    rows = [
        # 2026-11-10: two counted requests, one replay, one estimate with calibration data
        request(1, started_at="2026-11-10T08:00:00.000Z", response_id="a", cost_usd=0.5,
                cached_tokens=4, prompt_tokens_estimate=8, completion_tokens_estimate=4,
                usage_source="provider"),
        request(2, started_at="2026-11-10T09:00:00.000Z", response_id="a", cost_usd=0.5),
        request(3, started_at="2026-11-10T10:00:00.000Z", outcome="error", prompt_tokens=None,
                completion_tokens=None, fallback_used=1),
        request(4, started_at="2026-11-11T23:59:59.999Z", model="mystery", cost_usd=None,
                usage_source="estimate"),
        # kept: from the cutoff day on
        request(5, started_at="2026-11-12T00:00:00.000Z", cost_usd=1.0),
        request(6, started_at="2026-11-21T14:00:00.000Z", cost_usd=2.0),
    ]  # fmt: skip
    for r in rows:
        extra = {"savings": [{"tool": "Bash", "items": 1, "tokens_before": 50, "tokens_after": 10}]}
        w.put(r, [{"provider": "moonshot", "error": "rate_limit: slow down"}], extra)
    w.put(
        request(7, started_at="2026-11-21T14:01:00.000Z"),
        extra={"masked": [
            {"id": "old", "created_at": "2026-11-01T00:00:00.000Z", "original": "x"},
            {"id": "new", "created_at": "2026-11-20T00:00:00.000Z", "original": "y"},
        ]},
    )  # fmt: skip
    assert w.close()


def test_prune_deletes_raw_rows_keeps_their_totals_and_vacuums(db_path):
    seed_for_pruning(db_path)
    with sqlite_utils.Database(db_path) as db:
        before = list(db.query("select * from daily order by day, model, usage_source"))
        assert before == store.daily_from_requests(db)
    result = store.prune(db_path, 10, now=NOW)
    assert result == store.PruneResult(
        cutoff="2026-11-12",
        requests=4,
        attempts=4,
        savings=4,
        masked=1,
        bytes_before=result.bytes_before,
        bytes_after=result.bytes_after,
        vacuumed=True,
    )
    assert result.bytes_after < result.bytes_before
    db = open_readonly(db_path)
    assert [r[0] for r in db.execute("select id from requests order by id")] == [
        "req-0005",
        "req-0006",
        "req-0007",
    ]
    assert [r[0] for r in db.execute("select id from masked")] == ["new"]
    assert list(db.query("select * from daily order by day, model, usage_source")) == before
    zero = dict.fromkeys(store.DAILY_SUMS, 0)
    old_days = "select * from daily where day < '2026-11-12' order by day, model, usage_source"
    assert list(db.query(old_days)) == [
        {
            **zero,
            "day": "2026-11-10",
            "provider": "moonshot",
            "model": "kimi-k2",
            "client": "openai-python/1.2",
            "route": "",
            "usage_source": "",
            "requests": 1,
            "errors": 1,
            "fallbacks": 1,
            "cost_usd": None,
        },
        {
            **zero,
            "day": "2026-11-10",
            "provider": "moonshot",
            "model": "kimi-k2",
            "client": "openai-python/1.2",
            "route": "",
            "usage_source": "provider",
            "requests": 1,  # req-0002 replayed req-0001's answer: not counted
            "ok": 1,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "cached_tokens": 4,
            "cost_usd": 0.5,
            "priced": 1,
            "calib_samples": 1,
            "calib_prompt_tokens": 10,
            "calib_prompt_estimate": 8,
            "calib_completion_tokens": 5,
            "calib_completion_estimate": 4,
        },
        {
            **zero,
            "day": "2026-11-11",
            "provider": "moonshot",
            "model": "mystery",
            "client": "openai-python/1.2",
            "route": "",
            "usage_source": "estimate",
            "requests": 1,
            "ok": 1,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "cost_usd": None,
            "unpriced": 1,
            "estimated": 1,
        },
    ]
    assert list(db.query("select * from daily_savings order by day")) == [
        {"day": "2026-11-10", "tool": "Bash", "items": 2, "tokens_before": 100,
         "tokens_after": 20},  # req-0002 is a replay: its savings are not counted
        {"day": "2026-11-11", "tool": "Bash", "items": 1, "tokens_before": 50,
         "tokens_after": 10},
        {"day": "2026-11-12", "tool": "Bash", "items": 1, "tokens_before": 50,
         "tokens_after": 10},
        {"day": "2026-11-21", "tool": "Bash", "items": 1, "tokens_before": 50,
         "tokens_after": 10},
    ]  # fmt: skip
    # Nothing more to do the second time; the rollup is not added twice.
    again = store.prune(db_path, 10, now=NOW)
    assert (again.requests, again.masked, again.vacuumed) == (0, 0, False)
    assert again.summary() == "Nothing older than 2026-11-12 to prune."
    assert db.execute("select sum(requests) from daily").fetchone() == (6,)


def test_a_late_row_for_a_pruned_day_adds_to_its_totals(db_path):
    seed_for_pruning(db_path)
    store.prune(db_path, 12, now=NOW)  # cutoff 2026-11-10: nothing of the 10th yet
    w = StoreWriter(db_path)
    w.put(request(8, started_at="2026-11-10T20:00:00.000Z", response_id="z", cost_usd=0.25,
                  usage_source="provider"))  # fmt: skip
    assert w.close()
    store.prune(db_path, 11, now=NOW)  # cutoff 2026-11-11
    store.prune(db_path, 10, now=NOW)
    db = open_readonly(db_path)
    row = next(db.query("select * from daily where usage_source = 'provider'"))
    assert (row["requests"], row["prompt_tokens"], row["cost_usd"]) == (2, 20, 0.75)


def test_prune_rejects_less_than_a_day(db_path):
    with pytest.raises(ValueError, match="at least 1 day"):
        store.prune(db_path, 0)


@pytest.mark.parametrize(
    "toml, expected",
    [
        ("", 90),
        ("[storage]\nretention_days = 7\n", 7),
        ("[storage]\nretention_days = 0\n", None),
    ],
)
def test_retention_days(tmp_path, toml, expected):
    from kimi_intercept.config.settings import load_config

    (tmp_path / "c.toml").write_text(toml)
    assert store.retention_days(load_config(tmp_path / "c.toml")) == expected


@pytest.mark.parametrize("value", ['"30"', "-1", "1.5", "true", "40000"])
def test_retention_days_rejects(tmp_path, value):
    from kimi_intercept.config.settings import ConfigError, load_config

    (tmp_path / "c.toml").write_text(f"[storage]\nretention_days = {value}\n")
    with pytest.raises(ConfigError, match=r"storage.retention_days must be a whole number"):
        store.retention_days(load_config(tmp_path / "c.toml"))


def test_prune_on_start(tmp_path, caplog):
    from kimi_intercept.config.settings import load_config

    db_path = tmp_path / "kimi.db"
    (tmp_path / "c.toml").write_text(f'[storage]\ndatabase = "{db_path}"\nretention_days = 5\n')
    cfg = load_config(tmp_path / "c.toml")
    assert store.prune_on_start(cfg) is None  # no database yet
    w = StoreWriter(db_path)
    w.put(request(1, started_at="2020-01-01T00:00:00.000Z"))
    w.put(request(2, started_at=datetime.now(timezone.utc).isoformat()))
    assert w.close()
    with caplog.at_level(logging.INFO, logger="kimi_intercept.storage.store"):
        result = store.prune_on_start(cfg)
    assert result is not None and result.requests == 1
    assert "Pruned rows older than" in caplog.text
    (tmp_path / "c.toml").write_text(f'[storage]\ndatabase = "{db_path}"\nretention_days = "x"\n')
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.storage.store"):
        assert store.prune_on_start(load_config(tmp_path / "c.toml")) is None
    assert "retention_days must be" in caplog.text


def test_daily_totals_always_equal_a_recount_of_the_raw_rows(db_path):
    """Random inserts (replays, NULLs, estimates), updates and savings: the triggers keep
    ``daily`` and ``daily_savings`` equal to sums over the counted raw rows."""
    import random

    rnd = random.Random(6)
    db = open_db(db_path)
    maybe = lambda v: v if rnd.random() < 0.8 else None  # noqa: E731
    for n in range(400):
        row = request(
            n,
            started_at=f"2026-11-{rnd.randint(1, 3):02d}T{rnd.randint(0, 23):02d}:00:00.000Z",
            provider=rnd.choice(["kimi", "deepseek", None]),
            model=rnd.choice(["kimi-k2.6", "deepseek-chat", None]),
            client=rnd.choice(["a", "b", None]),
            route=rnd.choice(["reroute", "passthrough", None]),
            outcome=rnd.choice(["ok", "ok", "error", "incomplete", "client_abort", None]),
            fallback_used=maybe(rnd.randint(0, 1)),
            prompt_tokens=maybe(rnd.randint(0, 5000)),
            completion_tokens=maybe(rnd.randint(0, 500)),
            cached_tokens=maybe(rnd.randint(0, 100)),
            reasoning_tokens=maybe(rnd.randint(0, 50)),
            cost_usd=maybe(rnd.random()),
            usage_source=rnd.choice(["provider", "estimate", None]),
            prompt_tokens_estimate=maybe(rnd.randint(0, 5000)),
            completion_tokens_estimate=maybe(rnd.randint(0, 500)),
            response_id=maybe(f"resp-{rnd.randint(0, 60)}"),
        )
        db.table("requests").insert(row)
        if rnd.random() < 0.3:
            db.table("savings").insert(
                {"request_id": row["id"], "tool": rnd.choice(["Bash", "Grep"]),
                 "items": 1, "tokens_before": 100, "tokens_after": 10}, ignore=True
            )  # fmt: skip
    for n in rnd.sample(range(400), 120):  # what an importer does to a grown task
        db.table("requests").upsert(
            {"id": f"req-{n:04d}", "prompt_tokens": rnd.randint(0, 9000),
             "cost_usd": maybe(rnd.random()), "usage_source": rnd.choice(["provider", None]),
             "started_at": "2026-11-04T00:00:00.000Z", "model": "grown"}, pk="id"
        )  # fmt: skip
    daily = list(
        db.query(f"select * from daily where requests != 0 order by {', '.join(store.DAILY_KEYS)}")
    )
    recount = store.daily_from_requests(db)
    for row in daily + recount:
        row["cost_usd"] = None if row["cost_usd"] is None else round(row["cost_usd"], 9)
    for row in daily:
        if not row["priced"]:
            row["cost_usd"] = None  # a sum that went back to zero priced rows
    assert daily == recount
    assert (
        db.execute("select count(*) from requests where duplicate_of is not null").fetchone()[0] > 0
    )
    savings = list(db.query(
        "select coalesce(substr(r.started_at, 1, 10), '') as day, s.tool, sum(s.items) as items, "
        "sum(s.tokens_before) as tokens_before, sum(s.tokens_after) as tokens_after "
        "from savings s join requests r on r.id = s.request_id where r.duplicate_of is null "
        "group by 1, 2 order by 1, 2"
    ))  # fmt: skip
    # savings are filed under the day their request had when they were written
    assert (
        sum(r["items"] for r in savings)
        == next(db.query("select sum(items) as n from daily_savings"))["n"]
    )


def test_masked_text_with_a_lone_surrogate_and_a_bad_extra_row(writer, db_path, caplog):
    text = "ok \udcff bytes that were not UTF-8"
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.storage.store"):
        writer.put(request(1), extra={"masked": [{"id": "s", "original": text}]})
        writer.put(request(2), extra={"masked": [{"id": "t", "original": object()}]})
        assert writer.flush(5)
    db = open_readonly(db_path)
    assert store.read_masked(db, "s").decode("utf-8", "surrogatepass") == text
    assert count(db_path) == 2  # the request with the bad extra row is still recorded
    assert count(db_path, "masked") == 1
    assert "store: request req-0002: masked rows not recorded: TypeError" in caplog.text


def test_cli_masked_show(writer, db_path):
    from click.testing import CliRunner

    from kimi_intercept.commands.cli import main

    text = "line 1\nline \udcff 2\n"
    writer.put(request(1), extra={"masked": [
        {"id": "0123456789abcdef", "original": text},
        {"id": "0123456789abffff", "original": "other"},
        {"id": "fedcba9876543210"},  # store_originals = false
    ]})  # fmt: skip
    assert writer.flush(5)
    run = lambda *a: CliRunner().invoke(main, ["masked", "show", "--db", str(db_path), *a])  # noqa: E731
    shown = run("0123456789abcdef")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout_bytes == text.encode("utf-8", "surrogatepass")
    assert run("fedcba98").output == (
        "Error: Masked item fedcba9876543210 was recorded without its original "
        "([sanitizer] store_originals = false)\n"
    )
    assert "matches several items" in run("0123456789ab").output
    assert "No masked item '0123'" in run("0123").output
    assert run("ffffff").exit_code == 1


def test_rows_put_together_are_written_in_one_transaction_and_a_flush_does_not_wait(
    db_path, monkeypatch
):
    """The writer sleeps through its linger after a row (puts do not wake it), then writes all
    that came meanwhile at once; a flush or close wakes it, so nobody waits for the linger."""
    from kimi_intercept.storage import store as store_module

    batches: list[int] = []
    real = store_module.insert_entries

    def counting(db, entries, **kw):
        batches.append(len(entries))
        return real(db, entries, **kw)

    monkeypatch.setattr(store_module, "insert_entries", counting)
    w = StoreWriter(db_path, linger_s=30)  # a linger no flush could sit out
    try:
        for n in range(5):
            w.put(request(n))
        t0 = time.monotonic()
        assert w.flush(10)
        assert time.monotonic() - t0 < 10  # not the 30 s linger
        assert batches == [5]
        assert count(db_path) == 5
    finally:
        w.close()
