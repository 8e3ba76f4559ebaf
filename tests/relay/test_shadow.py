"""Shadow mode: pure parts (similarity, the row) — the end-to-end test is in test_shadow_e2e."""

from __future__ import annotations

from kimi_intercept.relay.shadow import finish_row, similarity


def test_similarity_is_a_word_set_jaccard():
    assert similarity("The cat sat.", "the CAT sat") == 1.0
    assert similarity("a b c d", "a b x y") == round(2 / 6, 4)
    assert similarity("", "") is None
    assert similarity("only one side", "") == 0.0


def test_finish_row_ties_the_mirror_to_the_clients_request():
    mirror = {"id": "s1", "shadow_provider": "deepseek", "outcome": "ok", "_text": "hello world"}
    request = {"id": "r1", "provider": "kimi", "model": "kimi-k2.6", "outcome": "ok",
               "ttft_ms": 12.5, "duration_ms": 40.0, "cost_usd": 0.001}  # fmt: skip
    assert finish_row(mirror, request, "Hello, world!") == {
        "id": "s1", "shadow_provider": "deepseek", "outcome": "ok", "request_id": "r1",
        "primary_provider": "kimi", "primary_model": "kimi-k2.6", "primary_outcome": "ok",
        "primary_ttft_ms": 12.5, "primary_duration_ms": 40.0, "primary_cost_usd": 0.001,
        "similarity": 1.0,
    }  # fmt: skip
