"""Masking ahead (sanitizer/ahead.py): the long tool outputs of a first turn are masked on
several threads before the walk, and what is sent is exactly what masking them one by one
sends."""

from __future__ import annotations

import json
import random

from kimi_intercept.sanitizer import ahead
from kimi_intercept.sanitizer.mask import MaskCache, SanitizeSettings
from kimi_intercept.sanitizer.sanitize import sanitize_request

WORDS = "alpha beta gamma parser lexer runtime cache router stream token buffer".split()


def _log(rnd: random.Random, lines: int) -> str:
    out = [f"[{i:5d}] CC src/{rnd.choice(WORDS)}/{rnd.choice(WORDS)}.c" for i in range(lines)]
    return "\n".join([*out, "src/net/http.c:42:5: error: 'buf' undeclared"])


def _body(outputs: int, lines: int) -> dict:
    rnd = random.Random(11)
    messages: list[dict] = [{"role": "user", "content": "Fix the build."}]
    for k in range(outputs):
        call = {"id": f"call_{k}", "type": "function",
                "function": {"name": "Bash", "arguments": '{"cmd": "make"}'}}  # fmt: skip
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{k}", "content": _log(rnd, lines)},
        ]
    # a Cline-style user text carries one more output inside a wrapper
    messages.append({"role": "user", "content": "[execute_command for 'make'] Result:\n"
                     + _log(rnd, lines)})  # fmt: skip
    return {"model": "gpt-4o", "messages": messages}


def _spy(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = ahead.mask_ahead

    def spy(texts, settings, cache):
        done = real(texts, settings, cache)
        calls.append(len(texts) if done else 0)
        return done

    monkeypatch.setattr("kimi_intercept.sanitizer.sanitize.mask_ahead", spy)
    return calls


def test_a_first_turn_is_masked_ahead_and_sends_what_one_by_one_sends(monkeypatch):
    monkeypatch.setattr(ahead.tokens, "WORKERS", 2)
    calls = _spy(monkeypatch)
    body, settings = _body(12, 600), SanitizeSettings()
    warm = sanitize_request("openai", body, settings, MaskCache())
    serial = sanitize_request("openai", json.loads(json.dumps(body)), settings, None)
    assert calls == [13]  # every long output, the wrapped one included, went to the threads
    assert warm.body == serial.body
    assert [(i.id, i.masked, i.tokens_before, i.tokens_after) for i in warm.items] == [
        (i.id, i.masked, i.tokens_before, i.tokens_after) for i in serial.items
    ]
    assert len(warm.items) == 13


def test_the_next_turn_finds_everything_in_the_cache_and_walks_once(monkeypatch):
    monkeypatch.setattr(ahead.tokens, "WORKERS", 2)
    calls = _spy(monkeypatch)
    cache, settings = MaskCache(), SanitizeSettings()
    body = _body(12, 600)
    first = sanitize_request("openai", body, settings, cache)
    again = sanitize_request("openai", json.loads(json.dumps(body)), settings, cache)
    assert calls == [13]  # the second request needed no masking ahead
    assert again.body == first.body and again.items == first.items


def test_a_few_short_outputs_are_masked_in_the_walk(monkeypatch):
    monkeypatch.setattr(ahead.tokens, "WORKERS", 2)
    calls = _spy(monkeypatch)
    result = sanitize_request("openai", _body(2, 400), SanitizeSettings(), MaskCache())
    assert calls == [0] and len(result.items) == 3  # under AHEAD_MIN_CHARS: not worth threads
