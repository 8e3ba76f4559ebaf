"""Per-provider health: a circuit breaker, cooldowns, and optional local rate limits.

Pure bookkeeping — no I/O, no asyncio; both clocks are injected (``clock`` is monotonic and
drives every decision, ``wall`` only turns deadlines into epoch seconds for :meth:`snapshot`).
Not thread-safe: the relay calls it from mitmproxy's single event loop.

What :meth:`ProviderHealth.record_failure` does with a :class:`~.failures.Failure`::

    action     kind             effect                                        counts toward breaker
    ---------  ---------------  --------------------------------------------  ---------------------
    retry      any              -                                             yes
    fallback   rate_limit       rate-limited until now + retry_after_s        yes
                                (unknown: min(cooldown_s, 10))
    fallback   other            -                                             yes
    cooldown   auth             unavailable for auth_cooldown_s (300)         no
    cooldown   quota            unavailable for quota_cooldown_s (= auth)     no
    context    context_length   - (the provider answered; the request was     no
                                too big for it)
    client     client_error     - (the client's own mistake)                  no

The breaker (Fowler, https://martinfowler.com/bliki/CircuitBreaker.html; LiteLLM's
``allowed_fails`` / ``cooldown_time``, ``docs/my-website/docs/proxy/reliability.md``)::

                 failures_to_open counted failures
                 within window_s
      closed ────────────────────────────────────▶ open (for cooldown_s)
        ▲                                            │ cooldown_s elapsed
        │ probe succeeds                             ▼
        └──────────────────────────────────────── half_open: exactly one check() returns
                                                  ok + probe; the others are refused
                          probe fails ─▶ open again for cooldown_s
                          probe abandoned, or ends in client/context/cooldown ─▶ the next
                          check() that is not refused by a cooldown becomes the probe

record_success closes the breaker and forgets counted failures; it does not end a rate limit
or an auth/quota cooldown early (those are deadlines the provider or the config set).

:func:`backoff_delay` is exponential backoff with "full jitter", ``random(0, min(cap, base·2ⁿ))``
(AWS Architecture Blog, "Exponential Backoff And Jitter",
https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
:class:`RateLimiter` keeps a sliding 60 s log per provider so a request goes elsewhere before it
provokes a 429 (Moonshot admits against TPM with ``prompt + max_tokens``; its limits are per
user, in concurrency/RPM/TPM/TPD — notes ``providers.md`` §1.2, §1.7).
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kimi_intercept.relay.failures import Action, Failure

RATE_WINDOW_S = 60.0
UNKNOWN_RATE_LIMIT_WAIT_S = 10.0
_PROBE_BUSY = "circuit half-open: a trial request is in flight"
_PROBE = "circuit half-open: trial request"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str | None = None
    probe: bool = False  # True: this request is the half-open trial; report how it ends


@dataclass
class _State:
    failures: deque[float] = field(default_factory=deque)  # clock() of counted failures
    breaker: str = "closed"  # closed | open | half_open
    open_until: float = 0.0
    probe_out: bool = False
    breaker_reason: str | None = None
    limited_until: float = 0.0
    limited_reason: str | None = None
    unavailable_until: float = 0.0
    unavailable_reason: str | None = None


class ProviderHealth:
    """May a provider be tried now? Fed with every attempt's outcome."""

    def __init__(
        self,
        *,
        failures_to_open: int = 5,
        window_s: float = 60.0,
        cooldown_s: float = 30.0,
        auth_cooldown_s: float = 300.0,
        quota_cooldown_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        if failures_to_open < 1:
            raise ValueError(f"failures_to_open must be at least 1, not {failures_to_open}")
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, not {window_s}")
        for name, value in (("cooldown_s", cooldown_s), ("auth_cooldown_s", auth_cooldown_s)):
            if value < 0:
                raise ValueError(f"{name} must not be negative, not {value}")
        if quota_cooldown_s is not None and quota_cooldown_s < 0:
            raise ValueError(f"quota_cooldown_s must not be negative, not {quota_cooldown_s}")
        self.failures_to_open = failures_to_open
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.auth_cooldown_s = auth_cooldown_s
        self.quota_cooldown_s = auth_cooldown_s if quota_cooldown_s is None else quota_cooldown_s
        self._clock = clock
        self._wall = wall
        self._states: dict[str, _State] = {}
        self._changes = 0  # bumped by every change a snapshot shows (see snapshot)
        self._snapshot: tuple[int, float, list[dict[str, Any]]] | None = None

    def check(self, provider: str) -> Verdict:
        """Whether ``provider`` may be tried now. In half-open state the one ``ok`` answer is
        the trial (``probe=True``): report its end with record_success/record_failure or
        :meth:`probe_abandoned`."""
        s = self._state(provider)
        now = self._clock()
        if s.unavailable_until > now:
            return Verdict(False, s.unavailable_reason)
        if s.limited_until > now:
            return Verdict(False, s.limited_reason)
        if s.breaker == "open":
            if now < s.open_until:
                return Verdict(False, s.breaker_reason)
            s.breaker, s.probe_out = "half_open", False
            self._changes += 1
        if s.breaker == "half_open":
            if s.probe_out:
                return Verdict(False, _PROBE_BUSY)
            s.probe_out = True
            return Verdict(True, _PROBE, probe=True)
        return Verdict(True)

    def record_success(self, provider: str) -> None:
        """The provider answered well: close the breaker and forget counted failures."""
        s = self._state(provider)
        if s.failures or s.breaker != "closed" or s.breaker_reason is not None:
            self._changes += 1
        s.failures.clear()
        s.breaker, s.probe_out, s.breaker_reason = "closed", False, None

    def record_failure(self, provider: str, failure: Failure) -> None:
        s = self._state(provider)
        now = self._clock()
        self._changes += 1
        if failure.action in (Action.CLIENT, Action.CONTEXT):
            self._release_probe(s)  # the provider answered; the trial proved nothing
            return
        if failure.action is Action.COOLDOWN:
            span = self.auth_cooldown_s if failure.kind == "auth" else self.quota_cooldown_s
            if failure.retry_after_s is not None:
                span = max(span, failure.retry_after_s)
            s.unavailable_until = max(s.unavailable_until, now + span)
            s.unavailable_reason = f"cooling down after {_describe(failure)}"
            self._release_probe(s)
            return
        if failure.kind == "rate_limit":
            wait = failure.retry_after_s
            if wait is None:
                wait = min(self.cooldown_s, UNKNOWN_RATE_LIMIT_WAIT_S)
            s.limited_until = now + wait  # the latest word from the provider wins
            s.limited_reason = f"rate-limited after {_describe(failure)}"
        s.failures.append(now)
        self._prune(s, now)
        if s.breaker == "half_open":
            self._open(s, now, f"circuit open: the trial request failed: {_describe(failure)}")
        elif s.breaker == "closed" and len(s.failures) >= self.failures_to_open:
            self._open(
                s,
                now,
                f"circuit open: {len(s.failures)} failures within {self.window_s:g} s, "
                f"last {_describe(failure)}",
            )

    def probe_abandoned(self, provider: str) -> None:
        """The trial request ended without an outcome (the client left): allow another."""
        self._release_probe(self._state(provider))

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per provider seen, in first-seen order; ``until`` in epoch seconds.

        The same list object again while nothing it shows can have changed (no outcome
        recorded, no new provider, no deadline or counted failure passed): the status file
        compares it on every call (``relay/live.py``). Do not modify it."""
        now = self._clock()
        cached = self._snapshot
        if cached is not None and cached[0] == self._changes and now < cached[1]:
            return cached[2]
        wall_now = self._wall()
        out = []
        stale_at = math.inf  # when the next deadline or counted failure passes
        for s in self._states.values():
            for t in (s.unavailable_until, s.limited_until, s.open_until):
                if t > now:
                    stale_at = min(stale_at, t)
            for t in s.failures:
                if t > now - self.window_s:
                    stale_at = min(stale_at, t + self.window_s)
                    break  # the oldest counted one leaves the window first
        for name, s in self._states.items():
            until: float | None = None
            reason: str | None = None
            if s.unavailable_until > now:
                state, until, reason = "unavailable", s.unavailable_until, s.unavailable_reason
            elif s.limited_until > now:
                state, until, reason = "rate_limited", s.limited_until, s.limited_reason
            elif s.breaker == "open" and now < s.open_until:
                state, until, reason = "open", s.open_until, s.breaker_reason
            elif s.breaker != "closed":
                state, reason = "half_open", s.breaker_reason
            else:
                state = "available"
            out.append(
                {
                    "provider": name,
                    "state": state,
                    "until": None if until is None else wall_now + (until - now),
                    "reason": reason,
                    "recent_failures": sum(1 for t in s.failures if t > now - self.window_s),
                }
            )
        self._snapshot = (self._changes, stale_at, out)
        return out

    def _state(self, provider: str) -> _State:
        s = self._states.get(provider)
        if s is None:
            s = self._states[provider] = _State()
            self._changes += 1
        return s

    def _prune(self, s: _State, now: float) -> None:
        while s.failures and s.failures[0] <= now - self.window_s:
            s.failures.popleft()

    def _open(self, s: _State, now: float, reason: str) -> None:
        s.breaker, s.open_until, s.probe_out, s.breaker_reason = (
            "open",
            now + self.cooldown_s,
            False,
            reason,
        )

    @staticmethod
    def _release_probe(s: _State) -> None:
        if s.breaker == "half_open":
            s.probe_out = False


def health_key(plan: Any, target: Any) -> str:
    """Whose health an attempt counts toward: the configured provider for a rerouted request;
    for a passed-through one (the client's own request and key to its original host)
    ``passthrough:<host>``, so its failures never open a configured provider's breaker.
    ``plan`` is a :class:`~.routing.plan.RoutePlan`, ``target`` a
    :class:`~.routing.targets.Target`."""
    if plan.kind == "passthrough":
        return f"passthrough:{plan.host}"
    return str(target.provider)


def _describe(failure: Failure) -> str:
    status = f" {failure.status}" if failure.status is not None else ""
    return f"{failure.kind}{status}: {failure.message}"


class RateLimiter:
    """Optional local rpm/tpm per provider (sliding 60 s window) so we go elsewhere before
    provoking a 429. Providers without limits always pass."""

    def __init__(
        self,
        limits: Mapping[str, tuple[int | None, int | None]],
        clock: Callable[[], float] = time.monotonic,
    ):
        for provider, pair in limits.items():
            for name, value in zip(("rpm", "tpm"), pair, strict=True):
                bad = isinstance(value, bool) or not isinstance(value, int) or value < 1
                if value is not None and bad:
                    raise ValueError(
                        f"{name} for {provider!r} must be a positive whole number or unset, "
                        f"not {value!r}"
                    )
        self._limits = dict(limits)
        self._clock = clock
        self._log: dict[str, deque[tuple[float, int]]] = {}
        self._tokens: dict[str, int] = {}

    def try_acquire(self, provider: str, tokens: int) -> bool:
        """Reserve one request and ``tokens`` (prompt + max output, as Moonshot counts) when
        both fit into the last 60 s; False (and nothing reserved) otherwise."""
        if tokens < 0:
            raise ValueError(f"tokens must not be negative, not {tokens}")
        limit = self._limits.get(provider)
        if limit is None or limit == (None, None):  # unlimited: nothing to keep per call
            return True
        rpm, tpm = limit
        now = self._clock()
        log = self._prune(provider, now)
        if rpm is not None and len(log) >= rpm:
            return False
        if tpm is not None and self._tokens[provider] + tokens > tpm:
            return False
        log.append((now, tokens))
        self._tokens[provider] += tokens
        return True

    def state(self, provider: str) -> dict[str, Any]:
        """Requests and tokens used in the window, with the limits (None = unlimited)."""
        rpm, tpm = self._limits.get(provider, (None, None))
        log = self._prune(provider, self._clock())
        return {
            "provider": provider,
            "requests": len(log),
            "tokens": self._tokens[provider],
            "rpm": rpm,
            "tpm": tpm,
        }

    def _prune(self, provider: str, now: float) -> deque[tuple[float, int]]:
        log = self._log.setdefault(provider, deque())
        self._tokens.setdefault(provider, 0)
        while log and log[0][0] <= now - RATE_WINDOW_S:
            self._tokens[provider] -= log.popleft()[1]
        return log


def backoff_delay(
    attempt: int,
    base_s: float = 0.25,
    cap_s: float = 4.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to sleep before retry number ``attempt`` (0 = the first retry): "full jitter",
    ``rand() * min(cap_s, base_s * 2**attempt)`` (AWS Architecture Blog, "Exponential Backoff
    And Jitter", https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/)."""
    if attempt < 0:
        raise ValueError(f"attempt must not be negative, not {attempt}")
    ceiling = cap_s if attempt >= 64 else min(cap_s, base_s * 2.0**attempt)
    return rand() * ceiling
