"""Rows → GenAI attributes (plain functions), and the strict ``[otel]`` / ``[team]`` tables."""

from __future__ import annotations

import json

import pytest

from kimi_intercept.config.settings import ConfigError, load_config
from kimi_intercept.config.team import otel_settings, team_settings
from kimi_intercept.telemetry import call_attributes, provider_name
from kimi_intercept.telemetry.genai import attempt_attributes, epoch_ns, span_times

ROW = {
    "id": "r1", "started_at": "2026-11-21T23:54:42.123Z", "client": "claude-cli/2.0",
    "client_model": "claude-sonnet-4-5", "provider": "kimi", "model": "kimi-k2.6",
    "status_code": 200, "outcome": "ok", "attempts": 1, "fallback_used": 0, "ttft_ms": 250.0,
    "duration_ms": 1500.0, "prompt_tokens": 1200, "completion_tokens": 80, "cached_tokens": 1000,
    "cache_write_tokens": 100, "reasoning_tokens": None, "cost_usd": 0.0012, "stream": 1,
    "response_id": "chatcmpl-1", "host": "api.anthropic.com", "conversation_id": "c0ffee",
    "conversation_title": "Fix the failing test", "rule": "cheap", "route": "reroute",
    "tokens_before_sanitize": 5000, "tokens_after_sanitize": 1200,
    "details": json.dumps({"finish_reason": "end_turn"}),
}  # fmt: skip


def test_a_row_maps_to_the_genai_attributes_with_input_tokens_including_the_cache():
    a = call_attributes(ROW)
    assert a == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "moonshot_ai",
        "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.request.stream": True,
        "gen_ai.response.model": "kimi-k2.6",
        "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.finish_reasons": ["end_turn"],
        "gen_ai.response.time_to_first_chunk": 0.25,
        "gen_ai.conversation.id": "c0ffee",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 80,
        "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.cache_creation.input_tokens": 100,
        "server.address": "api.anthropic.com",
        "http.response.status_code": 200,
        "kimi_intercept.request.id": "r1",
        "kimi_intercept.cost_usd": 0.0012,
        "kimi_intercept.client": "claude-cli/2.0",
        "kimi_intercept.host": "api.anthropic.com",
        "kimi_intercept.conversation.id": "c0ffee",
        "kimi_intercept.rule": "cheap",
        "kimi_intercept.route": "reroute",
        "kimi_intercept.outcome": "ok",
        "kimi_intercept.tokens_masked": 3800,
        "kimi_intercept.ttft_ms": 250.0,
        "kimi_intercept.attempts": 1,
        "kimi_intercept.fallback_used": False,
    }
    assert "kimi_intercept.conversation.title" not in a
    assert call_attributes(ROW, capture_content=True)["kimi_intercept.conversation.title"] == (
        "Fix the failing test"
    )


def test_failed_and_aborted_calls_carry_error_type():
    assert call_attributes({**ROW, "status_code": 429, "outcome": "error"})["error.type"] == "429"
    aborted = {**ROW, "outcome": "client_abort"}
    assert call_attributes(aborted)["error.type"] == "client_abort"


@pytest.mark.parametrize(
    "ours, theirs",
    [("kimi", "moonshot_ai"), ("gemini", "gcp.gemini"), ("deepseek", "deepseek"),
     ("groq", "groq"), ("openai", "openai"), ("anthropic", "anthropic"), (None, "_OTHER")],
)  # fmt: skip
def test_provider_names_are_the_well_known_values(ours, theirs):
    assert provider_name(ours) == theirs


def test_attempt_spans_mark_skipped_and_failed_attempts():
    failed = {"attempt": 1, "provider": "kimi", "model": "kimi-k2.6", "status_code": 503,
              "error": "busy"}  # fmt: skip
    assert attempt_attributes(failed)["error.type"] == "503"
    skipped = {"attempt": 2, "provider": "groq", "error": "skipped: no API key"}
    a = attempt_attributes(skipped)
    assert a["kimi_intercept.attempt.skipped"] is True and "error.type" not in a


def test_span_times_come_from_the_row():
    start, end = span_times(ROW, 0)
    assert start == epoch_ns("2026-11-21T23:54:42.123Z") and end - start == 1_500_000_000


def _cfg(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return load_config(p, {"U": "postgresql://u:p@h/db"})


def test_otel_and_team_tables_are_strict(tmp_path):
    cfg = _cfg(tmp_path, "[otel]\nenabled = true\ncapture_content = true\n")
    assert (otel_settings(cfg).enabled, otel_settings(cfg).capture_content) == (True, True)
    with pytest.raises(ConfigError, match="did you mean `enabled`"):
        otel_settings(_cfg(tmp_path, "[otel]\nenable = true\n"))
    team = team_settings(_cfg(tmp_path, '[team]\nurl = "${U}"\ndeveloper = "ada"\n'))
    assert (team.url, team.developer, team.enabled) == ("postgresql://u:p@h/db", "ada", True)
    assert team_settings(_cfg(tmp_path, "")).developer  # the OS user
    with pytest.raises(ConfigError, match="team.url must be a PostgreSQL URL"):
        team_settings(_cfg(tmp_path, '[team]\nurl = "mysql://x"\n'))
