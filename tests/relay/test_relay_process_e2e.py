"""The relay in its own process, end to end: a real mitmdump + addon, the openai SDK through
HTTPS_PROXY, a fake Moonshot.

- The relay is a child process of mitmdump.
- Killed, it is started again; meanwhile a call gets a 503 in its dialect (never sent to the
  original host), and that call still gets its row once the relay is back.
- Its stdin closed (the proxy gone, even killed), it drains and exits by itself.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import openai
import pytest
from proxyproc import render_config, rows, wait_rows

MESSAGES = [{"role": "user", "content": "Say OK."}]


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def proxied(tmp_path, fake_upstream, start_proxy, openai_client):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    proc = start_proxy(render_config(db, kimi.url, deepseek.url))
    return kimi, proc, openai_client(proc), db


def test_a_killed_relay_is_started_again_and_no_call_is_sent_elsewhere_meanwhile(proxied):
    kimi, proc, client, db = proxied
    [relay] = proc.relay_pids()
    assert "kimi_intercept.commands.relay_process" in command_line(relay)
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices
    wait_rows(db, 1)

    os.kill(relay, signal.SIGKILL)
    assert proc.wait_for_log("the relay process exited (-9)", timeout=10), proc.log_text()
    with pytest.raises(openai.InternalServerError) as refused:
        client.with_options(max_retries=0).chat.completions.create(
            model="gpt-4o", messages=MESSAGES
        )
    assert refused.value.status_code == 503
    assert "relay is not running" in refused.value.message
    assert len(kimi.received) == 1  # only the first call reached a provider

    assert proc.wait_for_log("kimi-intercept: the relay process is back", timeout=30)
    [again] = proc.relay_pids()
    assert again != relay
    answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert answer.choices[0].message.content
    got = wait_rows(db, 3)
    assert [(r["outcome"], r["status_code"]) for r in got] == [
        ("ok", 200),
        ("error", 503),  # recorded by the new relay process
        ("ok", 200),
    ]
    assert "relay is not running" in got[1]["error"]


def test_the_relay_exits_by_itself_when_the_proxy_is_killed(proxied):
    _kimi, proc, client, db = proxied
    [relay] = proc.relay_pids()
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices
    proc.proc.kill()
    proc.proc.wait(10)
    # the relay sees its stdin close, drains (nothing in flight), writes its rows and exits
    wait_until(lambda: not Path(f"/proc/{relay}").exists() or _zombie(relay))
    assert len(rows(db)) == 1


def _zombie(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"
