"""Planning a Responses API call: rerouted with its tools translated, refused with the API's
own error code, hosted tools dropped by config (also when a budget retargets the plan)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from kimi_intercept.config.rules import ChainEntry
from kimi_intercept.config.settings import load_config
from kimi_intercept.routing.plan import Unplannable, plan_route, retarget

ENV = {"MOONSHOT_API_KEY": "sk-moon", "DEEPSEEK_API_KEY": "sk-deep"}
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
BODY = {"model": "gpt-5", "input": "hi", "stream": True, "tools": [{"type": "web_search"}, WEATHER]}


def plan(cfg, body=BODY):
    return plan_route(
        cfg, method="POST", url="https://api.openai.com/v1/responses", host="api.openai.com",
        path="/v1/responses", headers=[("User-Agent", "codex_exec/0.171.0")],
        body=json.dumps(body).encode(), roll=0.0,
    )  # fmt: skip


def sent(target) -> dict:
    return json.loads(target.body)


def test_hosted_tool_is_refused_with_the_tool_named_when_not_dropped():
    cfg = replace(load_config(None, env=ENV), responses_drop_builtin_tools=False)
    with pytest.raises(Unplannable) as e:
        plan(cfg)
    assert e.value.problem.status == 400 and e.value.problem.code == "unsupported_tool"
    assert "'web_search'" in e.value.problem.message


def test_unknown_previous_response_id_is_the_apis_own_code():
    with pytest.raises(Unplannable) as e:
        plan(load_config(None, env=ENV), {"model": "gpt-5", "previous_response_id": "resp_x"})
    assert e.value.problem.code == "previous_response_not_found"


def test_hosted_tools_are_dropped_by_default_and_stay_dropped_when_a_budget_retargets():
    cfg = load_config(None, env=ENV)
    assert cfg.responses_drop_builtin_tools is True
    p = plan(cfg)
    assert (p.kind, p.dialect, p.targets[0].provider) == ("reroute", "responses", "kimi")
    assert [t["function"]["name"] for t in sent(p.targets[0])["tools"]] == ["get_weather"]
    assert sent(p.targets[0])["stream_options"] == {"include_usage": True}
    assert retarget(p, (ChainEntry("deepseek"),))
    [target] = p.targets
    assert target.provider == "deepseek" and target.skip_reason is None
    assert [t["function"]["name"] for t in sent(target)["tools"]] == ["get_weather"]
