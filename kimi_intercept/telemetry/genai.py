"""Rows to OpenTelemetry GenAI attributes — plain functions over the ``requests`` and
``attempts`` rows as the store writes them (:mod:`kimi_intercept.storage.schema`).

Conventions followed: OpenTelemetry semantic conventions :data:`SEMCONV_VERSION` (the GenAI
pages, still "Development"; ``docs/teams.md`` has the attribute table). Token rule: our
``prompt_tokens`` already include cache reads and cache writes (:mod:`.accounting.usage`), which
is what ``gen_ai.usage.input_tokens`` must hold.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from kimi_intercept.config.settings import Config

#: The semantic-conventions release whose GenAI attributes and metrics we emit.
SEMCONV_VERSION = "1.41.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
OPERATION = "chat"
#: Our provider names → well-known ``gen_ai.provider.name`` values (others pass unchanged).
PROVIDER_NAMES = {
    "kimi": "moonshot_ai",
    "moonshot": "moonshot_ai",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "grok": "x_ai",
    "bedrock": "aws.bedrock",
    "azure": "azure.ai.openai",
}
#: Explicit bucket boundaries of ``gen_ai.client.token.usage`` ({token}).
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
#: ... of ``gen_ai.client.operation.duration`` and the time to first chunk (seconds).
SECONDS_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip


def provider_name(provider: str | None) -> str:
    """``gen_ai.provider.name`` for one of our provider names (``None`` → ``"_OTHER"``)."""
    if not provider:
        return "_OTHER"
    return PROVIDER_NAMES.get(provider, provider)


def epoch_ns(iso: str | None) -> int | None:
    """``"2026-11-21T23:54:42.123Z"`` → nanoseconds since the epoch (``None`` if unreadable)."""
    if not iso:
        return None
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return None


def span_times(row: dict[str, Any], now_ns: int) -> tuple[int, int]:
    """(start, end) in ns of a row: ``started_at`` and ``started_at + duration_ms``."""
    start = epoch_ns(row.get("started_at")) or now_ns
    duration = row.get("duration_ms")
    return start, start + int((duration or 0) * 1e6)


def error_type(row: dict[str, Any]) -> str | None:
    """``error.type``: the HTTP status of a failed call (``"429"``), else its outcome
    (``"client_abort"``, ``"incomplete"``); ``None`` for a call that succeeded."""
    status = row.get("status_code")
    if isinstance(status, int) and status >= 400:
        return str(status)
    if row.get("outcome") not in (None, "ok"):
        return str(row["outcome"])
    if row.get("error") and not row.get("outcome"):
        return "_OTHER"
    return None


def server_address(cfg: Config | None, provider: str | None, host: str | None) -> str | None:
    """The host that answered: the provider's ``base_url`` host, else the host called."""
    if cfg is not None and provider in cfg.providers:
        return urlsplit(cfg.providers[provider].base_url).hostname or host
    return host


def details(row: dict[str, Any]) -> dict[str, Any]:
    try:
        d = json.loads(row.get("details") or "{}")
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def request_model(row: dict[str, Any]) -> str:
    return row.get("client_model") or row.get("model") or "unknown"


def call_attributes(
    row: dict[str, Any], cfg: Config | None = None, capture_content: bool = False
) -> dict[str, Any]:
    """Attributes of the CLIENT span of one call (``None`` values left out)."""
    finish = details(row).get("finish_reason")
    before, after = row.get("tokens_before_sanitize"), row.get("tokens_after_sanitize")
    masked = before - after if isinstance(before, int) and isinstance(after, int) else None
    ttft = row.get("ttft_ms")
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.provider.name": provider_name(row.get("provider")),
        "gen_ai.request.model": request_model(row),
        "gen_ai.request.stream": bool(row.get("stream")),
        "gen_ai.response.model": row.get("model"),
        "gen_ai.response.id": row.get("response_id"),
        "gen_ai.response.finish_reasons": [str(finish)] if finish else None,
        "gen_ai.response.time_to_first_chunk": ttft / 1000 if ttft is not None else None,
        "gen_ai.conversation.id": row.get("conversation_id"),
        "gen_ai.usage.input_tokens": row.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": row.get("completion_tokens"),
        "gen_ai.usage.cache_read.input_tokens": row.get("cached_tokens"),
        "gen_ai.usage.cache_creation.input_tokens": row.get("cache_write_tokens"),
        "gen_ai.usage.reasoning.output_tokens": row.get("reasoning_tokens"),
        "server.address": server_address(cfg, row.get("provider"), row.get("host")),
        "http.response.status_code": row.get("status_code"),
        "error.type": error_type(row),
        "kimi_intercept.request.id": row.get("id"),
        "kimi_intercept.cost_usd": row.get("cost_usd"),
        "kimi_intercept.client": row.get("client"),
        "kimi_intercept.host": row.get("host"),  # the host the client called
        "kimi_intercept.conversation.id": row.get("conversation_id"),
        "kimi_intercept.rule": row.get("rule"),
        "kimi_intercept.route": row.get("route"),
        "kimi_intercept.outcome": row.get("outcome"),
        "kimi_intercept.usage_source": row.get("usage_source"),
        "kimi_intercept.tokens_masked": masked,
        "kimi_intercept.ttft_ms": ttft,
        "kimi_intercept.attempts": row.get("attempts"),
        "kimi_intercept.fallback_used": bool(row.get("fallback_used")),
    }
    if capture_content and row.get("conversation_title"):
        attrs["kimi_intercept.conversation.title"] = row["conversation_title"]
    return {k: v for k, v in attrs.items() if v is not None}


def attempt_attributes(attempt: dict[str, Any], cfg: Config | None = None) -> dict[str, Any]:
    """Attributes of the child span of one upstream attempt."""
    status = attempt.get("status_code")
    error = attempt.get("error")
    skipped = bool(error and str(error).startswith("skipped: "))
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.provider.name": provider_name(attempt.get("provider")),
        "gen_ai.request.model": attempt.get("model"),
        "server.address": server_address(cfg, attempt.get("provider"), None),
        "http.response.status_code": status,
        "error.type": str(status)
        if isinstance(status, int) and status >= 400
        else ("_OTHER" if error and not skipped else None),
        "kimi_intercept.attempt": attempt.get("attempt"),
        "kimi_intercept.provider": attempt.get("provider"),
        "kimi_intercept.attempt.skipped": skipped or None,
        "kimi_intercept.attempt.error": str(error) if error else None,
    }
    return {k: v for k, v in attrs.items() if v is not None}


def attempt_span_name(attempt: dict[str, Any]) -> str:
    """``"chat kimi-k2.6"`` — an attempt is itself a chat call to one provider."""
    return f"{OPERATION} {attempt.get('model') or attempt.get('provider') or 'unknown'}"
