"""The request path: carrying a planned request to the providers and the answer back.

Modules: :mod:`.server` (:class:`Relay`, the aiohttp server the addon forwards an intercepted
call to, in its own process: plans it, tries the chain in order, with retries and fallbacks),
:mod:`.intake` (what the addon sends it, and passing a call through unchanged), :mod:`.upstream`
(sending one attempt and holding it until its first content), :mod:`.answer` (committing an
answer and streaming it event by event; breaks and continuation; the local ``count_tokens``
answer), :mod:`.failures` and :mod:`.retry_after` (what a failure means and how long to wait),
:mod:`.health` (circuit breakers, cooldowns, local rate limits), :mod:`.validate` (empty,
JSON-mode and repetition checks), :mod:`.shadow` (mirroring a share to a second provider),
:mod:`.rows` (the ``requests`` row of one call), :mod:`.console` (its one console line),
:mod:`.live` (the status file: providers' health and calls in flight), :mod:`.refusal` (the
proxy's own error answer, in the client's dialect, to a call it could not plan), :mod:`.bounds`
(what counts as data for the stall timeout; why the relay cut an answer) and :mod:`.inflight`
(``max_answer_s`` and the graceful shutdown). Depends on every package below it; nothing but the
addon and the commands import it.
"""

from __future__ import annotations

from kimi_intercept.relay.bounds import Cut, DataClock
from kimi_intercept.relay.failures import (
    Action,
    AttemptFailed,
    Failure,
    classify_response,
    classify_transport,
)
from kimi_intercept.relay.health import ProviderHealth, health_key
from kimi_intercept.relay.inflight import InFlight
from kimi_intercept.relay.rows import Outcome, build_row
from kimi_intercept.relay.server import Relay

__all__ = [
    "Action",
    "AttemptFailed",
    "Cut",
    "DataClock",
    "Failure",
    "InFlight",
    "Outcome",
    "ProviderHealth",
    "Relay",
    "build_row",
    "classify_response",
    "classify_transport",
    "health_key",
]
