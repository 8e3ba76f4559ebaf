"""What the running relay publishes for ``kimi-intercept status`` and ``top``: the providers'
health and the calls in flight, as one JSON file next to the database
(``<database>.status.json``, see :func:`kimi_intercept.commands.status.status_file_for`)::

    {"pid": 4242, "updated_at": "2026-11-21T23:54:42.123Z",
     "providers": [{"provider": "kimi", "state": "open", "until": 1763769300.0, ...}],
     "in_flight": [{"id": "2a", "client": "claude-cli/2.1.3", "provider": "kimi",
                    "model": "kimi-k2.6", "client_model": "claude-sonnet-4-5",
                    "conversation_id": "3f2a9c…", "title": "Fix the test",
                    "started": 1763769282.1}],
     "budget": {"daily_usd": 5.0, "monthly_usd": null, "spent_today_usd": 1.23,
                "spent_month_usd": 1.23, "action": "warn"}}

(``budget`` only when ``[budget]`` sets a limit.)

``started`` is a Unix time in seconds. Writes are cheap: calls starting and ending are
published at most once per :data:`COALESCE_S` (a burst is one write), a change of a provider's
health at once; in a worker thread, atomically (a temporary file renamed over the old one), and
only when something changed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from kimi_intercept.relay.health import ProviderHealth
from kimi_intercept.routing.plan import RoutePlan, iso_utc

log = logging.getLogger(__name__)

COALESCE_S = 0.2


class LiveStatus:
    """The status file of one relay. Call :meth:`started` / :meth:`ended` around each call and
    :meth:`changed` after anything that may change the providers' health."""

    def __init__(self, path: Path | None, health: ProviderHealth, budget: Any = None) -> None:
        self.path = path
        self.health = health
        self.budget = budget  # a .budget.BudgetTracker, or None
        self.in_flight: dict[str, dict[str, Any]] = {}
        self._published: Any = None
        self._pending: asyncio.Task[None] | None = None
        self._last = 0.0  # time.monotonic() of the last write
        self._changes = 0  # calls of changed(): a publish covers those made before its state
        self._keys = itertools.count(1)

    def started(self, plan: RoutePlan) -> str:
        """Record a call that is being served; returns the key for :meth:`ended`."""
        key = f"{next(self._keys):x}"
        first = plan.targets[0] if plan.targets else None
        self.in_flight[key] = {
            "id": key,
            "client": plan.client,
            "provider": first.provider if first else None,
            "model": first.model if first else None,
            "client_model": plan.client_model,
            "conversation_id": plan.conversation or None,
            "title": plan.title,
            "started": round(plan.received, 3),
        }
        self.changed()
        return key

    def ended(self, key: str) -> None:
        self.in_flight.pop(key, None)
        self.changed()

    def changed(self) -> None:
        """Publish: at once if a provider's health changed, else within :data:`COALESCE_S`.
        Needs a running event loop."""
        if self.path is None:
            return
        self._changes += 1
        pending = self._pending is not None and not self._pending.done()
        health = self.health.snapshot()  # the same list while nothing in it changed
        published = self._published[0] if self._published is not None else None
        health_changed = published is None or (health is not published and health != published)
        if pending and not health_changed:
            return
        if pending:
            assert self._pending is not None
            self._pending.cancel()
        delay = 0.0 if health_changed else max(0.0, self._last + COALESCE_S - time.monotonic())
        self._pending = asyncio.ensure_future(self._publish_later(delay))

    async def flush(self) -> None:
        """Publish now, e.g. when the relay stops."""
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        await self._publish()

    async def _publish_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        seen = self._changes
        await self._publish()
        if self._changes != seen:  # changed while this one was writing what it had read before
            delay = max(0.0, self._last + COALESCE_S - time.monotonic())
            self._pending = asyncio.ensure_future(self._publish_later(delay))

    async def _publish(self) -> None:
        if self.path is None:
            return
        budget = self.budget.status() if self.budget is not None else None
        state = (self.health.snapshot(), list(self.in_flight.values()), budget)
        if state == self._published:
            return
        self._published = state
        self._last = time.monotonic()
        doc = {
            "pid": os.getpid(),
            "updated_at": iso_utc(time.time()),
            "providers": state[0],
            "in_flight": state[1],
        }
        if budget is not None:
            doc["budget"] = budget
        try:
            await asyncio.to_thread(_write_json, self.path, doc)
        except OSError as e:  # a full disk or a removed folder: status is best effort
            log.warning("kimi-intercept: could not write the status file %s: %s", self.path, e)


_WRITING = threading.Lock()  # a cancelled publish may still be writing in its thread


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    with _WRITING:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        os.replace(tmp, path)
