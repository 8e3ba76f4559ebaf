"""The sanitizer's measured saving by position (unit): cached vs new, the rebilled prefix, the
holdout roll and the price formula."""

from __future__ import annotations

import hashlib

import pytest

from kimi_intercept.config.settings import ModelInfo
from kimi_intercept.sanitizer.measure import (
    Measured,
    PrefixMemory,
    holdout_roll,
    parse_holdout_share,
    saved_usd,
)
from kimi_intercept.sanitizer.settings import MaskedItem


class Counted:
    """A memo that knows every original's count already."""

    def __init__(self, n: int) -> None:
        self.n = n

    def count(self, text: str) -> int:
        return self.n

    def known(self, text: str) -> bool:
        return True


def item(cid: str, before: int, after: int) -> MaskedItem:
    return MaskedItem(cid, "Bash", "tool_result", "x", "y", after, 1, 1, Counted(before))


def count(msgs: list) -> int:
    return 10 * len(msgs)


def test_an_item_of_the_previous_turn_counts_as_cached_a_new_one_as_new():
    memory = PrefixMemory()
    a, b = item("a", 1000, 100), item("b", 500, 50)
    m1 = memory.measure("c1", ["u1", "t1"], ["u1", "T1"], [a], count).tokens()
    assert m1 == Measured(removed_cached=0, removed_new=900, rebilled=0)
    m2 = memory.measure("c1", ["u1", "t1", "t2"], ["u1", "T1", "T2"], [a, b], count).tokens()
    assert m2 == Measured(removed_cached=900, removed_new=450, rebilled=0)
    # another conversation has no previous turn
    other = memory.measure("c2", ["u1", "t1"], ["u1", "T1"], [a], count)
    assert other.tokens().removed_cached == 0


def test_a_changed_mask_of_an_unchanged_message_is_rebilled_to_the_previous_end():
    memory = PrefixMemory()
    memory.measure("c", ["s", "u", "t", "v"], ["s", "u", "t", "v"], [], count)
    # message 2 is the same as the client sent it before, but is sent differently now
    m = memory.measure("c", ["s", "u", "t", "v", "w"], ["s", "u", "T", "v", "w"], [], count)
    assert m.tokens().rebilled == count(["T", "v"])  # from message 2 to the previous prompt's end


def test_memory_is_bounded():
    memory = PrefixMemory(max_conversations=2)
    for c in ("a", "b", "c"):
        memory.measure(c, ["m"], ["m"], [], count)
    assert list(memory.turns) == ["b", "c"]


def test_saved_usd_prices_by_position_and_subtracts_the_rebilled_tokens():
    info = ModelInfo(input_per_mtok=3.0, cached_input_per_mtok=0.3, output_per_mtok=15.0)
    m = Measured(removed_cached=1000, removed_new=2000, rebilled=500)
    assert saved_usd(info, m, cache_writes=False) == round(
        (1000 * 0.3 + 2000 * 3.0 - 500 * (3.0 - 0.3)) / 1e6, 9
    )
    # with cache writes, new tokens would have been written at 1.25 x input
    assert saved_usd(info, m, cache_writes=True) == round(
        (1000 * 0.3 + 2000 * 3.75 - 500 * (3.75 - 0.3)) / 1e6, 9
    )
    assert saved_usd(ModelInfo(), m, False) is None  # unpriced, never $0
    assert saved_usd(None, m, False) is None


def test_holdout_roll_is_deterministic_and_spreads():
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    rolls = [holdout_roll(c) for c in ids]
    assert rolls == [holdout_roll(c) for c in ids]
    assert all(0 <= r < 100 for r in rolls)
    assert 0.4 < sum(r < 50 for r in rolls) / len(rolls) < 0.6
    assert holdout_roll("not-hex-at-all-zz") == 100.0


@pytest.mark.parametrize("bad", [-1, 101, "5", True])
def test_holdout_share_must_be_a_percentage(bad):
    with pytest.raises(ValueError, match="holdout_share must be a percentage from 0 to 100"):
        parse_holdout_share(bad)
