from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest

from kimi_intercept.accounting import calibration
from kimi_intercept.accounting.calibration import Calibration
from kimi_intercept.config.settings import ModelInfo
from kimi_intercept.storage import StoreWriter, open_db, open_readonly, prune


def sample(n: int, started_at: str, est: int, actual: int, model: str = "kimi-k2.6", **extra):
    return {
        "id": f"s{n:05d}",
        "started_at": started_at,
        "provider": "kimi",
        "model": model,
        "outcome": "ok",
        "usage_source": "provider",
        "prompt_tokens": actual,
        "prompt_tokens_estimate": est,
        "completion_tokens": 100,
        "completion_tokens_estimate": 100,
        **extra,
    }


@pytest.fixture
def noisy(tmp_path):
    """200 samples where Kimi counts ~1.2x our estimate (±3 %); rowids 1..200."""
    rnd = random.Random(42)
    rows = []
    for n in range(200):
        est = rnd.randint(500, 5000)
        rows.append(sample(n, f"2026-11-{1 + n % 20:02d}T10:00:00.000Z", est,
                           round(est * 1.2 * rnd.uniform(0.97, 1.03))))  # fmt: skip
    path = tmp_path / "cal.db"
    w = StoreWriter(path)
    for r in rows:
        w.put(r)
    assert w.close()
    return path, rows


def test_calibration_improves_the_estimate_on_a_held_out_sample(noisy):
    path, rows = noisy
    [(key, cal)] = calibration.learn(open_readonly(path)).items()
    assert key == ("kimi", "kimi-k2.6")
    # Independently: the ratio from every row, the error on rowids 5, 10, … (held out)
    # predicted with the ratio of the other rows.
    held = [r for n, r in enumerate(rows, start=1) if n % 5 == 0]
    train = [r for n, r in enumerate(rows, start=1) if n % 5 != 0]
    ratio = sum(r["prompt_tokens"] for r in rows) / sum(r["prompt_tokens_estimate"] for r in rows)
    train_ratio = sum(r["prompt_tokens"] for r in train) / sum(
        r["prompt_tokens_estimate"] for r in train
    )
    actual = sum(r["prompt_tokens"] for r in held)
    raw = sum(abs(r["prompt_tokens_estimate"] - r["prompt_tokens"]) for r in held) / actual
    calibrated = (
        sum(abs(r["prompt_tokens_estimate"] * train_ratio - r["prompt_tokens"]) for r in held)
        / actual
    )
    assert cal.samples == 200 and cal.holdout == 40
    assert cal.prompt_ratio == pytest.approx(ratio, rel=1e-12)
    assert cal.prompt_error_raw == pytest.approx(raw, rel=1e-12)
    assert cal.prompt_error_calibrated == pytest.approx(calibrated, rel=1e-12)
    assert round(raw, 2) == 0.17  # our tokenizer is ~17 % short of Kimi's count
    assert calibrated < 0.02  # within the ±3 % noise once calibrated
    assert (cal.completion_ratio, cal.completion_error_raw) == (1.0, 0.0)
    assert cal.usable
    assert cal.apply(1000, 50) == (round(1000 * ratio), 50)


def test_calibration_survives_pruning(noisy):
    path, _ = noisy
    before = calibration.learn(open_readonly(path))[("kimi", "kimi-k2.6")]
    prune(path, 5, now=datetime(2026, 11, 20, tzinfo=timezone.utc))  # keeps 16th-20th
    after = calibration.learn(open_readonly(path))[("kimi", "kimi-k2.6")]
    assert after.samples == before.samples == 200
    assert after.prompt_ratio == pytest.approx(before.prompt_ratio, rel=1e-12)
    assert after.holdout == 10  # held-out error only from the raw rows still there


def test_each_model_has_its_own_ratio_and_few_samples_are_not_applied(tmp_path):
    path = tmp_path / "two.db"
    w = StoreWriter(path)
    for n in range(6):
        w.put(sample(n, "2026-11-20T10:00:00.000Z", 1000, 1100))
    for n in range(6, 10):
        w.put(sample(n, "2026-11-20T10:00:00.000Z", 1000, 1500, model="other"))
    w.put(sample(10, "2026-11-20T10:00:00.000Z", 1000, 9999, usage_source="estimate"))
    w.put(sample(11, "2026-11-20T10:00:00.000Z", 1000, 9999, response_id="r"))
    w.put(sample(12, "2026-11-20T10:00:00.000Z", 1000, 9999, response_id="r"))  # a replay
    assert w.close()
    cals = calibration.learn(open_readonly(path))
    assert {k: (c.samples, c.prompt_ratio, c.usable) for k, c in cals.items()} == {
        ("kimi", "kimi-k2.6"): (7, (6 * 1100 + 9999) / 7000, True),
        ("kimi", "other"): (4, 1.5, False),
    }
    assert cals[("kimi", "other")].apply(1000, 100) == (1000, 100)


def test_no_samples(tmp_path):
    open_db(tmp_path / "e.db").close()
    assert calibration.learn(open_readonly(tmp_path / "e.db")) == {}


def test_cost_factor_weights_by_price():
    cal = Calibration("kimi", "kimi-k2.6", samples=10, prompt_ratio=1.2, completion_ratio=1.0)
    info = ModelInfo(input_per_mtok=1.0, output_per_mtok=4.0)
    # (1000 * 1.2 * 1 + 100 * 4) / (1000 * 1 + 100 * 4)
    assert cal.cost_factor(1000, 100, info) == pytest.approx(1600 / 1400)
    assert cal.cost_factor(1000, 100, None) == pytest.approx(1300 / 1100)
    assert Calibration("k", "m", samples=1, prompt_ratio=2.0).cost_factor(1, 1, info) == 1.0
