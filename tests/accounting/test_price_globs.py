"""Glob model names in ``[prices]`` and the shipped price list."""

from __future__ import annotations

from pathlib import Path

import pytest

from kimi_intercept.accounting.pricing import cost_usd_at
from kimi_intercept.accounting.usage import Usage
from kimi_intercept.config.settings import load_config

REPO = Path(__file__).resolve().parents[2]
TABLE = """
[[prices."acme-4o*"]]
since = "2025-01-01"
input_per_mtok = 2.0
output_per_mtok = 8.0

[[prices."acme-4o-mini*"]]
since = "2025-01-01"
input_per_mtok = 0.1
output_per_mtok = 0.4
"""


def test_the_longest_matching_glob_prices_a_dated_name(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(TABLE)
    cfg = load_config(p, env={})
    u = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert cost_usd_at("acme-4o-mini-2024-07-18", u, "2026-01-01", cfg) == 0.5
    assert cost_usd_at("acme-4o-2024-08-06", u, "2026-01-01", cfg) == 10.0
    assert cost_usd_at("acme-4o-2024-08-06", u, "2024-12-31", cfg) is None  # before `since`
    assert cost_usd_at("acme-5", u, "2026-01-01", cfg) is None  # unpriced, never 0


@pytest.mark.parametrize(
    ("model", "prices"),
    [
        # (input, cached, output) USD per 1M tokens, as the shipped config states them
        ("claude-sonnet-4-5-20250929", (3.00, 0.30, 15.00)),
        ("claude-opus-4-1-20250805", (15.00, 1.50, 75.00)),
        ("claude-opus-4-5-20251101", (5.00, 0.50, 25.00)),
        ("claude-haiku-4-5-20251001", (1.00, 0.10, 5.00)),
        ("gpt-4.1", (2.00, 0.50, 8.00)),
        ("gpt-4.1-mini-2025-04-14", (0.40, 0.10, 1.60)),
        ("gpt-5-mini", (0.25, 0.025, 2.00)),
        ("gemini-2.5-pro", (1.25, 0.125, 10.00)),
        ("gemini-2.5-flash-lite", (0.10, 0.01, 0.40)),
        ("deepseek-chat", (0.28, 0.028, 0.42)),
        ("moonshotai/kimi-k2-instruct-0905", (1.00, 0.50, 3.00)),
        ("kimi-k3", (3.00, 0.30, 15.00)),
        ("kimi-k2.7-code", (0.95, 0.19, 4.00)),
        ("gpt-4o", (2.50, 1.25, 10.00)),
    ],
)
def test_shipped_prices(model, prices):
    cfg = load_config(REPO / "config.toml", env={})
    u = Usage(prompt_tokens=3_000_000, cached_tokens=1_000_000, completion_tokens=1_000_000)
    price_in, cached, out = prices
    expected = round(2 * price_in + cached + out, 9)
    assert cost_usd_at(model, u, "2026-12-01", cfg) == pytest.approx(expected, abs=1e-9)
