"""Accounting: turn what passed through the relay into one ``requests`` row.

Provider usage is the truth (``usage_source = 'provider'``); when the answer carried none, the
prompt and completion are counted with tiktoken (``'estimate'``), in a worker thread because it
is CPU-bound. Cost comes from the model's prices in the config (:mod:`.pricing`); an unknown
price leaves ``cost_usd`` NULL, never 0.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from kimi_intercept.accounting import pricing, tokens
from kimi_intercept.accounting.usage import Usage, trusted
from kimi_intercept.config.settings import Config
from kimi_intercept.dialects import text_of
from kimi_intercept.relay import offload
from kimi_intercept.relay.failures import redact
from kimi_intercept.routing.plan import RoutePlan
from kimi_intercept.routing.targets import Target
from kimi_intercept.sanitizer.measure import saved_usd
from kimi_intercept.sanitizer.sanitize import count_prompt_tokens
from kimi_intercept.storage.ids import new_request_id

log = logging.getLogger(__name__)

SKIPPED = "skipped: "  # the error text of an attempts row for a provider that was not tried


@dataclass
class Outcome:
    """What happened to one client request, filled in by the relay as it goes.

    Times in ms. ``meter`` is a :class:`~.usage.ChatStreamMeter` or :class:`~.usage.JsonBuffer`
    once an answer was committed.
    """

    target: Target | None = None
    status: int | None = None
    outcome: str = "error"  # ok | error | incomplete | client_abort | rejected | shutdown
    error: str | None = None
    ttft_ms: float | None = None
    overhead_ms: float | None = None
    meter: Any = None
    bridge: Any = None  # dialects.bridge.Bridge of the committed answer
    upstream_request_id: str | None = None
    skipped: list[str] = field(default_factory=list)
    upstream_done: bool = False  # the upstream's answer ended and was forwarded
    repetition: Any = None  # validate.RepetitionDetector while a checked stream passes
    answer_seen: int = 0  # answer pieces already given to the detector
    continued_after: str | None = None  # why the first provider's stream broke (continue_on_break)
    cut: Any = None  # bounds.Cut when the relay ended the request itself (shutdown, max_answer_s)


async def build_row(
    plan: RoutePlan,
    attempts: list[dict[str, Any]],
    r: Outcome,
    duration_ms: float,
    cfg: Config | None = None,
    cache: Any = None,
) -> dict[str, Any]:
    """The ``requests`` row (columns: see README "The database").

    Our own estimate is recorded next to the provider's usage whenever an answer came
    (``prompt_tokens_estimate`` / ``completion_tokens_estimate``): the report calibrates
    estimate-only rows from the pairs. Cost: the price valid on the request's day
    (:func:`.pricing.cost_usd_at`; unpriced → NULL)."""
    meter = r.meter
    # provider usage with a count that is not an integer in 0..2**53 is not the provider's truth
    usage, usage_ignored = trusted(meter.usage if meter is not None else None)
    source = "provider" if usage is not None else None
    estimate: Usage | None = None
    if r.status is not None and r.status < 400 and meter is not None:
        text = meter.completion_text or ""
        size = offload.planned_bytes(plan) + len(text)
        estimate = await offload.sized(
            size,
            _estimate,
            plan.request_json,
            text,
            plan.prompt_tokens_estimate,
            cache,
        )
        if usage is None:
            usage, source = estimate, "estimate"
    await _counted_later(plan, estimate, cache)
    target = r.target
    model = (meter.model if meter is not None else None) or (target.model if target else None)
    info = target.model_info if target else None
    priced_model = (target.model if target else None) or model
    if usage is None:
        cost = None
    elif cfg is not None:
        cost = pricing.cost_usd_at(
            priced_model, usage, plan.started_at, cfg, r.target and r.target.provider
        )
    else:
        cost = pricing.cost_usd(info, usage)
    if (measurement := getattr(plan.prepared, "measured", None)) is not None:
        # the masked originals' whole counts (savings), not made before sending: big ones in a
        # worker thread; the ledger rows and row fields then read them from the items
        await offload.sized(measurement.size(), measurement.tokens)
    money = _money(plan, usage, cfg, priced_model, r.target.provider if r.target else None, info)
    tried = [(a.get("provider"), a.get("model")) for a in attempts if not _skipped(a)]
    details = {
        "upstream_request_id": r.upstream_request_id,
        "finish_reason": getattr(meter, "finish_reason", None),
        "events": getattr(meter, "events", None),
        "malformed_events": getattr(meter, "malformed_events", None) or None,
        "overhead_ms": r.overhead_ms,
        "skipped": r.skipped or None,
        "continued_after_break": r.continued_after,
        "request_changes": list(target.notes) if target and target.notes else None,
        "raw_usage": usage.raw if usage is not None else None,
        "usage_ignored": usage_ignored,  # why the provider's usage was not recorded as such
        "plan_error": plan.problem.message if plan.problem else None,
        "sanitizer_tokens": money.pop("sanitizer_tokens", None),
    }
    return clean_row(
        {
            "id": new_request_id(),
            "started_at": plan.started_at,
            "client": plan.client,
            "client_host": plan.client_host,
            "client_model": plan.client_model,
            "provider": target.provider if target else None,
            "model": model,
            "status_code": r.status,
            "outcome": r.outcome,
            "attempts": len(tried),
            "fallback_used": int(len(set(tried)) > 1),
            "ttft_ms": _round(r.ttft_ms),
            "duration_ms": _round(duration_ms),
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "cached_tokens": usage.cached_tokens if usage else None,
            "reasoning_tokens": usage.reasoning_tokens if usage else None,
            "cache_write_tokens": usage.cache_write_tokens if usage else None,
            "cache_write_1h_tokens": usage.cache_write_1h_tokens if usage else None,
            "usage_source": source,
            "cost_usd": cost,
            "prompt_tokens_estimate": estimate.prompt_tokens if estimate else None,
            "completion_tokens_estimate": estimate.completion_tokens if estimate else None,
            "context_window": info.context_window if info else None,
            "route": plan.kind,
            "dialect": plan.dialect,
            "conversation_id": plan.conversation or None,
            "conversation_title": plan.title,
            "rule": plan.rule.name if plan.rule else None,
            "stream": int(plan.stream),
            "response_id": getattr(meter, "response_id", None),
            "host": plan.host,
            "error": redact(r.error) if r.error else None,
            "details": json.dumps(
                {k: v for k, v in details.items() if v is not None},
                default=str,
                separators=(",", ":"),
            ),  # fmt: skip
            **money,
        }
    )


def clean_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with every text made storable: SQLite cannot take a lone UTF-16 surrogate (a cut
    emoji in a model name, a header byte that was not UTF-8), so it becomes U+FFFD."""
    return {k: text_of(v) if isinstance(v, str) else v for k, v in row.items()}


def _money(
    plan: RoutePlan,
    usage: Usage | None,
    cfg: Config | None,
    priced_model: str | None,
    provider: str | None,
    info: Any,
) -> dict[str, Any]:
    """``requested_cost_usd`` (a rerouted request's usage at the client's requested model's
    price: "you asked for X; Kimi answered for $a instead of $b") and ``sanitizer_saved_usd``
    (:func:`~kimi_intercept.sanitizer.measure.saved_usd` at the answering model's price; NULL
    for a holdout, which removed nothing), plus the measured tokens for ``details``."""
    out: dict[str, Any] = {"requested_cost_usd": None, "sanitizer_saved_usd": None}
    if usage is None or plan.kind != "reroute":
        return out
    if cfg is not None and plan.client_model:
        out["requested_cost_usd"] = pricing.cost_usd_at(
            plan.client_model, usage, plan.started_at, cfg
        )
    measurement = getattr(plan.prepared, "measured", None)
    if measurement is not None:
        measured = measurement.tokens()
        if any((tokens := measured.as_dict()).values()):  # nothing removed: nothing written
            out["sanitizer_tokens"] = tokens
        if not plan.prepared.holdout:
            if cfg is not None:
                info = pricing.price_book(cfg).model_info_at(
                    priced_model, plan.started_at, provider
                )
            out["sanitizer_saved_usd"] = saved_usd(info, measured, bool(usage.cache_write_tokens))
    return out


def _estimate(
    request_json: dict[str, Any],
    completion_text: str,
    prompt_tokens: int | None = None,
    cache: Any = None,
) -> Usage:
    """Our count (``prompt_tokens`` when the preparer already counted the prompt; ``cache``, a
    :class:`~.mask.MaskCache`, makes the next turn of a conversation count only what is new)."""
    try:
        if prompt_tokens is None and request_json:
            prompt_tokens = (
                count_prompt_tokens(request_json, cache)
                if cache is not None
                else tokens.estimate_prompt_tokens(request_json)
            )
        return Usage(
            # no hub form of the request (e.g. the Responses API): no prompt estimate
            prompt_tokens=prompt_tokens,
            completion_tokens=tokens.estimate_completion_tokens(completion_text),
        )
    except Exception:
        log.exception("kimi-intercept: token estimate failed; the row is left without tokens")
        return Usage()


async def _counted_later(plan: RoutePlan, estimate: Usage | None, cache: Any) -> None:
    """A prompt the preparer did not count before sending (surely far below the window:
    ``Prepared.counted_later``) gets its count now, for the row's ``tokens_after_sanitize``."""
    done = plan.prepared
    if not getattr(done, "counted_later", False) or done.prompt_tokens_after is not None:
        return
    n = estimate.prompt_tokens if estimate is not None else None
    if n is None and plan.request_json:
        size = offload.planned_bytes(plan)
        n = (await offload.sized(size, _estimate, plan.request_json, "", None, cache)).prompt_tokens
    plan.prompt_tokens_estimate = done.prompt_tokens_after = n


def _skipped(attempt: dict[str, Any]) -> bool:
    """An ``attempts`` row of a provider that was not tried (no key, capability, breaker…):
    not a try, so it makes neither an attempt nor a fallback."""
    return (attempt.get("error") or "").startswith(SKIPPED)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)
