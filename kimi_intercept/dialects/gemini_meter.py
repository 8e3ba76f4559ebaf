"""Gemini dialect, native answers: usage, ids, finish reason and text of an answer a provider
gave in Gemini's own dialect, streamed (:class:`StreamMeter`) or not (:func:`meter_json`);
``usageMetadata`` read in OpenAI meanings (:func:`usage_from_gemini`).

Sources: https://ai.google.dev/api/generate-content (``GenerateContentResponse``,
``UsageMetadata``); wire shapes in ``shared/notes/providers.md`` §6 and
``tests/wire/captured_gemini_*.sse``.
"""

from __future__ import annotations

from typing import Any

from kimi_intercept.accounting import wire_json
from kimi_intercept.accounting.usage import (
    MAX_COMPLETION_TEXT_CHARS,
    ChatStreamMeter,
    JsonMeter,
    Usage,
    count_problem,
    is_count,
)
from kimi_intercept.dialects import list_of
from kimi_intercept.dialects.gemini_wire import _dict, _dumps


def _int(value: Any) -> int | None:
    return value if is_count(value) else None


_GEMINI_KEYS = (
    "promptTokenCount", "toolUsePromptTokenCount", "candidatesTokenCount", "thoughtsTokenCount",
    "cachedContentTokenCount", "totalTokenCount",
)  # fmt: skip


def usage_from_gemini(meta: dict[str, Any]) -> Usage:
    """Read ``usageMetadata`` into OpenAI meanings: prompt = ``promptTokenCount`` (includes
    ``cachedContentTokenCount``) + ``toolUsePromptTokenCount`` (tool results Google fed back,
    billed as input); completion = ``candidatesTokenCount`` + ``thoughtsTokenCount`` (OpenAI
    counts reasoning inside completion; Gemini's ``totalTokenCount`` is the sum of all four);
    cached = ``cachedContentTokenCount``; reasoning = ``thoughtsTokenCount``."""
    prompt = _int(meta.get("promptTokenCount"))
    tool_use = _int(meta.get("toolUsePromptTokenCount"))
    if prompt is not None and tool_use:
        prompt += tool_use
    candidates = _int(meta.get("candidatesTokenCount"))
    thoughts = _int(meta.get("thoughtsTokenCount"))
    completion = None
    if candidates is not None or thoughts is not None:
        completion = (candidates or 0) + (thoughts or 0)
    problem = count_problem(meta, _GEMINI_KEYS, "usageMetadata")
    return Usage(prompt, completion, _int(meta.get("cachedContentTokenCount")), thoughts, problem)


class StreamMeter(ChatStreamMeter):
    """Meters a native Gemini SSE answer, with the attributes of
    :class:`~kimi_intercept.accounting.usage.ChatStreamMeter`.

    ``usageMetadata`` is on every chunk and cumulative, so the **last** one is kept
    (:func:`usage_from_gemini`); ``response_id`` = ``responseId``, ``model`` =
    ``modelVersion``; ``finish_reason`` = the last ``finishReason`` (Gemini's words, e.g.
    ``"STOP"``; ``promptFeedback.blockReason`` when the prompt was blocked); ``saw_done``: a
    finish reason arrived (Gemini sends no ``[DONE]``); text parts go to ``completion_text``,
    and to ``answer_text`` unless ``thought``; a ``functionCall`` part sets ``saw_tool_calls``
    and adds its name and JSON arguments to ``completion_text``; ``error``: an in-stream
    ``{"error": {...}}``.
    """

    def _on_chunk(self, obj: dict[str, Any]) -> None:
        if (
            self.response_id is None
            and isinstance(obj.get("responseId"), str)
            and obj["responseId"]
        ):
            self.response_id = obj["responseId"]
        if self.model is None and isinstance(obj.get("modelVersion"), str):
            self.model = obj["modelVersion"]
        if isinstance(obj.get("error"), dict):
            self.error = obj["error"]
        if isinstance(obj.get("usageMetadata"), dict):
            self.usage = usage_from_gemini(obj["usageMetadata"])
        blocked = _dict(obj.get("promptFeedback")).get("blockReason")
        if isinstance(blocked, str):
            self.finish_reason, self.saw_done = blocked, True
        found: list[str] = []
        for cand in map(_dict, list_of(obj.get("candidates"))):
            if isinstance(cand.get("finishReason"), str):
                self.finish_reason, self.saw_done = cand["finishReason"], True
            for part in map(_dict, list_of(_dict(cand.get("content")).get("parts"))):
                text = part.get("text")
                if isinstance(text, str) and text:
                    found.append(text)
                    if not part.get("thought") and self._text_len < MAX_COMPLETION_TEXT_CHARS:
                        self._answer.append(text)
                if isinstance(part.get("functionCall"), dict):
                    self.saw_tool_calls = True
                    fc = part["functionCall"]
                    found += [str(fc.get("name") or ""), _dumps(fc.get("args") or {})]
        if found:
            self._add_text(found)


def meter_json(body: bytes) -> JsonMeter:
    """Meter a non-streamed ``GenerateContentResponse``, or the JSON array of them that
    ``streamGenerateContent`` returns without ``alt=sse``; an error body fills ``error``.
    Never raises."""
    try:
        obj = wire_json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return JsonMeter()
    meter = StreamMeter()
    for item in obj if isinstance(obj, list) else [obj]:
        if isinstance(item, dict):
            meter._on_chunk(item)
    return JsonMeter(
        usage=meter.usage,
        response_id=meter.response_id,
        model=meter.model,
        finish_reason=meter.finish_reason,
        completion_text=meter.completion_text,
        error=meter.error,
    )
