"""OpenTelemetry export end to end: a real mitmdump with ``[otel] enabled = true``, the openai SDK
through it, fake providers, and a small OTLP/HTTP receiver on loopback that decodes what the SDK
exporter sends (``opentelemetry-proto``) — span names, GenAI attributes, parent/child structure,
and the metrics' names."""

from __future__ import annotations

import gzip
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from proxyproc import clean_env, render_config, start_proxy_process, wait_rows

from kimi_intercept.commands.simulator import Reply

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra")
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: E402

WIRE = Path(__file__).resolve().parents[1] / "wire" / "documented"
MESSAGES = [{"role": "user", "content": "Say OK."}]


class Receiver:
    """OTLP/HTTP receiver: ``/v1/traces`` and ``/v1/metrics`` bodies, decoded."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, Any]] = []
        self.metric_names: set[str] = set()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    for rs in req.resource_spans:
                        receiver.resources.append(attrs(rs.resource))
                        for ss in rs.scope_spans:
                            receiver.spans.extend(ss.spans)
                elif self.path == "/v1/metrics":
                    req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                    for rm in req.resource_metrics:
                        for sm in rm.scope_metrics:
                            receiver.metric_names.update(m.name for m in sm.metrics)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_spans(self, n: int, timeout: float = 20.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.spans) >= n, f"{len(self.spans)} spans arrived, wanted {n}"
        return list(self.spans)


def attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = (
            [x.string_value for x in v.array_value.values] if kind == "array_value"
            else getattr(v, kind)
        )  # fmt: skip
    return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def otel_proxy(tmp_path, fake_upstream, monkeypatch, receiver):
    """kimi + deepseek fakes, a proxy exporting to ``receiver``, an openai client, the db."""
    procs = []

    def make(endpoint: str | None = None, **routing: Any):
        kimi, deepseek = fake_upstream(), fake_upstream()
        db = tmp_path / "kimi.db"
        text = render_config(db, kimi.url, deepseek.url)
        extra = "".join(f"{k} = {v}\n" for k, v in routing.items())
        text = text.replace("share = 100\n", "share = 100\n" + extra)
        text += "\n[otel]\nenabled = true\n"
        (tmp_path / "config.toml").write_text(text)
        env = clean_env({
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint or receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
        })  # fmt: skip
        confdir = tmp_path / "confdir"
        confdir.mkdir(exist_ok=True)
        proc = start_proxy_process(tmp_path / "config.toml", confdir, (), env=env, cwd=tmp_path)
        procs.append(proc)
        for name, value in proc.client_env().items():
            monkeypatch.setenv(name, value)
        client = openai.OpenAI(api_key="sk-client", max_retries=0)
        return kimi, deepseek, client, db, proc

    yield make
    for proc in procs:
        proc.stop()


def test_a_streamed_call_is_one_chat_span_with_one_attempt_child(otel_proxy, receiver):
    kimi, deepseek, client, db, proc = otel_proxy()
    kimi.enqueue(Reply.sse_file((WIRE / "moonshot_stream.sse").read_bytes()))
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
    assert text
    [row] = wait_rows(db, 1)
    spans = receiver.wait_spans(2)
    [call] = [s for s in spans if not s.parent_span_id]
    [attempt] = [s for s in spans if s.parent_span_id]
    assert call.name == "chat gpt-4o"
    assert call.kind == call.SPAN_KIND_CLIENT
    assert attempt.parent_span_id == call.span_id and attempt.trace_id == call.trace_id
    a = attrs(call)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "moonshot_ai"
    assert a["gen_ai.request.model"] == "gpt-4o"
    assert a["gen_ai.response.model"] == row["model"]
    assert a["gen_ai.response.id"] == row["response_id"]
    assert a["gen_ai.usage.input_tokens"] == row["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == row["completion_tokens"]
    assert a["gen_ai.request.stream"] is True
    assert a["server.address"] == "127.0.0.1"
    assert a["kimi_intercept.request.id"] == row["id"]
    assert a["kimi_intercept.ttft_ms"] == pytest.approx(row["ttft_ms"])
    assert "error.type" not in a
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert "kimi_intercept.conversation.title" not in a  # content only with capture_content
    assert (call.end_time_unix_nano - call.start_time_unix_nano) / 1e6 == pytest.approx(
        row["duration_ms"], abs=1
    )
    assert attempt.name == "chat kimi-k2.6"
    resource = receiver.resources[0]
    assert resource["service.name"] == "kimi-intercept" and resource["kimi_intercept.developer"]
    assert attrs(attempt)["http.response.status_code"] == 200
    proc.stop()  # flushes the metrics
    assert {
        "gen_ai.client.token.usage",
        "gen_ai.client.operation.duration",
        "gen_ai.client.operation.time_to_first_chunk",
    } <= receiver.metric_names


def test_a_fallback_shows_two_attempt_spans_and_the_provider_that_answered(otel_proxy, receiver):
    kimi, deepseek, client, db, _ = otel_proxy(max_retries=0)
    kimi.enqueue(Reply.error(503, {"error": {"message": "busy", "type": "server_error"}}))
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices
    wait_rows(db, 1)
    spans = receiver.wait_spans(3)
    [call] = [s for s in spans if not s.parent_span_id]
    children = sorted((s for s in spans if s.parent_span_id), key=lambda s: s.start_time_unix_nano)
    assert [attrs(c)["gen_ai.provider.name"] for c in children] == ["moonshot_ai", "deepseek"]
    assert [attrs(c)["http.response.status_code"] for c in children] == [503, 200]
    assert attrs(children[0])["error.type"] == "503"
    assert {c.parent_span_id for c in children} == {call.span_id}
    a = attrs(call)
    assert (a["gen_ai.provider.name"], a["kimi_intercept.fallback_used"]) == ("deepseek", True)
    assert "error.type" not in a


def test_a_failed_call_has_error_type_and_error_status(otel_proxy, receiver):
    kimi, deepseek, client, db, proc = otel_proxy(max_retries=0)
    busy = Reply.error(503, {"error": {"message": "busy", "type": "server_error"}})
    kimi.enqueue(busy)
    deepseek.enqueue(busy)
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [row] = wait_rows(db, 1)
    spans = receiver.wait_spans(3)
    [call] = [s for s in spans if not s.parent_span_id]
    assert attrs(call)["error.type"] == str(row["status_code"])
    assert call.status.code == call.status.STATUS_CODE_ERROR
    proc.stop()  # flushes the metrics
    assert "gen_ai.client.operation.duration" in receiver.metric_names


def test_a_collector_that_is_down_does_not_break_requests(otel_proxy, tmp_path):
    from kimi_intercept.commands.simulator import closed_port

    kimi, deepseek, client, db, proc = otel_proxy(endpoint=f"http://127.0.0.1:{closed_port()}")
    for _ in range(3):
        assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices
    assert len(wait_rows(db, 3)) == 3
    t0 = time.monotonic()
    proc.stop()
    assert time.monotonic() - t0 < 15  # shutdown gives up on the collector
