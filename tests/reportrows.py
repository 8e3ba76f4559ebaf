"""Report test data shared by the reports and commands tests: rows in the store's shape, a
writer for them, the seven-request suite (two conversations, a replay, a fallback, an estimate,
an unpriced model, a failure) and an HTML table reader."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from kimi_intercept.storage import StoreWriter


def write_rows(db_path: Path, rows: list[tuple[dict, list[dict]]]) -> None:
    writer = StoreWriter(db_path)
    for request, attempts in rows:
        writer.put(request, attempts)
    assert writer.close()


def row(id: str, started_at: str, **extra) -> dict:
    return {
        "id": id,
        "started_at": started_at,
        "client": "openai-python/1.2",
        "client_host": "127.0.0.1",
        "client_model": "gpt-4o",
        "provider": "moonshot",
        "model": "kimi-k2",
        "status_code": 200,
        "outcome": "ok",
        "attempts": 1,
        "fallback_used": 0,
        "route": "reroute",
        "stream": 1,
        "host": "api.openai.com",
        "usage_source": "provider",
        **extra,
    }


def by_id(html: str, id: str) -> tuple[str, str]:
    """(data-value, text) of the element with this id."""
    m = re.search(rf'id="{re.escape(id)}" data-value="([^"]*)">([^<]*)<', html)
    assert m, f"no element with id {id!r}"
    return m.group(1), m.group(2)


class Tables(HTMLParser):
    """Collects the cell texts of every <table id=...>."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = dict(attrs)["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


C1, C2 = "a" * 64, "b" * 64
TITLE = "<script>alert('t')</script> fix the tests"
BAD_CLIENT = "<img src=x onerror=alert(1)>"
BAD_MODEL = "<script>m</script>"
PAGES = ["index.html", "providers.html", "models.html", "clients.html", "conversations.html"]


def kimi(id: str, started_at: str, **extra) -> dict:
    return row(id, started_at, provider="kimi", model="kimi-k2.6", client="claude-cli/2.1",
               context_window=262_144, **extra)  # fmt: skip


SUITE = [
    (kimi("s1", "2026-11-19T10:00:00.000Z", conversation_id=C1, conversation_title=TITLE,
          prompt_tokens=1000, cached_tokens=200, completion_tokens=100, cost_usd=0.001,
          ttft_ms=100.0, duration_ms=1000.0, response_id="resp-1",
          prompt_tokens_estimate=800, completion_tokens_estimate=80),
     [{"provider": "kimi", "model": "kimi-k2.6", "status_code": 200}], None),
    (kimi("s2", "2026-11-20T10:00:00.000Z", conversation_id=C1, conversation_title="later",
          prompt_tokens=3000, cached_tokens=1000, completion_tokens=200, cost_usd=0.003,
          ttft_ms=200.0, duration_ms=2000.0, response_id="resp-2",
          prompt_tokens_estimate=2500, completion_tokens_estimate=160,
          tokens_before_sanitize=8000, tokens_after_sanitize=3500),
     [{"provider": "kimi", "model": "kimi-k2.6", "status_code": 200}],
     {"savings": [{"tool": "Bash", "items": 1, "tokens_before": 5000, "tokens_after": 500}],
      "masked": [{"id": "h1", "created_at": "2026-11-20T10:00:00.000Z", "tool": "Bash",
                  "kind": "truncate", "lines": 900, "bytes": 40000, "tokens_before": 5000,
                  "tokens_after": 500, "original": "x" * 40000}]}),
    # The same answer replayed (the client retried): not counted anywhere.
    (kimi("s3", "2026-11-20T10:00:05.000Z", conversation_id=C1, prompt_tokens=3000,
          completion_tokens=200, cost_usd=0.003, response_id="resp-2", ttft_ms=5000.0),
     [], {"savings": [{"tool": "Bash", "items": 1, "tokens_before": 5000, "tokens_after": 500}]}),
    (row("s4", "2026-11-20T12:00:00.000Z", provider="deepseek", model="deepseek-chat",
         client="OpenAI/Python 2.54.0", conversation_id=C2, conversation_title="hello",
         prompt_tokens=500, completion_tokens=50, cost_usd=0.0002, fallback_used=1, attempts=2,
         ttft_ms=300.0, duration_ms=900.0, response_id="resp-4"),
     [{"provider": "kimi", "model": "kimi-k2.6", "status_code": 429,
       "error": "rate_limit: slow down"},
      {"provider": "deepseek", "model": "deepseek-chat", "status_code": 200}], None),
    (kimi("s5", "2026-11-21T09:00:00.000Z", conversation_id=C1, prompt_tokens=100,
          completion_tokens=10, cost_usd=0.000135, usage_source="estimate", ttft_ms=400.0,
          duration_ms=1500.0),
     [], None),
    (row("s6", "2026-11-21T10:00:00.000Z", provider="kimi", model=BAD_MODEL, client=BAD_CLIENT,
         prompt_tokens=50, completion_tokens=5, cost_usd=None),
     [], None),
    (kimi("s7", "2026-11-21T11:00:00.000Z", outcome="error", status_code=502,
          error="server_error: HTTP 502", usage_source=None),
     [{"provider": "kimi", "model": "kimi-k2.6", "status_code": 502,
       "error": "server_error: HTTP 502 upstream"},
      {"provider": "kimi", "model": "kimi-k2.6", "error": "timeout: no first byte within 60 s"},
      {"provider": "deepseek", "error": "skipped: circuit open"}], None),
]  # fmt: skip


def write(db_path: Path, rows) -> None:
    w = StoreWriter(db_path)
    for request, attempts, extra in rows:
        w.put(request, attempts, extra)
    assert w.close()
