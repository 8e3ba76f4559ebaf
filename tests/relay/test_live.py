"""The status file (:class:`~kimi_intercept.relay.live.LiveStatus`) ends up saying what is
true: a call that ends while the file is being written is not left "in flight"."""

from __future__ import annotations

import asyncio
import json
import threading
import time

from kimi_intercept.config.settings import load_config
from kimi_intercept.relay import live
from kimi_intercept.relay.health import ProviderHealth
from kimi_intercept.routing.plan import plan_route


def test_a_call_that_ends_during_a_write_is_published_as_ended(tmp_path, monkeypatch):
    cfg = load_config(None, env={"MOONSHOT_API_KEY": "sk-moon"})
    plan = plan_route(
        cfg, method="POST", url="https://api.openai.com/v1/chat/completions",
        host="api.openai.com", path="/v1/chat/completions", headers=[],
        body=b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}',
    )  # fmt: skip
    writing = threading.Event()
    write = live._write_json

    def slow_write(path, doc):  # the disk is slow: the call ends meanwhile
        writing.set()
        time.sleep(0.3)
        write(path, doc)

    monkeypatch.setattr(live, "_write_json", slow_write)
    path = tmp_path / "status.json"

    async def run() -> list:
        status = live.LiveStatus(path, ProviderHealth())
        key = status.started(plan)  # published at once: the first state
        while not writing.is_set():
            await asyncio.sleep(0.01)
        status.ended(key)  # while that write is under way
        await asyncio.sleep(live.COALESCE_S + 1.0)
        return json.loads(path.read_text())["in_flight"]

    assert asyncio.run(run()) == []
