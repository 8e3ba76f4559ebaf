"""Where CPU work of one call runs: on the event loop when it is small, in a worker thread when
it is big.

A worker-thread hop (``asyncio.to_thread``) costs ~0.1-0.3 ms of latency and CPU (a thread
wake-up and two GIL hand-offs) — more than parsing, sanitizing or counting a few kilobytes.
Bodies of megabytes take milliseconds, during which other streams on the relay's loop would
wait, so those still go to a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Request bodies up to this many bytes are handled on the event loop.
INLINE_BYTES = 64 * 1024


async def sized(size: int, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``, inline when ``size`` (bytes of the request body it works on) is at most
    :data:`INLINE_BYTES`, else in a worker thread. Exceptions propagate either way."""
    if size <= INLINE_BYTES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


def planned_bytes(plan: Any) -> int:
    """Bytes of a :class:`~kimi_intercept.routing.plan.RoutePlan`'s first upstream body (0 when
    it has no target): the size its preparing, counting and observing work on. Before that
    body is built (:attr:`~kimi_intercept.routing.targets.Target.body` is made on first use),
    the size of the client's request body stands for it: the same within what the plan
    changes (model, Kimi's fields), and asking never builds a body the sanitizer replaces."""
    return plan.targets[0].size(plan.request_bytes) if plan.targets else 0
