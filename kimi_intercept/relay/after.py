"""Bookkeeping after the client has its answer: a call's row is built once mitmproxy has sent
the answer's last bytes, not while it still holds them.

The relay and mitmproxy share one event loop. Building the row (counting, pricing, the console
line, the queue put: ~0.5 ms) right when the relay's handler returns runs before mitmproxy has
read the answer's end from the relay, so it would add to every answer's latency. Instead the
relay hands the work to :class:`AfterAnswer` under the call's route id, and the addon's
``response`` / ``error`` hook (fired after the client was sent the end) releases it; a call
released before its work arrives runs it at once. Without a release (a relay used without
mitmproxy, a lost hook) the work runs after :data:`WAIT_S` anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

#: Seconds after which the work of an answer runs even if no hook released it.
WAIT_S = 1.0


class AfterAnswer:
    """Work per route id, run by :meth:`release` or after :data:`WAIT_S`; ``run`` starts it
    (a non-blocking spawn). Call on the event loop."""

    def __init__(self, run: Callable[[Callable[[], object]], None]) -> None:
        self._run = run
        self._waiting: dict[str, tuple[asyncio.TimerHandle, Callable[[], object]]] = {}
        self._released: dict[str, float] = {}  # released before their work arrived

    def add(self, route_id: str, work: Callable[[], object]) -> None:
        """Run ``work`` once ``route_id`` is released (at once if it already was)."""
        if self._released.pop(route_id, None) is not None or not route_id:
            self._run(work)
            return
        timer = asyncio.get_running_loop().call_later(WAIT_S, self.release, route_id)
        self._waiting[route_id] = (timer, work)

    def release(self, route_id: str) -> None:
        """The client has the answer of ``route_id``: run its work now (or when it arrives)."""
        waiting = self._waiting.pop(route_id, None)
        if waiting is None:
            now = time.monotonic()
            if len(self._released) > 1000:  # ids that never reached the relay
                self._released = {k: t for k, t in self._released.items() if now - t < 60}
            self._released[route_id] = now
            return
        timer, work = waiting
        timer.cancel()
        self._run(work)

    def release_all(self) -> None:
        """Run every waiting work now (shutdown)."""
        for route_id in list(self._waiting):
            self.release(route_id)
