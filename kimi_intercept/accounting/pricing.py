"""Cost in USD of one response from its usage and the model's list prices.

Formula (``shared/notes/providers.md`` §1.2, Moonshot billing; the same shape for OpenAI and
DeepSeek cache-hit pricing; Anthropic adds cache writes,
https://docs.claude.com/en/docs/build-with-claude/prompt-caching#pricing)::

    cost = ((prompt - cached - writes) * input + cached * cached_input
            + (writes - writes_1h) * cache_write + writes_1h * cache_write_1h
            + completion * output) / 1e6

with prices in USD per million tokens (:class:`~kimi_intercept.config.settings.ModelInfo`) and token
counts from :class:`~.usage.Usage`. ``completion_tokens`` already includes the
reasoning tokens, so reasoning is not added again.

An unknown price gives ``None`` ("unpriced"), never ``0.0``: a free-looking row would hide
missing configuration.

Prices can change over time (:mod:`.prices`, the ``[prices]`` table). The rule: a row's cost is
computed once, when the row is written, with the price valid on the day of its ``started_at``
(UTC) — :func:`cost_usd_at`. Reports sum the stored costs; a later price change does not rewrite
history.
"""

from __future__ import annotations

import logging
from datetime import date, datetime

from kimi_intercept.accounting.prices import price_book
from kimi_intercept.accounting.usage import Usage
from kimi_intercept.config.settings import Config, ModelInfo

logger = logging.getLogger(__name__)

#: Anthropic's cache-write prices as multiples of the input price, used when a model's table
#: gives none (https://docs.claude.com/en/docs/build-with-claude/prompt-caching#pricing).
CACHE_WRITE_5M_MULTIPLIER = 1.25
CACHE_WRITE_1H_MULTIPLIER = 2.0


def cost_usd(model: ModelInfo | None, usage: Usage) -> float | None:
    """USD cost of ``usage`` at ``model``'s prices, rounded to 1e-9; ``None`` if unpriced.

    ``None`` when ``model`` is ``None``, when ``usage.prompt_tokens`` or
    ``usage.completion_tokens`` is ``None``, or when the input or output price is ``None``.
    A missing cached-input price bills cached tokens at the input price; missing cache-write
    prices are Anthropic's multipliers of the input price (1.25× for the 5-minute TTL, 2× for
    the 1-hour one). ``None`` counts as 0 for cached and written tokens; more cached plus
    written than prompt tokens is clamped to the prompt count.
    """
    if model is None or usage.prompt_tokens is None or usage.completion_tokens is None:
        return None
    if model.input_per_mtok is None or model.output_per_mtok is None:
        return None
    prompt = usage.prompt_tokens
    cached = min(usage.cached_tokens or 0, prompt)
    writes = min(usage.cache_write_tokens or 0, prompt - cached)
    writes_1h = min(usage.cache_write_1h_tokens or 0, writes)
    if cached + writes < (usage.cached_tokens or 0) + (usage.cache_write_tokens or 0):
        logger.debug("cached + written tokens > prompt_tokens %d; clamping", prompt)
    price_in = model.input_per_mtok
    cached_price = model.cached_input_per_mtok
    if cached_price is None:
        cached_price = price_in
    write_price = model.cache_write_per_mtok
    if write_price is None:
        write_price = price_in * CACHE_WRITE_5M_MULTIPLIER
    write_1h_price = model.cache_write_1h_per_mtok
    if write_1h_price is None:
        write_1h_price = price_in * CACHE_WRITE_1H_MULTIPLIER
    micro_usd = (
        (prompt - cached - writes) * price_in
        + cached * cached_price
        + (writes - writes_1h) * write_price
        + writes_1h * write_1h_price
        + usage.completion_tokens * model.output_per_mtok
    )
    return round(micro_usd / 1e6, 9)


def cost_usd_at(
    model: str | None,
    usage: Usage,
    when: str | date | datetime,
    cfg: Config,
    provider: str | None = None,
) -> float | None:
    """USD cost of ``usage`` of ``model`` at the price valid on the (UTC) day of ``when``:
    the dated ``[prices]`` entry in force then, else the ``[providers.*.models.*]`` price.
    ``None`` (unpriced) for a model no table knows.

    :param when: the request's ``started_at`` (ISO 8601), or a date/datetime
    :param provider: the provider that answered: its own model table and provider-specific
        dated entries come first
    :raises ConfigError: if ``[prices]`` is malformed (checked once per config)
    """
    return cost_usd(price_book(cfg).model_info_at(model, when, provider), usage)
