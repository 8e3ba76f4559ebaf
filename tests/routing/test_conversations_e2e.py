"""Two Claude Code–shaped runs that start with the same first message, through a real
mitmdump + addon with the real `anthropic` SDK: two conversations, each titled with the user's
own words (not the injected ``<system-reminder>``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anthropic
from proxyproc import wait_rows

REMINDER = (
    "<system-reminder>\nAs you answer the user's questions, you can use the following context:"
    "\n# currentDate\nToday's date is 2026-12-01.\n</system-reminder>\n"
)
FIRST = {
    "role": "user",
    "content": [
        {"type": "text", "text": REMINDER},
        {"type": "text", "text": "Why does the build fail?"},
    ],
}


def config(db: Path, kimi_url: str, deepseek_url: str) -> str:
    return f"""
[intercept]
hosts = ["api.anthropic.com"]
[routing]
primary = "kimi"
fallbacks = ["deepseek"]
[storage]
database = "{db}"
[providers.kimi]
base_url = "{kimi_url}/v1"
api_key = "${{MOONSHOT_API_KEY}}"
model = "kimi-k2.6"
[providers.deepseek]
base_url = "{deepseek_url}/v1"
api_key = "${{DEEPSEEK_API_KEY}}"
model = "deepseek-chat"
"""


def test_two_runs_with_the_same_first_message_are_two_conversations(
    tmp_path, fake_upstream, start_proxy, monkeypatch
):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    proxy = start_proxy(config(db, kimi.url, deepseek.url))
    for name, value in proxy.client_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    client = anthropic.Anthropic(api_key="sk-ant-client-key", max_retries=0)

    def ask(messages: list[dict]) -> str:
        answer = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=64, system="You are Claude Code.",
            messages=messages,
        )  # fmt: skip
        return answer.content[0].text

    for _run in range(2):
        reply = ask([FIRST])
        ask([FIRST, {"role": "assistant", "content": reply},
             {"role": "user", "content": "And how do I fix it?"}])  # fmt: skip
    stored = wait_rows(db, 4)
    ids = [r["conversation_id"] for r in stored]
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
    # the title is stored once per conversation (its first row), read from the view
    assert [r["conversation_title"] for r in stored] == ["Why does the build fail?", None] * 2
    con = sqlite3.connect(db)
    try:
        views = con.execute("select id, title from conversations order by first_at").fetchall()
    finally:
        con.close()
    assert views == [(ids[0], "Why does the build fail?"), (ids[2], "Why does the build fail?")]
    assert all(len(i) == 32 for i in ids)  # 128 bits of a SHA-256, in hex
