"""Routing rules: parsing with errors that name the rule and the fix, matching, overrides."""

from __future__ import annotations

import json

import pytest

from kimi_intercept.config.rules import (
    ChainEntry,
    RequestFacts,
    Validation,
    apply_overrides,
    first_match,
)
from kimi_intercept.config.settings import ConfigError, load_config
from kimi_intercept.routing.plan import plan_route

ENV = {"MOONSHOT_API_KEY": "sk-moon", "DEEPSEEK_API_KEY": "sk-deep", "GROQ_API_KEY": "sk-groq"}
RULES = """
[[routing.rules]]
name = "fast"
match = { model = "gpt-4o-mini*", has_tools = false }
chain = ["groq", { provider = "kimi", model = "kimi-k2.5" }]
overrides = { temperature = 0.2, max_tokens = 4000 }
unset = ["top_p"]

[[routing.rules]]
name = "long"
match = { min_prompt_tokens = 50000 }
chain = ["kimi"]
validate = { repetition = false }

[[routing.rules]]
name = "by-header"
match = { header = { "x-mode" = "review*" }, dialect = "openai" }
chain = ["deepseek"]
"""


def cfg(tmp_path, text=RULES):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return load_config(p, env=ENV)


def facts(**kw):
    base = dict(model="gpt-4o", client="OpenAI/Python 2.54.0", dialect="openai",
                prompt_tokens=100, has_tools=False, thinking=False, headers={})  # fmt: skip
    return RequestFacts(**{**base, **kw})


def test_rules_parse_and_first_match_wins(tmp_path):
    c = cfg(tmp_path)
    assert [r.name for r in c.rules] == ["fast", "long", "by-header"]
    fast = c.rules[0]
    assert fast.chain == (ChainEntry("groq"), ChainEntry("kimi", "kimi-k2.5"))
    assert c.rules[1].validate == Validation(empty=True, json=True, repetition=False)
    assert first_match(c.rules, facts(model="gpt-4o-mini-2024")).name == "fast"
    assert first_match(c.rules, facts(model="gpt-4o-mini", has_tools=True)) is None
    assert first_match(c.rules, facts(prompt_tokens=60000)).name == "long"
    hit = facts(headers={"x-mode": "review-strict"})
    assert first_match(c.rules, hit).name == "by-header"
    assert first_match(c.rules, facts(headers={"x-mode": "fast"})) is None


def test_a_matching_rule_sets_chain_models_and_overrides(tmp_path):
    c = cfg(tmp_path)
    body = {"model": "gpt-4o-mini", "top_p": 0.9, "temperature": 1.0,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    p = plan_route(
        c, method="POST", url="https://api.openai.com/v1/chat/completions",
        host="api.openai.com", path="/v1/chat/completions",
        headers=[("User-Agent", "OpenAI/Python 2.54.0")], body=json.dumps(body).encode(), roll=0,
    )  # fmt: skip
    assert p.rule.name == "fast"
    assert [(t.provider, t.model) for t in p.targets] == [
        ("groq", "moonshotai/kimi-k2-instruct-0905"), ("kimi", "kimi-k2.5"),
    ]  # fmt: skip
    groq = json.loads(p.targets[0].body)
    assert (groq["temperature"], groq["max_tokens"], "top_p" in groq) == (0.2, 4000, False)
    kimi = json.loads(p.targets[1].body)
    # Kimi normalisation runs after the overrides: k2.5 fixes its temperature (1.0 in thinking
    # mode, [kimi] fixed_sampling = "set"), max_tokens renamed
    assert kimi["temperature"] == 1.0 and kimi["max_completion_tokens"] == 4000


def test_overrides_for_native_anthropic_and_gemini_bodies(tmp_path):
    rule = cfg(tmp_path).rules[0]
    native = {"temperature": 1, "top_p": 0.5, "max_tokens": 9}
    assert apply_overrides(native, rule, "anthropic") == {"temperature": 0.2, "max_tokens": 4000}
    gem = apply_overrides({"generationConfig": {"topP": 0.5}, "contents": []}, rule, "gemini")
    assert gem == {"generationConfig": {"temperature": 0.2, "maxOutputTokens": 4000},
                   "contents": []}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[routing.rules]]\nchain = ["kimi"]', "routing.rules #1 needs a name"),
        ('[[routing.rules]]\nname = "a"\nchain = ["nope"]',
         "routing rule 'a': chain names provider 'nope' but there is no [providers.nope] table"),
        ('[[routing.rules]]\nname = "a"\nchain = []',
         "routing rule 'a': chain must list providers"),
        ('[[routing.rules]]\nname = "a"\nchain = ["kimi"]\nmatch = { modle = "x" }',
         "routing rule 'a', match: unknown key `modle` — did you mean `model`?"),
        ('[[routing.rules]]\nname = "a"\nchain = ["kimi"]\nmatch = { has_tools = "yes" }',
         "routing rule 'a': match.has_tools must be true or false"),
        ('[[routing.rules]]\nname = "a"\nchain = ["kimi"]\nstrategy = "random"',
         "routing rule 'a': strategy must be \"ordered\" or \"weighted\""),
        ('[[routing.rules]]\nname = "a"\nchain = ["kimi"]\nweights = { speed = 1 }',
         "routing rule 'a', weights: unknown key `speed` — valid keys: context, latency, price"),
        ('[[routing.rules]]\nname = "a"\nchain = ["kimi"]\nfallback = ["x"]',
         "routing rule 'a': unknown key `fallback` — valid keys: chain, match, name, overrides, "
             "strategy, system_append, system_prepend, unset, validate, weights"),
        ('[[routing.rules]]\nname = "a"\nchain = ["kimi"]\n[[routing.rules]]\nname = "a"\n'
         'chain = ["kimi"]', "routing rule 'a': another rule has the same name"),
    ],
)  # fmt: skip
def test_every_invalid_rule_is_rejected_with_a_message_naming_it(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        cfg(tmp_path, text)
    assert message in str(e.value)
