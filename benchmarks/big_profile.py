"""Profile kimi's pure work on the big-prompt path, in one process (no proxy, no network).

Usage: python benchmarks/big_profile.py [--kb 800] [--rounds 5] [--profile first|next|none]
                                        [--top 25]

Per request, what the addon and the relay run for a rerouted streamed OpenAI chat request, in
order: ``routing.unplanned.plan_or_reject`` (parse, conversation key, targets: the upstream
body serialized), ``relay.cache_breaks.CacheBreaks.prepare`` with the sanitizer's
``Preparer.prepare`` (fingerprint, sanitize, rebuild, count), ``relay.admission``
(``cannot_try``, ``tokens_guess``), then after the answer ``relay.rows._estimate`` and
``CacheBreaks.observe``. The conversations are ``big_prompt.py``'s: the first turn a
conversation never seen, the next turn the same plus two messages, with everything warm.
Printed: the median wall and CPU (process, all threads) ms of each step per turn; with
``--profile``, cProfile's top entries (cumulative) of that turn over all rounds.
A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

from big_prompt import conversation, next_turn
from harness import HEADERS
from proxyproc import render_config

from kimi_intercept.accounting import tokens
from kimi_intercept.commands.checks import check_config
from kimi_intercept.config.cache import cache_settings
from kimi_intercept.relay import admission
from kimi_intercept.relay.cache_breaks import CacheBreaks
from kimi_intercept.relay.rows import _estimate
from kimi_intercept.routing.conversations import ConversationTracker
from kimi_intercept.routing.plan import requested_max_tokens
from kimi_intercept.routing.unplanned import plan_or_reject

STEPS = ("plan", "prepare", "admission", "estimate", "observe")


def one_request(cfg, preparer, breaks, tracker, body: bytes, times: dict, cpu: dict) -> None:
    c0 = time.process_time()
    t0 = time.perf_counter()
    plan = plan_or_reject(
        cfg, method="POST", url="https://api.openai.com/v1/chat/completions",
        host="api.openai.com", path="/v1/chat/completions",
        headers=[*HEADERS.items(), ("user-agent", "bench/1.0")], body=body,
        client_host="127.0.0.1", tracker=tracker,
    )  # fmt: skip
    t1, c1 = time.perf_counter(), time.process_time()
    breaks.prepare(plan, preparer.prepare)
    t2, c2 = time.perf_counter(), time.process_time()
    max_tokens = requested_max_tokens(plan.request_json)
    asyncio.run(admission.cannot_try(plan.targets[0], plan, max_tokens, 0))
    admission.tokens_guess(plan)
    t3, c3 = time.perf_counter(), time.process_time()
    est = _estimate(plan.request_json, "Hello from the fake Kimi upstream.",
                    plan.prompt_tokens_estimate, preparer.cache)  # fmt: skip
    t4, c4 = time.perf_counter(), time.process_time()
    prompt = est.prompt_tokens or 1
    row = {"id": f"r{time.perf_counter_ns()}", "conversation_id": plan.conversation,
           "prompt_tokens": prompt, "cached_tokens": prompt // 2, "usage_source": "provider",
           "outcome": "ok", "provider": "kimi", "model": "kimi-k2.6"}  # fmt: skip
    breaks.observe(plan, row)
    t5, c5 = time.perf_counter(), time.process_time()
    for name, a, b in zip(STEPS, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5), strict=True):
        times.setdefault(name, []).append((b - a) * 1e3)
    times.setdefault("total", []).append((t5 - t0) * 1e3)
    for name, a, b in zip(STEPS, (c0, c1, c2, c3, c4), (c1, c2, c3, c4, c5), strict=True):
        cpu.setdefault(name, []).append((b - a) * 1e3)
    cpu.setdefault("total", []).append((c5 - c0) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kb", type=int, default=650)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", choices=("first", "next", "none"), default="none")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(
            render_config(Path(tmp) / "k.db", "http://127.0.0.1:9", "http://127.0.0.1:9")
        )
        checked = check_config(path, {"MOONSHOT_API_KEY": "sk-a", "DEEPSEEK_API_KEY": "sk-b"})
    cfg, preparer = checked.cfg, checked.preparer
    breaks, tracker = CacheBreaks(cache_settings(cfg)), ConversationTracker()
    tokens.encoding()
    prof = cProfile.Profile()
    times: dict[str, dict] = {"first": {}, "next": {}}
    cpu: dict[str, dict] = {"first": {}, "next": {}}
    for rnd in range(args.rounds + 1):
        first = conversation(rnd, args.kb)
        bodies = {"first": json.dumps(first).encode(),
                  "next": json.dumps(next_turn(first, rnd)).encode()}  # fmt: skip
        for turn in ("first", "next"):
            on = rnd and args.profile == turn
            if on:
                prof.enable()
            kept = rnd > 0
            one_request(cfg, preparer, breaks, tracker, bodies[turn],
                        times[turn] if kept else {}, cpu[turn] if kept else {})  # fmt: skip
            if on:
                prof.disable()
    print(f"{len(bodies['next']) / 1e3:.0f} KB request, {args.rounds} rounds; median ms per step")
    for label, table in (("wall", times), ("CPU", cpu)):
        print(f"{label:5} {'turn':6}" + "".join(f"{s:>10}" for s in (*STEPS, "total")))
        for turn, t in table.items():
            cells = "".join(f"{statistics.median(t[s]):10.2f}" for s in (*STEPS, "total"))
            print(f"{label:5} {turn:6}" + cells)
    if args.profile != "none":
        pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    sys.exit(main())
