"""The requests the relay is serving: their time limit, and graceful shutdown.

Each request the relay serves runs in its own asyncio task (aiohttp's per-request handler task).
:class:`InFlight` keeps those tasks with their :class:`~.rows.Outcome` so that the relay can
end one itself: it sets ``outcome.cut`` (a :class:`~.bounds.Cut`) and cancels the task; the
handler sees its own cut (not a client that left) and answers accordingly — an error in the
client's dialect if nothing was sent yet, else an in-band error event and a cut connection.

- ``[routing] max_answer_s``: a timer per request, from the moment the proxy had the request.
- Shutdown (:meth:`InFlight.drain`): new requests are refused (the relay answers 503 while
  ``draining``), those in flight get ``drain_s`` seconds to end, then the rest are cut with
  outcome ``shutdown`` — not a provider failure: no breaker or health penalty.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

from kimi_intercept.dialects.bridge import error_json
from kimi_intercept.relay.bounds import SHUTTING_DOWN, Cut
from kimi_intercept.relay.rows import Outcome
from kimi_intercept.routing.plan import RoutePlan

log = logging.getLogger(__name__)

#: Seconds the cut requests get to write their last bytes and end.
CUT_GRACE_S = 5.0


class InFlight:
    """Handler tasks in flight → their outcome. Runs on the relay's event loop only."""

    def __init__(self) -> None:
        self._active: dict[asyncio.Task[object], Outcome] = {}
        self.draining = False
        self._drain_s = 0.0

    def __len__(self) -> int:
        return len(self._active)

    def enter(self, r: Outcome, received: float, max_answer_s: float) -> asyncio.TimerHandle | None:
        """Track the current task; cut it ``max_answer_s`` after ``received`` (epoch seconds).
        Give the returned timer to :meth:`leave`."""
        task = asyncio.current_task()
        if task is None:
            return None
        self._active[task] = r
        delay = max(max_answer_s - (time.time() - received), 0.0)
        return asyncio.get_running_loop().call_later(
            delay, self.cut, task, Cut.max_answer(max_answer_s)
        )

    def leave(self, timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()
        task = asyncio.current_task()
        if task is not None:
            self._active.pop(task, None)

    def cut(self, task: asyncio.Task[object], cut: Cut) -> None:
        """End ``task``'s request with ``cut`` (once; a request already cut keeps its reason)."""
        r = self._active.get(task)
        if r is None or r.cut is not None or task.done():
            return
        r.cut = cut
        task.cancel()

    def cut_all(self) -> None:
        """Cut every request in flight now (the drain time ran out, or a second signal)."""
        for task in list(self._active):
            self.cut(task, Cut.shutdown(self._drain_s))

    async def drain(
        self, drain_s: float, coming: Callable[[], bool] = lambda: False
    ) -> tuple[int, int]:
        """Refuse new requests; wait up to ``drain_s`` seconds for calls still ``coming`` (they
        get their 503 and row) and for those in flight; cut the rest and wait (up to
        :data:`CUT_GRACE_S`) until they ended. Returns (requests in flight, requests cut)."""
        self.draining, self._drain_s = True, drain_s
        loop = asyncio.get_running_loop()
        end = loop.time() + drain_s
        while coming() and loop.time() < end:
            await asyncio.sleep(0.05)
        busy = len(self._active)
        if busy:
            log.warning(
                "kimi-intercept: shutting down: %d answer(s) in flight get up to %g s to finish "
                "(a second signal cuts them at once)",
                busy,
                drain_s,
            )
            await asyncio.wait(set(self._active), timeout=max(end - loop.time(), 0.0))
        cut = len(self._active)
        if cut:
            self.cut_all()
            await asyncio.wait(set(self._active), timeout=CUT_GRACE_S)
        return busy, cut


def refused(plan: RoutePlan, r: Outcome) -> web.Response:
    """The answer to a new LLM call while the proxy drains: 503 in the client's dialect with
    ``Retry-After: 5``; ``r`` says ``shutdown`` (the caller records it)."""
    r.status, r.outcome, r.error = 503, "shutdown", SHUTTING_DOWN
    body = error_json(plan.dialect, 503, SHUTTING_DOWN, "proxy_shutting_down")
    return web.json_response(body, status=503, headers={"retry-after": "5"})


def cut_before_answer(plan: RoutePlan, r: Outcome, cut: Cut) -> web.Response:
    """The handler's own cut arrived before anything was sent: an error in the client's
    dialect (503 shutdown, 504 max_answer_s). Call it where the cut's CancelledError is caught."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()  # our own cancel, handled: the task goes on normally
    r.status, r.outcome, r.error = cut.status, cut.outcome, cut.message
    log.warning("kimi-intercept: %s (before any answer)", cut.message)
    body = error_json(plan.dialect, cut.status, cut.message, cut.code)
    return web.json_response(body, status=cut.status)
