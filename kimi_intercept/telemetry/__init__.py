"""OpenTelemetry export of finished LLM calls, following the GenAI semantic conventions
(:data:`SEMCONV_VERSION`): one CLIENT span ``chat {model}`` per call with one child span per
upstream attempt, and the metrics ``gen_ai.client.token.usage``,
``gen_ai.client.operation.duration`` and ``gen_ai.client.operation.time_to_first_chunk``.

Optional (``pip install 'kimi-intercept[otel]'``), off unless ``[otel] enabled = true``; fed by
the addon from where rows are recorded. Modules: :mod:`.genai` (rows → attributes, plain
functions), :mod:`.export` (:class:`Telemetry`: the worker thread and the SDK's OTLP/HTTP
exporters). May import :mod:`kimi_intercept.config` and :mod:`kimi_intercept.storage` only.
"""

from __future__ import annotations

from kimi_intercept.telemetry.export import Telemetry
from kimi_intercept.telemetry.genai import (
    PROVIDER_NAMES,
    SEMCONV_VERSION,
    attempt_attributes,
    call_attributes,
    provider_name,
)

__all__ = [
    "PROVIDER_NAMES",
    "SEMCONV_VERSION",
    "Telemetry",
    "attempt_attributes",
    "call_attributes",
    "provider_name",
]
