"""Kimi fidelity rules (issue #15 item 3): input → what Kimi receives → what the client sees.

Each test feeds a client body to ``normalize_for_kimi`` (what Kimi receives), and where the
rule has an answer side, a Kimi answer through ``restore_answer`` (what the client sees).
"""

from __future__ import annotations

import copy
import json

from kimi_intercept.dialects.kimi import normalize_anthropic_for_kimi, normalize_for_kimi
from kimi_intercept.dialects.kimi_ids import restore_answer


def _call(call_id: str, name: str, args: str = "{}") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


CLIENT_HISTORY = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Read a.py and b.py"},
    {"role": "assistant", "content": None, "reasoning_content": "two reads",
     "tool_calls": [_call("call_Ab12", "read_file", '{"p":"a.py"}'),
                    _call("toolu_01Xy", "read_file", '{"p":"b.py"}')]},
    {"role": "tool", "tool_call_id": "call_Ab12", "content": "A"},
    {"role": "tool", "tool_call_id": "toolu_01Xy", "content": "B"},
    {"role": "assistant", "content": None, "reasoning_content": "grep",
     "tool_calls": [_call("functions.grep:2", "grep", '{"q":"x"}')]},
    {"role": "tool", "tool_call_id": "functions.grep:2", "content": "no match"},
    {"role": "user", "content": "Now run the tests"},
]  # fmt: skip


def test_tool_call_ids_in_history_rewritten_to_kimi_form_and_back_in_a_streamed_answer():
    body = {"model": "kimi-k2.6", "stream": True, "messages": CLIENT_HISTORY,
            "tools": [_tool("read_file"), _tool("grep"), _tool("bash")]}  # fmt: skip
    before = copy.deepcopy(body)
    fixed = normalize_for_kimi(body, model="kimi-k2.6", rewrite_ids=True)
    assert body == before  # the client's body is not mutated

    # What Kimi receives: every id in functions.<name>:<index> form, index over the conversation
    sent = fixed.body["messages"]
    assert [c["id"] for c in sent[2]["tool_calls"]] == [
        "functions.read_file:0", "functions.read_file:1",
    ]  # fmt: skip
    assert [sent[3]["tool_call_id"], sent[4]["tool_call_id"]] == [
        "functions.read_file:0", "functions.read_file:1",
    ]  # fmt: skip
    assert sent[5]["tool_calls"][0]["id"] == "functions.grep:2"  # already right: unchanged
    assert sent[6]["tool_call_id"] == "functions.grep:2"
    assert sent[2]["tool_calls"][0]["function"] == CLIENT_HISTORY[2]["tool_calls"][0]["function"]
    assert fixed.ids == {
        "functions.read_file:0": "call_Ab12",
        "functions.read_file:1": "toolu_01Xy",
    }
    assert (
        "rewrote 2 tool-call ids in the history to Kimi's functions.<name>:<index> form "
        "(given back as the client's in the answer)"
    ) in fixed.changes

    # What the client sees: a Kimi stream that refers to a rewritten id gets the client's id
    # back; Kimi's id for a new call is left as it is; other events are the same bytes.
    events = [
        _sse({"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
        _sse({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "functions.read_file:0", "type": "function",
             "function": {"name": "read_file", "arguments": ""}}]}}]}),
        _sse({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "{\"p\":\"a.py\"}"}}]}}]}),
        _sse({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "id": "bash:3", "type": "function",
             "function": {"name": "bash", "arguments": "{}"}}]}}]}),
        _sse({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        b"data: [DONE]\n\n",
    ]  # fmt: skip
    seen = [restore_answer(e, fixed.renamed, fixed.ids) for e in events]
    assert [seen[0], seen[2], seen[4], seen[5]] == [events[0], events[2], events[4], events[5]]
    assert seen[1].endswith(b"\n\n")
    first = json.loads(seen[1][len(b"data: ") :])
    assert first["choices"][0]["delta"]["tool_calls"][0]["id"] == "call_Ab12"
    assert seen[3] == events[3]  # a new call keeps Kimi's id

    # Next turn: the client sends the new call back under Kimi's id; it keeps its position.
    turn2 = CLIENT_HISTORY + [
        {"role": "assistant", "content": None, "reasoning_content": "",
         "tool_calls": [_call("bash:3", "bash")]},
        {"role": "tool", "tool_call_id": "bash:3", "content": "ok"},
    ]  # fmt: skip
    again = normalize_for_kimi({"messages": turn2}, model="kimi-k2.6", rewrite_ids=True)
    assert again.body["messages"][: len(sent)] == sent  # turn 1's prefix unchanged: cache hits
    assert again.body["messages"][-2]["tool_calls"][0]["id"] == "functions.bash:3"
    assert again.body["messages"][-1]["tool_call_id"] == "functions.bash:3"


def test_ids_and_names_restored_in_a_non_streamed_answer():
    body = {"messages": [
        {"role": "assistant", "content": None, "tool_calls": [_call("call_9", "my.tool")]},
        {"role": "tool", "tool_call_id": "call_9", "content": "x"},
    ], "tools": [_tool("my.tool")]}  # fmt: skip
    fixed = normalize_for_kimi(body, model="kimi-k2-0905-preview", rewrite_ids=True)
    assert fixed.body["messages"][0]["tool_calls"][0]["id"] == "functions.my_tool:0"
    answer = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [_call("functions.my_tool:0", "my_tool")]}}]}  # fmt: skip
    out = json.loads(restore_answer(json.dumps(answer).encode(), fixed.renamed, fixed.ids))
    assert out["choices"][0]["message"]["tool_calls"] == [_call("call_9", "my.tool")]
    assert restore_answer(b"not json", fixed.renamed, fixed.ids) == b"not json"


def test_ids_left_alone_when_the_switch_is_off():
    fixed = normalize_for_kimi({"messages": CLIENT_HISTORY}, model="kimi-k2.6")
    assert fixed.ids == {}
    assert fixed.body["messages"][2]["tool_calls"][0]["id"] == "call_Ab12"


def test_default_output_cap_only_when_the_client_sent_none():
    ask = {"messages": [{"role": "user", "content": "write a long essay"}]}
    capped = normalize_for_kimi(ask, model="kimi-k2.6", default_max_completion_tokens=32768)
    assert capped.body == {**ask, "max_completion_tokens": 32768}
    assert capped.changes == (
        "set max_completion_tokens=32768: the client sent no cap ([kimi] default)",
    )
    own = normalize_for_kimi(
        {**ask, "max_tokens": 500}, model="kimi-k2.6", default_max_completion_tokens=32768
    )
    assert own.body == {**ask, "max_completion_tokens": 500}  # the client's, renamed
    # moonshot-v1-8k cannot hold 32K of output; 0 turns the default off
    assert (
        normalize_for_kimi(ask, model="moonshot-v1-8k", default_max_completion_tokens=32768).body
        == ask
    )  # noqa: E501
    assert normalize_for_kimi(ask, model="kimi-k2.6", default_max_completion_tokens=0).body == ask


def test_missing_reasoning_can_turn_thinking_off_instead_of_backfilling():
    history = copy.deepcopy(CLIENT_HISTORY)
    del history[5]["reasoning_content"]  # a tool-call turn another model produced
    body = {"messages": history, "temperature": 0.2}
    off = normalize_for_kimi(body, model="kimi-k2.6", missing_reasoning="disable_thinking")
    assert off.body["thinking"] == {"type": "disabled"}
    assert "reasoning_content" not in off.body["messages"][5]
    assert off.body["temperature"] == 0.6  # the non-thinking fixed value
    assert off.changes[0] == (
        "turned thinking off: an assistant tool-call turn has no reasoning_content "
        '([kimi] missing_reasoning = "disable_thinking")'
    )
    # default: backfilled, thinking stays on (temperature 1.0)
    on = normalize_for_kimi(body, model="kimi-k2.6")
    assert on.body["messages"][5]["reasoning_content"] == ""
    assert "thinking" not in on.body and on.body["temperature"] == 1.0
    # an always-thinking model cannot turn it off: backfilled anyway
    code = normalize_for_kimi(body, model="kimi-k2.7-code", missing_reasoning="disable_thinking")
    assert "thinking" not in code.body and code.body["messages"][5]["reasoning_content"] == ""


def test_unsupported_blocks_stripped_on_kimis_anthropic_endpoint():
    body = {"model": "kimi-k2.6", "max_tokens": 100, "messages": [
        {"role": "user", "content": [
            {"type": "search_result", "source": "https://x", "title": "X",
             "content": [{"type": "text", "text": "found it"}]},
            {"type": "container_upload", "file_id": "file_1"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBO"}},
            {"type": "text", "text": "use these"},
        ]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": "s"},
            {"type": "redacted_thinking", "data": "EmwKAhgB"},
            {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {}},
            {"type": "text", "text": "done"},
        ]},
    ]}  # fmt: skip
    fixed = normalize_anthropic_for_kimi(body)
    assert fixed.body["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "found it"},
            body["messages"][0]["content"][2],
            {"type": "text", "text": "use these"},
        ]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": "s"},
            {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {}},
            {"type": "text", "text": "done"},
        ]},
    ]  # fmt: skip
    assert fixed.changes == (
        "converted a search_result block to text",
        "dropped a container_upload block",
        "dropped a redacted_thinking block",
    )


def test_anthropic_tool_turn_without_thinking_backfilled_or_thinking_turned_off():
    turn = {"role": "assistant", "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"p": "a"}}]}  # fmt: skip
    result = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "A"}]}  # fmt: skip
    body = {"model": "kimi-k2.6", "max_tokens": 100, "thinking": {"type": "adaptive"},
            "messages": [{"role": "user", "content": "read a"}, turn, result]}  # fmt: skip
    before = copy.deepcopy(body)
    filled = normalize_anthropic_for_kimi(body)
    assert body == before
    assert filled.body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "", "signature": ""}, *turn["content"],
    ]  # fmt: skip
    assert filled.body["thinking"] == {"type": "adaptive"}
    assert filled.changes == (
        "added an empty thinking block to 1 assistant tool_use turns: thinking is on and Kimi "
        '400s "reasoning_content is missing" (⚠ empty accepted: unverified)',
    )
    off = normalize_anthropic_for_kimi(body, missing_reasoning="disable_thinking")
    assert off.body["thinking"] == {"type": "disabled"}
    assert off.body["messages"] == body["messages"]
    # thinking off in the request, or a turn that has its thinking: nothing to do
    assert normalize_anthropic_for_kimi({**body, "thinking": {"type": "disabled"}}).changes == ()
    thought = {**turn, "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                                   *turn["content"]]}  # fmt: skip
    assert normalize_anthropic_for_kimi({**body, "messages": [thought]}).changes == ()
    # an always-thinking model is backfilled even with disable_thinking
    code = normalize_anthropic_for_kimi(
        {**body, "model": "kimi-k2.7-code"}, missing_reasoning="disable_thinking"
    )
    assert code.body["thinking"] == {"type": "adaptive"}
    assert code.body["messages"][1]["content"][0]["type"] == "thinking"
