"""A 200k-token coding-agent conversation through the floor and kimi-intercept: first and next turn.

Usage: python benchmarks/big_prompt.py [--rounds 8] [--kb 800] [--names floor,kimi,direct]
                                       [--json FILE]

Setups (``benchmarks/harness.py``): ``direct`` to one fake upstream on loopback, the ``floor``
(``mitmdump -s benchmarks/floor.py``: a 3-line reroute) and ``kimi`` (``mitmdump -s
addons/kimi.py``: planned, sanitized, counted, relayed, one SQLite row per call). The client is
a separate process with one keep-alive ``httpx.Client`` per setup (warmed up with small calls,
so no CONNECT or TLS handshake is timed).

The conversation (``--kb`` KB of JSON; the default 650 is ~200k o200k tokens): a system
prompt, five tool definitions, then turns of an assistant message with a tool call, the tool's
output (file reads, search results, build and test logs; a quarter of the logs are 800-2,500
lines, which the sanitizer masks) and a user message; sent as an OpenAI chat request, streamed, with
``stream_options.include_usage``. Per round, each setup in turn (the order rotates):

- **first turn**: a conversation never seen (its own random seed per round and setup: every
  message is new to kimi's caches);
- **next turn**: right after, the same history plus the assistant's reply and one new user
  message (what an agent sends next).

Timed per call: TTFT (ms to the first token, ``harness.FirstToken``) and total (ms to the end
of the answer), and
the proxy's CPU (utime + stime of its process, read before the call and 0.3 s after it, so the
row building after the answer counts too; /proc ticks are 10 ms, so the mean per call is
printed). Printed: per setup and turn the median [min..max] of TTFT and total, the mean CPU ms
per call; then kimi − floor added ms (median TTFT and total) for both turns against the issue's
targets (next turn ≤ 10 ms, first turn ≤ 60 ms). One warm-up round is not counted.
A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import Setup, chat_body, cpu_seconds, machine, run_client, side_by_side, timed

TARGETS = {"first": 60.0, "next": 10.0}
TURNS = ("first", "next")
SETTLE_S = 0.3  # after a call, before reading the proxy's CPU (row building runs after it)

WORDS = (
    "alpha beta gamma delta parser lexer codegen runtime util net http json yaml core io fs cache "
    "router config server client handler request response stream token buffer index schema "
    "migration query planner executor session auth retry backoff timeout socket worker queue"
).split()
TOOLS = ("Bash", "Read", "Grep", "Glob", "Edit")


def _prose(rnd: random.Random, words: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(words))


def _build_log(rnd: random.Random, lines: int) -> str:
    """A build log: compiler lines with ANSI colours, a warning now and then, maybe an error."""
    out = [f"$ make -j8 target={rnd.choice(WORDS)}"]
    for i in range(lines):
        a, b, c = rnd.choice(WORDS), rnd.choice(WORDS), rnd.choice(WORDS)
        out.append(f"\x1b[32m[{i:5d}/{lines}]\x1b[0m CC src/{a}/{b}_{c}.c -> build/{a}/{b}_{c}.o")
        if rnd.random() < 0.003:
            out.append(f"src/{a}/{b}.c:{rnd.randint(1, 900)}:7: warning: unused variable '{c}'")
    if rnd.random() < 0.5:
        out += ["src/net/http.c:42:5: error: 'buf' undeclared", "make: *** [all] Error 1"]
    return "\n".join(out)


def _test_log(rnd: random.Random, tests: int) -> str:
    """pytest -v output: one PASSED line per test, a failure at the end."""
    out = ["============================= test session starts =============================="]
    for i in range(tests):
        out.append(f"tests/{rnd.choice(WORDS)}/test_{rnd.choice(WORDS)}.py::test_{i} PASSED [{i}%]")
    out.append("FAILED tests/net/test_http.py::test_keepalive - AssertionError: 2 != 3")
    out.append(f"========== 1 failed, {tests} passed in 12.31s ==========")
    return "\n".join(out)


def _file(rnd: random.Random, lines: int) -> str:
    return "\n".join(
        f"{i:>6}\t    {rnd.choice(WORDS)}_{rnd.choice(WORDS)} = {rnd.choice(WORDS)}({i})"
        for i in range(1, lines)
    )


def _tool_output(rnd: random.Random, tool: str) -> tuple[str, dict[str, Any]]:
    """``(output, arguments)`` of one tool call."""
    if tool == "Bash":
        if rnd.random() < 0.25:  # a big build or test log (16-50k tokens): masked
            if rnd.random() < 0.5:
                return _build_log(rnd, rnd.randint(800, 2500)), {"command": "make -j8"}
            return _test_log(rnd, rnd.randint(800, 2000)), {"command": "pytest -v"}
        return _build_log(rnd, rnd.randint(10, 60)), {"command": "make"}
    if tool in ("Read", "Edit"):
        path = f"src/{rnd.choice(WORDS)}/{rnd.choice(WORDS)}.py"
        return _file(rnd, rnd.randint(40, 250)), {"file_path": path}
    paths = (f"src/{rnd.choice(WORDS)}/{rnd.choice(WORDS)}.py" for _ in range(rnd.randint(5, 120)))
    return "\n".join(paths), {"pattern": rnd.choice(WORDS)}


def _turn(rnd: random.Random, n: int) -> list[dict[str, Any]]:
    """An assistant message with a tool call, the tool's output, and the user's next words."""
    tool = rnd.choice(TOOLS)
    output, arguments = _tool_output(rnd, tool)
    call_id = f"call_{n:04d}_{rnd.getrandbits(32):08x}"
    call = {"id": call_id, "type": "function",
            "function": {"name": tool, "arguments": json.dumps(arguments)}}  # fmt: skip
    return [
        {"role": "assistant", "content": f"Step {n}: {_prose(rnd, rnd.randint(20, 120))}",
         "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": output},
        {"role": "user", "content": f"Continue with step {n + 1}. {_prose(rnd, 10)}"},
    ]  # fmt: skip


def conversation(seed: int, kb: int) -> dict[str, Any]:
    """A streamed OpenAI chat request of about ``kb`` KB: system prompt, tools, agent turns.
    Its first user message carries ``seed``, so each seed is a conversation never seen."""
    rnd = random.Random(seed)
    tools = [
        {"type": "function", "function": {
            "name": t, "description": _prose(rnd, 300),
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}
        for t in TOOLS
    ]  # fmt: skip
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a coding agent. " + _prose(rnd, 2500)},
        {"role": "user", "content": f"Task {seed}: fix the build. {_prose(rnd, 50)}"},
    ]
    size, n = 0, 0
    while size < kb * 1000:
        turn = _turn(rnd, n)
        messages += turn
        size += len(json.dumps(turn))
        n += 1
    return {
        "model": "gpt-4o",
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": tools,
        "messages": messages,
    }


def next_turn(body: dict[str, Any], seed: int) -> dict[str, Any]:
    """``body`` plus the assistant's reply and one new user message."""
    rnd = random.Random(seed * 31 + 7)
    messages = [
        *body["messages"],
        {"role": "assistant", "content": "Hello from the fake Kimi upstream."},
        {"role": "user", "content": f"Good. Now {_prose(rnd, 30)}"},
    ]
    return {**body, "messages": messages}


def _call(c: Any, s: Setup, body: bytes) -> tuple[float, float, float]:
    """``(TTFT ms, total ms, proxy CPU ms)`` of one POST."""
    cpu0 = cpu_seconds(s.pid) if s.pid else 0.0
    ttft, total = timed(c, s.url, body)
    time.sleep(SETTLE_S)
    cpu1 = cpu_seconds(s.pid) if s.pid else 0.0
    return ttft, total, (cpu1 - cpu0) * 1e3


def client(spec: dict) -> dict:
    import httpx

    setups = {n: Setup(**s) for n, s in spec["setups"].items()}
    names = list(setups)
    out = {n: {t: {"ttft": [], "total": [], "cpu": []} for t in TURNS} for n in names}
    clients = {n: httpx.Client(timeout=120, **s.client_kwargs()) for n, s in setups.items()}
    sizes = []
    try:
        for n, s in setups.items():
            for i in range(5):
                timed(clients[n], s.url, chat_body(bool(i % 2)))
        for rnd in range(spec["rounds"] + 1):  # round 0: warm-up, not counted
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                seed = 1000 * rnd + names.index(name)
                first = conversation(seed, spec["kb"])
                bodies = {"first": json.dumps(first).encode(),
                          "next": json.dumps(next_turn(first, seed)).encode()}  # fmt: skip
                sizes.append(len(bodies["next"]))
                for turn in TURNS:
                    ttft, total, cpu = _call(clients[name], setups[name], bodies[turn])
                    if rnd:
                        r = out[name][turn]
                        r["ttft"].append(ttft)
                        r["total"].append(total)
                        r["cpu"].append(cpu)
    finally:
        for c in clients.values():
            c.close()
    from kimi_intercept.accounting.tokens import estimate_prompt_tokens

    sample = next_turn(conversation(0, spec["kb"]), 0)
    n = estimate_prompt_tokens(sample)
    return {"results": out, "bytes": statistics.median(sizes),
            "messages": len(sample["messages"]), "tokens": n}  # fmt: skip


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} [{min(values):.1f}..{max(values):.1f}]"


def report(res: dict, args: argparse.Namespace) -> dict:
    """Print the table and the added ms against the targets; return them (for ``--json``)."""
    results = res["results"]
    print(
        f"kimi-intercept big prompt — {time.strftime('%Y-%m-%d %H:%M')}, {machine()}\n"
        f"{args.rounds} interleaved rounds; a streamed chat request of "
        f"{res['bytes'] / 1e3:.0f} KB, {res['messages']} messages, "
        f"~{res['tokens'] / 1e3:.0f}k o200k tokens before sanitizing\n"
        "ms: median [min..max] over rounds; CPU: mean proxy CPU ms per call\n"
    )
    print(f"{'setup':7} {'turn':6} {'TTFT':>24} {'total':>24} {'CPU ms/call':>12}")
    for name, turns in results.items():
        for turn, r in turns.items():
            cpu = f"{statistics.mean(r['cpu']):12.1f}" if name != "direct" else f"{'–':>12}"
            print(f"{name:7} {turn:6} {_cell(r['ttft']):>24} {_cell(r['total']):>24} {cpu}")
    added: dict[str, dict[str, float]] = {}
    if {"floor", "kimi"} <= results.keys():
        print("\nkimi − floor (medians, ms):")
        for turn in TURNS:
            k, f = results["kimi"][turn], results["floor"][turn]
            a = {m: statistics.median(k[m]) - statistics.median(f[m]) for m in ("ttft", "total")}
            a["cpu"] = statistics.mean(k["cpu"]) - statistics.mean(f["cpu"])
            added[turn] = a
            goal = TARGETS[turn]
            verdict = "met" if a["ttft"] <= goal else "NOT met"
            print(
                f"  {turn:5} turn: TTFT {a['ttft']:+7.2f}  total {a['total']:+7.2f}  "
                f"CPU {a['cpu']:+7.1f}  (target TTFT ≤ +{goal:g} ms: {verdict})"
            )
    return added


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds (plus one warm-up)")
    ap.add_argument("--kb", type=int, default=650, help="conversation size, KB of JSON")
    ap.add_argument("--names", default="floor,kimi,direct", help="setups, comma-separated")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--client-spec", help=argparse.SUPPRESS)  # internal: run as the client
    args = ap.parse_args()
    if args.client_spec:
        print(json.dumps(client(json.loads(args.client_spec))))
        return
    names = tuple(n.strip() for n in args.names.split(",") if n.strip())
    with tempfile.TemporaryDirectory(prefix="kimi-big-") as tmp:
        with side_by_side(Path(tmp), names=names) as (setups, _fake, _db):
            spec = {
                "setups": {n: setups[n].as_dict() for n in names},
                "rounds": args.rounds,
                "kb": args.kb,
            }
            res = run_client(__file__, spec)
    added = report(res, args)
    if args.json:
        Path(args.json).write_text(json.dumps({**res, "added": added}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
