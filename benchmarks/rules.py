"""Cost of routing-rule matching per request (a script that prints numbers, not a test).

Usage: python benchmarks/rules.py [--rules N] [--requests M]

Builds N rules that do not match (globs on model and client, a header, a token floor) and a
last one that does, then plans M realistic requests with
:func:`~kimi_intercept.routing.plan.plan_route`
— the whole planning step the addon runs per request (parse, dialect, conversation key, rule
matching, upstream requests) — and, separately, :func:`~kimi_intercept.config.rules.first_match`
alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from kimi_intercept.config.rules import first_match
from kimi_intercept.config.settings import load_config
from kimi_intercept.routing.plan import _facts, plan_route


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=20)
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    rules = (
        "".join(
            f'[[routing.rules]]\nname = "r{i}"\nchain = ["deepseek"]\n'
            f'match = {{ model = "model-{i}-*", client = "tool-{i}*", '
            f'header = {{ "x-mode" = "m{i}" }}, min_prompt_tokens = {1000 + i} }}\n'
            for i in range(args.rules)
        )
        + '[[routing.rules]]\nname = "hit"\nchain = ["kimi"]\nmatch = { model = "gpt-4o*" }\n'
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text(rules)
        cfg = load_config(path, env={"MOONSHOT_API_KEY": "sk-a", "DEEPSEEK_API_KEY": "sk-b"})
    body = json.dumps({
        "model": "gpt-4o", "stream": True,
        "messages": [{"role": "system", "content": "You are a coding agent. " * 200},
                     *[{"role": "user", "content": f"turn {i} " * 50} for i in range(20)]],
        "tools": [{"type": "function", "function": {"name": f"t{i}", "parameters": {}}}
                  for i in range(20)],
    }).encode()  # fmt: skip
    headers = [("User-Agent", "OpenAI/Python 2.54.0"), ("Content-Type", "application/json")]
    plan_us, match_us = [], []
    facts = _facts("openai", json.loads(body), json.loads(body), "gpt-4o",
                   "OpenAI/Python 2.54.0", body, [(k.lower(), v) for k, v in headers])  # fmt: skip
    for _ in range(args.requests):
        t0 = time.perf_counter()
        plan = plan_route(cfg, method="POST", url="https://api.openai.com/v1/chat/completions",
                          host="api.openai.com", path="/v1/chat/completions", headers=headers,
                          body=body, roll=0)  # fmt: skip
        plan_us.append((time.perf_counter() - t0) * 1e6)
        t0 = time.perf_counter()
        rule = first_match(cfg.rules, facts)
        match_us.append((time.perf_counter() - t0) * 1e6)
        assert plan.rule is not None and plan.rule.name == rule.name == "hit"
    print(f"{args.rules} non-matching rules + 1 matching, {len(body):,}-byte request, "
          f"{args.requests} requests")  # fmt: skip
    print(f"  rule matching alone:  median {statistics.median(match_us):7.1f} µs")
    print(f"  whole plan_route:     median {statistics.median(plan_us):7.1f} µs")


if __name__ == "__main__":
    main()
