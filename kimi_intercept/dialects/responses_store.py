"""The Responses API's ``previous_response_id``, kept locally: the input and output items of
each response the proxy produced for a rerouted Responses request, so a later request that
names that response can be expanded into the full conversation the hub dialect needs.

Bounded and expiring: at most :data:`MAX_RESPONSES` responses (the oldest dropped first) and
each for :data:`TTL_S` seconds after it was stored; in memory only, so a restarted proxy
forgets them (the client then gets OpenAI's own ``previous_response_not_found`` error and
re-sends the full input, as it must after OpenAI's own 30-day expiry). One per proxy process
(:data:`STORE`), shared by every request; thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from kimi_intercept.dialects import DialectError

#: Responses kept at most (the least recently stored dropped first).
MAX_RESPONSES = 2000
#: Seconds a stored response can be referred to.
TTL_S = 6 * 3600.0


class ResponseStore:
    """``response id -> list of items`` (the input items as expanded, then the output items),
    bounded by ``max_responses`` and ``ttl_s`` seconds; ``clock`` is for tests."""

    def __init__(
        self,
        max_responses: int = MAX_RESPONSES,
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_responses, self.ttl_s, self._clock = max_responses, ttl_s, clock
        self._items: OrderedDict[str, tuple[float, list[dict[str, Any]]]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, response_id: str, items: list[dict[str, Any]]) -> None:
        with self._lock:
            self._items.pop(response_id, None)
            self._items[response_id] = (self._clock(), list(items))
            while len(self._items) > self.max_responses:
                self._items.popitem(last=False)

    def get(self, response_id: str) -> list[dict[str, Any]] | None:
        """The items of ``response_id``, or ``None`` when unknown or expired."""
        with self._lock:
            found = self._items.get(response_id)
            if found is None:
                return None
            if self._clock() - found[0] > self.ttl_s:
                del self._items[response_id]
                return None
            return list(found[1])

    def __len__(self) -> int:
        return len(self._items)


STORE = ResponseStore()


def expand_input(body: dict[str, Any], store: ResponseStore = STORE) -> list[dict[str, Any]]:
    """The request's whole conversation as Responses items: the stored items of
    ``previous_response_id`` (if any), then ``input`` (a string becomes one user message).
    Raises :class:`DialectError` (``previous_response_not_found``) for an unknown id."""
    items: list[dict[str, Any]] = []
    previous = body.get("previous_response_id")
    if previous is not None:
        stored = store.get(previous) if isinstance(previous, str) else None
        if stored is None:
            raise DialectError(
                f"Previous response with id '{previous}' not found.",
                code="previous_response_not_found",
                param="previous_response_id",
            )
        items += stored
    given = body.get("input")
    if isinstance(given, str):
        items.append({"type": "message", "role": "user", "content": given})
    elif isinstance(given, list):
        items += [i for i in given if isinstance(i, dict)]
    elif given is not None:
        raise DialectError("input must be a string or a list of items", param="input")
    return items
