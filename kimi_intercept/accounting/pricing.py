"""Cost in USD of one response from its usage and the model's list prices.

Formula (``shared/notes/providers.md`` §1.2, Moonshot billing; the same shape for OpenAI and
DeepSeek cache-hit pricing)::

    cost = ((prompt - cached) * input + cached * cached_input + completion * output) / 1e6

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


def cost_usd(model: ModelInfo | None, usage: Usage) -> float | None:
    """USD cost of ``usage`` at ``model``'s prices, rounded to 1e-9; ``None`` if unpriced.

    ``None`` when ``model`` is ``None``, when ``usage.prompt_tokens`` or
    ``usage.completion_tokens`` is ``None``, or when the input or output price is ``None``.
    A missing cached-input price bills cached tokens at the input price. ``cached_tokens``
    ``None`` counts as 0; more cached than prompt tokens is clamped to the prompt count.
    """
    if model is None or usage.prompt_tokens is None or usage.completion_tokens is None:
        return None
    if model.input_per_mtok is None or model.output_per_mtok is None:
        return None
    prompt = usage.prompt_tokens
    cached = usage.cached_tokens or 0
    if cached > prompt:
        logger.debug("cached_tokens %d > prompt_tokens %d; clamping", cached, prompt)
        cached = prompt
    cached_price = model.cached_input_per_mtok
    if cached_price is None:
        cached_price = model.input_per_mtok
    micro_usd = (
        (prompt - cached) * model.input_per_mtok
        + cached * cached_price
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
