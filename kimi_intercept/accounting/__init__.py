"""Counting: what a call cost in tokens and dollars.

Modules: :mod:`.sse` (incremental SSE parsing, shared by every stream reader), :mod:`.usage`
(usage meters that keep the provider's *last* usage object: :class:`ChatStreamMeter`,
:class:`JsonBuffer`; :func:`~.usage.trusted` decides whether a provider's usage can be
recorded as such), :mod:`.counts` (what a token count is: an integer in ``0 <= n < 2**53``),
:mod:`.tokens` (offline tiktoken estimates, bounded in time for huge texts), :mod:`.prices` and
:mod:`.pricing` (dated prices in USD per million tokens, and the cost of a :class:`Usage`),
:mod:`.calibration` (per-model ratios between our estimates and the providers' counts).
Depends on :mod:`kimi_intercept.config` and :mod:`kimi_intercept.storage` only.
"""

from __future__ import annotations

from kimi_intercept.accounting.prices import PriceBook, price_book
from kimi_intercept.accounting.pricing import cost_usd, cost_usd_at
from kimi_intercept.accounting.sse import EventSplitter, SSEParser
from kimi_intercept.accounting.usage import (
    ChatStreamMeter,
    JsonBuffer,
    JsonMeter,
    Usage,
    meter_chat_json,
)

__all__ = [
    "ChatStreamMeter",
    "EventSplitter",
    "JsonBuffer",
    "JsonMeter",
    "PriceBook",
    "SSEParser",
    "Usage",
    "cost_usd",
    "cost_usd_at",
    "meter_chat_json",
    "price_book",
]
