"""Test constants and config for the real-process tests (the process starter is
:mod:`kimi_intercept.commands.mitmdump`, shared with the demo and the benchmark)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kimi_intercept.commands import mitmdump
from kimi_intercept.commands.mitmdump import ProxyProcess, ProxyStartError, start_proxy_process

__all__ = [
    "ProxyProcess",
    "ProxyStartError",
    "start_proxy_process",
    "clean_env",
    "render_config",
    "rows",
    "wait_rows",
]

REPO = Path(__file__).resolve().parents[1]

#: Provider keys the test configs reference as ``${MOONSHOT_API_KEY}`` / ``${DEEPSEEK_API_KEY}``.
PROVIDER_ENV = {
    "MOONSHOT_API_KEY": "sk-test-moonshot-provider-key",
    "DEEPSEEK_API_KEY": "sk-test-deepseek-provider-key",
}
#: The key the tests' SDK clients send; it must never reach an upstream.
CLIENT_KEY = "sk-client-key-that-must-not-leak"


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """No proxy variables, plus the test provider keys."""
    return mitmdump.clean_env({**PROVIDER_ENV, "KIMI_INTERCEPT_TEST": "1", **(extra or {})})


def render_config(
    db_path: Path,
    kimi_url: str,
    deepseek_url: str,
    hosts: Iterable[str] = ("api.openai.com",),
    share: int = 100,
) -> str:
    """A config.toml in the addon's format with both providers pointed at fake upstreams.

    ``kimi_url``/``deepseek_url`` are ``FakeUpstream.url`` values (``/v1`` is appended).
    """
    host_list = ", ".join(f'"{h}"' for h in hosts)
    return f"""\
[intercept]
hosts = [{host_list}]

[routing]
primary = "kimi"
fallbacks = ["deepseek"]
share = {share}

[storage]
database = "{db_path}"

[providers.kimi]
base_url = "{kimi_url}/v1"
api_key = "${{MOONSHOT_API_KEY}}"
model = "kimi-k2.6"

[providers.deepseek]
base_url = "{deepseek_url}/v1"
api_key = "${{DEEPSEEK_API_KEY}}"
model = "deepseek-chat"
"""


def rows(db: Path, table: str = "requests") -> list[dict[str, Any]]:
    """Every row of ``table`` in insertion order, as dicts."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"select * from {table} order by rowid")]
    finally:
        con.close()


def wait_rows(db: Path, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Rows are written by the proxy's writer thread after an answer ends: wait for ``n``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = rows(db)
        except sqlite3.OperationalError:  # the writer has not created the tables yet
            got = []
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.05)
