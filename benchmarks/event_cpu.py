"""The relay's CPU per streamed event: what kimi-intercept does to each SSE event it forwards.

Usage: python benchmarks/event_cpu.py [--events 2000] [--runs 15]

In-process, no proxy: an OpenAI-dialect stream of ``--events`` content events (Kimi's chunk
shape, one short word each) goes through what the relay runs per upstream read of a committed
answer (``relay/answer.py``): the data clock of the stall timeout, the splitter into whole
events, and ``forwarding._one`` (the meter's SSE parse and JSON decode, the repetition check,
the client's bytes). Printed: µs per event, the best of ``--runs`` runs (the least disturbed
by other work on the machine), with the repetition check on and off, and with ten events per
read (a burst). A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from types import SimpleNamespace

from kimi_intercept.accounting.sse import EventSplitter
from kimi_intercept.dialects.bridge import Bridge
from kimi_intercept.relay import forwarding
from kimi_intercept.relay.bounds import DataClock
from kimi_intercept.relay.rows import Outcome
from kimi_intercept.relay.validate import RepetitionDetector

WORDS = "the quick brown fox jumps over a lazy dog while reading logs of failing tests".split()


def stream(n: int) -> list[bytes]:
    rng = random.Random(1)
    out = []
    for _ in range(n):
        chunk = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "kimi-k2.6",
            "choices": [
                {"index": 0, "delta": {"content": " " + rng.choice(WORDS)}, "finish_reason": None}
            ],
        }
        out.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
    return out


def run(events: list[bytes], repetition: bool, per_read: int) -> float:
    """µs per event of one pass over ``events``, ``per_read`` of them per upstream read."""
    request = {"model": "kimi-k2.6", "messages": [{"role": "user", "content": "hi"}]}
    bridge = Bridge("openai", "openai", "kimi-k2.6", request=request, prompt_tokens=10)
    meter = bridge.meter(True)
    r = Outcome(repetition=RepetitionDetector() if repetition else None)
    clock, split = DataClock(True), EventSplitter()
    target = SimpleNamespace(renamed=None, tool_ids=None)
    t0 = time.perf_counter()
    for i in range(0, len(events), per_read):
        chunk = b"".join(events[i : i + per_read])
        clock.feed(chunk)
        data: list[bytes] = []
        for piece in split.push(chunk):
            forwarding._one(piece, data, meter, True, r, target, bridge, False, False)
        b"".join(data)
    return (time.perf_counter() - t0) / len(events) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    events = stream(args.events)
    for label, repetition, per_read in (
        ("one event per read", True, 1),
        ("one event per read, no repetition check", False, 1),
        ("ten events per read", True, 10),
    ):
        best = min(run(events, repetition, per_read) for _ in range(args.runs))
        print(f"{best:6.1f} µs per event  ({label})")


if __name__ == "__main__":
    main()
