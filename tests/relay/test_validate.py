"""Answer checks: empty answers, JSON mode, repetition loops (pure functions)."""

from __future__ import annotations

import json

from kimi_intercept.relay.validate import (
    RepetitionDetector,
    json_answer_problem,
    wants_json,
)


def feed_all(text: str, piece: int = 7) -> str | None:
    d = RepetitionDetector()
    for i in range(0, len(text), piece):
        hit = d.feed(text[i : i + piece])
        if hit:
            return hit
    return None


def test_a_loop_is_caught_soon_after_the_sixth_repeat():
    unit = "Let me re-read the file to verify the change is correct. "
    text = "Some real answer first.\n" + unit * 12
    d, seen = RepetitionDetector(), 0
    for i in range(0, len(text), 5):
        seen = i
        if d.feed(text[i : i + 5]):
            break
    assert seen < len("Some real answer first.\n") + len(unit) * 8
    assert "the same" in feed_all(text) and "6 times" in feed_all(text)


def test_normal_text_and_code_with_short_repeats_pass():
    prose = " ".join(
        f"Sentence number {i} says something different about item {i * 7}." for i in range(300)
    )
    code = "\n".join(["    x = x + 1"] * 40 + [f"    y{i} = compute({i})" for i in range(200)])
    table = "\n".join(["| a | b |", "|---|---|"] + ["| 1 | 2 |"] * 50)
    for text in (prose, code, table):
        assert feed_all(text) is None


def test_json_mode():
    assert wants_json({"response_format": {"type": "json_object"}})
    assert wants_json({"response_format": {"type": "json_schema", "json_schema": {}}})
    assert not wants_json({"response_format": {"type": "text"}}) and not wants_json({})

    def answer(content, **message):
        return json.dumps({"choices": [{"message": {"content": content, **message}}]}).encode()

    assert json_answer_problem(answer('{"a": 1}')) is None
    assert json_answer_problem(answer("Sure: {a}")).startswith("JSON mode answer does not parse")
    assert json_answer_problem(answer(None)) == "JSON mode answer has no text content"
    assert json_answer_problem(answer(None, tool_calls=[{"id": "t"}])) is None
    assert json_answer_problem(b"not a chat answer") is None
