"""The OTLP/HTTP export: :class:`Telemetry` turns each finished row into spans and metric
points, in its own thread, and the OpenTelemetry SDK batches them out
(``BatchSpanProcessor``, ``PeriodicExportingMetricReader``) from its own threads.

``record()`` is a queue put: it never blocks the relay's loop and never raises. A collector that
is down only costs the SDK's export threads their retries; requests never wait for it. What is
queued is bounded (:data:`MAX_QUEUED` rows; beyond it rows are not exported and a warning counts
them — the SQLite row, the source of truth, is unaffected).

Where to: the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces``, ``/v1/metrics`` appended),
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``_METRICS_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_EXPORTER_OTLP_TIMEOUT``, read by the SDK's exporters; ``OTEL_SERVICE_NAME`` /
``OTEL_RESOURCE_ATTRIBUTES`` for the resource (service name by default ``kimi-intercept``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

from kimi_intercept.config.settings import Config
from kimi_intercept.telemetry import genai

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000
_STOP = object()


class Telemetry:
    """Exports rows as GenAI spans and metrics (needs the ``otel`` extra).

    :param cfg: the config (provider hosts for ``server.address``)
    :param capture_content: also export content attributes (``[otel] capture_content``)
    :param developer: the resource attribute ``kimi_intercept.developer`` (``[team] developer``,
        by default the OS user), when given
    """

    def __init__(
        self, cfg: Config | None = None, capture_content: bool = False, developer: str = ""
    ) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import OTEL_SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        base = {"service.name": os.environ.get(OTEL_SERVICE_NAME) or "kimi-intercept"}
        if developer:
            base["kimi_intercept.developer"] = developer
        resource = Resource.create(base)
        self.cfg, self.capture_content = cfg, capture_content
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.meter_provider = MeterProvider(
            resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
        )
        self.tracer = self.tracer_provider.get_tracer("kimi_intercept", schema_url=genai.SCHEMA_URL)
        meter = self.meter_provider.get_meter("kimi_intercept", schema_url=genai.SCHEMA_URL)
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=list(genai.TOKEN_BUCKETS),
        )  # fmt: skip
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=list(genai.SECONDS_BUCKETS),
        )  # fmt: skip
        self.ttft = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time from the request to the first chunk of a streamed answer",
            explicit_bucket_boundaries_advisory=list(genai.SECONDS_BUCKETS),
        )  # fmt: skip
        self._queue: queue.Queue[Any] = queue.Queue(MAX_QUEUED)
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="kimi-otel", daemon=True)
        self._thread.start()

    def record(self, row: dict[str, Any], attempts: list[dict[str, Any]]) -> None:
        """Queue one finished call for export. Never blocks, never raises."""
        try:
            self._queue.put_nowait((dict(row), [dict(a) for a in attempts]))
        except queue.Full:
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                log.warning("kimi-intercept: OpenTelemetry export is behind; %d calls were not "
                            "exported (their rows are in the database)", self._dropped)  # fmt: skip
        except Exception:
            log.exception("kimi-intercept: could not queue a call for OpenTelemetry")

    def close(self, timeout_s: float = 5.0) -> None:
        """Export what is queued (waiting at most about ``timeout_s``) and stop."""
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)
        millis = int(timeout_s * 1000)
        self.tracer_provider.force_flush(millis)
        self.meter_provider.force_flush(millis)
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown(timeout_millis=millis)

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            try:
                self.emit(*item)
            except Exception:  # a bug here must not stop the export of later calls
                log.exception("kimi-intercept: could not export a call to OpenTelemetry")

    def emit(self, row: dict[str, Any], attempts: list[dict[str, Any]]) -> None:
        """The call's span, one child span per attempt, and its metric points."""
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        start, end = genai.span_times(row, time.time_ns())
        attrs = genai.call_attributes(row, self.cfg, self.capture_content)
        name = f"{genai.OPERATION} {genai.request_model(row)}"
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs,
                                      start_time=start)  # fmt: skip
        context = trace.set_span_in_context(span)
        for a in attempts:
            a_start, a_end = genai.span_times(a, start)
            a_attrs = genai.attempt_attributes(a, self.cfg)
            child = self.tracer.start_span(genai.attempt_span_name(a), context=context,
                                           kind=SpanKind.CLIENT, attributes=a_attrs,
                                           start_time=a_start)  # fmt: skip
            if "error.type" in a_attrs:
                child.set_status(
                    Status(StatusCode.ERROR, a_attrs.get("kimi_intercept.attempt.error"))
                )
            child.end(max(a_end, a_start))
        if "error.type" in attrs:
            span.set_status(Status(StatusCode.ERROR, row.get("error") or attrs["error.type"]))
        span.end(max(end, start))
        metric_attrs = {
            k: attrs[k]
            for k in ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
                      "gen_ai.response.model", "server.address", "error.type")
            if k in attrs
        }  # fmt: skip
        for kind, key in (("input", "prompt_tokens"), ("output", "completion_tokens")):
            if isinstance(row.get(key), int):
                self.token_usage.record(row[key], {**metric_attrs, "gen_ai.token.type": kind})
        if row.get("duration_ms") is not None:
            self.duration.record(row["duration_ms"] / 1000, metric_attrs)
        if row.get("ttft_ms") is not None and row.get("stream"):
            self.ttft.record(row["ttft_ms"] / 1000, metric_attrs)
