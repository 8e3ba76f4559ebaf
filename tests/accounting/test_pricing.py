from __future__ import annotations

import pytest

from kimi_intercept.accounting.pricing import cost_usd
from kimi_intercept.accounting.usage import Usage
from kimi_intercept.config.settings import ModelInfo

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


# -- dated prices ([prices]) -------------------------------------------------------------------

from datetime import date, datetime, timezone  # noqa: E402

from kimi_intercept.accounting.prices import parse_prices, price_book  # noqa: E402
from kimi_intercept.accounting.pricing import cost_usd_at  # noqa: E402
from kimi_intercept.config.settings import ConfigError, load_config  # noqa: E402

DATED = """
[[prices."kimi-k2.6"]]
since = "2026-06-01"
input_per_mtok = 0.80
cached_input_per_mtok = 0.10
output_per_mtok = 3.00

[[prices."kimi-k2.6"]]
since = 2026-09-01
input_per_mtok = 0.50
output_per_mtok = 2.00

[[prices."kimi-k2.6"]]
since = "2026-09-01"
provider = "groq"
input_per_mtok = 1.00
output_per_mtok = 3.00

[[prices."brand-new"]]
since = "2026-10-01"
input_per_mtok = 1.0
output_per_mtok = 1.0
"""

MILLION = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000, cached_tokens=500_000)


@pytest.fixture
def cfg(tmp_path):
    (tmp_path / "c.toml").write_text(DATED)
    return load_config(tmp_path / "c.toml")


@pytest.mark.parametrize(
    "when, provider, expected",
    [
        # before every dated entry: the [providers.kimi.models] list price
        # 0.5M * 0.95 + 0.5M * 0.16 + 1M * 4.00
        ("2026-05-31T23:59:59.999Z", "kimi", 4.555),
        # from 2026-06-01: 0.5 * 0.80 + 0.5 * 0.10 + 3.00
        ("2026-06-01T00:00:00.000Z", "kimi", 3.45),
        (date(2026, 8, 31), None, 3.45),
        # from 2026-09-01, no cached price: cached billed as input, 1 * 0.50 + 2.00
        ("2026-09-01T00:00:00.000Z", "kimi", 2.5),
        # a provider-specific entry wins on the same day: 1 * 1.00 + 3.00
        ("2026-09-15T10:00:00.000Z", "groq", 4.0),
        # an aware datetime counts by its UTC day: 2026-09-01 03:00 in UTC+5 is 08-31 22:00 UTC
        (datetime(2026, 9, 1, 3, 0, tzinfo=timezone(__import__("datetime").timedelta(hours=5))),
         "kimi", 3.45),
    ],
)  # fmt: skip
def test_price_change_applies_from_its_day(cfg, when, provider, expected):
    assert cost_usd_at("kimi-k2.6", MILLION, when, cfg, provider) == expected


def test_a_model_only_in_prices_is_unpriced_before_its_first_entry(cfg):
    assert cost_usd_at("brand-new", MILLION, "2026-09-30T00:00:00Z", cfg) is None
    assert cost_usd_at("brand-new", MILLION, "2026-10-01T00:00:00Z", cfg) == 2.0


def test_unknown_model_is_unpriced_never_zero(cfg):
    assert cost_usd_at("gpt-9", MILLION, "2026-10-01T00:00:00Z", cfg) is None
    assert cost_usd_at(None, MILLION, "2026-10-01T00:00:00Z", cfg) is None


def test_dated_entry_keeps_the_base_context_window(cfg):
    info = price_book(cfg).model_info_at("kimi-k2.6", "2026-10-01", "kimi")
    assert info == ModelInfo(262_144, 0.5, None, 2.0)
    assert price_book(cfg) is price_book(cfg)  # parsed once per config


@pytest.mark.parametrize(
    "table, message",
    [
        ({"m": 3}, 'prices."m" must be a list of dated entries: write [[prices."m"]]'),
        ({"m": [{"input_per_mtok": 1, "output_per_mtok": 1}]},
         'prices."m"[0].since must be a day like "2026-01-01", got None'),
        ({"m": [{"since": "June", "input_per_mtok": 1, "output_per_mtok": 1}]},
         'prices."m"[0].since must be a day like "2026-01-01", got \'June\''),
        ({"m": [{"since": "2026-01-01", "output_per_mtok": 1}]},
         'prices."m"[0].input_per_mtok is missing: give the price in USD per 1M tokens'),
        ({"m": [{"since": "2026-01-01", "input_per_mtok": -1, "output_per_mtok": 1}]},
         'prices."m"[0].input_per_mtok must be a price in USD per million tokens (>= 0), got -1'),
        ({"m": [{"since": "2026-01-01", "input_per_mtok": 1, "output_per_mtok": 1,
                 "input": 2}]},
         '[[prices."m"]] unknown key `input` — valid keys: cache_write_1h_per_mtok, '
         "cache_write_per_mtok, cached_input_per_mtok, input_per_mtok, output_per_mtok, provider, "
         "since"),
        ({"m": [{"since": "2026-01-01", "input_per_mtok": 1, "output_per_mtok": 1},
                {"since": "2026-01-01", "input_per_mtok": 2, "output_per_mtok": 1}]},
         'prices."m" has two entries since 2026-01-01 for the same provider; remove one'),
        ([], '[prices] must be a table of models: [[prices."MODEL"]] entries'),
    ],
)  # fmt: skip
def test_malformed_prices_name_the_key_and_the_fix(table, message):
    with pytest.raises(ConfigError) as e:
        parse_prices(table)
    assert str(e.value) == message


def test_a_single_table_is_one_entry():
    [entry] = parse_prices({"m": {"since": "2026-01-01", "input_per_mtok": 1,
                                  "output_per_mtok": 2}})["m"]  # fmt: skip
    assert (entry.since, entry.info.output_per_mtok, entry.provider) == (
        date(2026, 1, 1),
        2.0,
        None,
    )
