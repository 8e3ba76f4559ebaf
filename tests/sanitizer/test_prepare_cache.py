"""The big-prompt path's memos change nothing that is sent: turn after turn of one conversation,
what a proxy with warm caches (masks, token counts, message JSON, digests) sends upstream is
byte for byte what a proxy that never saw the conversation sends, and the rows' numbers agree."""

from __future__ import annotations

import json
import random

import pytest

from kimi_intercept.config.settings import load_config
from kimi_intercept.dialects import json_bytes
from kimi_intercept.dialects.memo import MESSAGES
from kimi_intercept.relay.cache_breaks import fingerprint
from kimi_intercept.routing.plan import RoutePlan
from kimi_intercept.routing.unplanned import plan_or_reject
from kimi_intercept.sanitizer.prepare import Preparer

ENV = {"MOONSHOT_API_KEY": "sk-moon", "DEEPSEEK_API_KEY": "sk-deep"}
WORDS = "alpha beta gamma parser lexer runtime cache router stream token buffer".split()


def log(rnd: random.Random, lines: int) -> str:
    out = [
        f"[{i:5d}/{lines}] CC src/{rnd.choice(WORDS)}/{rnd.choice(WORDS)}.c" for i in range(lines)
    ]
    return "\n".join([*out, "src/net/http.c:42:5: error: 'buf' undeclared"])


def turns(dialect: str, n: int) -> list[dict]:
    """``n`` growing requests of one agent conversation (big logs, short outputs, file reads)."""
    rnd = random.Random(7)
    system = "You are a coding agent. " + " ".join(rnd.choice(WORDS) for _ in range(300))
    first = {"role": "user", "content": "Fix the build."}
    messages: list[dict] = (
        [first] if dialect == "anthropic" else [{"role": "system", "content": system}, first]
    )
    bodies = []
    for i in range(n):
        for j in range(3):
            k = f"{i}_{j}"
            tool = rnd.choice(["Bash", "Read", "Grep"])
            out = log(rnd, rnd.choice([30, 1500])) if tool == "Bash" else log(rnd, 40)
            text = f"Step {k}: " + " ".join(rnd.choice(WORDS) for _ in range(30))
            if dialect == "openai":
                call = {"id": f"call_{k}", "type": "function",
                        "function": {"name": tool, "arguments": '{"cmd": "make"}'}}  # fmt: skip
                messages += [
                    {"role": "assistant", "content": text, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": f"call_{k}", "content": out},
                ]
            else:
                use = {
                    "type": "tool_use",
                    "id": f"toolu_{k}",
                    "name": tool,
                    "input": {"cmd": "make"},
                }
                result = {"type": "tool_result", "tool_use_id": f"toolu_{k}", "content": out}
                messages += [
                    {"role": "assistant", "content": [{"type": "text", "text": text}, use]},
                    {"role": "user", "content": [result, {"type": "text", "text": "go on"}]},
                ]
        body = {"model": "gpt-4o", "stream": True, "messages": json.loads(json.dumps(messages))}
        if dialect == "anthropic":
            body.update(model="claude-sonnet-4-6", system=system, max_tokens=1024)
        else:
            body["stream_options"] = {"include_usage": True}
        bodies.append(body)
    return bodies


def prepared(preparer: Preparer, dialect: str, body: dict) -> RoutePlan:
    path = "/v1/messages" if dialect == "anthropic" else "/v1/chat/completions"
    host = "api.anthropic.com" if dialect == "anthropic" else "api.openai.com"
    plan = plan_or_reject(
        preparer_cfg(), method="POST", url=f"https://{host}{path}", host=host, path=path,
        headers=[("user-agent", "test/1.0")], body=json.dumps(body).encode(), roll=0.0,
    )  # fmt: skip
    assert plan is not None and plan.kind == "reroute"
    preparer.prepare(plan)
    return plan


_CFG = None


def preparer_cfg():
    global _CFG
    if _CFG is None:
        _CFG = load_config(None, env=ENV)
    return _CFG


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_a_warm_proxy_sends_the_bytes_a_cold_one_sends(dialect):
    warm = Preparer(preparer_cfg())
    for body in turns(dialect, 4):
        hot = prepared(warm, dialect, body)
        MESSAGES.clear()
        cold = prepared(Preparer(preparer_cfg()), dialect, body)
        assert hot.prepared.sanitized.items, "the conversation has logs to mask"
        assert [t.body for t in hot.targets] == [t.body for t in cold.targets]
        for t in hot.targets:  # and each is what serializing the body whole gives
            assert json_bytes(json.loads(t.body)) == t.body
        assert hot.request_json == cold.request_json
        assert fingerprint(hot.request_json) == fingerprint(cold.request_json)
        assert [i.masked for i in hot.prepared.sanitized.items] == [
            i.masked for i in cold.prepared.sanitized.items
        ]


def test_a_prompt_far_below_the_window_is_counted_after_the_answer_not_before():
    p = prepared(Preparer(preparer_cfg()), "openai", turns("openai", 1)[0])
    assert p.prepared.counted_later and p.prompt_tokens_estimate is None
    assert p.prepared.prompt_tokens_after is None  # the relay's row fills it in


def test_a_masked_original_is_offered_to_the_writer_once_savings_every_time():
    from kimi_intercept.sanitizer.prepare import ledger_rows

    warm = Preparer(preparer_cfg())
    offered: list[str] = []
    for body in turns("openai", 3):
        plan = prepared(warm, "openai", body)
        rows = ledger_rows(plan, store_originals=True)
        items = plan.prepared.sanitized.items
        assert sum(r["items"] for r in rows["savings"]) == len(items)  # every masked text
        new = [r["id"] for r in rows["masked"]]
        assert all(r["original"] for r in rows["masked"])
        assert not set(new) & set(offered)  # never offered twice
        offered += new
    assert set(offered) == {i.id for i in items}  # the last turn carries them all
