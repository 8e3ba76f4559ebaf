"""Context compression: fixed order, validity per dialect, stops at the target, protected parts."""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kimi_intercept.accounting.tokens import count_text
from kimi_intercept.config.settings import ConfigError
from kimi_intercept.sanitizer.compress import (
    DROP_FORMAT,
    DROP_RE,
    NOTE_FORMAT,
    NOTE_RE,
    ContextSettings,
    compress_request,
    context_share,
    estimate_tokens,
    explain,
    warning_level,
)
from kimi_intercept.sanitizer.sanitize import MaskCache

CTX = ContextSettings()
WORDS = (
    "alpha beta gamma delta parser lexer codegen runtime util net http json yaml core io".split()
)
TURNS = 10


def output(seed: int, lines: int = 120) -> str:
    rnd = random.Random(seed)
    return "\n".join(f"cc -c src/{rnd.choice(WORDS)}/{rnd.choice(WORDS)}.c" for _ in range(lines))


def explanation(t: int) -> str:
    rnd = random.Random(1000 + t)
    return f"step {t}: " + " ".join(rnd.choice(WORDS) for _ in range(250))


def openai_body() -> dict:
    msgs: list[dict] = [
        {"role": "system", "content": "You are Continue, a coding agent."},
        {"role": "user", "content": "Fix the build."},
    ]
    for t in range(TURNS):
        calls = [
            {"id": f"c{t}a", "type": "function", "function": {"name": "Bash", "arguments": "{}"}},
            {"id": f"c{t}b", "type": "function", "function": {"name": "Read", "arguments": "{}"}},
        ]
        msgs.append({"role": "assistant", "content": explanation(t), "tool_calls": calls})
        msgs.append({"role": "tool", "tool_call_id": f"c{t}a", "content": output(t)})
        msgs.append({"role": "tool", "tool_call_id": f"c{t}b", "content": output(100 + t)})
        if t == 3:
            msgs.append({"role": "system", "content": "Mode switched to agent."})
        msgs.append({"role": "user", "content": f"go on {t}"})
    return {"model": "kimi-k2", "messages": msgs, "tools": [{"type": "function"}]}


def anthropic_body() -> dict:
    msgs: list[dict] = [{"role": "user", "content": [{"type": "text", "text": "Fix the build."}]}]
    for t in range(TURNS):
        msgs.append({"role": "assistant", "content": [
            {"type": "text", "text": explanation(t)},
            {"type": "tool_use", "id": f"t{t}a", "name": "Bash", "input": {"command": "make"}},
            {"type": "tool_use", "id": f"t{t}b", "name": "Grep", "input": {"pattern": "x"}},
        ]})  # fmt: skip
        msgs.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"t{t}a", "content": output(t)},
            {"type": "tool_result", "tool_use_id": f"t{t}b", "is_error": True,
             "content": [{"type": "text", "text": output(100 + t)}]},
        ]})  # fmt: skip
    msgs[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
    return {"model": "claude", "system": "You are Claude Code.", "messages": msgs}


def gemini_body() -> dict:
    contents: list[dict] = [{"role": "user", "parts": [{"text": "Fix the build."}]}]
    for t in range(TURNS):
        call = {"functionCall": {"id": f"g{t}", "name": "run_shell_command", "args": {}}}
        contents.append({"role": "model", "parts": [{"text": explanation(t)}, call]})
        contents.append({"role": "user", "parts": [
            {"functionResponse": {"id": f"g{t}", "name": "run_shell_command",
                                  "response": {"output": output(t), "code": 0}}}]})  # fmt: skip
    return {"systemInstruction": {"parts": [{"text": "You are gemini-cli."}]}, "contents": contents}


def check_openai_pairs(messages: list) -> None:
    open_calls: set[str] = set()
    for m in messages:
        if m["role"] == "assistant":
            assert not open_calls, "a tool call was left without its result"
            open_calls = {c["id"] for c in m.get("tool_calls", [])}
        elif m["role"] == "tool":
            open_calls.remove(m["tool_call_id"])  # KeyError: a result without its call
    assert not open_calls


def check_alternating_pairs(messages: list, dialect: str) -> None:
    assistant = "model" if dialect == "gemini" else "assistant"
    roles = [m["role"] for m in messages]
    assert roles == ["user", assistant] * (len(roles) // 2) + ["user"] * (len(roles) % 2)
    calls: list[str] = []
    for m in messages:
        blocks = m.get("parts") or m.get("content")
        blocks = [] if isinstance(blocks, str) else blocks
        if m["role"] == assistant:
            calls = [b.get("id") or b["functionCall"]["id"] for b in blocks
                     if b.get("type") == "tool_use" or "functionCall" in b]  # fmt: skip
        else:
            results = [b.get("tool_use_id") or b["functionResponse"]["id"] for b in blocks
                       if b.get("type") == "tool_result" or "functionResponse" in b]  # fmt: skip
            assert results == calls
            calls = []


def test_nothing_happens_under_the_target():
    body = openai_body()
    tokens = estimate_tokens("openai", body)
    result = compress_request(
        "openai", body, prompt_tokens=tokens, context_window=tokens * 2, settings=CTX
    )
    assert (result.body, result.tokens_after, result.steps) == (body, tokens, ())


def test_older_tool_outputs_go_first_oldest_first_and_it_stops_at_the_target():
    body = openai_body()
    pristine = copy.deepcopy(body)
    tokens = estimate_tokens("openai", body)
    firsts = [body["messages"][i]["content"] for i in (3, 4, 7)]
    savings = [count_text(t) - count_text(DROP_FORMAT.format(tokens=count_text(t))) for t in firsts]
    target = tokens - savings[0] - savings[1] - savings[2] // 2  # needs 3 drops
    result = compress_request(
        "openai",
        body,
        prompt_tokens=tokens,
        context_window=100_000,
        settings=CTX,
        target_share=target / 100_000,
    )
    assert body == pristine
    assert result.steps == (
        f"messages[3]: Bash output, {count_text(firsts[0]):,} tokens → drop marker",
        f"messages[4]: Read output, {count_text(firsts[1]):,} tokens → drop marker",
        f"messages[7]: Bash output, {count_text(firsts[2]):,} tokens → drop marker",
    )
    expected = copy.deepcopy(body)
    for i, text in zip((3, 4, 7), firsts, strict=True):
        expected["messages"][i]["content"] = DROP_FORMAT.format(tokens=count_text(text))
    assert result.body == expected
    assert result.tokens_after == tokens - sum(savings) == estimate_tokens("openai", result.body)
    assert result.tokens_after <= target
    assert DROP_RE.fullmatch(result.body["messages"][3]["content"])["tokens"] == (
        f"{count_text(firsts[0]):,}"
    )


def key_of(dialect: str) -> str:
    return "contents" if dialect == "gemini" else "messages"


def with_markers(dialect: str, body: dict, upto: int) -> dict:
    """``body`` with every tool output in ``messages[:upto]`` replaced by the drop marker."""

    def marker(text: str) -> str:
        return DROP_FORMAT.format(tokens=count_text(text))

    out = copy.deepcopy(body)
    for m in out[key_of(dialect)][:upto]:
        if dialect == "openai" and m["role"] == "tool":
            m["content"] = marker(m["content"])
        for b in m.get("content") if isinstance(m.get("content"), list) else []:
            if b.get("type") == "tool_result" and isinstance(b["content"], str):
                b["content"] = marker(b["content"])
            elif b.get("type") == "tool_result":
                b["content"] = [{**x, "text": marker(x["text"])} for x in b["content"]]
        for p in m.get("parts", []):
            if "functionResponse" in p:
                response = p["functionResponse"]["response"]
                response["output"] = marker(response["output"])
    return out


def after_step1(dialect: str, body: dict) -> tuple[int, list[int]]:
    """The estimate once every older tool output is a marker, and each middle turn's tokens."""
    key = key_of(dialect)
    assistant = "model" if dialect == "gemini" else "assistant"
    starts = [i for i, m in enumerate(body[key]) if m["role"] == assistant]
    marked = with_markers(dialect, body, starts[-4])
    costs = [
        estimate_tokens(dialect, {key: [m for m in marked[key][s:e] if m["role"] != "system"]}) - 3
        for s, e in zip(starts[:-4], starts[1:-3], strict=True)
    ]
    return estimate_tokens(dialect, marked), costs


def expected(dialect: str, body: dict, target: int) -> tuple[list, int, str]:
    """Messages, estimate and last step that step 2 must produce, computed independently from the
    marked body: the fewest oldest middle turns whose removal brings estimate + note under the
    target."""
    key = key_of(dialect)
    assistant = "model" if dialect == "gemini" else "assistant"
    starts = [i for i, m in enumerate(body[key]) if m["role"] == assistant]
    tail = starts[-4]
    marked = with_markers(dialect, body, tail)
    msgs = marked[key]
    after1 = estimate_tokens(dialect, marked)
    assert after1 > target, "the test needs step 2"
    saved = removed = 0
    for k, (s, e) in enumerate(zip(starts, starts[1:], strict=False), start=1):
        gone = [m for m in msgs[s:e] if m["role"] != "system"]
        saved += estimate_tokens(dialect, {key: gone}) - 3
        removed += len(gone)
        note = NOTE_FORMAT.format(turns=k, messages=removed, tokens=saved)
        final = after1 - saved + count_text(note)
        if final <= target or e == tail:
            break
    head = copy.deepcopy(msgs[: starts[0]])
    if dialect == "openai":
        head[-1]["content"] += "\n\n" + note
    elif dialect == "anthropic":
        head[-1]["content"].append({"type": "text", "text": note})
    else:
        head[-1]["parts"].append({"text": note})
    system = [m for m in msgs[starts[0] : e] if m["role"] == "system"]
    step = (
        f"messages[{starts[0]}:{e}]: {k} turns ({removed} messages, {saved:,} tokens) dropped "
        f"→ one note, appended to messages[{starts[0] - 1}]"
    )
    return head + system + msgs[e:], final, step


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "gemini"])
def test_then_the_oldest_middle_turns_go_whole_and_the_request_stays_valid(dialect):
    body = {"openai": openai_body, "anthropic": anthropic_body, "gemini": gemini_body}[dialect]()
    key = key_of(dialect)
    pristine = copy.deepcopy(body)
    tokens = estimate_tokens(dialect, body)
    after1, costs = after_step1(dialect, body)
    assert len(costs) == 6
    share = (after1 - costs[0] - costs[1] - costs[2] // 2) / tokens  # needs 3 turns
    result = compress_request(
        dialect,
        body,
        prompt_tokens=tokens,
        context_window=tokens,
        settings=CTX,
        target_share=share,
        cache=MaskCache(),
    )
    assert body == pristine
    messages, estimate, step = expected(dialect, body, int(share * tokens))
    assert result.body[key] == messages
    assert result.steps[-1] == step
    assert step.startswith(f"messages[{1 + (dialect == 'openai')}:")
    assert " 3 turns (" in step
    assert all(s.endswith("→ drop marker") for s in result.steps[:-1])  # step 1 came first
    assert result.tokens_after == estimate <= share * tokens
    others = {k: v for k, v in result.body.items() if k != key}
    assert others == {k: v for k, v in body.items() if k != key}  # system prompt, tools
    assert all(a is b for a, b in zip(result.body[key][-8:], body[key][-8:], strict=True))
    if dialect == "openai":
        check_openai_pairs(result.body[key])
        assert abs(estimate_tokens(dialect, result.body) - estimate) <= 2
    else:
        check_alternating_pairs(result.body[key], dialect)
        assert estimate_tokens(dialect, result.body) == estimate


def test_an_unreachable_target_removes_everything_allowed_and_nothing_else():
    body = anthropic_body()
    tokens = estimate_tokens("anthropic", body)
    result = compress_request(
        "anthropic", body, prompt_tokens=tokens, context_window=tokens, settings=CTX, target_share=0
    )
    msgs = result.body["messages"]
    assert msgs[1:] == body["messages"][-8:]
    assert msgs[0]["content"][0] == body["messages"][0]["content"][0]
    note = NOTE_RE.fullmatch(msgs[0]["content"][1]["text"])
    assert note is not None and (note["turns"], note["messages"]) == ("6", "12")
    assert result.steps[-1].startswith("messages[1:13]: 6 turns (12 messages, ")
    assert len(result.steps) == 6 * 2 + 1  # every older tool output, then the turns
    assert result.tokens_after == estimate_tokens("anthropic", result.body) > 0
    check_alternating_pairs(msgs, "anthropic")


def test_context_share_and_warnings():
    assert context_share(170_000, 200_000) == 0.85
    assert context_share(10, None) is None and context_share(None, 100) is None
    assert [warning_level(s, CTX) for s in (0.5, 0.8, 0.93, 1.2, None)] == [
        None,
        0.8,
        0.9,
        0.95,
        None,
    ]


def test_context_settings_from_table():
    assert ContextSettings.from_table({"compress_at": 0.9, "warn_at": [0.5, 1]}) == ContextSettings(
        compress_at=0.9, warn_at=(0.5, 1.0)
    )
    with pytest.raises(ConfigError, match=r"\[context\] keep_last_turns must be at least 1"):
        ContextSettings.from_table({"keep_last_turns": 0})
    with pytest.raises(ConfigError, match=r"\[context\] warn_at has the wrong type"):
        ContextSettings.from_table({"warn_at": "0.8"})
    with pytest.raises(ConfigError, match="increasing"):
        ContextSettings.from_table({"warn_at": [0.9, 0.8]})


def test_explain_lists_the_steps_between_the_gauge_and_the_result():
    body = gemini_body()
    tokens = estimate_tokens("gemini", body)
    window = 10_000
    result = compress_request(
        "gemini", body, prompt_tokens=tokens, context_window=window, settings=CTX
    )
    lines = explain("gemini", body, context_window=window)
    assert lines == [
        f"prompt ≈ {tokens:,} tokens = {tokens / window:.0%} of the 10,000-token window; "
        "target 75% (7,500 tokens)",
        *result.steps,
        f"after: ≈ {result.tokens_after:,} tokens = {result.tokens_after / window:.0%} of the "
        "window",
    ]
    assert explain("gemini", body, context_window=10**6)[1] == "nothing would be removed"


def conversation(dialect: str, spec: list[list[int]]) -> dict:
    """A conversation: per turn an assistant message with one call per entry of ``spec[t]`` (the
    output's line count), its results, and in OpenAI a user message after every other turn."""
    first = "Fix the build."
    if dialect == "openai":
        msgs: list[dict] = [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": first},
        ]
    elif dialect == "anthropic":
        msgs = [{"role": "user", "content": first}]
    else:
        msgs = [{"role": "user", "parts": [{"text": first}]}]
    for t, outputs in enumerate(spec):
        ids = [f"c{t}_{k}" for k in range(len(outputs))]
        texts = [output(t * 10 + k, n) for k, n in enumerate(outputs)]
        if dialect == "openai":
            calls = [{"id": i, "type": "function", "function": {"name": "Bash", "arguments": "{}"}}
                     for i in ids]  # fmt: skip
            msgs.append({"role": "assistant", "content": explanation(t), "tool_calls": calls})
            msgs += [
                {"role": "tool", "tool_call_id": i, "content": x}
                for i, x in zip(ids, texts, strict=True)
            ]
            if t % 2:
                msgs.append({"role": "user", "content": f"go on {t}"})
        elif dialect == "anthropic":
            uses = [{"type": "tool_use", "id": i, "name": "Bash", "input": {}} for i in ids]
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": "ok"}, *uses]})
            results = [{"type": "tool_result", "tool_use_id": i, "content": x}
                       for i, x in zip(ids, texts, strict=True)]  # fmt: skip
            msgs.append({"role": "user", "content": [*results, {"type": "text", "text": "go"}]})
        else:
            calls = [{"functionCall": {"id": i, "name": "sh", "args": {}}} for i in ids]
            msgs.append({"role": "model", "parts": [{"text": "ok"}, *calls]})
            responses = [{"functionResponse": {"id": i, "name": "sh", "response": {"output": x}}}
                         for i, x in zip(ids, texts, strict=True)]  # fmt: skip
            msgs.append({"role": "user", "parts": [*responses, {"text": "go"}]})
    return {key_of(dialect): msgs}


@settings(max_examples=60, deadline=None)
@given(
    dialect=st.sampled_from(["openai", "anthropic", "gemini"]),
    spec=st.lists(st.lists(st.integers(0, 60), max_size=3), min_size=1, max_size=9),
    share=st.floats(0, 1),
    keep=st.integers(1, 5),
)
def test_property_any_target_keeps_every_dialect_valid(dialect, spec, share, keep):
    body = conversation(dialect, spec)
    key = key_of(dialect)
    tokens = estimate_tokens(dialect, body)
    result = compress_request(
        dialect,
        body,
        prompt_tokens=tokens,
        context_window=tokens,
        settings=ContextSettings(keep_last_turns=keep),
        target_share=share,
    )
    msgs = result.body[key]
    if dialect == "openai":
        check_openai_pairs(msgs)
        assert msgs[0] is body[key][0]
    else:
        check_alternating_pairs(msgs, dialect)
    kept = min(keep, len(spec))
    n_tail = len(body[key]) - [i for i, m in enumerate(body[key]) if m["role"] in
                               ("assistant", "model")][-kept]  # fmt: skip
    assert all(a is b for a, b in zip(msgs[-n_tail:], body[key][-n_tail:], strict=True))
    everything = compress_request(
        dialect,
        body,
        prompt_tokens=tokens,
        context_window=tokens,
        settings=ContextSettings(keep_last_turns=keep),
        target_share=0,
    )
    assert result.tokens_after <= max(share * tokens, everything.tokens_after)
