"""Whether a target may be tried for a request, before anything is sent: its skip reason (no
key, a dialect it cannot speak), its model's context window against the prompt plus the
requested output, and the token guess that local tpm limits count. The circuit breaker and
rate limits are :mod:`.health`'s.
"""

from __future__ import annotations

import asyncio

from kimi_intercept.accounting import tokens
from kimi_intercept.relay import offload
from kimi_intercept.routing.plan import RoutePlan, requested_max_tokens
from kimi_intercept.routing.targets import Target

# UTF-8 text has at least ~2.5 bytes per token in every tokenizer we price: below this bound a
# prompt surely fits, and the exact (tiktoken) count is skipped.
_BYTES_PER_TOKEN_LOW = 2.5


async def cannot_try(
    target: Target, plan: RoutePlan, max_tokens: int | None, window_floor: int
) -> str | None:
    """Why ``target`` must be skipped for this request, or ``None``. ``window_floor``: after a
    "context length exceeded", only models with a larger context window (tokens) are tried."""
    if target.skip_reason:
        return target.skip_reason
    window = target.model_info.context_window if target.model_info else None
    if window is None:
        return None
    if window_floor and window <= window_floor:
        return f"context window {window:,} is not larger than the one that was exceeded"
    need_out = max_tokens or 0
    if len(target.body) / _BYTES_PER_TOKEN_LOW + need_out <= window:
        return None  # fits for sure; no need to count
    prompt = await prompt_tokens(plan)
    if prompt + need_out > window:
        return (
            f"prompt ~{prompt:,} + max_tokens {need_out:,} tokens exceeds the "
            f"context window {window:,} of {target.model}"
        )
    return None


async def prompt_tokens(plan: RoutePlan) -> int:
    """The plan's prompt estimate (tokens), counted once in a worker thread when missing."""
    if plan.prompt_tokens_estimate is None:
        plan.prompt_tokens_estimate = await asyncio.to_thread(
            tokens.estimate_prompt_tokens, plan.request_json
        )
    return plan.prompt_tokens_estimate


def tokens_guess(plan: RoutePlan) -> int:
    """Tokens a request may use, for local tpm limits: the prompt (bytes / 4) plus max output."""
    return int(offload.planned_bytes(plan) / 4) + (requested_max_tokens(plan.request_json) or 0)
