"""Responses API ⇄ chat completions, without a proxy: requests in, hub bodies out; documented
Moonshot streams in, Responses events out (checked against the captured OpenAI streams'
shapes and the openai SDK's own event models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from kimi_intercept.accounting.sse import SSEParser
from kimi_intercept.dialects import DialectError
from kimi_intercept.dialects.responses import (
    StreamMeter,
    StreamTranslator,
    from_openai_response,
    to_openai_request,
)
from kimi_intercept.dialects.responses_store import ResponseStore

WIRE = Path(__file__).resolve().parents[1] / "wire"
TOOL_STREAM = (WIRE / "documented" / "moonshot_tool_calls_stream.sse").read_bytes()
KIMI_STREAM = (WIRE / "documented" / "moonshot_stream.sse").read_bytes()
EVENT = TypeAdapter(ResponseStreamEvent)


def events(raw: bytes) -> list[dict]:
    return [json.loads(e.data) for e in SSEParser().feed(raw)]


def translate(raw: bytes, request: dict | None = None) -> bytes:
    t = StreamTranslator("kimi-k2.6", request=request or {"model": "gpt-5", "input": "hi"})
    out = b"".join(t.feed(chunk + b"\n\n") for chunk in raw.split(b"\n\n") if chunk.strip())
    return out + t.finish()


def test_request_items_become_chat_messages():
    body = {
        "model": "gpt-5",
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
            {"role": "user", "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
            ]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "look"}],
             "encrypted_content": "gAAA"},
            {"type": "function_call", "call_id": "c1", "name": "ls", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "pwd", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
            {"type": "function_call_output", "call_id": "c2",
             "output": [{"type": "input_text", "text": "/tmp"}]},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "A cat."}]},
        ],
        "tools": [{"type": "function", "name": "ls", "parameters": {"type": "object"},
                   "strict": True}],
        "tool_choice": {"type": "function", "name": "ls"},
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"},
                            "strict": True}},
        "max_output_tokens": 300,
        "reasoning": {"effort": "high", "summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "stream": True,
    }  # fmt: skip
    assert to_openai_request(body, model="kimi-k2.6", store=ResponseStore()) == {
        "model": "kimi-k2.6",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
            {"role": "assistant", "content": None, "reasoning_content": "look", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "pwd", "arguments": "{}"}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
            {"role": "tool", "tool_call_id": "c2", "content": "/tmp"},
            {"role": "assistant", "content": "A cat."},
        ],
        "max_tokens": 300,
        "tools": [{"type": "function", "function": {
            "name": "ls", "parameters": {"type": "object"}, "strict": True}}],
        "tool_choice": {"type": "function", "function": {"name": "ls"}},
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "out", "schema": {"type": "object"}, "strict": True}},
        "thinking": {"type": "enabled"},
        "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip


def test_effort_none_turns_thinking_off_and_json_object_mode():
    body = {"model": "m", "input": "hi", "reasoning": {"effort": "minimal"},
            "text": {"format": {"type": "json_object"}}}  # fmt: skip
    hub = to_openai_request(body, model=None, store=ResponseStore())
    assert (hub["thinking"], hub["response_format"]) == (
        {"type": "disabled"}, {"type": "json_object"},
    )  # fmt: skip


@pytest.mark.parametrize("tool", ["web_search", "file_search", "code_interpreter", "mcp"])
def test_builtin_tools_are_refused_by_name_or_dropped(tool):
    body = {"model": "m", "input": "hi", "tools": [{"type": tool, "server_label": "x"}]}
    with pytest.raises(DialectError) as e:
        to_openai_request(body, model=None, store=ResponseStore())
    assert f"'{tool}'" in str(e.value) and e.value.code == "unsupported_tool"
    assert "tools" not in to_openai_request(body, model=None, drop_builtin_tools=True)


def test_previous_response_id_expands_stored_items_and_unknown_ids_are_refused():
    store = ResponseStore()
    store.put("resp_1", [{"role": "user", "content": "hi"},
                         {"type": "message", "role": "assistant", "content": "hello"}])  # fmt: skip
    hub = to_openai_request(
        {"model": "m", "previous_response_id": "resp_1", "input": "again"}, model=None, store=store
    )
    assert [m["content"] for m in hub["messages"]] == ["hi", "hello", "again"]
    with pytest.raises(DialectError) as e:
        to_openai_request({"model": "m", "previous_response_id": "resp_2", "input": "x"},
                          model=None, store=store)  # fmt: skip
    assert (e.value.code, e.value.param) == ("previous_response_not_found", "previous_response_id")


def test_store_is_bounded_and_expires():
    now = [0.0]
    store = ResponseStore(max_responses=2, ttl_s=10, clock=lambda: now[0])
    for n in range(3):
        store.put(f"r{n}", [{"n": n}])
    assert (store.get("r0"), store.get("r1"), len(store)) == (None, [{"n": 1}], 2)
    now[0] = 11
    assert store.get("r2") is None


def test_tool_call_stream_becomes_sdk_valid_responses_events():
    out = events(translate(TOOL_STREAM))
    parsed = [EVENT.validate_python(e) for e in out]  # the SDK's own models accept every event
    assert [e["type"] for e in out] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    final = parsed[-1].response
    assert [item.type for item in final.output] == ["reasoning", "function_call"]
    assert final.output[0].summary[0].text == "Need to call get_weather for Paris."
    call = final.output[1]
    assert (call.call_id, call.name, call.arguments) == (
        "get_weather_0", "get_weather", '{"city": "Paris"}',
    )  # fmt: skip
    assert final.usage.model_dump() == {
        "input_tokens": 213, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 99, "output_tokens_details": {"reasoning_tokens": 46},
        "total_tokens": 312,
    }  # fmt: skip


def test_text_stream_has_the_captured_event_order_and_meters_like_native():
    raw = translate(KIMI_STREAM)
    kinds = [e["type"] for e in events(raw) if not e["type"].startswith("response.reasoning")]
    captured = [
        e["type"] for e in events((WIRE / "captured_openai_responses_stream.sse").read_bytes())
    ]
    text_part = [k for k in kinds if k not in ("response.output_item.added",
                                               "response.output_item.done")]  # fmt: skip
    assert text_part == [k for k in captured if k not in ("response.output_item.added",
                                                          "response.output_item.done")]  # fmt: skip
    meter = StreamMeter()
    meter.feed(raw)
    assert (meter.usage.prompt_tokens, meter.usage.cached_tokens, meter.completion_text) == (
        90, 64, "OK",
    )  # fmt: skip


def test_error_mid_stream_is_an_error_event_then_response_failed():
    t = StreamTranslator("kimi-k2.6", request={"model": "m", "input": "hi"})
    first = KIMI_STREAM.split(b"\n\n")[0] + b"\n\n"
    out = events(t.feed(first) + t.error_event("upstream stalled", "stream_interrupted"))
    assert [e["type"] for e in out][-2:] == ["error", "response.failed"]
    assert out[-1]["response"]["error"] == {"code": "stream_interrupted",
                                            "message": "upstream stalled"}  # fmt: skip
    assert t.finish() == b""


def test_length_finish_is_incomplete():
    body = {"id": "x", "model": "kimi-k2.6", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Once upon"},
         "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}  # fmt: skip
    answer = Response.model_validate(from_openai_response(body, request={"model": "m"}))
    assert (answer.status, answer.incomplete_details.reason, answer.output_text) == (
        "incomplete", "max_output_tokens", "Once upon",
    )  # fmt: skip


def test_namespace_tools_are_flattened_and_calls_given_back_with_their_namespace():
    ns = {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.",
          "tools": [{"type": "function", "name": "spawn_agent", "description": "Spawn one.",
                     "parameters": {"type": "object"}}]}  # fmt: skip
    request = {"model": "m", "tools": [ns], "input": [
        {"type": "function_call", "namespace": "multi_agent_v1", "name": "spawn_agent",
         "call_id": "c1", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "agent 7"},
    ]}  # fmt: skip
    hub = to_openai_request(request, model=None, store=ResponseStore())
    assert hub["tools"] == [{"type": "function", "function": {
        "name": "multi_agent_v1__spawn_agent", "description": "Sub-agents.\n\nSpawn one.",
        "parameters": {"type": "object"}}}]  # fmt: skip
    assert hub["messages"][0]["tool_calls"][0]["function"]["name"] == "multi_agent_v1__spawn_agent"
    raw = TOOL_STREAM.replace(b'"name":"get_weather"', b'"name":"multi_agent_v1__spawn_agent"')
    final = events(translate(raw, request))[-1]["response"]["output"][-1]
    assert (final["namespace"], final["name"]) == ("multi_agent_v1", "spawn_agent")


def test_codex_code_mode_custom_tool_in_additional_tools_round_trips():
    """Codex's default model sends its tools in an ``additional_tools`` input item: a
    ``namespace`` holding a free-form ``custom`` tool; a ``configuration_update`` item too."""
    exec_tool = {"type": "custom", "name": "exec", "description": "Run JavaScript.",
                 "format": {"type": "text"}}  # fmt: skip
    request = {"model": "m", "stream": True, "input": [
        {"type": "additional_tools", "role": "developer", "tools": [
            {"type": "namespace", "name": "functions", "description": "", "tools": [exec_tool]}]},
        {"role": "user", "content": "list files"},
        {"type": "custom_tool_call", "namespace": "functions", "name": "exec", "call_id": "c1",
         "input": "ls()"},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "a.txt"},
        {"type": "configuration_update", "reasoning": {"effort": "low"}},
    ]}  # fmt: skip
    hub = to_openai_request(request, model=None, store=ResponseStore())
    [tool] = hub["tools"]
    assert tool["function"]["name"] == "functions__exec"
    assert tool["function"]["parameters"]["required"] == ["input"]
    assert hub["messages"] == [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "functions__exec", "arguments": '{"input": "ls()"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
    ]  # fmt: skip
    args = json.dumps(json.dumps({"input": "await tools.exec_command({cmd: 'ls'})"}))[1:-1]
    raw = TOOL_STREAM.replace(b'"name":"get_weather"', b'"name":"functions__exec"')
    raw = raw.replace(b'{\\"city\\": \\"Paris\\"}', args.encode())
    out = events(translate(raw, request))
    [EVENT.validate_python(e) for e in out]
    assert "response.function_call_arguments.delta" not in [e["type"] for e in out]
    done = [e for e in out if e["type"] == "response.custom_tool_call_input.done"]
    assert done[0]["input"] == "await tools.exec_command({cmd: 'ls'})"
    call = out[-1]["response"]["output"][-1]
    assert (call["type"], call["namespace"], call["name"], call["call_id"]) == (
        "custom_tool_call", "functions", "exec", "get_weather_0",
    )  # fmt: skip


def test_a_tool_call_whose_id_is_not_a_string_still_translates():
    """Found by the fuzz test: ``{"id": []}`` (no index) used to crash the translator."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "kimi-k2.6",
             "choices": [{"index": 0, "delta": {"tool_calls": [
                 {"id": [], "function": {"name": "f", "arguments": "{}"}}]},
                 "finish_reason": None}]}  # fmt: skip
    out = translate(b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n")
    added = [e for e in events(out) if e["type"] == "response.output_item.added"]
    assert [e["item"]["type"] for e in added] == ["function_call"]
    assert added[0]["item"]["name"] == "f"
