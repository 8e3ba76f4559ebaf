"""Report speed and database size at scale: generate N request rows, time the report.

Usage: python benchmarks/report.py [--rows 1000000] [--days 90] [--keep DIR]

Generates a database through the real schema (``store.open_db``: every index and the duplicate
trigger) with realistic shapes — 4 provider/model pairs, 5 clients, conversations of ~25 turns
with growing prompts, 3 % failures, 5 % fallbacks with a failed attempt row, 3 % estimated
usage, 10 % rows carrying our estimate next to the provider's usage (calibration), 0.1 %
replayed responses, sanitizer savings on 20 % and masked originals on 2 % — then times
``kimi-intercept report`` (every page), ``stats``, a streamed CSV export and ``prune``, and
prints the bytes per request row (file size after ``VACUUM``, per table and index from
``dbstat``). A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

from kimi_intercept.commands import export
from kimi_intercept.config.settings import load_config
from kimi_intercept.reports.pages import build_report, read_facts
from kimi_intercept.storage import REQUEST_COLUMNS, open_db, open_readonly, prune
from kimi_intercept.storage.ids import new_request_id

MODELS = [  # provider, model, share, input, cached, output (USD / 1M)
    ("kimi", "kimi-k2.6", 0.60, 0.95, 0.16, 4.00),
    ("kimi", "kimi-k2.5", 0.10, 0.60, 0.10, 3.00),
    ("deepseek", "deepseek-chat", 0.20, 0.28, 0.028, 0.42),
    ("openai", "gpt-4o", 0.10, 2.50, 1.25, 10.00),
]
CLIENTS = ["claude-cli/2.1.3", "OpenAI/Python 2.54.0", "Cline/3.2", "continue/1.0", "Cursor/1.4"]
FAILURES = [
    "rate_limit: 429 too many requests",
    "server_error: HTTP 502",
    "timeout: no first byte within 60 s",
    "overloaded: engine overloaded",
    "skipped: circuit open",
]


def generate(path: Path, rows: int, days: int, seed: int = 7) -> float:
    """Write ``rows`` requests (and their attempts, savings, masked rows); return seconds."""
    rnd = random.Random(seed)
    t0 = time.perf_counter()
    open_db(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    columns = list(REQUEST_COLUMNS)
    insert = f"INSERT INTO requests ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    end = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days - 1)
    step = (days * 86400.0) / rows
    weights = [m[2] for m in MODELS]
    conversations = max(1, rows // 25)
    turn = [0] * conversations
    batch_r, batch_a, batch_s, batch_m = [], [], [], []
    last_response = None
    conn.execute("BEGIN")
    for n in range(rows):
        started = start + timedelta(seconds=n * step)
        iso = started.strftime("%Y-%m-%dT%H:%M:%S.") + f"{started.microsecond // 1000:03d}Z"
        provider, model, _, p_in, p_cached, p_out = rnd.choices(MODELS, weights)[0]
        conv = rnd.randrange(conversations)
        turn[conv] += 1
        prompt = min(250_000, 2000 + turn[conv] * rnd.randint(800, 3000))
        cached = int(prompt * rnd.uniform(0.5, 0.95)) if turn[conv] > 1 else 0
        completion = rnd.randint(20, 2000)
        r = rnd.random()
        outcome = "ok" if r > 0.03 else ("error" if r > 0.01 else "incomplete")
        fallback = int(rnd.random() < 0.05)
        estimate = rnd.random() < 0.03
        response_id = last_response if last_response and rnd.random() < 0.001 else f"chatcmpl-{n:x}"
        last_response = response_id
        if outcome == "error":
            prompt = completion = cached = None
        cost = (
            None
            if prompt is None
            else round(((prompt - cached) * p_in + cached * p_cached + completion * p_out) / 1e6, 9)
        )
        calib = not estimate and prompt is not None and rnd.random() < 0.10
        row = {
            "id": new_request_id(int(started.timestamp() * 1000)),  # as the proxy makes them
            "started_at": iso,
            "client": CLIENTS[conv % len(CLIENTS)],
            "client_host": "127.0.0.1",
            "client_model": "gpt-4o",
            "provider": provider,
            "model": model,
            "status_code": 200 if outcome != "error" else 502,
            "outcome": outcome,
            "attempts": 1 + fallback,
            "fallback_used": fallback,
            "ttft_ms": round(rnd.lognormvariate(6.5, 0.6), 2),
            "duration_ms": round(rnd.lognormvariate(8.5, 0.8), 2),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cached_tokens": None if estimate else cached,
            "reasoning_tokens": None,
            "usage_source": None if prompt is None else ("estimate" if estimate else "provider"),
            "cost_usd": cost,
            "route": "passthrough" if provider == "openai" else "reroute",
            "stream": 1,
            "response_id": None if prompt is None else response_id,
            "host": "api.openai.com",
            "error": "server_error: HTTP 502" if outcome == "error" else None,
            "details": '{"finish_reason": "stop", "events": 42}',
            "dialect": "openai",
            "conversation_id": f"{conv:032x}",
            # stored on a conversation's first row only, as the writer does (storage.titles)
            "conversation_title": (
                f"Conversation {conv}: fix the failing test" if turn[conv] == 1 else None
            ),
            "context_window": 262144,
            "prompt_tokens_estimate": int(prompt / 1.18) if calib else None,
            "completion_tokens_estimate": int(completion / 1.05) if calib else None,
        }
        batch_r.append([row.get(c) for c in columns])
        batch_a.append((row["id"], 1, provider, model, iso, 200, None, row["duration_ms"]))
        if fallback:
            batch_a.append((row["id"], 1, "kimi", model, iso, 429, rnd.choice(FAILURES), 50.0))
        if prompt and rnd.random() < 0.2:
            before = rnd.randint(500, 20_000)
            batch_s.append((row["id"], "Bash", 1, before, before // 10))
            if rnd.random() < 0.1:
                original = zlib.compress(b"output line\n" * rnd.randint(50, 500))
                batch_m.append((f"{n:064x}", iso, "Bash", "truncate", "openai", 500, 6000,
                                before, before // 10, original, row["id"]))  # fmt: skip
        if len(batch_r) >= 20_000 or n == rows - 1:
            conn.executemany(insert, batch_r)
            conn.executemany(
                "INSERT INTO attempts (request_id, attempt, provider, model, started_at, "
                "status_code, error, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                batch_a,
            )
            conn.executemany("INSERT INTO savings VALUES (?, ?, ?, ?, ?)", batch_s)
            conn.executemany(
                "INSERT OR IGNORE INTO masked VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch_m
            )
            batch_r, batch_a, batch_s, batch_m = [], [], [], []
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("VACUUM")
    conn.close()
    return time.perf_counter() - t0


def sizes(path: Path) -> list[tuple[str, int]]:
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
    ).fetchall()
    conn.close()
    return rows


def timed(label: str, fn, repeat: int = 1):  # type: ignore[no-untyped-def]
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    print(f"{label:<44} {best:8.2f} s")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--keep", type=Path, help="keep the database and report in this folder")
    ap.add_argument("--repeat", type=int, default=2, help="report runs (the best is printed)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="kimi-report-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "bench.db"
    for p in work.glob("bench.db*"):
        p.unlink()
    cfg = load_config(None)
    print(f"sqlite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, {work}")
    seconds = generate(db, args.rows, args.days)
    print(f"{'generate ' + format(args.rows, ',') + ' rows':<44} {seconds:8.2f} s")
    size = db.stat().st_size
    print(f"database after VACUUM: {size / 1e6:,.1f} MB, {size / args.rows:,.0f} bytes per request "
          "row (all tables and indexes)")  # fmt: skip
    for name, n in sizes(db)[:14]:
        print(f"  {name:<42} {n / 1e6:8.1f} MB  {n / args.rows:6.0f} B/row")
    report = timed(
        "report (all pages, whole range)",
        lambda: build_report(db, work / "site", cfg=cfg),
        args.repeat,
    )
    pages = list((work / "site").rglob("*.html"))
    print(f"  {len(report.pages)} pages, {sum(p.stat().st_size for p in pages) / 1e6:.1f} MB; "
          f"{report.totals.summary()}")  # fmt: skip
    since = (datetime.now(timezone.utc).date() - timedelta(days=6)).isoformat()
    timed("report --since (last 7 days)",
          lambda: build_report(db, work / "site7", since=since, cfg=cfg), args.repeat)  # fmt: skip
    ro = open_readonly(db)
    timed("stats (one grouped pass, 30 days)",
          lambda: read_facts(ro, (datetime.now(timezone.utc).date() - timedelta(days=29))
                             .isoformat(), None, cfg))  # fmt: skip

    def csv_export() -> int:
        sink = io.StringIO()
        n = export.write(sink, ro, "csv")
        return n

    n = timed("export --format csv (all requests, in memory)", csv_export)
    print(f"  {n:,} rows")
    ro.close()
    copy = work / "prune.db"
    shutil.copy(db, copy)
    result = timed("prune to 30 days (delete, VACUUM)", lambda: prune(copy, 30))
    print(f"  {result.summary()}")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
