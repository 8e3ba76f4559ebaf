"""A call's row is built once the client has its answer (:mod:`kimi_intercept.relay.after`):
released by the addon's hook, whichever comes first, or after the fallback wait."""

from __future__ import annotations

import asyncio

from kimi_intercept.relay import after
from kimi_intercept.relay.after import AfterAnswer


def _run(coro):
    return asyncio.run(coro)


def test_work_waits_for_its_release():
    async def go():
        done: list[str] = []
        a = AfterAnswer(lambda work: work())
        a.add("r1", lambda: done.append("r1"))
        await asyncio.sleep(0.01)
        assert done == []  # the client does not have the answer yet
        a.release("r1")
        assert done == ["r1"]
        a.release("r1")  # a second hook (error after response) changes nothing
        assert done == ["r1"]

    _run(go())


def test_a_release_before_the_work_arrives_runs_it_at_once():
    async def go():
        done: list[str] = []
        a = AfterAnswer(lambda work: work())
        a.release("r2")  # mitmproxy's hook ran before the relay's handler ended
        a.add("r2", lambda: done.append("r2"))
        assert done == ["r2"]

    _run(go())


def test_unreleased_work_runs_after_the_wait_and_at_shutdown(monkeypatch):
    monkeypatch.setattr(after, "WAIT_S", 0.05)

    async def go():
        done: list[str] = []
        a = AfterAnswer(lambda work: work())
        a.add("lost-hook", lambda: done.append("lost-hook"))
        a.add("shutdown", lambda: done.append("shutdown"))
        a.release_all()
        assert sorted(done) == ["lost-hook", "shutdown"]
        a.add("late", lambda: done.append("late"))
        await asyncio.sleep(0.3)
        assert done[-1] == "late"  # no hook ever came: it ran anyway

    _run(go())
