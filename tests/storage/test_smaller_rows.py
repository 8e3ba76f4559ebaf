"""m009, smaller request rows (#16): a database of the previous schema upgrades in place and its
rows report as before next to new ones; a conversation's title is stored once and still shows
everywhere; new request ids are short and time-ordered."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
import sqlite_utils

from kimi_intercept.accounting import calibration
from kimi_intercept.commands import status, top_data
from kimi_intercept.reports import conversations, money, views
from kimi_intercept.routing.plan import conversation_key
from kimi_intercept.storage import StoreWriter, open_db, open_readonly
from kimi_intercept.storage.ids import ALPHABET, new_request_id
from kimi_intercept.storage.schema import migrations
from kimi_intercept.storage.titles import TitleMemo, conversation_titles

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def iso(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def row(id: str, started_at: str, **extra) -> dict:
    return {
        "id": id, "started_at": started_at, "client": "claude-cli/2.1", "provider": "kimi",
        "model": "kimi-k2.6", "outcome": "ok", "status_code": 200, "usage_source": "provider",
        "prompt_tokens": 100, "completion_tokens": 10, "cost_usd": 0.01,
        "prompt_tokens_estimate": 90, "completion_tokens_estimate": 9, **extra,
    }  # fmt: skip


def attempt(started_at: str) -> dict:
    return {"attempt": 1, "provider": "kimi", "model": "kimi-k2.6", "started_at": started_at,
            "status_code": 200, "duration_ms": 5.0}  # fmt: skip


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "kimi.db"


def old_database(path) -> tuple[str, list[str]]:
    """A database at m008 with one conversation written the old way: 32-hex uuid ids, the
    64-hex conversation id and its title on every row. Returns (conversation id, request ids)."""
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before="m009_smaller_rows")
    conv = hashlib.sha256(b"x-kimi-session:old").hexdigest()
    ids = [hashlib.md5(str(n).encode()).hexdigest() for n in range(3)]
    for n, id in enumerate(ids):
        at = iso(200 - n)
        db.table("requests").insert(
            row(id, at, conversation_id=conv, conversation_title="Old: fix the build")
        )
        db.table("attempts").insert({"request_id": id, **attempt(at)})
    db.close()
    return conv, ids


def index_names(path) -> set[str]:
    with sqlite3.connect(path) as con:
        return {r[0] for r in con.execute("select name from sqlite_master where type = 'index'")}


def test_an_m008_database_upgrades_in_place_and_reports_old_rows_next_to_new_ones(db_path):
    old_conv, old_ids = old_database(db_path)
    assert {"idx_attempts_started_at", "idx_requests_calibration",
            "idx_requests_conversation_id_started_at"} <= index_names(db_path)  # fmt: skip

    writer = StoreWriter(db_path)  # applies m009
    new_conv = conversation_key([("x-kimi-session", "new")], {})
    for n in range(3):
        at = iso(30 - n)
        writer.put(row(new_request_id(), at, conversation_id=new_conv,
                       conversation_title="New: add a test"), [attempt(at)])  # fmt: skip
    assert writer.close()

    names = index_names(db_path)
    assert "idx_requests_conversation_id" in names
    assert not names & {"idx_attempts_started_at", "idx_requests_calibration",
                        "idx_requests_conversation_id_started_at"}  # fmt: skip
    db = open_readonly(db_path)
    stored = db.execute(
        "select id, conversation_id, conversation_title from requests order by started_at"
    ).fetchall()
    assert [r[0] for r in stored[:3]] == old_ids  # old rows kept as they were
    assert [len(r[0]) for r in stored] == [32] * 3 + [26] * 3
    assert [len(r[1]) for r in stored] == [64] * 3 + [32] * 3
    assert [r[2] for r in stored] == ["Old: fix the build"] * 3 + ["New: add a test", None, None]

    assert db.execute(
        "select id, title, turns from conversations order by first_at"
    ).fetchall() == [
        (old_conv, "Old: fix the build", 3),
        (new_conv, "New: add a test", 3),
    ]
    listed, count = conversations.conversation_rows(db, None, None, None)
    assert count == 2
    assert [(c["id"], c["title"], c["requests"]) for c in listed] == [
        (new_conv, "New: add a test", 3),
        (old_conv, "Old: fix the build", 3),
    ]
    assert {s["session"]: s["title"] for s in views.session_rows(db)} == {
        old_conv: "Old: fix the build",
        new_conv: "New: add a test",
    }
    assert {c["id"]: c["title"] for c in money.top_conversations(db, None, None)} == {
        old_conv: "Old: fix the build",
        new_conv: "New: add a test",
    }
    # calibration learns from old and new rows alike (no more partial index of its own)
    [cal] = calibration.learn(db).values()
    assert (cal.samples, cal.prompt_ratio) == (6, pytest.approx(100 / 90))
    # the status command finds the last hour's attempts without an index on their start
    assert [(a["provider"], a["tries"]) for a in status.recent_attempts(db_path, 60)] == [
        ("kimi", 3)
    ]
    assert [(a["provider"], a["tries"]) for a in status.recent_attempts(db_path, 240)] == [
        ("kimi", 6)
    ]


def test_the_title_shows_for_a_conversation_whose_later_rows_have_none(db_path):
    writer = StoreWriter(db_path)
    conv = conversation_key([("x-kimi-session", "s")], {})
    for n, minutes_ago in enumerate((3 * 24 * 60, 20, 10)):  # the first turn 3 days ago
        writer.put(row(f"r{n}", iso(minutes_ago), conversation_id=conv,
                       conversation_title="Why does the build fail?"))  # fmt: skip
    assert writer.close()
    db = open_readonly(db_path)
    assert [r[0] for r in db.execute("select conversation_title from requests order by rowid")] == [
        "Why does the build fail?", None, None,
    ]  # fmt: skip
    today = NOW.date().isoformat()  # a range without the titled first row
    listed, _ = conversations.conversation_rows(db, today, None, None)
    assert [c["title"] for c in listed] == ["Why does the build fail?"]
    assert [s["title"] for s in views.session_rows(db, today)] == ["Why does the build fail?"]
    assert [c["title"] for c in money.top_conversations(db, today, None)] == [
        "Why does the build fail?"
    ]
    assert conversation_titles(db, [conv, "unknown", None]) == {conv: "Why does the build fail?"}
    reader = top_data.Reader(db_path, db_path.with_name("none.status.json"))
    try:
        snap = reader.snapshot()
    finally:
        reader.close()
    assert snap.error is None
    assert [c["title"] for c in snap.conversations] == ["Why does the build fail?"]
    assert {r["conversation_title"] for r in snap.latest} == {"Why does the build fail?"}


def test_after_a_restart_the_next_row_carries_the_title_once_more(db_path):
    conv = "c" * 32
    for run in range(2):
        writer = StoreWriter(db_path)
        for n in range(2):
            writer.put(row(f"run{run}-{n}", iso(10 - run - n / 10), conversation_id=conv,
                           conversation_title="t"))  # fmt: skip
        assert writer.close()
    db = open_readonly(db_path)
    titles = [r[0] for r in db.execute("select conversation_title from requests order by rowid")]
    assert titles == ["t", None, "t", None]


def test_a_refused_titled_row_leaves_the_title_to_the_next_row(db_path):
    open_db(db_path).table("requests").insert(row("taken", iso(60)))
    writer = StoreWriter(db_path)
    writer.put(row("taken", iso(5), conversation_id="d" * 32, conversation_title="t"))  # refused
    assert writer.flush(5)
    writer.put(row("next", iso(4), conversation_id="d" * 32, conversation_title="t"))
    assert writer.close()
    db = open_readonly(db_path)
    assert db.execute("select conversation_title from requests where id = 'next'").fetchone() == (
        "t",
    )


def test_the_title_memory_is_bounded():
    memo = TitleMemo(limit=2)
    rows = [{"conversation_id": c, "conversation_title": c} for c in "abca"]
    for r in rows:
        memo.strip(r)
    # "a" was forgotten when "c" came (the least recently written), so it is titled again
    assert [r["conversation_title"] for r in rows] == ["a", "b", "c", "a"]
    again = {"conversation_id": "c", "conversation_title": "c"}
    memo.strip(again)
    assert again["conversation_title"] is None
    untitled = {"conversation_id": "e", "conversation_title": None}
    memo.strip(untitled)  # a row without a title does not mark its conversation titled
    later = {"conversation_id": "e", "conversation_title": "e"}
    memo.strip(later)
    assert later["conversation_title"] == "e"


def test_new_request_ids_are_short_time_ordered_ulids():
    ids = [new_request_id(ms) for ms in (0, 1, 1469918176385, 2**48 - 1)]
    assert all(len(i) == 26 and set(i) <= set(ALPHABET) for i in ids)
    assert ids == sorted(ids)
    assert ids[2][:10] == "01aryz6s41"  # the ULID spec's example time
    made = [new_request_id() for _ in range(2000)]
    assert len(set(made)) == 2000
    assert made == sorted(made, key=lambda i: i[:10])  # by time; the random part is not ordered
    assert re.fullmatch(r"[0-9a-hjkmnp-tv-z]{26}", made[0])


def test_conversation_ids_are_the_first_128_bits_of_the_same_sha256():
    conv = conversation_key([("x-kimi-session", "abc")], {})
    assert conv == hashlib.sha256(b"x-kimi-session:abc").hexdigest()[:32]
    fingerprinted = conversation_key([], {"messages": [{"role": "user", "content": "hi"}]})
    assert re.fullmatch(r"[0-9a-f]{32}", fingerprinted)
