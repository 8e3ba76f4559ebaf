"""OpenAI Responses API (``POST /v1/responses``) metering: usage of native Responses answers
(a passed-through request, or a provider that speaks the Responses API itself).

Usage lives in the final ``response.completed`` (or ``response.incomplete`` / ``response.failed``)
event's ``response.usage`` — ``input_tokens`` (cached included), ``input_tokens_details.
cached_tokens``, ``output_tokens`` (reasoning included), ``output_tokens_details.
reasoning_tokens`` — and in a non-streamed body's ``usage``
(https://platform.openai.com/docs/api-reference/responses/object; captured stream in
``tests/wire/captured_openai_responses_stream.sse``). Text comes from ``response.output_text.delta``
events, tool-call arguments from ``response.function_call_arguments.delta``.
"""

from __future__ import annotations

from typing import Any

from kimi_intercept.accounting import wire_json
from kimi_intercept.accounting.usage import (
    ChatStreamMeter,
    JsonMeter,
    Usage,
    count_problem,
    is_count,
)
from kimi_intercept.dialects import list_of

_FINAL = ("response.completed", "response.incomplete", "response.failed")


def usage_from_responses(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None

    def count(v: Any) -> int | None:
        return v if is_count(v) else None

    inp = u.get("input_tokens_details") if isinstance(u.get("input_tokens_details"), dict) else {}
    out = u.get("output_tokens_details") if isinstance(u.get("output_tokens_details"), dict) else {}
    return Usage(
        prompt_tokens=count(u.get("input_tokens")),
        completion_tokens=count(u.get("output_tokens")),
        cached_tokens=count(inp.get("cached_tokens")),
        reasoning_tokens=count(out.get("reasoning_tokens")),
        problem=count_problem(
            u,
            (
                "input_tokens",
                "output_tokens",
                "total_tokens",
                "input_tokens_details.cached_tokens",
                "output_tokens_details.reasoning_tokens",
            ),
        ),  # fmt: skip
    )


class StreamMeter(ChatStreamMeter):
    """Usage, id, model and text of a Responses API event stream (same attributes as
    :class:`~kimi_intercept.accounting.usage.ChatStreamMeter`)."""

    def _on_chunk(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        response = obj.get("response") if isinstance(obj.get("response"), dict) else None
        if response is not None:
            if self.response_id is None and isinstance(response.get("id"), str) and response["id"]:
                self.response_id = response["id"]
            if self.model is None and isinstance(response.get("model"), str):
                self.model = response["model"]
        if kind in _FINAL and response is not None:
            self.usage = usage_from_responses(response.get("usage")) or self.usage
            self.finish_reason = (
                response.get("status")
                if isinstance(response.get("status"), str)
                else self.finish_reason
            )
            self.saw_done = True
        elif kind == "response.output_text.delta" and isinstance(obj.get("delta"), str):
            self._answer.append(obj["delta"])
            self._add_text([obj["delta"]])
        elif kind == "response.function_call_arguments.delta" and isinstance(obj.get("delta"), str):
            self.saw_tool_calls = True
            self._add_text([obj["delta"]])
        elif kind == "error" or (kind == "response.failed" and response and response.get("error")):
            self.error = obj.get("error") or (response or {}).get("error") or obj


def meter_json(body: bytes) -> JsonMeter:
    """Usage of a non-streamed Responses API body; never raises."""
    try:
        obj = wire_json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return JsonMeter()
    if not isinstance(obj, dict):
        return JsonMeter()
    text = [
        part["text"]
        for item in list_of(obj.get("output"))
        if isinstance(item, dict)
        for part in list_of(item.get("content"))
        if isinstance(part, dict)
        and part.get("type") == "output_text"
        and isinstance(part.get("text"), str)
    ]
    return JsonMeter(
        usage=usage_from_responses(obj.get("usage")),
        response_id=obj.get("id") if isinstance(obj.get("id"), str) and obj["id"] else None,
        model=obj.get("model") if isinstance(obj.get("model"), str) else None,
        finish_reason=obj.get("status") if isinstance(obj.get("status"), str) else None,
        completion_text="".join(t for t in text if isinstance(t, str)),
        error=obj.get("error") if isinstance(obj.get("error"), dict) else None,
    )
