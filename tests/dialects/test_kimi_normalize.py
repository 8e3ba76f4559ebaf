"""Kimi request normalisation: each rule on its own, whole bodies compared."""

from __future__ import annotations

import copy
import json

import pytest

from kimi_intercept.dialects.kimi import KimiRequestError, Normalized, is_kimi_model
from kimi_intercept.dialects.kimi import normalize_for_kimi as _normalize_for_kimi


def normalize_for_kimi(body: dict, **kwargs) -> Normalized:
    """The function under test, plus the promise every test checks: the input is unchanged."""
    before = copy.deepcopy(body)
    try:
        return _normalize_for_kimi(body, **kwargs)
    finally:
        assert body == before


def _tool(name: str, described_as: str | None = None) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"Run {described_as or name}. Keep THIS text.",
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }


def _call(call_id: str, name: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def _user(text: str = "hi") -> dict:
    return {"role": "user", "content": text}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("kimi-k2.6", True),
        ("kimi-k2.7-code-highspeed", True),
        ("kimi-for-coding", True),
        ("moonshot-v1-8k", True),
        ("Kimi-K3", True),
        ("moonshotai/kimi-k2-instruct", False),
        ("moonshotai/kimi-k2.6", False),
        ("gpt-4o", False),
        ("", False),
        (None, False),
    ],
)
def test_is_kimi_model(model: str | None, expected: bool) -> None:
    assert is_kimi_model(model) is expected


def test_a_request_that_needs_nothing_comes_back_equal() -> None:
    body = {
        "model": "kimi-k2.6",
        "messages": [
            {"role": "system", "content": "You are Kimi."},
            _user(),
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "think",
                "tool_calls": [_call("c1", "get_weather")],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "22°C"},
        ],
        "tools": [_tool("get_weather")],
        "tool_choice": "auto",
        "max_completion_tokens": 1024,
        "stop": ["\n\n"],
        "stream": True,
    }
    before = copy.deepcopy(body)
    assert normalize_for_kimi(body, model="kimi-k2.6") == Normalized(body=before, changes=())
    assert body == before


def test_the_input_is_never_mutated() -> None:
    body = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "sys"}]},
            {
                "role": "user",
                "content": [{"type": "document", "source": {"type": "text", "data": "d"}}],
            },
            {"role": "assistant", "content": "ok", "tool_calls": [_call("c1", "read.file")]},
            {"role": "tool", "tool_call_id": "c1", "name": "read.file"},
            {"role": "assistant", "content": "plain"},
        ],
        "tools": [_tool(f"tool{i}") for i in range(130)] + [_tool("read.file")],
        "tool_choice": {"type": "function", "function": {"name": "read.file"}},
        "max_tokens": 10,
        "temperature": 0.2,
        "top_p": 0.5,
        "n": 9,
        "stop": ["a"] * 7,
        "thinking": {"type": "disabled"},
    }
    before = copy.deepcopy(body)
    result = normalize_for_kimi(body, model="kimi-k2.7-code")
    assert body == before
    assert len(result.changes) == 9
    assert result.body["messages"][4] == {
        "role": "assistant",
        "content": "plain",
        "reasoning_content": "",
    }
    assert result.body != before


def test_too_many_tools_dropped_but_the_tool_choice_tool_kept() -> None:
    tools = [_tool(f"tool{i}") for i in range(130)]
    pin = {"type": "function", "function": {"name": "tool129"}}
    body = {"messages": [_user()], "tools": tools, "tool_choice": pin}
    result = normalize_for_kimi(body, model="kimi-k2.6")
    assert result.body == {
        "messages": [_user()],
        "tools": tools[:127] + [tools[129]],
        "tool_choice": pin,
    }
    assert result.changes == ("dropped 2 tools beyond Kimi's 128-tool limit: tool127, tool128",)


def test_too_many_tools_without_a_pin_keeps_the_first() -> None:
    tools = [_tool(f"tool{i}") for i in range(130)]
    result = normalize_for_kimi({"tools": tools, "tool_choice": "auto"}, model="kimi-k2.6")
    assert result.body == {"tools": tools[:128], "tool_choice": "auto"}
    assert result.changes == ("dropped 2 tools beyond Kimi's 128-tool limit: tool128, tool129",)


def test_too_many_tools_rejected() -> None:
    body = {"tools": [_tool(f"tool{i}") for i in range(130)]}
    with pytest.raises(KimiRequestError) as err:
        normalize_for_kimi(body, model="kimi-k2.6", on_too_many_tools="reject")
    assert str(err.value) == (
        "Kimi accepts at most 128 tools; this request has 130. "
        'Set [kimi] on_too_many_tools = "drop" or send fewer tools.'
    )
    assert normalize_for_kimi(body, model="kimi-k2.6", max_tools=130, on_too_many_tools="reject")
    with pytest.raises(ValueError, match="must be"):
        normalize_for_kimi(body, model="kimi-k2.6", on_too_many_tools="ignore")


def test_bad_function_names_renamed_everywhere_consistently() -> None:
    web_search = {"type": "builtin_function", "function": {"name": "$web_search"}}
    names = ["files.read", "run shell", "a.b", "a b", "x", "1st", "ok_name", "a_b"]
    body = {
        "messages": [
            _user("call files.read please"),
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "",
                "tool_calls": [_call("c1", "files.read"), _call("c2", "ok_name")],
            },
            {"role": "tool", "tool_call_id": "c1", "name": "files.read", "content": "x"},
            {"role": "tool", "tool_call_id": "c2", "name": "ok_name", "content": "y"},
            {"role": "assistant", "content": "", "tool_calls": [_call("c3", "run shell")]},
        ],
        "tools": [_tool(n) for n in names] + [web_search],
        "tool_choice": {"type": "function", "function": {"name": "files.read"}},
    }
    result = normalize_for_kimi(body, model="moonshot-v1-8k")
    new = ["files_read", "run_shell", "a_b_2", "a_b_3", "x__", "_1st", "ok_name", "a_b"]
    assert result.body == {
        "messages": [
            _user("call files.read please"),
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "",
                "tool_calls": [_call("c1", "files_read"), _call("c2", "ok_name")],
            },
            {"role": "tool", "tool_call_id": "c1", "name": "files_read", "content": "x"},
            {"role": "tool", "tool_call_id": "c2", "name": "ok_name", "content": "y"},
            {"role": "assistant", "content": "", "tool_calls": [_call("c3", "run_shell")]},
        ],
        "tools": [_tool(m, described_as=n) for n, m in zip(names, new, strict=True)] + [web_search],
        "tool_choice": {"type": "function", "function": {"name": "files_read"}},
    }
    assert result.body["tools"][0]["function"]["description"] == "Run files.read. Keep THIS text."
    assert result.renamed == {
        "files_read": "files.read",
        "run_shell": "run shell",
        "a_b_2": "a.b",
        "a_b_3": "a b",
        "x__": "x",
        "_1st": "1st",
    }
    assert result.changes == (
        "renamed 6 tool names to fit Kimi's ^[a-zA-Z_][a-zA-Z0-9-_]{2,63}$: "
        "'files.read' → 'files_read', 'run shell' → 'run_shell', 'a.b' → 'a_b_2', "
        "'a b' → 'a_b_3', 'x' → 'x__', '1st' → '_1st' "
        "(also in tool_calls, tool messages and tool_choice)",
    )


def test_long_name_cut_to_64() -> None:
    result = normalize_for_kimi({"tools": [_tool("n." + "a" * 70)]}, model="kimi-k2.6")
    assert result.renamed == {"n_" + "a" * 62: "n." + "a" * 70}


@pytest.mark.parametrize(
    ("extra", "expected", "change"),
    [
        (
            {"max_tokens": 4096},
            {"max_completion_tokens": 4096},
            "moved max_tokens=4096 to max_completion_tokens (deprecated)",
        ),
        (
            {"max_tokens": 4096, "max_completion_tokens": 100},
            {"max_completion_tokens": 100},
            "dropped max_tokens=4096: max_completion_tokens is already set",
        ),
    ],
)
def test_max_tokens_moved(extra: dict, expected: dict, change: str) -> None:
    result = normalize_for_kimi({"messages": [_user()], **extra}, model="kimi-k2-turbo-preview")
    assert result.body == {"messages": [_user()], **expected}
    assert result.changes == (change,)


def test_tool_message_without_content_gets_empty_string() -> None:
    body = {
        "messages": [
            {"role": "tool", "tool_call_id": "a"},
            {"role": "tool", "tool_call_id": "b", "content": None},
            {"role": "tool", "tool_call_id": "c", "content": "kept"},
        ]
    }
    result = normalize_for_kimi(body, model="moonshot-v1-8k")
    assert result.body == {
        "messages": [
            {"role": "tool", "tool_call_id": "a", "content": ""},
            {"role": "tool", "tool_call_id": "b", "content": ""},
            {"role": "tool", "tool_call_id": "c", "content": "kept"},
        ]
    }
    assert result.changes == ('set content "" on 2 role:tool messages that had none',)


def test_document_and_unknown_parts_become_text_or_go() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Read this:"},
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "DOC BODY"},
                    },
                    {"type": "tool_reference", "tool_name": "Bash"},
                    image,
                    {"type": "input_text", "text": "more"},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_reference", "tool_name": "Bash"}]},
        ]
    }
    result = normalize_for_kimi(body, model="moonshot-v1-8k")
    assert result.body == {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Read this:"},
                    {"type": "text", "text": "DOC BODY"},
                    image,
                    {"type": "text", "text": "more"},
                ],
            },
            {"role": "user", "content": ""},
        ]
    }
    assert result.changes == (
        "content parts Kimi rejects: message 0 document → text; message 0 tool_reference "
        "dropped; message 0 input_text → text; message 0 input_audio dropped; "
        "message 1 tool_reference dropped",
    )


def _history() -> list[dict]:
    return [
        {"role": "system", "content": "sys"},
        _user("q1"),
        {"role": "assistant", "content": "a1"},
        _user("q2"),
        {"role": "assistant", "content": None, "tool_calls": [_call("c1", "get_weather")]},
        {"role": "tool", "tool_call_id": "c1", "content": "22"},
        {"role": "assistant", "content": "a2", "reasoning_content": "kept thought"},
        _user("q3"),
    ]


REASONING_ADDED = (
    'added reasoning_content "" to 2 assistant messages: thinking is on and Kimi 400s '
    '"thinking is enabled but reasoning_content is missing" (⚠ empty accepted by kosong; '
    "server-side unverified)"
)


@pytest.mark.parametrize(
    ("model", "thinking"),
    [
        ("kimi-k2.6", None),
        ("kimi-k2.5", {"type": "enabled"}),
        ("kimi-k2-thinking-turbo", None),
        ("kimi-k3", None),
        ("kimi-for-coding", {"type": "enabled"}),
    ],
)
def test_reasoning_content_added_on_assistant_turns_for_thinking_models(
    model: str, thinking: dict | None
) -> None:
    extra = {"thinking": thinking} if thinking else {}
    result = normalize_for_kimi({"messages": _history(), **extra}, model=model)
    expected = _history()
    expected[2] = {"role": "assistant", "content": "a1", "reasoning_content": ""}
    expected[4] = expected[4] | {"reasoning_content": ""}
    assert result.body == {"messages": expected, **extra}
    assert result.changes == (REASONING_ADDED,)


@pytest.mark.parametrize(
    ("model", "thinking"),
    [
        ("kimi-k2.6", {"type": "disabled"}),
        ("kimi-k2-turbo-preview", None),
        ("moonshot-v1-32k", None),
        ("kimi-for-coding", None),
    ],
)
def test_no_reasoning_content_when_thinking_is_off(model: str, thinking: dict | None) -> None:
    extra = {"thinking": thinking} if thinking else {}
    result = normalize_for_kimi({"messages": _history(), **extra}, model=model)
    assert result == Normalized(body={"messages": _history(), **extra}, changes=())


def test_partial_prefill_gets_no_reasoning_content() -> None:
    prefill = {"role": "assistant", "content": "Dear customer,", "partial": True}
    result = normalize_for_kimi({"messages": [_user(), prefill]}, model="kimi-k2.6")
    assert result == Normalized(body={"messages": [_user(), prefill]}, changes=())


def test_k27_code_thinking_disabled_removed() -> None:
    body = {"messages": [_user(), {"role": "assistant", "content": "a"}, _user()]}
    result = normalize_for_kimi(body | {"thinking": {"type": "disabled"}}, model="kimi-k2.7-code")
    assert result.body == {
        "messages": [
            _user(),
            {"role": "assistant", "content": "a", "reasoning_content": ""},
            _user(),
        ]
    }
    assert result.changes == (
        "removed thinking={type: disabled}: kimi-k2.7-code always thinks and 400s "
        '"invalid thinking: only type=enabled is allowed for this model"',
        REASONING_ADDED.replace("to 2 assistant", "to 1 assistant"),
    )
    enabled = normalize_for_kimi(
        {"thinking": {"type": "enabled"}}, model="kimi-k2.7-code-highspeed"
    )
    assert enabled == Normalized(body={"thinking": {"type": "enabled"}}, changes=())


def test_fixed_sampling_removed_for_fixed_models() -> None:
    sampling = {"temperature": 0.2, "top_p": 0.9, "n": 2, "presence_penalty": 0.1, "stream": True}
    result = normalize_for_kimi(sampling, model="kimi-k2.6", fixed_sampling="remove")
    assert result.body == {"stream": True}
    assert result.changes == (
        "removed temperature=0.2, top_p=0.9, n=2, presence_penalty=0.1: fixed by kimi-k2.6 "
        "(Moonshot 400s otherwise)",
    )
    k3 = normalize_for_kimi(sampling, model="kimi-k3", fixed_sampling="remove")
    assert k3.body == {"n": 2, "stream": True}


def test_fixed_sampling_set_to_the_documented_value_per_thinking_mode() -> None:
    # platform.kimi.ai/docs/guide/migrating-from-openai-to-kimi: k2.5/k2.6 thinking 1.0, else 0.6
    sampling = {"temperature": 0.2, "top_p": 0.9, "n": 2, "presence_penalty": 0.1, "stream": True}
    thinking = normalize_for_kimi(sampling, model="kimi-k2.6")
    assert thinking.body == {
        "temperature": 1.0, "top_p": 0.95, "n": 1, "presence_penalty": 0.0, "stream": True,
    }  # fmt: skip
    assert thinking.changes == (
        "set temperature=0.2 → 1.0, top_p=0.9 → 0.95, n=2 → 1, presence_penalty=0.1 → 0.0: "
        "fixed by kimi-k2.6 in thinking mode (Moonshot 400s otherwise)",
    )
    off = normalize_for_kimi(
        {"temperature": 1.7, "thinking": {"type": "disabled"}}, model="kimi-k2.5"
    )
    assert off.body == {"temperature": 0.6, "thinking": {"type": "disabled"}}
    assert normalize_for_kimi({"temperature": 0.3}, model="kimi-k3").body == {"temperature": 1.0}
    # values no Moonshot page gives are removed, never guessed: k3's top_p, all of k2.7's
    k3 = normalize_for_kimi({"temperature": 0.3, "top_p": 0.5}, model="kimi-k3")
    assert k3.body == {"temperature": 1.0}
    assert k3.changes == (
        "removed top_p=0.5: fixed by kimi-k3 (Moonshot 400s otherwise)",
        "set temperature=0.3 → 1.0: fixed by kimi-k3 in thinking mode (Moonshot 400s otherwise)",
    )
    assert normalize_for_kimi({"temperature": 0.3}, model="kimi-k2.7-code-highspeed").body == {}
    # a field the client did not send stays unsent; the right value is no change
    assert normalize_for_kimi({"temperature": 1.0}, model="kimi-k2.6").changes == ()
    assert normalize_for_kimi({"stream": True}, model="kimi-k2.6").body == {"stream": True}


def test_temperature_clamped_to_kimis_range_and_n_one_near_zero() -> None:
    hot = normalize_for_kimi({"temperature": 1.6}, model="moonshot-v1-8k")
    assert hot == Normalized(
        body={"temperature": 1.0},
        changes=("clamped temperature=1.6 to Kimi's range [0, 1]",),
    )
    cold = normalize_for_kimi({"temperature": 0, "n": 3}, model="kimi-k2-0905-preview")
    assert cold == Normalized(
        body={"temperature": 0, "n": 1},
        changes=("set n=3 → 1: Kimi returns one choice at temperature ≈ 0",),
    )
    assert normalize_for_kimi({"temperature": -0.5}, model="moonshot-v1-8k").body == {
        "temperature": 0
    }


@pytest.mark.parametrize(
    "model", ["kimi-k2-turbo-preview", "kimi-k2-0905-preview", "moonshot-v1-8k"]
)
def test_sampling_kept_for_free_models(model: str) -> None:
    sampling = {"temperature": 0.2, "top_p": 0.9, "n": 2, "frequency_penalty": 0.1}
    assert normalize_for_kimi(sampling, model=model) == Normalized(body=sampling, changes=())


def test_n_and_stop_capped() -> None:
    long_stop = "é" * 17  # 34 UTF-8 bytes, 17 characters
    stop = ["a", long_stop, "b", "c", "d", "e", "f", "x" * 33]
    result = normalize_for_kimi({"n": 8, "stop": stop}, model="moonshot-v1-8k")
    assert result.body == {"n": 5, "stop": ["a", "b", "c", "d", "e"]}
    assert result.changes == (
        "capped n=8 to Kimi's maximum 5",
        "stop: dropped 2 over 32 bytes and 1 beyond the first 5; kept ['a', 'b', 'c', 'd', 'e']",
    )


def test_single_stop_string_over_32_bytes_removed_and_short_one_kept() -> None:
    result = normalize_for_kimi({"stop": "y" * 33}, model="moonshot-v1-8k")
    assert result == Normalized(body={}, changes=("stop: dropped 1 over 32 bytes; kept []",))
    ok = {"stop": "y" * 32, "n": 5}
    assert normalize_for_kimi(ok, model="moonshot-v1-8k") == Normalized(body=ok, changes=())


def test_anthropic_body_for_kimis_anthropic_endpoint():
    from kimi_intercept.dialects.kimi import normalize_anthropic_for_kimi

    tools = [{"name": f"t{i}", "input_schema": {"type": "object"}} for i in range(130)]
    body = {
        "model": "kimi-k2.6",
        "tools": tools,
        "tool_choice": {"type": "tool", "name": "t129"},
        "messages": [
            {"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "data": "spec text"}},
                {"type": "document", "source": {"type": "base64", "data": "JVBERi0="}},
                {"type": "text", "text": "read it"},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "x", "content": [
                    {"type": "tool_reference", "tool_name": "Bash"},
                    {"type": "text", "text": "ok"},
                ]},
            ]},
        ],
    }  # fmt: skip
    before = json.loads(json.dumps(body))
    fixed = normalize_anthropic_for_kimi(body)
    assert body == before  # not mutated
    assert [t["name"] for t in fixed.body["tools"]] == [f"t{i}" for i in range(127)] + ["t129"]
    assert fixed.body["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "spec text"}, {"type": "text", "text": "read it"},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "x",
             "content": [{"type": "text", "text": "ok"}]},
        ]},
    ]  # fmt: skip
    assert fixed.changes == (
        "dropped 2 tools beyond Kimi's 128-tool limit: t127, t128",
        "converted a document block to text",
        "dropped a document block",
        "dropped a tool_reference block",
    )
    assert normalize_anthropic_for_kimi({"messages": []}).changes == ()
