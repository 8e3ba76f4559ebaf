"""The cache-break detector without a proxy: :func:`first_change` over OpenAI-hub requests, and
:class:`CacheBreaks` deciding a break from the provider's cached counts and telling whether our
own preparation (sanitizer or compression) changed the position."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from kimi_intercept.config.cache import CacheSettings, cache_settings
from kimi_intercept.config.settings import ConfigError
from kimi_intercept.relay.cache_breaks import CacheBreaks, break_text, fingerprint, first_change
from kimi_intercept.relay.console import console_line

SYSTEM = "You are an agent. Current date: 2026-12-01 09:48:47 UTC."
TOOLS = [{"type": "function", "function": {"name": n}} for n in ("read", "bash", "grep")]


def hub(messages=None, tools=TOOLS, model="gpt-4o"):
    base = [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "go"}],
        },
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "output"},
        {"role": "user", "content": "next"},
    ]
    return {"model": model, "tools": tools, "messages": messages or base}


def change(prev, now):
    c = first_change(fingerprint(prev), fingerprint(now))
    return (c.position, c.message_index, c.block_index, c.role, c.kind, c.hint)


def test_an_extended_request_has_no_change_and_cache_markers_do_not_count():
    prev = hub()
    now = copy.deepcopy(prev)
    now["messages"][1]["content"][1]["cache_control"] = {"type": "ephemeral"}
    now["messages"].append({"role": "assistant", "content": "done"})
    assert change(prev, now)[:5] == (None, None, None, None, None)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda h: h.update(model="gpt-4o-mini"),
            ("model", None, None, None, "model", "model switch"),
        ),
        (
            lambda h: h.update(tools=[TOOLS[1], TOOLS[0], TOOLS[2]]),
            ("tools[0]", None, 0, None, "tools", "tool list reordered"),
        ),
        (
            lambda h: h.update(tools=TOOLS[:2]),
            ("tools[2]", None, 2, None, "tools", "tool list changed"),
        ),
        (
            lambda h: h["messages"].__setitem__(
                0, {"role": "system", "content": SYSTEM + " Be kind."}
            ),
            ("messages[0]", 0, None, "system", "system", "system prompt edited"),
        ),
        (
            lambda h: h["messages"].__setitem__(
                0, {"role": "system", "content": SYSTEM.replace("09:48:47", "09:49:02")}
            ),
            ("messages[0]", 0, None, "system", "system", "timestamp in the system prompt"),
        ),
        (
            lambda h: h["messages"][1]["content"][1].update(text="GO"),
            ("messages[1].content[1]", 1, 1, "user", "text", "an earlier user message edited"),
        ),
        (
            lambda h: h["messages"][3].update(content="rewritten"),
            ("messages[3]", 3, None, "tool", "tool_result", "an earlier tool result rewritten"),
        ),
        (
            lambda h: h["messages"].__delitem__(slice(3, None)),
            (
                "messages[3]",
                3,
                None,
                None,
                "removed",
                "earlier messages removed (history compacted or rewound)",
            ),
        ),
    ],
)
def test_the_first_changed_position_and_its_hint(edit, expected):
    prev, now = hub(), hub()
    edit(now)
    assert change(prev, now) == expected


def _plan(request_json, conversation="conv-1"):
    return SimpleNamespace(
        kind="reroute", conversation=conversation, request_json=request_json,
        cache_view=None, prepared=None,
    )  # fmt: skip


def _row(n, prompt, cached, conversation="conv-1"):
    return {
        "id": f"req-{n}", "conversation_id": conversation, "usage_source": "provider",
        "outcome": "ok", "prompt_tokens": prompt, "cached_tokens": cached,
        "provider": "kimi", "model": "kimi-k2.6", "client": "claude-cli/2.1.3",
        "started_at": f"2026-12-01T10:00:0{n}.000Z",
    }  # fmt: skip


def _send(breaks, client_json, n, prompt, cached, rewrite=None):
    """One request: the client's body; ``rewrite`` plays our preparation on what is sent (a
    new body, as the sanitizer builds: the client's own is never changed in place)."""
    plan = _plan(copy.deepcopy(client_json))

    def prepare(p):
        if rewrite:
            p.request_json = copy.deepcopy(p.request_json)
            rewrite(p.request_json)

    breaks.prepare(plan, prepare)
    return breaks.observe(plan, _row(n, prompt, cached))


SETTINGS = CacheSettings(min_prompt_tokens=0)


def test_a_sharp_drop_on_a_grown_prompt_is_a_break_and_a_mild_one_is_not():
    breaks = CacheBreaks(SETTINGS)
    assert _send(breaks, hub(), 1, 1000, 0) is None  # first: nothing to compare with
    assert _send(breaks, hub(), 2, 1100, 900) is None  # 0.82
    assert _send(breaks, hub(), 3, 1200, 700) is None  # 0.58: fell by less than half
    edited = hub()
    edited["messages"][3]["content"] = "rewritten"
    brk = _send(breaks, edited, 4, 1300, 100)  # 0.08
    assert brk is not None
    assert (brk["previous_request_id"], brk["previous_cached_ratio"], brk["cached_ratio"]) == (
        "req-3",
        0.5833,
        0.0769,
    )
    assert (brk["position"], brk["changed_by"], brk["caused_by_us"]) == ("messages[3]", None, 0)
    line = console_line({**_row(4, 1300, 100), "completion_tokens": 5}, (), [brk])
    assert line.endswith(
        "CACHE BREAK 58%→8% at messages[3] (tool_result): an earlier tool result rewritten"
    )


def test_no_break_when_the_prompt_shrank_or_the_provider_reports_no_cache():
    breaks = CacheBreaks(SETTINGS)
    _send(breaks, hub(), 1, 1000, 900)
    assert _send(breaks, hub(), 2, 900, 0) is None  # shrank: a compacted history
    assert _send(breaks, hub(), 3, 1000, 900) is None
    assert _send(breaks, hub(), 4, 1100, None) is None  # no cached count: not judged


def test_a_break_where_only_our_preparation_changed_the_request_is_ours_and_logged(caplog):
    breaks = CacheBreaks(SETTINGS)
    _send(breaks, hub(), 1, 1000, 900)

    def unstable(sent):  # a sanitizer that masks an old tool output differently this time
        sent["messages"][3]["content"] = "output [masked differently]"

    brk = _send(breaks, hub(), 2, 1100, 100, rewrite=unstable)
    assert (brk["position"], brk["kind"], brk["changed_by"], brk["caused_by_us"]) == (
        "messages[3]",
        "tool_result",
        "sanitizer",
        1,
    )
    assert "BUG: a cache break caused by our sanitizer at messages[3]" in caplog.text
    assert break_text(brk).endswith("— ours (sanitizer), a bug")


def test_memory_is_bounded_to_the_configured_conversations():
    breaks = CacheBreaks(CacheSettings(min_prompt_tokens=0, conversations=2))
    for conv in ("a", "b", "c"):
        plan = _plan(hub(), conv)
        breaks.prepare(plan, lambda p: None)
        breaks.observe(plan, _row(1, 1000, 900, conv))
    assert list(breaks._seen) == ["b", "c"]


def test_cache_settings_are_checked():
    cfg = SimpleNamespace(raw={"cache": {"break_drop": 0.3}})
    assert cache_settings(cfg).break_drop == 0.3
    with pytest.raises(ConfigError, match="cache.break_drop must be a number from 0.01 to 1"):
        cache_settings(SimpleNamespace(raw={"cache": {"break_drop": 2}}))
    with pytest.raises(ConfigError, match="unknown key `break_dropp`"):
        cache_settings(SimpleNamespace(raw={"cache": {"break_dropp": 0.5}}))


def test_a_break_after_our_compression_is_ours_but_not_called_a_bug(caplog):
    breaks = CacheBreaks(SETTINGS)
    _send(breaks, hub(), 1, 1000, 900)
    plan = _plan(hub())

    def compress(p):  # older turns folded away near the window, in a new body
        p.request_json = {
            **p.request_json,
            "messages": [p.request_json["messages"][0], *p.request_json["messages"][4:]],
        }
        p.prepared = SimpleNamespace(compression=["dropped 3 older messages"])

    breaks.prepare(plan, compress)
    brk = breaks.observe(plan, _row(2, 1100, 50))
    assert (brk["changed_by"], brk["caused_by_us"], brk["hint"]) == (
        "compression", 1, "an earlier user message edited",
    )  # fmt: skip
    assert "after our context compression" in caplog.text and "BUG" not in caplog.text


def test_digests_ignore_cache_control_and_key_order_but_not_types():
    from kimi_intercept.relay.cache_breaks import _digest

    block = {"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}
    assert _digest(block) == _digest({"text": "hello", "type": "text"})
    assert _digest({"n": 1}) != _digest({"n": 1.0}) != _digest({"n": True})
    assert _digest({"n": 0.0}) != _digest({"n": -0.0})
    assert _digest({"a": [1, "x"]}) != _digest({"a": ["x", 1]})
    assert _digest({1: "not json"}) == _digest({1: "not json"})  # serialized instead


def test_a_request_observed_after_a_later_one_of_its_conversation_is_not_judged():
    breaks = CacheBreaks(SETTINGS)
    first, second, third = (_plan(hub()) for _ in range(3))
    for n, plan in enumerate((first, second, third)):
        plan.received = 100.0 + n
        breaks.prepare(plan, lambda p: None)
    breaks.observe(first, _row(1, 1000, 900))
    breaks.observe(third, _row(3, 1200, 1000))  # the third answer's row came first
    assert breaks.observe(second, _row(2, 1100, 10)) is None  # late: not compared
    assert breaks._seen["conv-1"].request_id == "req-3"
