"""The request path: carrying a planned request to the providers and the answer back.

Modules: :mod:`.server` (:class:`Relay`, the in-process aiohttp server the addon points a flow
at: tries the chain in order, with retries and fallbacks), :mod:`.upstream` (sending one
attempt and holding it until its first content), :mod:`.answer` (committing an answer and
streaming it event by event; breaks and continuation), :mod:`.failures` and
:mod:`.retry_after` (what a failure means and how long to wait), :mod:`.health` (circuit
breakers, cooldowns, local rate limits), :mod:`.validate` (empty, JSON-mode and repetition
checks), :mod:`.shadow` (mirroring a share to a second provider), :mod:`.rows` (the
``requests`` row of one call), :mod:`.console` (its one console line), :mod:`.live` (the
status file: providers' health and calls in flight), :mod:`.refusal` (the proxy's own error
answer, in the client's dialect, to a call it could not plan). Depends on every package below
it; nothing but the addon and the commands import it.
"""

from __future__ import annotations

from kimi_intercept.relay.failures import (
    Action,
    AttemptFailed,
    Failure,
    classify_response,
    classify_transport,
)
from kimi_intercept.relay.health import ProviderHealth
from kimi_intercept.relay.rows import Outcome, build_row
from kimi_intercept.relay.server import ROUTE_HEADER, Relay

__all__ = [
    "Action",
    "AttemptFailed",
    "Failure",
    "Outcome",
    "ProviderHealth",
    "ROUTE_HEADER",
    "Relay",
    "build_row",
    "classify_response",
    "classify_transport",
]
