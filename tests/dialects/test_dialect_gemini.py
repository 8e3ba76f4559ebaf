"""Gemini dialect: request translation, stream/JSON answers, errors, native metering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kimi_intercept.accounting.sse import EventSplitter
from kimi_intercept.accounting.usage import ChatStreamMeter, JsonMeter, Usage
from kimi_intercept.dialects import DialectError
from kimi_intercept.dialects.gemini import (
    StreamMeter,
    StreamTranslator,
    error_body,
    from_openai_response,
    meter_json,
    parse_path,
    to_openai_request,
)

WIRE = Path(__file__).resolve().parents[1] / "wire"

# providers.md §6: the second request of charmbracelet/fantasy's Gemini tool_streaming cassette
# (google-genai-sdk/1.33.0 gl-go), with the thoughtSignature Gemini had put on the call.
REAL_REQUEST = {
    "contents": [
        {"parts": [{"text": "What's the weather in Florence,Italy?"}], "role": "user"},
        {
            "parts": [
                {
                    "functionCall": {
                        "args": {"location": "Florence,Italy"},
                        "id": "1",
                        "name": "weather",
                    },
                    "thoughtSignature": "CiQB0e2Kbz2crqvruArjSlMqMOtnGgo1ZpJGsdxnVFpgkDXGtTEK",
                }
            ],
            "role": "model",
        },
        {
            "parts": [
                {"functionResponse": {"id": "1", "name": "weather", "response": {"result": "40 C"}}}
            ],
            "role": "user",
        },
    ],
    "generationConfig": {"maxOutputTokens": 4000},
    "systemInstruction": {"parts": [{"text": "You are a helpful assistant"}], "role": "user"},
    "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
    "tools": [
        {
            "functionDeclarations": [
                {
                    "description": "Get weather information for a location",
                    "name": "weather",
                    "parameters": {
                        "properties": {"location": {"description": "the city", "type": "STRING"}},
                        "required": ["location"],
                        "type": "OBJECT",
                    },
                }
            ]
        }
    ],
}


def events_of(path: Path) -> list[bytes]:
    """The raw SSE events of a wire file, cut as the relay cuts them."""
    splitter = EventSplitter()
    events = splitter.push(path.read_bytes())
    assert splitter.flush() == b""
    return events


#: A client that asks for thought parts (https://ai.google.dev/gemini-api/docs/thinking#summaries).
THOUGHTS = {"generationConfig": {"thinkingConfig": {"includeThoughts": True}}}


def translate(
    path: Path, model: str | None = "gemini-2.5-flash", request: dict | None = THOUGHTS
) -> bytes:
    t = StreamTranslator(model, request=request)
    out = b"".join(t.feed(event) for event in events_of(path))
    return out + t.finish()


def chunks_of(body: bytes) -> list[dict]:
    """Parse Gemini SSE output, checking the framing: ``data: <json>\\r\\n\\r\\n`` each."""
    assert body.endswith(b"\r\n\r\n")
    pieces = body.split(b"\r\n\r\n")[:-1]
    assert all(p.startswith(b"data: ") and b"\n" not in p for p in pieces)
    return [json.loads(p[len(b"data: ") :]) for p in pieces]


def gemini_meter(body: bytes, size: int | None = None) -> StreamMeter:
    m = StreamMeter()
    step = size or len(body)
    for pos in range(0, len(body), step):
        m.feed(body[pos : pos + step])
    m.finish()
    return m


def chat_meter(path: Path) -> ChatStreamMeter:
    m = ChatStreamMeter()
    m.feed(path.read_bytes())
    m.finish()
    return m


# --- to_openai_request ----------------------------------------------------------------------


def test_real_request_translates_to_the_exact_openai_body():
    assert to_openai_request(REAL_REQUEST, model="gemini-2.5-flash", stream=True) == {
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant"},
            {"role": "user", "content": "What's the weather in Florence,Italy?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "1",
                        "type": "function",
                        "function": {
                            "name": "weather",
                            "arguments": '{"location": "Florence,Italy"}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "1", "content": '{"result": "40 C"}'},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Get weather information for a location",
                    "parameters": {
                        "properties": {"location": {"description": "the city", "type": "string"}},
                        "required": ["location"],
                        "type": "object",
                    },
                },
            }
        ],
        "tool_choice": "auto",
        "max_tokens": 4000,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_request_without_stream_or_model():
    body = {"contents": [{"parts": [{"text": "hi"}]}]}  # role may be left out: user
    assert to_openai_request(body, model=None, stream=False) == {
        "model": "gemini",
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_request_parts_config_and_calls_without_ids():
    body = {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use tools."}]},
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is in"},
                    {"text": "this picture?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                ],
            },
            {
                "role": "model",
                "parts": [
                    {"text": "Looking at the picture.", "thought": True},
                    {"text": "I will read "},
                    {"text": "the file."},
                    {"functionCall": {"name": "read", "args": {"path": "a.txt"}}},
                    {"functionCall": {"name": "grep", "args": {"q": "ü"}}},
                    {"thoughtSignature": "abc"},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "grep", "response": {"output": []}}},
                    {"functionResponse": {"name": "read", "response": {"output": "ok"}}},
                    {"text": "Go on."},
                ],
            },
        ],
        "generationConfig": {
            "temperature": 0.2,
            "topP": 0.9,
            "topK": 40,
            "stopSequences": ["END"],
            "candidateCount": 1,
            "seed": 7,
            "responseMimeType": "application/json",
            "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True},
        },
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "read",
                        "parameters": {
                            "type": "OBJECT",
                            "properties": {
                                "path": {"type": "STRING", "enum": ["STRING"]},
                                "lines": {"type": "ARRAY", "items": {"type": "INTEGER"}},
                                "mode": {"anyOf": [{"type": "STRING"}, {"type": "NULL"}]},
                                "type": {"type": "BOOLEAN"},
                            },
                        },
                    },
                    {"name": "grep", "parametersJsonSchema": {"type": "object"}},
                    {"name": "now"},
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["read"]}},
    }
    assert to_openai_request(body, model="gemini-2.5-pro", stream=False) == {
        "model": "gemini-2.5-pro",
        "messages": [
            {"role": "system", "content": "Be brief.\nUse tools."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in"},
                    {"type": "text", "text": "this picture?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": "I will read the file.",
                "reasoning_content": "Looking at the picture.",
                "tool_calls": [
                    {
                        "id": "call_0",
                        "type": "function",
                        "function": {"name": "read", "arguments": '{"path": "a.txt"}'},
                    },
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "grep", "arguments": '{"q": "ü"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"output": []}'},
            {"role": "tool", "tool_call_id": "call_0", "content": '{"output": "ok"}'},
            {"role": "user", "content": "Go on."},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "read",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "path": {"type": "string", "enum": ["STRING"]},
                            "lines": {"type": "array", "items": {"type": "integer"}},
                            "mode": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                            "type": {"type": "boolean"},
                        },
                    },
                },
            },
            {"type": "function", "function": {"name": "grep", "parameters": {"type": "object"}}},
            {
                "type": "function",
                "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
            },
        ],
        "tool_choice": {"type": "function", "function": {"name": "read"}},
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "n": 1,
        "seed": 7,
        "response_format": {"type": "json_object"},
    }


def test_parallel_calls_of_one_function_are_answered_in_order():
    call = {"functionCall": {"name": "read", "args": {}}}
    answer = {"functionResponse": {"name": "read", "response": {"n": 1}}}
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "read twice"}]},
            {"role": "model", "parts": [call, call]},
            {"role": "user", "parts": [answer, answer]},
        ]
    }
    messages = to_openai_request(body, model="m", stream=False)["messages"]
    assert [m.get("tool_call_id") for m in messages[2:]] == ["call_0", "call_1"]


@pytest.mark.parametrize(
    ("config", "choice"),
    [
        ({"mode": "AUTO"}, "auto"),
        ({"mode": "VALIDATED"}, "auto"),
        ({"mode": "NONE"}, "none"),
        ({"mode": "ANY"}, "required"),
        ({"mode": "ANY", "allowedFunctionNames": ["a", "b"]}, "required"),
        ({}, None),
    ],
)
def test_function_calling_modes(config, choice):
    body = {
        "contents": [{"role": "user", "parts": [{"text": "x"}]}],
        "tools": [{"functionDeclarations": [{"name": "a"}, {"name": "b"}]}],
        "toolConfig": {"functionCallingConfig": config},
    }
    assert to_openai_request(body, model="m", stream=False).get("tool_choice") == choice


def test_tool_choice_needs_tools():
    body = {
        "contents": [{"role": "user", "parts": [{"text": "x"}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
    }
    assert "tool_choice" not in to_openai_request(body, model="m", stream=False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, 'a Gemini request needs a non-empty "contents" list'),
        ({"contents": []}, 'a Gemini request needs a non-empty "contents" list'),
        ({"contents": [{"role": "user"}]}, "contents[0] has no parts list"),
        (
            {"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
            "contents[0]: functionResponse 'f' answers no functionCall of the model turn before it",
        ),
        (
            {
                "contents": [
                    {"parts": [{"inlineData": {"mimeType": "application/pdf", "data": ""}}]}
                ]
            },
            "contents[0]: a inlineData (application/pdf) part cannot be sent as OpenAI chat",
        ),
        (
            {"contents": [{"parts": [{"text": "x"}]}], "tools": [{"googleSearch": {}}]},
            "the Gemini built-in tool 'googleSearch' has no OpenAI equivalent",
        ),
        (
            {"contents": [{"parts": [{"text": "x"}]}], "cachedContent": "cachedContents/abc"},
            "cachedContent refers to a prompt stored at Google; it cannot be sent",
        ),
    ],
)
def test_untranslatable_requests(body, message):
    with pytest.raises(DialectError) as e:
        to_openai_request(body, model="m", stream=True)
    assert str(e.value) == message


# --- StreamTranslator -----------------------------------------------------------------------

MOONSHOT_ID = "chatcmpl-6a1f0c2e-58b1-9d3e-a7c4-1b2c3d4e5f60"
TOOLS_ID = "chatcmpl-7117912c-7176-9997-b5bf-7b4bc0b1659b"


def text_chunk(parts: list[dict], rid: str) -> dict:
    return {
        "candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0}],
        "modelVersion": "gemini-2.5-flash",
        "responseId": rid,
    }


def test_thought_parts_only_when_the_client_asked_for_them():
    for request in (None, {"generationConfig": {"thinkingConfig": {"thinkingBudget": 1024}}}):
        chunks = chunks_of(translate(WIRE / "documented" / "moonshot_stream.sse", request=request))
        parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
        assert [p for p in parts if p.get("thought")] == []
        assert "".join(p.get("text", "") for p in parts) == "OK"
        assert chunks[-1]["usageMetadata"]["thoughtsTokenCount"] == 33  # still counted


def test_moonshot_text_stream_translates():
    chunks = chunks_of(translate(WIRE / "documented" / "moonshot_stream.sse"))
    assert chunks == [
        text_chunk([{"text": "The user wants", "thought": True}], MOONSHOT_ID),
        text_chunk([{"text": " a one-word reply.", "thought": True}], MOONSHOT_ID),
        text_chunk([{"text": "O"}], MOONSHOT_ID),
        text_chunk([{"text": "K"}], MOONSHOT_ID),
        {
            "candidates": [
                {
                    "content": {"parts": [{"text": ""}], "role": "model"},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 90,
                "candidatesTokenCount": 17,
                "totalTokenCount": 140,
                "thoughtsTokenCount": 33,
                "cachedContentTokenCount": 64,
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": MOONSHOT_ID,
        },
    ]


def test_moonshot_tool_call_stream_translates_to_one_whole_function_call():
    chunks = chunks_of(translate(WIRE / "documented" / "moonshot_tool_calls_stream.sse"))
    assert chunks == [
        text_chunk([{"text": "Need to call get_weather for Paris.", "thought": True}], TOOLS_ID),
        {
            "candidates": [
                {
                    "content": {
                        "parts": [
                            {
                                "functionCall": {
                                    "name": "get_weather",
                                    "args": {"city": "Paris"},
                                    "id": "get_weather_0",
                                }
                            }
                        ],
                        "role": "model",
                    },
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 213,
                "candidatesTokenCount": 53,
                "totalTokenCount": 312,
                "thoughtsTokenCount": 46,
                "cachedContentTokenCount": 0,
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": TOOLS_ID,
        },
    ]


@pytest.mark.parametrize(
    "name",
    [
        "documented/moonshot_stream.sse",
        "documented/moonshot_tool_calls_stream.sse",
        "documented/moonshot_stream_legacy_docs.sse",
        "documented/deepseek_stream.sse",
        "captured_openai_stream_include_usage.sse",
        "captured_openai_tool_calls_stream.sse",
        "captured_groq_stream.sse",
        "captured_groq_tool_calls_stream.sse",
    ],
)
def test_round_trip_our_gemini_meter_reads_what_the_openai_meter_read(name):
    source = chat_meter(WIRE / name)
    ours = gemini_meter(translate(WIRE / name), size=7)  # odd chunk boundaries on purpose
    assert source.usage is not None
    assert (ours.usage, ours.response_id, ours.answer_text, ours.saw_tool_calls) == (
        source.usage,
        source.response_id,
        source.answer_text,
        source.saw_tool_calls,
    )
    assert (ours.finish_reason, ours.saw_done, ours.error, ours.malformed_events) == (
        "STOP",
        True,
        None,
        0,
    )


def test_final_chunk_waits_for_the_trailing_usage_chunk():
    """OpenAI: finish_reason, then a ``choices: []`` chunk with usage, then [DONE]."""
    events = events_of(WIRE / "captured_openai_tool_calls_stream.sse")
    t = StreamTranslator("gemini-2.5-flash")
    outputs = [t.feed(e) for e in events]
    assert outputs[:-2] == [b""] * (len(events) - 2)  # calls are held until complete
    (final,) = chunks_of(outputs[-2])
    assert final["candidates"] == [
        {
            "content": {
                "parts": [
                    {
                        "functionCall": {
                            "name": "weather",
                            "args": {"location": "Florence, Italy"},
                            "id": "call_7kE4IjtnwXcGbX6hDM7xFu8T",
                        }
                    }
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ]
    assert final["usageMetadata"] == {
        "promptTokenCount": 61,
        "candidatesTokenCount": 16,
        "totalTokenCount": 77,
        "thoughtsTokenCount": 0,
        "cachedContentTokenCount": 0,
    }
    assert outputs[-1] == b""  # [DONE]: nothing more in Gemini's dialect
    assert t.finish() == b""


def openai_event(delta: dict | None = None, finish: str | None = None, **extra) -> bytes:
    chunk = {"id": "c1", "model": "kimi-k2.6", **extra}
    if delta is not None or finish is not None:
        chunk["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def test_stream_without_usage_or_finish_reason_is_closed_by_finish():
    t = StreamTranslator(None)
    assert chunks_of(t.feed(openai_event({"content": "hi"}))) == [
        {
            "candidates": [{"content": {"parts": [{"text": "hi"}], "role": "model"}, "index": 0}],
            "modelVersion": "kimi-k2.6",
            "responseId": "c1",
        }
    ]
    assert chunks_of(t.finish()) == [
        {
            "candidates": [
                {
                    "content": {"parts": [{"text": ""}], "role": "model"},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "modelVersion": "kimi-k2.6",
            "responseId": "c1",
        }
    ]
    assert t.finish() == b""


def test_finish_reasons_and_malformed_or_indexless_tool_calls():
    def final(*events: bytes) -> dict:
        t = StreamTranslator("g")
        out = b"".join(t.feed(e) for e in events) + t.feed(b"data: [DONE]\n\n")
        return chunks_of(out)[-1]["candidates"][0]

    assert final(openai_event({}, "length"))["finishReason"] == "MAX_TOKENS"
    assert final(openai_event({}, "content_filter"))["finishReason"] == "SAFETY"
    assert final(openai_event({}, "something_new"))["finishReason"] == "OTHER"
    bad = {"tool_calls": [{"index": 0, "id": "f_0", "function": {"name": "f", "arguments": "{"}}]}
    assert final(openai_event(bad), openai_event({}, "tool_calls")) == {
        "content": {"parts": [{"text": ""}], "role": "model"},
        "finishReason": "MALFORMED_FUNCTION_CALL",
        "index": 0,
    }
    indexless = [
        {"tool_calls": [{"id": "a:0", "function": {"name": "a", "arguments": '{"x"'}}]},
        {"tool_calls": [{"function": {"arguments": ": 1}"}}]},
        {"tool_calls": [{"id": "b:1", "function": {"name": "b", "arguments": "{}"}}]},
    ]
    events = [openai_event(d) for d in indexless] + [openai_event({}, "tool_calls")]
    assert final(*events)["content"]["parts"] == [
        {"functionCall": {"name": "a", "args": {"x": 1}, "id": "a:0"}},
        {"functionCall": {"name": "b", "args": {}, "id": "b:1"}},
    ]


def test_error_events():
    t = StreamTranslator("g")
    assert t.error_event("upstream broke off", "stream_interrupted") == (
        b'data: {"error":{"code":503,"message":"upstream broke off","status":"UNAVAILABLE",'
        b'"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo",'
        b'"reason":"STREAM_INTERRUPTED","domain":"kimi-intercept"}]}}\r\n\r\n'
    )
    assert t.finish() == b""  # no made-up STOP after an error
    t = StreamTranslator("g")
    t.feed(openai_event({"content": "partial"}))
    upstream_error = b'data: {"error":{"message":"Stream failed","type":"server_error"}}\n\n'
    assert chunks_of(t.feed(upstream_error)) == [
        error_body(500, "Stream failed", "server_error"),
    ]
    assert t.feed(openai_event({}, "stop")) + t.finish() == b""


# --- from_openai_response / error_body ------------------------------------------------------


def test_non_streamed_answer():
    kimi_k3 = {  # providers.md §1.4, real kimi-k3 answer
        "id": "chatcmpl-a76c8fb3-ac3d-977e-86d6-9926695dda1d",
        "object": "chat.completion",
        "created": 1787593184,
        "model": "kimi-k3",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "323",
                    "reasoning_content": "17*19=323.",
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 101,
            "completion_tokens": 32,
            "total_tokens": 133,
            "cached_tokens": 101,
            "completion_tokens_details": {"reasoning_tokens": 16},
            "prompt_tokens_details": {"cached_tokens": 101},
        },
    }
    without = from_openai_response(kimi_k3)
    assert without["candidates"][0]["content"]["parts"] == [{"text": "323"}]
    assert from_openai_response(kimi_k3, request=THOUGHTS) == {
        "candidates": [
            {
                "content": {
                    "parts": [{"text": "17*19=323.", "thought": True}, {"text": "323"}],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 101,
            "candidatesTokenCount": 16,
            "totalTokenCount": 133,
            "thoughtsTokenCount": 16,
            "cachedContentTokenCount": 101,
        },
        "modelVersion": "kimi-k3",
        "responseId": "chatcmpl-a76c8fb3-ac3d-977e-86d6-9926695dda1d",
    }
    call = {"id": "f_0", "type": "function", "function": {"name": "f", "arguments": '{"a": [1]}'}}
    with_call = {
        "choices": [
            {"message": {"content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}
        ]
    }
    assert from_openai_response(with_call) == {
        "candidates": [
            {
                "content": {
                    "parts": [{"functionCall": {"name": "f", "args": {"a": [1]}, "id": "f_0"}}],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ]
    }
    assert from_openai_response({"error": {"message": "x", "type": "server_error"}}) == (
        error_body(500, "x", "server_error")
    )
    assert from_openai_response({"id": "c", "choices": []}) == {"candidates": [], "responseId": "c"}


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (400, "INVALID_ARGUMENT"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
        (502, "UNKNOWN"),
        (418, "UNKNOWN"),
    ],
)
def test_error_body_statuses(status, name):
    assert error_body(status, "every provider failed", "all_providers_failed") == {
        "error": {
            "code": status,
            "message": "every provider failed",
            "status": name,
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "ALL_PROVIDERS_FAILED",
                    "domain": "kimi-intercept",
                }
            ],
        }
    }


def test_error_body_has_the_shape_of_a_real_gemini_error():
    real = json.loads((WIRE / "documented" / "gemini_error_429.json").read_bytes())
    ours = error_body(429, "slow down", "rate_limit_exceeded")
    assert ours["error"].keys() == real["error"].keys()
    assert (ours["error"]["code"], ours["error"]["status"]) == (
        real["error"]["code"],
        real["error"]["status"],
    )


# --- native Gemini: StreamMeter / meter_json ------------------------------------------------


@pytest.mark.parametrize("size", [None, 1, 5])  # 1: CRLFs split across chunks
def test_meter_captured_gemini_text_stream(size):
    m = gemini_meter((WIRE / "captured_gemini_stream.sse").read_bytes(), size)
    assert m.usage == Usage(prompt_tokens=127, completion_tokens=12)
    assert (m.response_id, m.model, m.finish_reason) == (
        "WgCzaZzmMLnoz7IP_czm6Q4",
        "gemini-2.5-flash",
        "STOP",
    )
    assert m.answer_text == m.completion_text == "The weather in Florence,Italy is 40 C."
    assert (m.events, m.malformed_events, m.saw_done, m.saw_tool_calls) == (2, 0, True, False)
    assert (m.error, m.truncated) == (None, False)


def test_meter_captured_gemini_function_call_stream():
    m = gemini_meter((WIRE / "captured_gemini_function_call_stream.sse").read_bytes())
    # 54 prompt, 15 candidates + 43 thoughts (total 112 = 54 + 15 + 43)
    assert m.usage == Usage(prompt_tokens=54, completion_tokens=58, reasoning_tokens=43)
    assert (m.response_id, m.finish_reason, m.saw_tool_calls) == (
        "WQCzaayhL8Xmz7IP-63dqQk",
        "STOP",
        True,
    )
    assert (m.answer_text, m.completion_text) == ("", 'weather{"location": "Florence,Italy"}')


def test_meter_documented_gemini_stream_with_thoughts():
    m = gemini_meter((WIRE / "documented" / "gemini_stream.sse").read_bytes())
    # total 164 = 127 prompt + 12 candidates + 25 thoughts
    assert m.usage == Usage(prompt_tokens=127, completion_tokens=37, reasoning_tokens=25)


def test_meter_thought_parts_cached_tokens_tool_use_and_errors():
    body = (
        b'data: {"candidates":[{"content":{"parts":[{"text":"hmm","thought":true}],"role":"model"},'
        b'"index":0}],"usageMetadata":{"promptTokenCount":10,"totalTokenCount":13,'
        b'"thoughtsTokenCount":3}}\r\n\r\n'
        b'data: {"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},'
        b'"finishReason":"MAX_TOKENS","index":0}],"usageMetadata":{"promptTokenCount":10,'
        b'"candidatesTokenCount":1,"thoughtsTokenCount":3,"cachedContentTokenCount":8,'
        b'"toolUsePromptTokenCount":4,"totalTokenCount":18}}\r\n\r\n'
        b'data: {"error":{"code":500,"message":"Internal error","status":"INTERNAL"}}\r\n\r\n'
    )
    m = gemini_meter(body)
    assert m.usage == Usage(
        prompt_tokens=14, completion_tokens=4, cached_tokens=8, reasoning_tokens=3
    )
    assert (m.completion_text, m.answer_text, m.finish_reason) == ("hmmHi", "Hi", "MAX_TOKENS")
    assert m.error == {"code": 500, "message": "Internal error", "status": "INTERNAL"}


def test_meter_json_object_array_error_and_garbage():
    last = (WIRE / "captured_gemini_function_call_stream.sse").read_bytes()
    obj = json.loads(last.removeprefix(b"data: "))
    assert meter_json(json.dumps(obj).encode()) == JsonMeter(
        usage=Usage(prompt_tokens=54, completion_tokens=58, reasoning_tokens=43),
        response_id="WQCzaayhL8Xmz7IP-63dqQk",
        model="gemini-2.5-flash",
        finish_reason="STOP",
        completion_text='weather{"location": "Florence,Italy"}',
    )
    # streamGenerateContent without alt=sse: a JSON array of the same chunks
    text_chunks = [
        json.loads(line.removeprefix(b"data: "))
        for line in (WIRE / "captured_gemini_stream.sse").read_bytes().split(b"\r\n\r\n")
        if line
    ]
    assert meter_json(json.dumps(text_chunks).encode()) == JsonMeter(
        usage=Usage(prompt_tokens=127, completion_tokens=12),
        response_id="WgCzaZzmMLnoz7IP_czm6Q4",
        model="gemini-2.5-flash",
        finish_reason="STOP",
        completion_text="The weather in Florence,Italy is 40 C.",
    )
    error = meter_json((WIRE / "documented" / "gemini_error_429.json").read_bytes())
    assert (error.usage, error.error["status"], error.error["code"]) == (
        None,
        "RESOURCE_EXHAUSTED",
        429,
    )
    assert meter_json(b"\xff not json") == JsonMeter()


# --- parse_path -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parsed"),
    [
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            ("gemini-2.5-flash", True),
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?key=k&alt=sse",
            ("gemini-2.5-flash", True),
        ),
        ("/v1beta/models/gemini-2.5-pro:generateContent", ("gemini-2.5-pro", False)),
        ("/v1/models/gemini-2.0-flash:generateContent?key=k", ("gemini-2.0-flash", False)),
        (
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro"
            ":streamGenerateContent?alt=sse",
            ("gemini-2.5-pro", True),
        ),
        ("/v1beta/models/:generateContent", (None, False)),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", None),  # JSON array, not SSE
        ("/v1beta/models/gemini-2.5-flash:countTokens", None),
        ("/v1beta/models", None),
        ("/v1/chat/completions", None),
        ("/v1beta/models/gemini-2.5-flash:generateContentX", None),
    ],
)
def test_parse_path(path, parsed):
    assert parse_path(path) == parsed
