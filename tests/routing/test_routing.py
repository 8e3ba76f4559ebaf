"""Routing plans: what is rerouted, what passes through, and what reaches each upstream."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from kimi_intercept.config.settings import load_config
from kimi_intercept.routing.plan import Unplannable, client_name, detect_dialect, plan_route

ENV = {"MOONSHOT_API_KEY": "sk-moon", "DEEPSEEK_API_KEY": "sk-deep"}
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
HEADERS = [
    ("Host", "api.openai.com"),
    ("Authorization", "Bearer sk-client"),
    ("User-Agent", "OpenAI/Python 2.54.0"),
    ("OpenAI-Organization", "org-1"),
    ("X-Stainless-Lang", "python"),
    ("Accept-Encoding", "gzip"),
    ("Content-Length", "99"),
]


def plan(roll=0.0, body=BODY, path="/v1/chat/completions", host="api.openai.com", env=ENV):
    return plan_route(
        load_config(None, env=env),
        method="POST",
        url=f"https://{host}{path}",
        host=host,
        path=path,
        headers=HEADERS,
        body=json.dumps(body).encode(),
        roll=roll,
    )


def test_reroute_swaps_key_and_model_and_keeps_the_user_agent():
    p = plan()
    assert p.kind == "reroute" and p.stream is True and p.client_model == "gpt-4o"
    kimi, deepseek = p.targets
    assert kimi.url == "https://api.moonshot.ai/v1/chat/completions"
    assert kimi.headers["authorization"] == "Bearer sk-moon"
    assert kimi.headers["user-agent"] == "OpenAI/Python 2.54.0"
    assert kimi.headers["accept-encoding"] == "identity"
    assert "openai-organization" not in kimi.headers and "content-length" not in kimi.headers
    # the client sent no output cap: Kimi gets [kimi] default_max_completion_tokens
    assert json.loads(kimi.body) == {
        **BODY, "model": "kimi-k2.6", "max_completion_tokens": 32768,
    }  # fmt: skip
    assert deepseek.headers["authorization"] == "Bearer sk-deep"
    assert json.loads(deepseek.body)["model"] == "deepseek-chat"


def test_share_roll_above_share_passes_through_unchanged():
    cfg = load_config(None, env=ENV)
    cfg = replace(cfg, routing=replace(cfg.routing, share=30.0))
    body = json.dumps(BODY).encode()
    kw = dict(
        method="POST",
        url="https://api.openai.com/v1/chat/completions",
        host="api.openai.com",
        path="/v1/chat/completions",
        headers=HEADERS,
        body=body,
    )
    assert plan_route(cfg, roll=29.9, **kw).kind == "reroute"
    through = plan_route(cfg, roll=30.0, **kw)
    assert through.kind == "passthrough"
    [t] = through.targets
    assert t.url == "https://api.openai.com/v1/chat/completions" and t.body == body
    assert t.headers["authorization"] == "Bearer sk-client"
    assert t.provider == "openai" and t.model_info.input_per_mtok == 2.50


def test_missing_key_marks_the_target_skipped_with_the_variable_name():
    p = plan(env={"DEEPSEEK_API_KEY": "sk-deep"})
    assert p.targets[0].skip_reason == (
        "no API key for provider 'kimi': set the MOONSHOT_API_KEY environment variable"
    )
    assert "authorization" not in p.targets[0].headers
    assert p.targets[1].skip_reason is None


def test_other_paths_and_hosts_are_left_alone_bad_bodies_are_rejected():
    assert plan(path="/v1/models") is None
    assert plan(host="example.com") is None
    with pytest.raises(Unplannable) as e:
        plan_route(
            load_config(None, env=ENV),
            method="POST",
            url="https://api.openai.com/v1/chat/completions",
            host="api.openai.com",
            path="/v1/chat/completions",
            headers=HEADERS,
            body=b"\xff{not json",
            roll=0.0,
        )
    assert e.value.problem.status == 400
    assert e.value.problem.message.startswith("the request body is not JSON: ")
    with pytest.raises(Unplannable, match="the request body is a JSON list, not an object"):
        plan(body=["not", "an", "object"])


def test_chat_completions_matching():
    openai = ("openai", None, None)
    assert detect_dialect("POST", "/v1/chat/completions?beta=true") == openai
    assert detect_dialect("post", "/openai/v1/chat/completions/") == openai
    assert detect_dialect("GET", "/v1/chat/completions") is None
    assert detect_dialect("POST", "/v1/chat/completions/abc/messages") is None


def test_client_name_from_user_agent():
    assert client_name("OpenAI/Python 2.54.0") == "OpenAI/Python 2.54.0"
    assert client_name("claude-cli/2.1.328 (external, sdk-cli)") == "claude-cli/2.1.328"
    assert (
        client_name("ai-sdk/openai-compatible/1.0.0 runtime/node")
        == "ai-sdk/openai-compatible/1.0.0"
    )
    assert client_name(None) is None


def test_conversation_key_is_stable_across_turns_and_overridden_by_session_headers():
    from kimi_intercept.routing.plan import conversation_key, share_roll

    first = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"}]}
    later = {
        "messages": first["messages"]
        + [{"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
    }
    other = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "X"}]}
    ua = [("User-Agent", "OpenAI/Python 2.54.0")]
    assert conversation_key(ua, first) == conversation_key(ua, later)
    assert conversation_key(ua, first) != conversation_key(ua, other)
    session = ua + [("x-claude-code-session-id", "abc")]
    assert conversation_key(session, first) == conversation_key(session, other)
    meta = {**first, "user": "user_ab12_account_cd34_session_5e6f-7a8b"}
    meta_later = {**later, "user": "user_ab12_account_cd34_session_5e6f-7a8b"}
    assert conversation_key(ua, meta) == conversation_key(ua, {**other, "user": meta["user"]})
    assert conversation_key(ua, meta) == conversation_key(ua, meta_later)
    assert conversation_key(ua, meta) != conversation_key(ua, first)
    explicit = session + [("X-Kimi-Session", "mine")]
    assert conversation_key(explicit, first) != conversation_key(session, first)
    rolls = [
        share_roll(conversation_key(ua, {"messages": [{"role": "user", "content": str(i)}]}))
        for i in range(2000)
    ]
    assert all(0 <= r < 100 for r in rolls)
    assert 40 < sum(r < 50 for r in rolls) / 20 < 60  # about half below a share of 50


def test_first_byte_timeout_adapts_to_the_task_size():
    from kimi_intercept.routing.plan import first_byte_timeout

    assert first_byte_timeout(7.5, stream=True, prompt_tokens=10**6, max_tokens=None) == 7.5
    assert first_byte_timeout(None, stream=True, prompt_tokens=0, max_tokens=None) == 60
    assert first_byte_timeout(None, stream=True, prompt_tokens=200_000, max_tokens=None) == 160
    # non-streamed: the whole answer must arrive: + max_tokens / 50 tokens per second
    assert first_byte_timeout(None, stream=False, prompt_tokens=0, max_tokens=1000) == 80
    assert (
        first_byte_timeout(None, stream=False, prompt_tokens=0, max_tokens=None) == 60 + 4096 / 50
    )
    assert first_byte_timeout(None, stream=False, prompt_tokens=10**6, max_tokens=32000) == 600


def test_dialect_detection():
    from kimi_intercept.routing.plan import detect_dialect

    assert detect_dialect("POST", "/v1/chat/completions") == ("openai", None, None)
    assert detect_dialect("POST", "/v1/messages?beta=true") == ("anthropic", None, None)
    assert detect_dialect("POST", "/v1/messages/count_tokens") == ("anthropic_count", None, None)
    sse = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert detect_dialect("POST", sse) == ("gemini", "gemini-2.5-flash", True)
    assert detect_dialect("POST", "/v1beta/models/gemini-2.5-pro:generateContent") == (
        "gemini", "gemini-2.5-pro", False,
    )  # fmt: skip
    assert detect_dialect("POST", "/v1beta/models/g:streamGenerateContent") is None
    assert detect_dialect("POST", "/v1/responses") == ("responses", None, None)
    assert detect_dialect("POST", "/v1/models") is None
    assert detect_dialect("GET", "/v1/messages") is None


def test_translated_requests_carry_kimi_fields_only_to_kimi():
    body = {
        "model": "claude-sonnet-4-5", "max_tokens": 100,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "hello"},
            ]},
            {"role": "user", "content": "again"},
        ],
    }  # fmt: skip
    p = plan_route(
        load_config(None, env=ENV), method="POST", url="https://api.anthropic.com/v1/messages",
        host="api.anthropic.com", path="/v1/messages", headers=HEADERS,
        body=json.dumps(body).encode(), roll=0.0,
    )  # fmt: skip
    kimi, deepseek = (json.loads(t.body) for t in p.targets)
    assert kimi["thinking"] == {"type": "enabled"}
    assert kimi["messages"][1]["reasoning_content"] == "hmm"
    assert "thinking" not in deepseek
    assert deepseek["messages"][1] == {"role": "assistant", "content": "hello"}
