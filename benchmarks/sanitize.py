"""Sanitize + count a 200k-token conversation: the first turn (cold cache) vs the next turn.

Usage: python benchmarks/sanitize.py [--tokens 200000] [--rounds 15] [--dialect openai|anthropic]

What a request costs the proxy's worker thread when an agent sends it:

- first turn: a new :class:`~kimi_intercept.sanitizer.sanitize.MaskCache`, then
  ``sanitize_request`` and a token count of the sanitized request (every text tokenized once);
- next turn: the same history plus one new assistant message, one new tool output (~2k tokens)
  and one new user message, with the cache warm from the previous turn. Each round uses a
  different new turn, so the new texts are always cache misses, as in real traffic.

Each timed request is a fresh ``json.loads`` of the body bytes (new string objects, as mitmproxy
would hand them over); the parse itself is timed apart. Counting: the OpenAI dialect with
``count_prompt_tokens`` (same number as ``tokens.estimate_prompt_tokens``); the Anthropic
dialect is sanitized natively, translated with ``dialects.anthropic.to_openai_request`` (timed
apart: the relay does it anyway) and counted the same way. Printed: medians with [min..max].
A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from kimi_intercept.accounting import tokens
from kimi_intercept.dialects import anthropic
from kimi_intercept.sanitizer.sanitize import (
    MaskCache,
    SanitizeSettings,
    count_prompt_tokens,
    sanitize_request,
)

WORDS = (
    "alpha beta gamma delta parser lexer codegen runtime util net http json yaml core io fs cache "
    "router config server client handler request response stream token buffer index"
).split()
TOOLS = ["Bash", "Read", "Grep", "Glob", "Edit"]


def _log(rnd: random.Random, lines: int, fail: bool) -> str:
    out = [f"$ make -j8 target={rnd.choice(WORDS)}"]
    for i in range(lines):
        a, b, c = rnd.choice(WORDS), rnd.choice(WORDS), rnd.choice(WORDS)
        out.append(f"[{i:5d}/{lines}] CC src/{a}/{b}_{c}.c -> build/{a}/{b}_{c}.o")
        if rnd.random() < 0.002:
            out.append(f"src/{a}/{b}.c:{rnd.randint(1, 900)}:7: warning: unused variable '{c}'")
    if fail:
        out += ["src/net/http.c:42:5: error: 'buf' undeclared", "make: *** [all] Error 1"]
    return "\n".join(out)


def _file(rnd: random.Random, lines: int) -> str:
    return "\n".join(
        f"{i:>6}→    {rnd.choice(WORDS)}_{rnd.choice(WORDS)} = {rnd.choice(WORDS)}({i})"
        for i in range(1, lines)
    )


def _output(rnd: random.Random, tool: str) -> str:
    if tool == "Bash":  # a quarter are big build logs (800-2500 lines, 16-50k tokens)
        lines = rnd.randint(800, 2500) if rnd.random() < 0.25 else rnd.randint(20, 150)
        return _log(rnd, lines, rnd.random() < 0.5)
    if tool in ("Read", "Edit"):
        return _file(rnd, rnd.randint(40, 250))
    paths = (f"src/{rnd.choice(WORDS)}/{rnd.choice(WORDS)}.py" for _ in range(rnd.randint(5, 120)))
    return "\n".join(paths)


def _prose(rnd: random.Random, words: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(words))


def _turn(
    rnd: random.Random, n: int, dialect: str, log_lines: int | None = None
) -> list[dict[str, Any]]:
    """An assistant message with a tool call, its result, the next user message. With
    ``log_lines``: a failing build log of that many lines (about 20 tokens a line)."""
    tool = "Bash" if log_lines else rnd.choice(TOOLS)
    out = _log(rnd, log_lines, True) if log_lines else _output(rnd, tool)
    text = f"Step {n}: {_prose(rnd, rnd.randint(20, 120))}"
    user = f"Continue with step {n + 1}. {_prose(rnd, 10)}"
    call_id = f"call_{n}"
    if dialect == "openai":
        call = {"id": call_id, "type": "function", "function": {"name": tool, "arguments": "{}"}}
        return [
            {"role": "assistant", "content": text, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": out},
            {"role": "user", "content": user},
        ]
    use = {"type": "tool_use", "id": call_id, "name": tool, "input": {}}
    result = {"type": "tool_result", "tool_use_id": call_id, "content": out}
    return [
        {"role": "assistant", "content": [{"type": "text", "text": text}, use]},
        {"role": "user", "content": [result, {"type": "text", "text": user}]},
    ]


def build(dialect: str, target: int, seed: int = 1) -> tuple[dict[str, Any], int]:
    """A conversation of at least ``target`` tokens (unsanitized), and its number of tool turns."""
    rnd = random.Random(seed)
    system = "You are a coding agent. " + _prose(rnd, 2500)
    tools = [
        {"name": t, "description": _prose(rnd, 300), "input_schema": {"type": "object"}}
        for t in TOOLS
    ]
    first = {"role": "user", "content": "Fix the build. " + _prose(rnd, 50)}
    if dialect == "openai":
        functions = [
            {"name": t["name"], "description": t["description"], "parameters": t["input_schema"]}
            for t in tools
        ]
        body: dict[str, Any] = {
            "model": "kimi-k2",
            "messages": [{"role": "system", "content": system}, first],
            "tools": [{"type": "function", "function": f} for f in functions],
        }
    else:
        body = {"model": "claude-sonnet-4-6", "system": system, "tools": tools, "messages": [first]}
    n = 0
    while _count(dialect, body) < target:
        body["messages"] += _turn(rnd, n, dialect)
        n += 1
    return body, n


def _count(dialect: str, body: dict[str, Any]) -> int:
    if dialect == "anthropic":
        body = anthropic.to_openai_request(body)
    return tokens.estimate_prompt_tokens(body)


def _run(
    dialect: str, raw: bytes, cache: MaskCache, settings: SanitizeSettings
) -> dict[str, float]:
    t0 = time.perf_counter()
    body = json.loads(raw)
    t1 = time.perf_counter()
    result = sanitize_request(dialect, body, settings, cache)
    t2 = time.perf_counter()
    sanitized = result.body
    if dialect == "anthropic":
        sanitized = anthropic.to_openai_request(sanitized)
    t3 = time.perf_counter()
    n = count_prompt_tokens(sanitized, cache)
    t4 = time.perf_counter()
    return {
        "parse": t1 - t0,
        "sanitize": t2 - t1,
        "translate": t3 - t2,
        "count": t4 - t3,
        "total": (t2 - t1) + (t4 - t3),
        "tokens": n,
        "saved": result.tokens_before - result.tokens_after,
        "items": len(result.items),
    }


def _fmt(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{statistics.median(ms):8.2f} ms [{min(ms):.2f}..{max(ms):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--dialect", choices=["openai", "anthropic", "both"], default="both")
    args = parser.parse_args()
    tokens.encoding()  # load the tokenizer outside the timings
    settings = SanitizeSettings()
    for dialect in ("openai", "anthropic") if args.dialect == "both" else (args.dialect,):
        history, turns = build(dialect, args.tokens)
        raw = json.dumps(history).encode()
        t = time.perf_counter()
        original = _count(dialect, history)
        scratch = time.perf_counter() - t
        print(
            f"\n== {dialect}: {len(history['messages'])} messages ({turns} tool turns), "
            f"{len(raw) / 1e6:.2f} MB JSON, {original:,} tokens before sanitizing"
        )
        print(f"   counting the unsanitized request from scratch: {scratch * 1000:.1f} ms")
        first = [_run(dialect, raw, MaskCache(), settings) for _ in range(max(3, args.rounds // 3))]
        print(
            f"   sanitized: {first[0]['items']} texts masked, {first[0]['saved']:,.0f} tokens "
            f"saved → {first[0]['tokens']:,.0f} tokens"
        )
        cache = MaskCache()
        _run(dialect, raw, cache, settings)  # turn N: warms the cache
        small: list[dict[str, float]] = []
        big: list[dict[str, float]] = []
        for r in range(args.rounds):
            for lines, runs in ((100, small), (2000, big)):
                body = json.loads(raw)
                body["messages"] += _turn(random.Random(r * 7 + lines), 10_000 + r, dialect, lines)
                runs.append(_run(dialect, json.dumps(body).encode(), cache, settings))
        cases = (
            ("first turn (cold cache)", first),
            ("next turn, new ~2k-token tool output (warm cache)", small),
            ("next turn, new ~40k-token build log (warm cache)", big),
        )
        for name, runs in cases:
            print(f"   {name}:")
            print(f"     sanitize + count   {_fmt([r['total'] for r in runs])}")
            print(f"       sanitize         {_fmt([r['sanitize'] for r in runs])}")
            print(f"       count            {_fmt([r['count'] for r in runs])}")
            print(f"     json.loads (apart) {_fmt([r['parse'] for r in runs])}")
            if dialect == "anthropic":
                print(f"     translate (apart)  {_fmt([r['translate'] for r in runs])}")
        print(
            f"   cache: {len(cache):,} entries, {cache.bytes / 1e6:.1f} MB, "
            f"{cache.hits:,} hits / {cache.misses:,} misses"
        )


if __name__ == "__main__":
    main()
