"""Prompts per route (issue #15 item 4) and the [kimi] switches, from config to what each
provider is sent: system_prepend / system_append in every dialect, @file prompts, the order of a
rule's and a provider's texts, and the configured Kimi rules reaching the Kimi target."""

from __future__ import annotations

import json
import logging

import pytest

from kimi_intercept.config.kimi import KimiSettings
from kimi_intercept.config.settings import ConfigError, load_config
from kimi_intercept.dialects.system_prompt import add_system_text
from kimi_intercept.routing.plan import plan_route

ENV = {"MOONSHOT_API_KEY": "sk-moon", "DEEPSEEK_API_KEY": "sk-deep"}


def test_openai_system_message_gets_the_texts_or_a_new_one():
    body = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "hi"}]}  # fmt: skip
    out = add_system_text(body, "openai", "MODE: BUILD", "Run the tests.")
    assert out["messages"] == [
        {"role": "system", "content": "MODE: BUILD\n\nBe brief.\n\nRun the tests."},
        {"role": "user", "content": "hi"},
    ]
    assert body["messages"][0]["content"] == "Be brief."  # not mutated
    parts = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "D"}]}]}
    assert add_system_text(parts, "openai", "", "A")["messages"][0]["content"] == [
        {"type": "text", "text": "D"}, {"type": "text", "text": "A"},
    ]  # fmt: skip
    bare = {"messages": [{"role": "user", "content": "hi"}]}
    assert add_system_text(bare, "openai", "", "A")["messages"] == [
        {"role": "system", "content": "A"}, {"role": "user", "content": "hi"},
    ]  # fmt: skip
    assert add_system_text(bare, "openai", "", "") is bare


def test_anthropic_and_gemini_system_prompts():
    cached = [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}]
    out = add_system_text({"system": cached, "messages": []}, "anthropic", "P", "A")
    assert out["system"] == [{"type": "text", "text": "P"}, *cached, {"type": "text", "text": "A"}]
    assert add_system_text({"system": "S"}, "anthropic", "", "A") == {"system": "S\n\nA"}
    assert add_system_text({"messages": []}, "anthropic", "P", "") == {
        "messages": [],
        "system": "P",
    }
    gem = {"systemInstruction": {"parts": [{"text": "S"}]}, "contents": []}
    assert add_system_text(gem, "gemini", "P", "A")["systemInstruction"] == {
        "parts": [{"text": "P"}, {"text": "S"}, {"text": "A"}]
    }
    snake = {"system_instruction": {"parts": [{"text": "S"}]}}
    assert add_system_text(snake, "gemini", "", "A") == {
        "system_instruction": {"parts": [{"text": "S"}, {"text": "A"}]}
    }
    assert add_system_text({"contents": []}, "gemini", "", "A")["systemInstruction"] == {
        "parts": [{"text": "A"}]
    }


CONFIG = """
[providers.kimi]
system_prepend = "provider first"
system_append = "@prompts/provider.md"

[[routing.rules]]
name = "build"
match = { has_tools = false }
chain = ["kimi", "deepseek"]
system_prepend = "MODE: BUILD"
system_append = "@prompts/build.md"

[kimi]
fixed_sampling = "remove"
default_max_completion_tokens = 1000
"""


def _plan(cfg, body, path="/v1/chat/completions", host="api.openai.com"):
    return plan_route(
        cfg, method="POST", url=f"https://{host}{path}", host=host, path=path,
        headers=[("User-Agent", "OpenAI/Python 2.54.0")], body=json.dumps(body).encode(), roll=0,
    )  # fmt: skip


def test_rule_and_provider_texts_from_files_reach_each_target_in_order(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "build.md").write_text("Run the tests.\n", encoding="utf-8")
    (tmp_path / "prompts" / "provider.md").write_text("provider last", encoding="utf-8")
    (tmp_path / "config.toml").write_text(CONFIG, encoding="utf-8")
    cfg = load_config(tmp_path / "config.toml", env=ENV)
    assert cfg.kimi == KimiSettings(fixed_sampling="remove", default_max_completion_tokens=1000)
    body = {"model": "gpt-4o", "temperature": 0.3,
            "messages": [{"role": "system", "content": "Client."}, {"role": "user", "content": "hi"}]}  # fmt: skip  # noqa: E501
    kimi, deepseek = _plan(cfg, body).targets
    sent = json.loads(kimi.body)
    assert sent["messages"][0]["content"] == (
        "MODE: BUILD\n\nprovider first\n\nClient.\n\nprovider last\n\nRun the tests."
    )
    # the [kimi] switches reached the Kimi target: k2.6's fixed temperature removed, cap set
    assert "temperature" not in sent and sent["max_completion_tokens"] == 1000
    # deepseek has no provider texts: the rule's only
    assert json.loads(deepseek.body)["messages"][0]["content"] == (
        "MODE: BUILD\n\nClient.\n\nRun the tests."
    )
    # the same bytes on the next turn of the conversation
    more = [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]
    turn2 = {**body, "messages": body["messages"] + more}
    again = json.loads(_plan(cfg, turn2).targets[0].body)
    assert again["messages"][:2] == sent["messages"][:2]


def test_anthropic_client_to_kimis_anthropic_endpoint_gets_the_rule_text_and_a_log_line(
    tmp_path, caplog
):
    (tmp_path / "config.toml").write_text(
        '[routing]\nprimary = "kimi_anthropic"\nfallbacks = []\n'
        '[[routing.rules]]\nname = "review"\nchain = ["kimi_anthropic"]\n'
        'system_append = "List defects first."\n',
        encoding="utf-8",
    )
    cfg = load_config(tmp_path / "config.toml", env=ENV)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 50, "system": "Claude Code.",
            "messages": [{"role": "user", "content": [
                {"type": "document", "source": {"type": "base64", "data": "JVBE"}},
                {"type": "text", "text": "review"}]}]}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="kimi_intercept.routing.targets"):
        [target] = _plan(cfg, body, "/v1/messages", "api.anthropic.com").targets
    sent = json.loads(target.body)
    assert sent["system"] == "Claude Code.\n\nList defects first."
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "review"}]
    assert target.notes == ("dropped a document block",)
    assert "for kimi_anthropic (Kimi's Anthropic endpoint): dropped a document block" in caplog.text


def test_kimi_target_carries_the_id_map(tmp_path):
    cfg = load_config(None, env=ENV)
    body = {"model": "gpt-4o", "messages": [
        {"role": "user", "content": "ls"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "sh", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a.py"},
    ]}  # fmt: skip
    kimi, deepseek = _plan(cfg, body).targets
    assert kimi.tool_ids == {"functions.sh:0": "call_1"}
    assert json.loads(kimi.body)["messages"][2]["tool_call_id"] == "functions.sh:0"
    assert deepseek.tool_ids == {} and json.loads(deepseek.body)["messages"] == body["messages"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[kimi]\nfixed_sampling = "keep"\n',
         'kimi.fixed_sampling must be "set" or "remove", got \'keep\''),
        ("[kimi]\ndefault_max_completion_tokens = -1\n",
         "kimi.default_max_completion_tokens must be a whole number of tokens from 0"),
        ('[kimi]\nmissing_reasoning = "drop"\n',
         'kimi.missing_reasoning must be "backfill" or "disable_thinking"'),
        ("[kimi]\nrewrite_ids = true\n", "[kimi] unknown key `rewrite_ids`"),
        ('[providers.kimi]\nsystem_append = "@nope.md"\n',
         "[providers.kimi]: system_append names"),
        ('[[routing.rules]]\nname = "r"\nchain = ["kimi"]\nsystem_prepend = 3\n',
         "routing rule 'r': system_prepend must be text or \"@path/to/file.md\", got 3"),
    ],
)  # fmt: skip
def test_bad_kimi_and_prompt_settings_are_refused_with_the_fix(tmp_path, text, message):
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "config.toml", env=ENV)
    assert message in str(e.value)
    if "@nope.md" in text:
        assert str(tmp_path / "nope.md") in str(e.value)
        assert "relative to the config file's folder" in str(e.value)
