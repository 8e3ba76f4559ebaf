"""Long texts are counted by several threads: the count is the one a single thread gives."""

from __future__ import annotations

import random

from kimi_intercept.accounting import tokens


def test_counting_in_threads_gives_the_single_thread_count(monkeypatch):
    rnd = random.Random(3)
    words = "alpha beta gamma δέλτα 数据 parser\tlexer\n  runtime {json: [1, 2]}".split(" ")
    text = " ".join(rnd.choice(words) for _ in range(60_000))  # ~40 pieces
    assert len(text) > tokens.PIECE_CHARS * tokens.PARALLEL_PIECES
    monkeypatch.setattr(tokens, "WORKERS", 1)
    alone = tokens.count_text(text)
    monkeypatch.setattr(tokens, "WORKERS", 3)
    assert tokens.count_text(text) == alone
