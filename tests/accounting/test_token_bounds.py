"""Token counting is bounded: no prompt holds a worker for more than about a second.

tiktoken's merge step is quadratic in the length of one pre-token, and a run of a single
character is one pre-token: a 50 MB one-character prompt took 118 s to estimate (issue #11).
Long texts are now counted in pieces cut before whitespace (the same count for ordinary text),
and texts over two million characters from samples."""

from __future__ import annotations

import random
import time

import pytest

from kimi_intercept.accounting import tokens


@pytest.fixture(scope="module")
def enc():
    return tokens.encoding()


def words(n: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    vocab = ["the", "proxy", "routes", "every", "call", "to", "Kimi,", "counts", "tokens.", "ü",
             "日本語", "\n", "def", "f(x):", "return", "x", "+", "1"]  # fmt: skip
    return " ".join(rng.choice(vocab) for _ in range(n))


@pytest.mark.parametrize("text", ["a" * 50_000_000, "€" * 10_000_000, words(1_000_000)])
def test_a_huge_text_is_counted_within_a_second(enc, text):
    t0 = time.process_time()  # CPU seconds: what a worker spends, whatever the machine's load
    n = tokens.count_text(text)
    assert time.process_time() - t0 < 1.0
    assert n > 0


def test_a_long_run_of_one_character_counts_as_tiktoken_does(enc):
    text = "a" * 100_000  # small enough to count whole for the comparison
    assert tokens.count_text(text) == len(enc.encode_ordinary(text)) == 12_500
    assert tokens.count_text("a" * 50_000_000) == 6_250_000  # sampled: exact for a uniform run


def test_ordinary_text_counted_in_pieces_gives_the_same_count(enc):
    text = words(60_000)  # about 300,000 characters: many pieces, cut before spaces
    assert len(text) > tokens.PIECE_CHARS * 10
    assert tokens.count_text(text) == len(enc.encode_ordinary(text))


def test_a_sampled_count_is_close(enc):
    text = words(600_000) * 6  # over EXACT_MAX_CHARS: sampled
    assert len(text) > tokens.EXACT_MAX_CHARS
    exact = len(enc.encode_ordinary(text))
    assert tokens.count_text(text) == pytest.approx(exact, rel=0.02)
