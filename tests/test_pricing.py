from __future__ import annotations

import pytest

from kimi_intercept.config import ModelInfo
from kimi_intercept.pricing import cost_usd
from kimi_intercept.usage import Usage

# kimi-k2.6 list prices, USD per 1M tokens (providers.md §1.2)
K26 = ModelInfo(
    context_window=262_144, input_per_mtok=0.95, cached_input_per_mtok=0.16, output_per_mtok=4.00
)


def test_kimi_k26_moonshot_stream_usage():
    # (26 * 0.95 + 64 * 0.16 + 50 * 4.00) / 1e6 = (24.70 + 10.24 + 200.00) / 1e6
    usage = Usage(prompt_tokens=90, completion_tokens=50, cached_tokens=64, reasoning_tokens=33)
    assert cost_usd(K26, usage) == 0.00023494


def test_reasoning_is_not_billed_twice():
    with_reasoning = Usage(90, 50, 64, 33)
    without = Usage(90, 50, 64, None)
    assert cost_usd(K26, with_reasoning) == cost_usd(K26, without)


def test_no_cache_info_bills_all_prompt_at_input_price():
    # 1M prompt at 0.95 + 1M completion at 4.00
    assert cost_usd(K26, Usage(1_000_000, 1_000_000, None)) == 4.95


def test_missing_cached_price_bills_cached_at_input_price():
    model = ModelInfo(input_per_mtok=0.60, output_per_mtok=2.50)
    # (1000 * 0.60 + 1000 * 2.50) / 1e6, cached tokens at the input price
    assert cost_usd(model, Usage(1000, 1000, 400)) == 0.0031


def test_cached_more_than_prompt_is_clamped():
    # all 100 prompt tokens at the cached price: 100 * 0.16 / 1e6
    assert cost_usd(K26, Usage(100, 0, 150)) == 0.000016


def test_rounded_to_nano_dollars():
    model = ModelInfo(input_per_mtok=0.0001, output_per_mtok=0.0)
    assert cost_usd(model, Usage(3, 0)) == 0.0  # 3e-10 rounds away
    assert cost_usd(model, Usage(7, 0)) == 0.000000001  # 7e-10 rounds up


def test_zero_usage_is_zero_cost_not_unpriced():
    assert cost_usd(K26, Usage(0, 0, 0)) == 0.0


@pytest.mark.parametrize(
    "model, usage",
    [
        (None, Usage(90, 50, 64)),
        (ModelInfo(), Usage(90, 50, 64)),
        (ModelInfo(input_per_mtok=0.95, cached_input_per_mtok=0.16), Usage(90, 50, 64)),
        (ModelInfo(cached_input_per_mtok=0.16, output_per_mtok=4.0), Usage(90, 50, 64)),
        (K26, Usage(None, 50, 64)),
        (K26, Usage(90, None, 64)),
        (K26, Usage()),
    ],
)
def test_unpriced_is_none(model, usage):
    assert cost_usd(model, usage) is None
