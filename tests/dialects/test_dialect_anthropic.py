"""Anthropic Messages dialect: request translation, stream translation checked with the anthropic
SDK's own stream accumulator, non-streamed answers, errors, native metering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from kimi_intercept.accounting.sse import EventSplitter, SSEParser
from kimi_intercept.accounting.usage import JsonMeter, Usage
from kimi_intercept.dialects import DialectError
from kimi_intercept.dialects.anthropic import (
    StreamMeter,
    StreamTranslator,
    count_tokens_response,
    error_body,
    from_openai_response,
    meter_json,
    to_openai_request,
)

WIRE = Path(__file__).resolve().parents[1] / "wire"


def translate(raw: bytes, model: str | None = None, finish: bool = True) -> bytes:
    """Cut ``raw`` into events like the relay does and feed them one by one."""
    t = StreamTranslator(model)
    splitter = EventSplitter()
    out = b"".join(t.feed(event) for event in splitter.push(raw))
    if finish:
        out += t.finish()
    return out


def events(sse: bytes) -> list[tuple[str, Any]]:
    return [(e.event, json.loads(e.data)) for e in SSEParser().feed(sse)]


def sdk_final_message(sse: bytes) -> anthropic.types.Message:
    """The anthropic SDK's ``MessageStream`` accumulating ``sse`` as if the API had sent it."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = anthropic.Anthropic(
        api_key="sk-test", base_url="http://anthropic.test", http_client=http, max_retries=0
    )
    with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        return stream.get_final_message()


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"id": "c1", "model": "kimi-k2.6", **extra}
    if delta is not None or finish is not None:
        body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE_90_64 = {"prompt_tokens": 90, "completion_tokens": 50, "cached_tokens": 64}

# --- to_openai_request ----------------------------------------------------------------------

CLAUDE_CODE_BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 32000,
    "stream": True,
    "temperature": 1,
    "system": [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.80"},
        {
            "type": "text",
            "text": "You are Claude Code, Anthropic's official CLI for Claude.",
            "cache_control": {"type": "ephemeral"},
        },
    ],
    "messages": [
        {"role": "system", "content": "Respond in English."},
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "<system-reminder>\n# claudeMd\nUse ruff.\n</system-reminder>",
                },
                {"type": "text", "text": "commit this", "cache_control": {"type": "ephemeral"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Check status first.", "signature": "Eqg="},
                {"type": "redacted_thinking", "data": "EmwKAhgB"},
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_01CFL8T959dcrfGHUWJuenin",
                    "name": "Bash",
                    "input": {"command": "git status", "description": "Check git status"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_017v",
                    "name": "Read",
                    "input": {"file_path": "/repo/é.py"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01CFL8T959dcrfGHUWJuenin",
                    "content": "On branch main",
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_017v",
                    "content": [
                        {"type": "text", "text": "File does not exist."},
                        {"type": "tool_reference", "tool_name": "Glob"},
                        {"type": "text", "text": "Did you mean /repo/e.py?"},
                    ],
                    "is_error": True,
                    "cache_control": {"type": "ephemeral"},
                },
                {
                    "type": "text",
                    "text": "<system-reminder>\nTodo list is empty.\n</system-reminder>",
                },
            ],
        },
    ],
    "tools": [
        {
            "name": "Bash",
            "description": "Run a shell command.",
            "input_schema": {
                "type": "object",
                "properties": {"command": {"type": "string"}},
                "required": ["command"],
            },
            "cache_control": {"type": "ephemeral"},
        },
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    ],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "metadata": {"user_id": "user_abc_account__session_123"},
    "thinking": {"type": "enabled", "budget_tokens": 31999},
    "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
    "output_config": {"effort": "high"},
    "top_k": 40,
    "service_tier": "auto",
}


def test_request_claude_code_body() -> None:
    assert to_openai_request(CLAUDE_CODE_BODY, model="kimi-k2.6") == {
        "model": "kimi-k2.6",
        "max_tokens": 32000,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 1,
        "messages": [
            {
                "role": "system",
                "content": "x-anthropic-billing-header: cc_version=2.1.80\n"
                "You are Claude Code, Anthropic's official CLI for Claude.",
            },
            {"role": "system", "content": "Respond in English."},
            {
                "role": "user",
                "content": "<system-reminder>\n# claudeMd\nUse ruff.\n</system-reminder>"
                "\n\ncommit this",
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "reasoning_content": "Check status first.",
                "tool_calls": [
                    {
                        "id": "toolu_01CFL8T959dcrfGHUWJuenin",
                        "type": "function",
                        "function": {
                            "name": "Bash",
                            "arguments": '{"command": "git status", '
                            '"description": "Check git status"}',
                        },
                    },
                    {
                        "id": "toolu_017v",
                        "type": "function",
                        "function": {"name": "Read", "arguments": '{"file_path": "/repo/é.py"}'},
                    },
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "toolu_01CFL8T959dcrfGHUWJuenin",
                "content": "On branch main",
            },
            {
                "role": "tool",
                "tool_call_id": "toolu_017v",
                "content": "Error: File does not exist.\nDid you mean /repo/e.py?",
            },
            {
                "role": "user",
                "content": "<system-reminder>\nTodo list is empty.\n</system-reminder>",
            },
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "Bash",
                    "description": "Run a shell command.",
                    "parameters": {
                        "type": "object",
                        "properties": {"command": {"type": "string"}},
                        "required": ["command"],
                    },
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "user": "user_abc_account__session_123",
        "thinking": {"type": "enabled"},
    }


def test_request_blocks_choices_and_defaults() -> None:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "system": "Be brief.",
        "stop_sequences": ["\n\nHuman:"],
        "top_p": 0.9,
        "thinking": {"type": "disabled"},
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                    {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
                    {
                        "type": "document",
                        "title": "Notes",
                        "source": {"type": "text", "media_type": "text/plain", "data": "A note."},
                    },
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JV"},
                    },
                    {
                        "type": "search_result",
                        "source": "https://docs.test/x",
                        "title": "X",
                        "content": [{"type": "text", "text": "X is a letter."}],
                    },
                ],
            },
            {"role": "assistant", "content": "It is a picture."},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [
                            {"type": "text", "text": "screenshot:"},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/jpeg",
                                    "data": "/9j",
                                },
                            },
                        ],
                    },
                    {"type": "tool_result", "tool_use_id": "t2"},
                ],
            },
        ],
    }
    assert to_openai_request(body, model=None) == {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "top_p": 0.9,
        "stop": ["\n\nHuman:"],
        "thinking": {"type": "disabled"},
        "tools": [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}},
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                    {"type": "text", "text": "Notes\n\nA note."},
                    {"type": "text", "text": "X\nhttps://docs.test/x\nX is a letter."},
                ],
            },
            {"role": "assistant", "content": "It is a picture."},
            {"role": "tool", "tool_call_id": "t1", "content": "screenshot:"},
            {"role": "tool", "tool_call_id": "t2", "content": ""},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j"}}
                ],
            },
        ],
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "any"}, "required"), ({"type": "none"}, "none"), ({"type": "auto"}, "auto")],
)
def test_request_tool_choice(choice: dict[str, Any], expected: str) -> None:
    body = {
        "model": "m",
        "messages": [],
        "tools": [{"name": "f", "input_schema": {}}],
        "tool_choice": choice,
    }
    assert to_openai_request(body)["tool_choice"] == expected


def test_request_only_server_tools_drops_tools_and_choice() -> None:
    body = {
        "model": "m",
        "stream": False,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "any"},
        "thinking": {"type": "adaptive"},
    }
    assert to_openai_request(body) == {
        "model": "m",
        "stream": False,
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled"},
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m"}, "an Anthropic Messages request needs a 'messages' list"),
        ({"messages": []}, "the request names no model"),
        (
            {"model": "m", "messages": ["hi"]},
            "messages[0] has role None; expected user or assistant",
        ),
        (
            {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0] has role 'tool'; expected user or assistant",
        ),
    ],
)
def test_request_rejects(body: dict[str, Any], message: str) -> None:
    with pytest.raises(DialectError) as e:
        to_openai_request(body)
    assert str(e.value) == message


# --- StreamTranslator, parsed by the anthropic SDK ----------------------------------------------


def test_stream_moonshot_reasoning_text_double_usage() -> None:
    out = translate((WIRE / "documented/moonshot_stream.sse").read_bytes(), model="kimi-k2.6")
    start = {
        "id": "msg_chatcmpl-6a1f0c2e-58b1-9d3e-a7c4-1b2c3d4e5f60",
        "type": "message",
        "role": "assistant",
        "model": "kimi-k2.6",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    thinking_block = {"type": "thinking", "thinking": "", "signature": ""}
    assert events(out) == [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": thinking_block},
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "The user wants"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": " a one-word reply."},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "O"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "K"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"input_tokens": 26, "output_tokens": 50, "cache_read_input_tokens": 64},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert out.startswith(b'event: message_start\ndata: {"type":"message_start","message":{"id"')
    message = sdk_final_message(out)
    assert message.model_dump(exclude_none=True) == {
        "id": "msg_chatcmpl-6a1f0c2e-58b1-9d3e-a7c4-1b2c3d4e5f60",
        "type": "message",
        "role": "assistant",
        "model": "kimi-k2.6",
        "content": [
            {"type": "thinking", "thinking": "The user wants a one-word reply.", "signature": ""},
            {"type": "text", "text": "OK"},
        ],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 26, "output_tokens": 50, "cache_read_input_tokens": 64},
    }


def test_stream_moonshot_tool_call() -> None:
    raw = (WIRE / "documented/moonshot_tool_calls_stream.sse").read_bytes()
    message = sdk_final_message(translate(raw))
    assert message.model_dump(exclude_none=True) == {
        "id": "msg_chatcmpl-7117912c-7176-9997-b5bf-7b4bc0b1659b",
        "type": "message",
        "role": "assistant",
        "model": "kimi-k2.6",
        "content": [
            {
                "type": "thinking",
                "thinking": "Need to call get_weather for Paris.",
                "signature": "",
            },
            {
                "type": "tool_use",
                "id": "get_weather_0",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 213, "output_tokens": 99, "cache_read_input_tokens": 0},
    }


def test_stream_openai_tool_call_capture() -> None:
    raw = (WIRE / "captured_openai_tool_calls_stream.sse").read_bytes()
    out = translate(raw, model="kimi-k2.6")
    assert [e for e, _ in events(out)] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 8,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    message = sdk_final_message(out)
    assert message.model_dump(exclude_none=True) == {
        "id": "msg_chatcmpl-DuLdInI48CUMPbcraGuxW2KFhK3CM",
        "type": "message",
        "role": "assistant",
        "model": "gpt-4o-2024-08-06",
        "content": [
            {
                "type": "tool_use",
                "id": "call_7kE4IjtnwXcGbX6hDM7xFu8T",
                "name": "weather",
                "input": {"location": "Florence, Italy"},
            }
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 61, "output_tokens": 16, "cache_read_input_tokens": 0},
    }


def test_stream_groq_text_then_whole_tool_call() -> None:
    raw = (WIRE / "captured_groq_tool_calls_stream.sse").read_bytes()
    message = sdk_final_message(translate(raw))
    assert [b.model_dump(exclude_none=True) for b in message.content] == [
        {"type": "text", "text": "I'll check the weather in Florence, Italy for you."},
        {
            "type": "tool_use",
            "id": "functions.weather:0",
            "name": "weather",
            "input": {"location": "Florence,Italy"},
        },
    ]
    assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == (
        "tool_use",
        93,
        32,
    )


def test_stream_tool_call_before_text() -> None:
    call = {"index": 0, "id": "read_0", "type": "function", "function": {"name": "Read"}}
    raw = b"".join(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"tool_calls": [{**call, "function": {"name": "Read", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"path": "a"}'}}]}),
            chunk({"content": "Reading a."}),
            chunk({}, finish="tool_calls", usage=USAGE_90_64),
            b"data: [DONE]\n\n",
        ]
    )
    message = sdk_final_message(translate(raw))
    assert [b.model_dump(exclude_none=True) for b in message.content] == [
        {"type": "tool_use", "id": "read_0", "name": "Read", "input": {"path": "a"}},
        {"type": "text", "text": "Reading a."},
    ]
    assert message.stop_reason == "tool_use"


def test_stream_cut_without_done_then_finish() -> None:
    raw = chunk({"content": "Hel"}) + chunk({"content": "lo"})
    out = translate(raw, finish=False)
    assert events(out)[-1] == (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
    )
    t = StreamTranslator("kimi-k2.6")
    body = b"".join(t.feed(e) for e in EventSplitter().push(raw)) + t.finish()
    assert events(body)[-3:] == [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 0},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert t.finish() == b""
    message = sdk_final_message(body)
    assert (message.content[0].text, message.usage.output_tokens) == ("Hello", 0)


def test_stream_finish_after_usage_without_done_and_empty_upstream() -> None:
    t = StreamTranslator("kimi-k2.6")
    t.feed(chunk({"content": "Hi"}))
    t.feed(chunk({}, finish="length"))
    tail = t.feed(chunk(usage=USAGE_90_64, choices=[])) + t.finish()
    assert events(tail) == [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                "usage": {"input_tokens": 26, "output_tokens": 50, "cache_read_input_tokens": 64},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    empty = StreamTranslator("kimi-k2.6").finish()
    message = sdk_final_message(empty)
    assert (message.model, message.content, message.stop_reason) == ("kimi-k2.6", [], "end_turn")


def test_stream_indexless_parallel_tool_calls() -> None:
    # vercel/ai packages/moonshotai/src/__fixtures__/moonshotai-stream-indexless-tool-calls
    def call(i: str, name: str) -> dict[str, Any]:
        return {"id": i, "type": "function", "function": {"name": name, "arguments": ""}}

    raw = b"".join(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"tool_calls": [call("weather_0", "weather"), call("time_1", "time")]}),
            chunk(
                {
                    "tool_calls": [
                        {"function": {"arguments": '{"location":"San Francisco"}'}},
                        {"function": {"arguments": '{"zone":"UTC"}'}},
                    ]
                }
            ),
            chunk({}, finish="tool_calls"),
            chunk(choices=[], usage={"prompt_tokens": 61, "completion_tokens": 25}),
            b"data: [DONE]\n\n",
        ]
    )
    out = translate(raw)
    order = [(e, d.get("index")) for e, d in events(out)]
    assert order == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("message_delta", None),
        ("message_stop", None),
    ]
    message = sdk_final_message(out)
    assert [b.model_dump(exclude_none=True) for b in message.content] == [
        {
            "type": "tool_use",
            "id": "weather_0",
            "name": "weather",
            "input": {"location": "San Francisco"},
        },
        {"type": "tool_use", "id": "time_1", "name": "time", "input": {"zone": "UTC"}},
    ]
    assert message.usage.model_dump(exclude_none=True) == {
        "input_tokens": 61,
        "output_tokens": 25,
        "cache_read_input_tokens": 0,
    }


def test_stream_indexless_sequential_calls_and_parallel_by_index() -> None:
    raw = b"".join(
        [
            chunk({"tool_calls": [{"id": "a_0", "function": {"name": "a", "arguments": ""}}]}),
            chunk({"tool_calls": [{"function": {"arguments": '{"x": 1}'}}]}),
            chunk({"tool_calls": [{"id": "b_1", "function": {"name": "b", "arguments": '{"y"'}}]}),
            chunk({"tool_calls": [{"function": {"arguments": ": 2}"}}]}),
            chunk(
                {
                    "tool_calls": [
                        {"index": 2, "id": "c_2", "function": {"name": "c", "arguments": "{}"}},
                        {"index": 3, "id": "d_3", "function": {"name": "d", "arguments": '{"z"'}},
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 3, "function": {"arguments": ": 3}"}}]}),
            chunk({}, finish="stop"),
        ]
    )
    message = sdk_final_message(translate(raw))
    assert [(b.id, b.name, b.input) for b in message.content] == [
        ("a_0", "a", {"x": 1}),
        ("b_1", "b", {"y": 2}),
        ("c_2", "c", {}),
        ("d_3", "d", {"z": 3}),
    ]
    assert message.stop_reason == "tool_use"  # "stop" with tool calls: the client must run them


def test_stream_error_chunk_and_error_event() -> None:
    t = StreamTranslator("kimi-k2.6")
    head = t.feed(chunk({"content": "Partial"}))
    err = {"message": "Stream failed", "type": "server_error", "code": "stream_failure"}
    tail = t.feed(b"data: " + json.dumps({"error": err}).encode() + b"\n\n")
    assert tail == (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error",'
        b'"message":"Stream failed"}}\n\n'
    )
    assert t.feed(b"data: [DONE]\n\n") == b"" and t.finish() == b""
    with pytest.raises(anthropic.APIStatusError) as e:
        sdk_final_message(head + tail)
    assert e.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "Stream failed"},
    }
    assert StreamTranslator(None).error_event("too long", "context_length_exceeded") == (
        b'event: error\ndata: {"type":"error","error":{"type":"invalid_request_error",'
        b'"message":"prompt is too long: too long"}}\n\n'
    )
    assert events(StreamTranslator(None).error_event("busy", "engine_overloaded_error")) == [
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    ]


def test_stream_keepalive_and_malformed() -> None:
    t = StreamTranslator("kimi-k2.6")
    assert t.feed(b": keep-alive\n\n") == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert t.feed(b"data: {not json\n\n") == b""
    assert events(t.feed(chunk({"content": "x"})))[0][0] == "message_start"


# --- from_openai_response / error_body / count_tokens -----------------------------------------


def test_from_openai_response() -> None:
    body = {
        "id": "chatcmpl-a76c",
        "object": "chat.completion",
        "model": "kimi-k3",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Calling.",
                    "reasoning_content": "17*19=323.",
                    "tool_calls": [
                        {
                            "id": "ping_0",
                            "type": "function",
                            "function": {"name": "ping", "arguments": '{"n": 1}'},
                        },
                        {
                            "id": "ping_1",
                            "type": "function",
                            "function": {"name": "ping", "arguments": '{"n": '},
                        },
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 101,
            "completion_tokens": 32,
            "cached_tokens": 101,
            "prompt_tokens_details": {"cached_tokens": 101},
        },
    }
    assert from_openai_response(body) == {
        "id": "msg_chatcmpl-a76c",
        "type": "message",
        "role": "assistant",
        "model": "kimi-k3",
        "content": [
            {"type": "thinking", "thinking": "17*19=323.", "signature": ""},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "ping_0", "name": "ping", "input": {"n": 1}},
            {
                "type": "tool_use",
                "id": "ping_1",
                "name": "ping",
                "input": {},
                "raw_arguments": '{"n": ',
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 32, "cache_read_input_tokens": 101},
    }
    anthropic.types.Message.model_validate(from_openai_response(body))


def test_from_openai_response_plain_and_error() -> None:
    body = {
        "id": "c",
        "model": "m",
        "choices": [{"message": {"content": "hi"}, "finish_reason": "length"}],
    }
    assert from_openai_response(body) == {
        "id": "msg_c",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    error = json.loads((WIRE / "documented/moonshot_error_429_engine_overloaded.json").read_bytes())
    assert from_openai_response(error) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": error["error"]["message"]},
    }


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_body(status: int, kind: str) -> None:
    assert error_body(status, "boom", "x") == {
        "type": "error",
        "error": {"type": kind, "message": "boom"},
    }


def test_error_body_context_length_uses_claude_wording() -> None:
    assert error_body(400, "Input token length too long", "context_length_exceeded") == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "prompt is too long: Input token length too long",
        },
    }
    assert error_body(400, "prompt is too long: 9 > 8", "context_length_exceeded")["error"] == {
        "type": "invalid_request_error",
        "message": "prompt is too long: 9 > 8",
    }


def test_count_tokens_response() -> None:
    assert count_tokens_response(14) == {"input_tokens": 14}


# --- StreamMeter / meter_json (native Anthropic answers) ----------------------------------------


def native_meter(name: str, step: int = 37) -> StreamMeter:
    data = (WIRE / name).read_bytes()
    m = StreamMeter()
    for i in range(0, len(data), step):
        m.feed(data[i : i + step])
    m.finish()
    return m


def test_stream_meter_text_capture() -> None:
    m = native_meter("captured_anthropic_stream.sse")
    assert m.usage == Usage(
        prompt_tokens=16,
        completion_tokens=38,
        cached_tokens=0,
        reasoning_tokens=None,
        cache_write_tokens=0,
    )
    text = (
        'Olá! (That\'s "hi" in Portuguese)\n\nYou could also say "Oi!" which is a more '
        "casual way to say hi in Portuguese."
    )
    assert (m.response_id, m.model, m.finish_reason) == (
        "msg_01R8GdyyLQUhUfyjqSCMbnWg",
        "claude-sonnet-4-20250514",
        "end_turn",
    )
    assert (m.answer_text, m.completion_text) == (text, text)
    assert (m.saw_tool_calls, m.saw_done, m.error, m.truncated) == (False, True, None, False)
    assert (m.events, m.malformed_events) == (18, 0)


def test_stream_meter_tool_use_capture() -> None:
    m = native_meter("captured_anthropic_tool_use_stream.sse")
    assert m.usage == Usage(
        prompt_tokens=394, completion_tokens=67, cached_tokens=0, cache_write_tokens=0
    )
    assert m.answer_text == "I'll get the weather information for Florence, Italy for you."
    assert m.completion_text == (
        "I'll get the weather information for Florence, Italy for you."
        'weather{"location": "Florence,Italy"}'
    )
    assert (m.saw_tool_calls, m.finish_reason, m.saw_done) == (True, "tool_use", True)


def test_stream_meter_thinking_capture() -> None:
    m = native_meter("captured_anthropic_thinking_stream.sse", step=5)
    assert m.usage == Usage(
        prompt_tokens=424, completion_tokens=119, cached_tokens=0, cache_write_tokens=0
    )
    assert m.answer_text == ""
    assert m.completion_text.startswith("The user is asking for weather information for Florence")
    assert m.completion_text.endswith(
        'make the function call.weather{"location": "Florence, Italy"}'
    )
    assert (m.saw_tool_calls, m.finish_reason, m.response_id) == (
        True,
        "tool_use",
        "msg_01KTBB57LAzaSZs8kMNvfnsY",
    )


def test_stream_meter_cache_fields_last_output_and_error() -> None:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "model": "claude-sonnet-4-6",
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 200,
                "cache_read_input_tokens": 3000,
                "output_tokens": 1,
            },
        },
    }
    m = StreamMeter()
    m.feed(b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n")
    assert m.usage == Usage(
        prompt_tokens=3210, completion_tokens=1, cached_tokens=3000, cache_write_tokens=200
    )
    for out in (5, 15):
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": None},
            "usage": {"output_tokens": out},
        }
        m.feed(b"event: message_delta\ndata: " + json.dumps(delta).encode() + b"\n\n")
    assert m.usage == Usage(
        prompt_tokens=3210, completion_tokens=15, cached_tokens=3000, cache_write_tokens=200
    )
    repeat = {
        "type": "message_delta",
        "delta": {},
        "usage": {"input_tokens": 12, "output_tokens": 20},
    }
    m.feed(b"event: message_delta\ndata: " + json.dumps(repeat).encode() + b"\n\n")
    assert m.usage == Usage(
        prompt_tokens=3212, completion_tokens=20, cached_tokens=3000, cache_write_tokens=200
    )
    m.feed(b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", ')
    m.feed(b'"message": "Overloaded"}}\n\n')
    m.finish()
    assert m.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert (m.saw_done, m.truncated, m.events) == (False, False, 5)


def test_meter_json() -> None:
    body = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [
            {"type": "thinking", "thinking": "Hmm.", "signature": "x"},
            {"type": "text", "text": "Sure."},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
        ],
        "stop_reason": "tool_use",
        "usage": {
            "input_tokens": 7,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 50,
            "output_tokens": 30,
        },
    }
    assert meter_json(json.dumps(body).encode()) == JsonMeter(
        usage=Usage(
            prompt_tokens=157, completion_tokens=30, cached_tokens=50, cache_write_tokens=100
        ),
        response_id="msg_01",
        model="claude-sonnet-4-6",
        finish_reason="tool_use",
        completion_text='Hmm.Sure.Bash{"command": "ls"}',
    )
    error = (WIRE / "documented/anthropic_error_529_overloaded.json").read_bytes()
    assert meter_json(error) == JsonMeter(
        error={"type": "overloaded_error", "message": "Overloaded"}
    )
    assert meter_json(b"not json") == JsonMeter()
