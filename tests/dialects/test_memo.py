"""Per-message memos (:mod:`kimi_intercept.dialects.memo`): an upstream body assembled from
remembered message JSON is byte for byte what serializing it whole gives, on the first turn and
on every later one; keys tell apart what JSON tells apart; the memo stays within its bounds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kimi_intercept.dialects import json_bytes, memo
from kimi_intercept.dialects.memo import ContentMemo, body_bytes, content_key


@pytest.fixture(autouse=True, scope="module")
def memo_every_body():
    """Short conversations skip the memo (serialized whole); here every body goes through it."""
    before, memo.MEMO_FROM_MESSAGES = memo.MEMO_FROM_MESSAGES, 0
    yield
    memo.MEMO_FROM_MESSAGES = before


SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)  # any code point, lone surrogates included
)
JSON = st.recursive(
    SCALAR,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": JSON},
    optional={"tool_call_id": st.text(max_size=6), "tool_calls": JSON, "name": st.text(max_size=4)},
)
BODY = st.fixed_dictionaries(
    {"model": st.text(max_size=8), "messages": st.lists(MESSAGE | JSON, max_size=6)},
    optional={"stream": st.booleans(), "tools": JSON, "temperature": SCALAR},
)


@settings(max_examples=300, deadline=None)
@given(BODY, st.lists(MESSAGE, max_size=3))
def test_the_assembled_body_is_the_serialized_one_on_every_turn(body, new):
    remembered = ContentMemo()
    assert body_bytes(body, remembered) == json_bytes(body)  # first turn: nothing remembered
    again = json.loads(json_bytes(body))  # the next turn: a fresh parse, two more messages
    again["messages"] = [*again["messages"], *new]
    seen: dict[int, Any] = {}
    assert body_bytes(again, remembered, seen) == json_bytes(again)
    assert body_bytes(again, remembered, seen) == json_bytes(again)  # from the per-build memo too


def test_messages_equal_as_python_but_not_as_json_are_told_apart():
    remembered = ContentMemo()
    bodies = [
        {"messages": [{"role": "user", "content": value}]}
        for value in (1, 1.0, True, "1", [1], {"a": 1}, None, 0, False, 0.0, -0.0)
    ]
    for body in bodies + bodies:
        assert body_bytes(body, remembered) == json_bytes(body)
    keys = [content_key(b) for b in bodies]
    assert len(set(keys)) == len(keys)
    assert content_key({"a": 1, "b": 2}) != content_key({"b": 2, "a": 1})  # key order counts


@given(JSON, JSON)
def test_content_keys_are_equal_exactly_when_the_json_is(a, b):
    same = json.dumps(a) == json.dumps(b)
    assert (content_key(a) == content_key(b)) == same


def test_a_lone_surrogate_is_escaped_as_json_bytes_does():
    body = {"model": "m", "messages": [{"role": "user", "content": "cut emoji \ud83d"}]}
    assert body_bytes(body, ContentMemo()) == json_bytes(body)
    assert b"\\ud83d" in body_bytes(body, ContentMemo())


def test_the_memo_is_bounded_by_entries_and_bytes():
    small = ContentMemo(max_entries=50, max_bytes=1 << 20)
    for i in range(500):
        body_bytes({"messages": [{"role": "tool", "content": f"{i} " + "x" * 10_000}]}, small)
    assert len(small) <= 50
    assert small.bytes <= 1 << 20
    capped = ContentMemo(max_entries=10_000, max_bytes=200_000)
    for i in range(200):
        body_bytes({"messages": [{"role": "tool", "content": f"{i} " + "y" * 10_000}]}, capped)
    assert 0 < capped.bytes <= 200_000
    assert len(capped) < 20  # each entry holds ~20 KB: the byte cap is what bounds it
    capped.put(("huge",), "z", 300_000)  # larger than the whole cap: never kept
    assert capped.get(("huge",)) is None


def test_the_next_turn_reuses_what_the_first_serialized():
    remembered = ContentMemo()
    history = [{"role": "user", "content": f"message {i} " + "w" * 1000} for i in range(20)]
    body_bytes({"messages": history}, remembered)
    misses = remembered.misses
    again = json.loads(json.dumps(history)) + [{"role": "user", "content": "new"}]
    body_bytes({"messages": again}, remembered)
    assert remembered.misses == misses + 1  # only the new message was serialized


def test_a_short_conversation_is_serialized_whole(monkeypatch):
    monkeypatch.setattr(memo, "MEMO_FROM_MESSAGES", 8)
    remembered = ContentMemo()
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}] * 7}
    assert body_bytes(body, remembered) == json_bytes(body) and len(remembered) == 0
    body["messages"].append({"role": "assistant", "content": "hello"})
    assert body_bytes(body, remembered) == json_bytes(body) and len(remembered) == 2
