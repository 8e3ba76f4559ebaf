"""Circuit breaker, cooldowns, local rate limits and backoff, driven by fake clocks."""

from __future__ import annotations

import pytest

from kimi_intercept.relay.failures import Action, Failure
from kimi_intercept.relay.health import ProviderHealth, RateLimiter, Verdict, backoff_delay

WALL0 = 1_790_000_000.0  # what the wall clock says when the fake monotonic clock reads 0

SERVER = Failure("server_error", Action.RETRY, 503, "Service Unavailable")
TIMEOUT = Failure("timeout", Action.RETRY, None, "no first byte within 30 s")
CLIENT = Failure("client_error", Action.CLIENT, 400, "invalid temperature")
CONTEXT = Failure("context_length", Action.CONTEXT, 400, "prompt is too long")
AUTH = Failure("auth", Action.COOLDOWN, 401, "Invalid Authentication")
QUOTA = Failure("quota", Action.COOLDOWN, 402, "Insufficient Balance")
RATE = Failure("rate_limit", Action.FALLBACK, 429, "please try again after 20 seconds", 20.0)
RATE_UNKNOWN = Failure("rate_limit", Action.FALLBACK, 429, "Rate Limit Reached")

OPEN_AFTER_5 = "circuit open: 5 failures within 60 s, last server_error 503: Service Unavailable"
PROBE = Verdict(True, "circuit half-open: trial request", probe=True)
PROBE_BUSY = Verdict(False, "circuit half-open: a trial request is in flight")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL0 + self.t


def make(clock: Clock, **kw: float) -> ProviderHealth:
    return ProviderHealth(clock=clock, wall=clock.wall, **kw)  # type: ignore[arg-type]


def fail_times(health: ProviderHealth, clock: Clock, times: list[float], f: Failure = SERVER):
    for t in times:
        clock.t = t
        health.record_failure("kimi", f)


def test_a_new_provider_is_available() -> None:
    clock = Clock()
    health = make(clock)
    assert health.check("kimi") == Verdict(True)
    assert health.snapshot() == [
        {
            "provider": "kimi",
            "state": "available",
            "until": None,
            "reason": None,
            "recent_failures": 0,
        }
    ]


def test_breaker_opens_after_n_failures_within_the_window() -> None:
    clock = Clock()
    health = make(clock)
    fail_times(health, clock, [0, 1, 2, 3])
    assert health.check("kimi") == Verdict(True)
    fail_times(health, clock, [4])
    assert health.check("kimi") == Verdict(False, OPEN_AFTER_5)
    assert health.snapshot() == [
        {
            "provider": "kimi",
            "state": "open",
            "until": WALL0 + 34.0,
            "reason": OPEN_AFTER_5,
            "recent_failures": 5,
        }
    ]


def test_failures_spread_beyond_the_window_do_not_open_it() -> None:
    clock = Clock()
    health = make(clock)
    fail_times(health, clock, [0, 20, 40, 60, 80, 100, 119.5])
    assert health.check("kimi") == Verdict(True)
    assert health.snapshot()[0]["recent_failures"] == 4  # 60, 80, 100, 119.5
    fail_times(health, clock, [119.9])
    assert health.check("kimi") == Verdict(False, OPEN_AFTER_5)


def test_timeouts_and_rate_limits_count_too() -> None:
    clock = Clock()
    health = make(clock, failures_to_open=2, cooldown_s=30.0)
    health.record_failure("kimi", TIMEOUT)
    health.record_failure("kimi", RATE_UNKNOWN)
    clock.t = 10.0  # the rate limit (10 s when unknown) is over; the breaker is still open
    assert health.check("kimi") == Verdict(
        False, "circuit open: 2 failures within 60 s, last rate_limit 429: Rate Limit Reached"
    )


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = Clock()
    health = make(clock)
    fail_times(health, clock, [0, 1, 2, 3, 4])
    clock.t = 33.9
    assert health.check("kimi") == Verdict(False, OPEN_AFTER_5)
    clock.t = 34.0
    assert health.check("kimi") == PROBE
    assert health.check("kimi") == PROBE_BUSY
    assert health.check("kimi") == PROBE_BUSY
    assert health.snapshot()[0]["state"] == "half_open"
    assert health.snapshot()[0]["until"] is None


def test_probe_success_closes_the_breaker() -> None:
    clock = Clock()
    health = make(clock)
    fail_times(health, clock, [0, 1, 2, 3, 4])
    clock.t = 40.0
    assert health.check("kimi") == PROBE
    health.record_success("kimi")
    assert health.check("kimi") == Verdict(True)
    assert health.check("kimi") == Verdict(True)
    assert health.snapshot() == [
        {
            "provider": "kimi",
            "state": "available",
            "until": None,
            "reason": None,
            "recent_failures": 0,
        }
    ]
    # counting starts again from zero
    fail_times(health, clock, [41, 42, 43, 44])
    assert health.check("kimi") == Verdict(True)


def test_probe_failure_reopens_for_another_cooldown() -> None:
    clock = Clock()
    health = make(clock)
    fail_times(health, clock, [0, 1, 2, 3, 4])
    clock.t = 50.0
    assert health.check("kimi") == PROBE
    health.record_failure("kimi", TIMEOUT)
    reason = "circuit open: the trial request failed: timeout: no first byte within 30 s"
    assert health.check("kimi") == Verdict(False, reason)
    assert health.snapshot()[0] == {
        "provider": "kimi",
        "state": "open",
        "until": WALL0 + 80.0,
        "reason": reason,
        "recent_failures": 6,
    }
    clock.t = 80.0
    assert health.check("kimi") == PROBE


def test_an_abandoned_probe_allows_another() -> None:
    clock = Clock()
    health = make(clock)
    fail_times(health, clock, [0, 1, 2, 3, 4])
    clock.t = 34.0
    assert health.check("kimi") == PROBE
    health.probe_abandoned("kimi")
    assert health.check("kimi") == PROBE
    assert health.check("kimi") == PROBE_BUSY


def test_probe_abandoned_is_harmless_when_closed() -> None:
    clock = Clock()
    health = make(clock)
    health.probe_abandoned("kimi")
    assert health.check("kimi") == Verdict(True)


def test_client_and_context_errors_never_open_the_breaker() -> None:
    clock = Clock()
    health = make(clock, failures_to_open=2)
    for _ in range(10):
        health.record_failure("kimi", CLIENT)
        health.record_failure("kimi", CONTEXT)
    assert health.check("kimi") == Verdict(True)
    assert health.snapshot()[0]["recent_failures"] == 0


def test_a_client_error_on_the_probe_frees_the_trial_slot() -> None:
    clock = Clock()
    health = make(clock, failures_to_open=1)
    health.record_failure("kimi", SERVER)
    clock.t = 30.0
    assert health.check("kimi") == PROBE
    health.record_failure("kimi", CLIENT)
    assert health.check("kimi") == PROBE


def test_auth_failure_makes_the_provider_unavailable_for_the_auth_cooldown() -> None:
    clock = Clock()
    health = make(clock)
    clock.t = 5.0
    health.record_failure("kimi", AUTH)
    refused = Verdict(False, "cooling down after auth 401: Invalid Authentication")
    assert health.check("kimi") == refused
    assert health.snapshot() == [
        {
            "provider": "kimi",
            "state": "unavailable",
            "until": WALL0 + 305.0,
            "reason": "cooling down after auth 401: Invalid Authentication",
            "recent_failures": 0,
        }
    ]
    clock.t = 304.9
    assert health.check("kimi") == refused
    clock.t = 305.0
    assert health.check("kimi") == Verdict(True)


def test_quota_cooldown_defaults_to_the_auth_cooldown_and_can_differ() -> None:
    clock = Clock()
    health = make(clock, auth_cooldown_s=120.0)
    health.record_failure("deepseek", QUOTA)
    assert health.snapshot()[0]["until"] == WALL0 + 120.0
    other = make(clock, auth_cooldown_s=120.0, quota_cooldown_s=3600.0)
    other.record_failure("deepseek", QUOTA)
    other.record_failure("kimi", AUTH)
    assert [(s["provider"], s["until"]) for s in other.snapshot()] == [
        ("deepseek", WALL0 + 3600.0),
        ("kimi", WALL0 + 120.0),
    ]


def test_rate_limited_until_retry_after() -> None:
    clock = Clock()
    health = make(clock)
    clock.t = 100.0
    health.record_failure("kimi", RATE)
    refused = Verdict(False, "rate-limited after rate_limit 429: please try again after 20 seconds")
    assert health.check("kimi") == refused
    assert health.snapshot()[0] == {
        "provider": "kimi",
        "state": "rate_limited",
        "until": WALL0 + 120.0,
        "reason": "rate-limited after rate_limit 429: please try again after 20 seconds",
        "recent_failures": 1,
    }
    clock.t = 119.9
    assert health.check("kimi") == refused
    clock.t = 120.0
    assert health.check("kimi") == Verdict(True)


@pytest.mark.parametrize(("cooldown_s", "expected_wait"), [(30.0, 10.0), (4.0, 4.0)])
def test_rate_limit_without_retry_after_waits_min_of_cooldown_and_10_s(
    cooldown_s: float, expected_wait: float
) -> None:
    clock = Clock()
    health = make(clock, cooldown_s=cooldown_s)
    health.record_failure("kimi", RATE_UNKNOWN)
    assert health.snapshot()[0]["until"] == WALL0 + expected_wait


def test_snapshot_lists_every_state() -> None:
    clock = Clock()
    health = make(clock, failures_to_open=1, cooldown_s=30.0)
    health.check("groq")  # seen, fine
    health.check("anthropic")
    health.check("kimi")
    health.record_failure("anthropic", AUTH)
    health.record_failure("deepseek", SERVER)
    clock.t = 2.0
    health.record_failure("gemini", SERVER)
    clock.t = 25.0
    health.record_failure("kimi", RATE)  # rate-limited to 45, breaker open to 55: limit shown
    clock.t = 31.0  # deepseek's breaker cooled down (half-open), gemini's has not
    assert health.check("deepseek") == PROBE
    assert health.snapshot() == [
        {
            "provider": "groq",
            "state": "available",
            "until": None,
            "reason": None,
            "recent_failures": 0,
        },
        {
            "provider": "anthropic",
            "state": "unavailable",
            "until": WALL0 + 300.0,
            "reason": "cooling down after auth 401: Invalid Authentication",
            "recent_failures": 0,
        },
        {
            "provider": "kimi",
            "state": "rate_limited",
            "until": WALL0 + 45.0,
            "reason": "rate-limited after rate_limit 429: please try again after 20 seconds",
            "recent_failures": 1,
        },
        {
            "provider": "deepseek",
            "state": "half_open",
            "until": None,
            "reason": "circuit open: 1 failures within 60 s, last server_error 503: Service "
            "Unavailable",
            "recent_failures": 1,
        },
        {
            "provider": "gemini",
            "state": "open",
            "until": WALL0 + 32.0,
            "reason": "circuit open: 1 failures within 60 s, last server_error 503: Service "
            "Unavailable",
            "recent_failures": 1,
        },
    ]


def test_snapshot_is_reused_until_something_in_it_changes() -> None:
    """The status file compares the snapshot on every call, so an unchanged one is the same
    list; each outcome, new provider, passed deadline and failure leaving the window shows."""
    clock = Clock()
    health = make(clock)

    def states() -> list[tuple[str, str, int]]:
        return [(s["provider"], s["state"], s["recent_failures"]) for s in health.snapshot()]

    health.check("kimi")
    first = health.snapshot()
    assert states() == [("kimi", "available", 0)]
    health.record_success("kimi")  # nothing to close or forget
    health.check("kimi")
    clock.t = 500.0
    assert health.snapshot() is first
    clock.t = 1000.0
    health.record_failure("kimi", RATE)  # rate-limited until 1020
    assert states() == [("kimi", "rate_limited", 1)]
    limited = health.snapshot()
    clock.t = 1019.9
    assert health.snapshot() is limited
    clock.t = 1020.0
    assert states() == [("kimi", "available", 1)]
    clock.t = 1059.9
    assert states() == [("kimi", "available", 1)]
    clock.t = 1060.0  # the failure at 1000 leaves the 60 s window
    assert states() == [("kimi", "available", 0)]
    health.check("groq")
    assert states() == [("kimi", "available", 0), ("groq", "available", 0)]
    health.record_failure("groq", SERVER)
    assert states()[1] == ("groq", "available", 1)
    health.record_success("groq")  # forgets the counted failure
    assert states()[1] == ("groq", "available", 0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError) as e:
        ProviderHealth(failures_to_open=0)
    assert str(e.value) == "failures_to_open must be at least 1, not 0"
    with pytest.raises(ValueError) as e:
        ProviderHealth(window_s=0)
    assert str(e.value) == "window_s must be positive, not 0"


# --- RateLimiter -----------------------------------------------------------------------------


def test_rpm_limit_with_a_sliding_window() -> None:
    clock = Clock()
    limiter = RateLimiter({"kimi": (2, None)}, clock=clock)
    assert limiter.try_acquire("kimi", 100) is True
    clock.t = 30.0
    assert limiter.try_acquire("kimi", 100) is True
    assert limiter.try_acquire("kimi", 1) is False
    assert limiter.state("kimi") == {
        "provider": "kimi",
        "requests": 2,
        "tokens": 200,
        "rpm": 2,
        "tpm": None,
    }
    clock.t = 59.9
    assert limiter.try_acquire("kimi", 1) is False
    clock.t = 60.0  # the first request leaves the window
    assert limiter.try_acquire("kimi", 1) is True
    assert limiter.state("kimi") == {
        "provider": "kimi",
        "requests": 2,
        "tokens": 101,
        "rpm": 2,
        "tpm": None,
    }


def test_tpm_limit_counts_reserved_tokens() -> None:
    clock = Clock()
    limiter = RateLimiter({"deepseek": (None, 1000)}, clock=clock)
    assert limiter.try_acquire("deepseek", 600) is True
    clock.t = 10.0
    assert limiter.try_acquire("deepseek", 500) is False  # refused: nothing reserved
    assert limiter.try_acquire("deepseek", 400) is True
    assert limiter.try_acquire("deepseek", 0) is True
    assert limiter.try_acquire("deepseek", 1) is False
    assert limiter.state("deepseek") == {
        "provider": "deepseek",
        "requests": 3,
        "tokens": 1000,
        "rpm": None,
        "tpm": 1000,
    }
    clock.t = 60.0
    assert limiter.state("deepseek")["tokens"] == 400
    assert limiter.try_acquire("deepseek", 600) is True
    assert limiter.try_acquire("deepseek", 1200) is False  # larger than the whole budget


def test_both_limits_and_unlimited_providers() -> None:
    clock = Clock()
    limiter = RateLimiter({"kimi": (3, 100)}, clock=clock)
    assert [limiter.try_acquire("kimi", 40) for _ in range(3)] == [True, True, False]
    assert [limiter.try_acquire("groq", 10**9) for _ in range(1000)] == [True] * 1000
    assert limiter.state("groq") == {
        "provider": "groq",
        "requests": 0,
        "tokens": 0,
        "rpm": None,
        "tpm": None,
    }


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"kimi": (0, None)}, "rpm for 'kimi' must be a positive whole number or unset, not 0"),
        ({"kimi": (None, 2.5)}, "tpm for 'kimi' must be a positive whole number or unset, not 2.5"),
    ],
)
def test_bad_limits_are_refused(limits, message: str) -> None:
    with pytest.raises(ValueError) as e:
        RateLimiter(limits)
    assert str(e.value) == message


# --- backoff ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 0.25), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (1000, 4.0)],
)
def test_backoff_bounds(attempt: int, ceiling: float) -> None:
    assert backoff_delay(attempt, rand=lambda: 0.0) == 0.0
    assert backoff_delay(attempt, rand=lambda: 1.0) == ceiling


def test_backoff_takes_base_and_cap() -> None:
    assert backoff_delay(3, base_s=0.5, cap_s=10.0, rand=lambda: 1.0) == 4.0
    assert backoff_delay(3, base_s=0.5, cap_s=3.0, rand=lambda: 0.5) == 1.5
    assert 0.0 <= backoff_delay(2) < 1.0


def test_backoff_refuses_negative_attempts() -> None:
    with pytest.raises(ValueError):
        backoff_delay(-1)
