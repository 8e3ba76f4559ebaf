from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from kimi_intercept.commands.cli import main
from kimi_intercept.commands.importers import (
    MalformedLedger,
    RefusedPath,
    import_config,
    import_ledger,
    resolve_path,
)
from kimi_intercept.config.settings import ConfigError, load_config
from kimi_intercept.storage import open_readonly

TASKS = [
    {"id": "1755880998123", "ulid": "01K3", "ts": 1795258800000, "task": "SECRET task text",
     "tokensIn": 120_000, "tokensOut": 4_000, "cacheWrites": 0, "cacheReads": 100_000,
     "totalCost": 0.4312, "size": 1048576, "cwdOnTaskInitialization": "/home/u/secret-proj",
     "modelId": "kimi-k2.6"},
    {"id": "1755880998999", "ts": 1795262400000, "task": "SECRET other", "tokensIn": 1_000,
     "tokensOut": 200, "cacheWrites": 5_000, "cacheReads": 20_000, "totalCost": 0.05,
     "modelId": "acme-private-model"},
    {"id": "no-ts", "tokensIn": 1},
    {"id": "bad", "ts": 1795262400000, "tokensIn": "many"},
]  # fmt: skip

EVENTS = [
    {"timestamp": "2026-11-21T10:00:00.000Z", "userId": "u-SECRET", "userAgent": "VSCode",
     "selectedProfileId": "local", "eventName": "tokensGenerated", "schema": "0.2.0",
     "model": "deepseek-chat", "provider": "deepseek", "promptTokens": 1000,
     "generatedTokens": 100},
    {"timestamp": "2026-11-21T10:00:00.000Z", "eventName": "tokensGenerated",
     "model": "deepseek-chat", "provider": "deepseek", "promptTokens": 1000,
     "generatedTokens": 100},  # the same numbers again: a second event, not a duplicate
    {"timestamp": 1795258800123, "model": "llama3", "provider": "ollama", "promptTokens": 10,
     "generatedTokens": 5},
    {"timestamp": "2026-11-21T11:00:00Z", "eventName": "chatFeedback", "promptTokens": 9},
]  # fmt: skip


@pytest.fixture
def cfg(tmp_path):
    return load_config(tmp_path / "none.toml")


@pytest.fixture
def cline_file(tmp_path):
    path = tmp_path / "state" / "taskHistory.json"
    path.parent.mkdir()
    path.write_text(json.dumps(TASKS, indent=2))
    return path


@pytest.fixture
def continue_file(tmp_path):
    path = tmp_path / "dev_data" / "tokensGenerated.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    return path


def rows(db):
    return list(
        open_readonly(db).query(
            "select id, started_at, client, model, prompt_tokens, completion_tokens, "
            "cached_tokens, cache_write_tokens, usage_source, route, cost_usd, cost_source, "
            "details, conversation_id is not null as has_conversation from requests order by id"
        )
    )


def test_cline_good_file(tmp_path, cfg, cline_file):
    db = tmp_path / "kimi.db"
    result = import_ledger("cline", db, cfg, cline_file)
    assert (result.added, result.updated, result.unchanged) == (2, 0, 0)
    assert result.skipped == [
        "task no-ts: no ts",
        "task bad: tokensIn is not a number >= 0: 'many'",
    ]
    assert rows(db) == [
        {
            "id": "import:cline:1755880998123",
            "started_at": "2026-11-21T11:00:00.000Z",
            "client": "cline",
            "model": "kimi-k2.6",
            "prompt_tokens": 120_000,  # OpenAI-style: the cache reads are inside tokensIn
            "completion_tokens": 4_000,
            "cached_tokens": 100_000,
            "cache_write_tokens": 0,
            "usage_source": "ledger",
            "route": "import:cline",
            # our kimi-k2.6 price: (20,000 * 0.95 + 100,000 * 0.16 + 4,000 * 4.00) / 1e6
            "cost_usd": 0.051,
            "cost_source": None,
            "details": '{"cacheReads": 100000, "cacheWrites": 0, "tokensIn": 120000, '
            '"tokensOut": 4000, "totalCost": 0.4312}',
            "has_conversation": 1,
        },
        {
            "id": "import:cline:1755880998999",
            "started_at": "2026-11-21T12:00:00.000Z",
            "client": "cline",
            "model": "acme-private-model",
            "prompt_tokens": 26_000,  # Anthropic-style (reads + writes > tokensIn): all three
            "completion_tokens": 200,
            "cached_tokens": 20_000,
            "cache_write_tokens": 5_000,
            "usage_source": "ledger",
            "route": "import:cline",
            "cost_usd": 0.05,  # a model our table does not price: Cline's own figure
            "cost_source": "ledger",
            "details": '{"cacheReads": 20000, "cacheWrites": 5000, "tokensIn": 1000, '
            '"tokensOut": 200, "totalCost": 0.05}',
            "has_conversation": 1,
        },
    ]
    assert result.summary() == (
        f"Imported Cline ledger {cline_file}: 2 new, 0 updated, 0 unchanged; 2 skipped "
        "(task no-ts: no ts; task bad: tokensIn is not a number >= 0: 'many')."
    )


def test_cline_cache_writes_are_billed_at_the_cache_write_price(tmp_path, cline_file):
    """Anthropic bills 5-minute cache writes at 1.25x the input price (Cline does not say the
    TTL: the default 5 minutes); https://docs.claude.com/en/docs/build-with-claude/prompt-caching"""
    (tmp_path / "c.toml").write_text(
        '[[prices."acme-private-model"]]\nsince = "2026-01-01"\ninput_per_mtok = 3.0\n'
        "cached_input_per_mtok = 0.3\noutput_per_mtok = 15.0\n"
    )
    db = tmp_path / "kimi.db"
    import_ledger("cline", db, load_config(tmp_path / "c.toml"), cline_file)
    claude = next(r for r in rows(db) if r["model"] == "acme-private-model")
    assert (claude["prompt_tokens"], claude["cached_tokens"], claude["cache_write_tokens"]) == (
        26_000, 20_000, 5_000,
    )  # fmt: skip
    by_hand = (1_000 * 3.0 + 20_000 * 0.3 + 5_000 * 3.0 * 1.25 + 200 * 15.0) / 1e6
    assert claude["cost_usd"] == pytest.approx(by_hand, abs=1e-8)
    assert claude["cost_source"] is None


def test_numbers_only_no_task_text_is_stored(tmp_path, cfg, cline_file, continue_file):
    db = tmp_path / "kimi.db"
    import_ledger("cline", db, cfg, cline_file)
    import_ledger("continue", db, cfg, continue_file)
    dump = "\n".join(open_readonly(db).iterdump())
    for secret in ("SECRET", "secret-proj", "ulid", "01K3", "VSCode"):
        assert secret not in dump


def test_reimport_never_duplicates_and_updates_a_grown_task(tmp_path, cfg, cline_file):
    db = tmp_path / "kimi.db"
    import_ledger("cline", db, cfg, cline_file)
    again = import_ledger("cline", db, cfg, cline_file)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 2)
    grown = [dict(TASKS[0], tokensOut=5_000), *TASKS[1:]]
    cline_file.write_text(json.dumps(grown))
    third = import_ledger("cline", db, cfg, cline_file)
    assert (third.added, third.updated, third.unchanged) == (0, 1, 1)
    assert len(rows(db)) == 2
    assert rows(db)[0]["completion_tokens"] == 5_000
    # the daily totals follow the update (no double count)
    totals = next(
        open_readonly(db).query("select sum(requests) n, sum(completion_tokens) c from daily")
    )
    assert totals == {"n": 2, "c": 5_200}


def test_continue_good_file_and_idempotent(tmp_path, cfg, continue_file):
    db = tmp_path / "kimi.db"
    result = import_ledger("continue", db, cfg, continue_file)
    assert (result.added, result.skipped) == (3, [])
    got = sorted(rows(db), key=lambda r: r["started_at"])
    keys = ("started_at", "model", "prompt_tokens", "completion_tokens", "route", "cost_usd",
            "details")  # fmt: skip
    assert [tuple(r[k] for k in keys) for r in got] == [
        ("2026-11-21T10:00:00.000Z", "deepseek-chat", 1000, 100, "import:continue",
         0.000322, '{"provider": "deepseek"}'),  # (1000 * 0.28 + 100 * 0.42) / 1e6
        ("2026-11-21T10:00:00.000Z", "deepseek-chat", 1000, 100, "import:continue",
         0.000322, '{"provider": "deepseek"}'),
        ("2026-11-21T11:00:00.123Z", "llama3", 10, 5, "import:continue", None,
         '{"provider": "ollama"}'),  # unpriced, never $0
    ]  # fmt: skip
    assert all(r["id"].startswith("import:continue:") for r in got)
    again = import_ledger("continue", db, cfg, continue_file)
    assert (again.added, again.unchanged) == (0, 3)
    with continue_file.open("a") as f:  # the tool appends a line
        f.write(json.dumps(EVENTS[0]) + "\n")
    third = import_ledger("continue", db, cfg, continue_file)
    assert (third.added, third.unchanged) == (1, 3)


def test_symlink_refused(tmp_path, cfg, cline_file):
    link = tmp_path / "elsewhere" / "taskHistory.json"
    link.parent.mkdir()
    link.symlink_to(cline_file)
    with pytest.raises(RefusedPath, match="is a symbolic link; refusing to follow it"):
        import_ledger("cline", tmp_path / "kimi.db", cfg, link)
    assert not (tmp_path / "kimi.db").exists()


def test_symlink_to_a_secret_named_like_the_ledger_refused(tmp_path, cfg):
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN KEY-----")
    link = tmp_path / "taskHistory.json"
    link.symlink_to(secret)
    with pytest.raises(RefusedPath, match="symbolic link"):
        import_ledger("cline", tmp_path / "kimi.db", cfg, link)


def test_directory_refused(tmp_path, cfg):
    folder = tmp_path / "taskHistory.json"
    folder.mkdir()
    with pytest.raises(RefusedPath, match="is a directory"):
        import_ledger("cline", tmp_path / "kimi.db", cfg, folder)


def test_other_path_refused(tmp_path, cfg, cline_file):
    other = tmp_path / "passwd"
    other.write_text("root:x:0:0")
    with pytest.raises(RefusedPath, match="a file named taskHistory.json; refusing"):
        import_ledger("cline", tmp_path / "kimi.db", cfg, other)
    # With [import] cline set, only that very file.
    (tmp_path / "c.toml").write_text(f'[import]\ncline = "{cline_file}"\n')
    pinned = load_config(tmp_path / "c.toml")
    decoy = tmp_path / "decoy" / "taskHistory.json"
    decoy.parent.mkdir()
    decoy.write_text("[]")
    with pytest.raises(RefusedPath, match=r"only the file named in \[import\] cline may be"):
        import_ledger("cline", tmp_path / "kimi.db", pinned, decoy)
    same = cline_file.parent / ".." / "state" / "taskHistory.json"  # the same file
    assert import_ledger("cline", tmp_path / "kimi.db", pinned, same).added == 2
    assert import_ledger("cline", tmp_path / "kimi.db", pinned).unchanged == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_not_a_regular_file_refused(tmp_path, cfg):
    fifo = tmp_path / "tokensGenerated.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(RefusedPath, match="not a regular file"):
        import_ledger("continue", tmp_path / "kimi.db", cfg, fifo)


def test_malformed_json_reported_with_the_line(tmp_path, cfg, cline_file, continue_file):
    cline_file.write_text('[\n  {"id": "1", "ts": 1},\n  {"id": "2" "ts": 2}\n]\n')
    with pytest.raises(MalformedLedger) as e:
        import_ledger("cline", tmp_path / "kimi.db", cfg, cline_file)
    assert str(e.value) == (
        f"{cline_file}: line 3, column 14: not valid JSON (Expecting ',' delimiter)"
    )
    cline_file.write_text('{"id": "1"}')
    with pytest.raises(MalformedLedger, match="expected a JSON array of tasks, got dict"):
        import_ledger("cline", tmp_path / "kimi.db", cfg, cline_file)
    lines = [json.dumps(EVENTS[0]), "{oops", json.dumps(EVENTS[1])]
    continue_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedLedger) as e:
        import_ledger("continue", tmp_path / "kimi.db", cfg, continue_file)
    assert str(e.value) == (
        f"{continue_file}: line 2, column 2: not valid JSON (Expecting property name enclosed "
        "in double quotes); fix or remove that line and import again"
    )
    assert not (tmp_path / "kimi.db").exists()  # nothing written


def test_an_incomplete_last_line_is_skipped(tmp_path, cfg, continue_file):
    continue_file.write_text(json.dumps(EVENTS[0]) + '\n{"timestamp": "2026-')
    result = import_ledger("continue", tmp_path / "kimi.db", cfg, continue_file)
    assert (result.added, result.skipped) == (1, ["line 2: incomplete last line"])


def test_default_location(tmp_path, cfg, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(RefusedPath, match="No Continue tokensGenerated.jsonl found"):
        resolve_path("continue", cfg, None)
    path = tmp_path / ".continue" / "dev_data" / "0.2.0" / "tokensGenerated.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("")
    assert resolve_path("continue", cfg, None) == path


@pytest.mark.parametrize(
    "toml, message",
    [
        ('[import]\ncursor = "x"\n', "[import] unknown key `cursor` — valid keys: cline, continue"),
        ('[import]\nclien = "x"\n', "[import] unknown key `clien` — did you mean `cline`?"),
        ("[import]\ncline = 3\n", "import.cline must be the path of Cline's taskHistory.json, "
         "got 3"),
    ],
)  # fmt: skip
def test_import_config_validated(tmp_path, toml, message):
    (tmp_path / "c.toml").write_text(toml)
    with pytest.raises(ConfigError) as e:
        import_config(load_config(tmp_path / "c.toml"))
    assert str(e.value) == message


def test_cli_import(tmp_path, cline_file):
    result = CliRunner().invoke(main, ["import", "cline", str(cline_file), "--db", "k.db"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Imported Cline ledger {cline_file}: 2 new, 0 updated")
    again = CliRunner().invoke(main, ["import", "cline", str(cline_file), "--db", "k.db"])
    assert "0 new, 0 updated, 2 unchanged" in again.output
    bad = CliRunner().invoke(main, ["import", "cline", str(tmp_path), "--db", "k.db"])
    assert bad.exit_code == 1
    assert "Error: " in bad.output and "refusing to read anything else" in bad.output
    assert "Traceback" not in bad.output


def test_imported_rows_show_in_the_report(tmp_path, cfg, cline_file, continue_file):
    from reportrows import Tables

    from kimi_intercept.reports import pages as report

    db = tmp_path / "kimi.db"
    import_ledger("cline", db, cfg, cline_file)
    import_ledger("continue", db, cfg, continue_file)
    out = tmp_path / "site"
    report.build_report(db, out, cfg=cfg)
    sources = Tables((out / "index.html").read_text()).tables["sources"]
    assert [r[:2] for r in sources[1:]] == [["import:continue", "3"], ["import:cline", "2"]]
    conversations = Tables((out / "conversations.html").read_text()).tables["conversations"]
    assert [r[0] for r in conversations[1:]] == ["Cline task", "Cline task"]
    latest = (out / "index.html").read_text()
    assert "ledger</span>" in latest  # Cline's own cost is labelled as such
