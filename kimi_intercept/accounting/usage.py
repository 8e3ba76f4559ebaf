"""Token usage from OpenAI chat-completions responses (streamed and not).

Moonshot/Kimi, OpenAI, DeepSeek, Groq and NVIDIA NIM all speak this dialect but put the usage
object in different places and under different names (``shared/notes/providers.md`` §0, §1.4,
§1.5, §2.1, §3, §4; replayed from ``tests/wire/``):

============  ==========================================================================
provider      where the usage object is in a stream
============  ==========================================================================
Moonshot      ``choices[0].usage`` of the finish chunk, and again top-level ``usage`` in a
              trailing ``"choices": []`` chunk when ``stream_options.include_usage`` is on
OpenAI        top-level ``usage`` of a trailing ``"choices": []`` chunk (``null`` elsewhere)
DeepSeek      top-level ``usage`` on the finish chunk
Groq          finish chunk ``x_groq.usage`` *and* top-level ``usage``, then the trailing chunk
NVIDIA NIM    possibly on many chunks, cumulative (unverified)
============  ==========================================================================

All copies of one response's usage carry the same (cumulative) numbers, so the meter keeps the
**last** usage object seen and never adds copies together.

Cache-read tokens are ``usage.prompt_tokens_details.cached_tokens`` (OpenAI, newer Moonshot,
DeepSeek), Moonshot's top-level ``usage.cached_tokens``, or DeepSeek's
``usage.prompt_cache_hit_tokens``. ``completion_tokens`` includes
``completion_tokens_details.reasoning_tokens`` for every provider but xAI, whose
``total_tokens = prompt + completion + reasoning``: such usage is normalised so completion
includes reasoning, and the raw object is kept (:attr:`Usage.raw`).

The response id and model are the first non-empty ones: Azure OpenAI's first chunk (the
content-filter results) has ``"id": ""`` and ``"model": ""``.

Nothing here raises on bad input: malformed JSON is counted and skipped, wrong types read as
``None``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kimi_intercept.accounting import wire_json
from kimi_intercept.accounting.counts import MAX_TOKEN_COUNT, count_problem, is_count
from kimi_intercept.accounting.sse import SSEParser

__all__ = ["MAX_TOKEN_COUNT", "count_problem", "is_count"]  # re-exported for the meters

logger = logging.getLogger(__name__)

#: Most characters of completion text a meter collects (for a tiktoken estimate when the
#: provider sends no usage). About 4 MB of ASCII; the estimate is a lower bound past it.
MAX_COMPLETION_TEXT_CHARS = 4 * 1024 * 1024


@dataclass(frozen=True)
class Usage:
    """Provider-reported token counts for one response; ``None`` = not reported.

    ``completion_tokens`` includes ``reasoning_tokens``; ``prompt_tokens`` includes
    ``cached_tokens`` (cache reads) and ``cache_write_tokens`` (prompt tokens written to the
    provider's cache on this request: Anthropic's ``cache_creation_input_tokens``, of which
    ``cache_write_1h_tokens`` were written with the 1-hour TTL, the rest with the default
    5-minute one — https://docs.claude.com/en/docs/build-with-claude/prompt-caching).
    ``problem`` says why the provider's object cannot be trusted (a count that is not an integer
    in ``0 <= n < 2**53``); such usage is not recorded as the provider's (:func:`trusted`).
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    #: The provider's own usage object when it had to be normalised (e.g. reasoning reported
    #: outside ``completion_tokens``), kept for the row's ``details``; ``None`` otherwise.
    raw: dict[str, Any] | None = field(default=None, compare=False)
    problem: str | None = None


def _count(value: Any) -> int | None:
    """``value`` if it is a token count (:func:`is_count`), else ``None``."""
    return value if is_count(value) else None


def trusted(usage: Usage | None) -> tuple[Usage | None, str | None]:
    """``(usage, None)`` when ``usage`` can be recorded as the provider's, else ``(None, why)``:
    it carried a :attr:`Usage.problem`, a count out of range (a sum of counts, say), or neither
    a prompt nor a completion count. ``(None, None)`` for no usage at all."""
    if usage is None:
        return None, None
    if usage.problem:
        return None, usage.problem
    counts = (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
              usage.reasoning_tokens)  # fmt: skip
    bad = next((n for n in counts if n is not None and not is_count(n)), None)
    if bad is not None:
        return None, f"a token count of {bad} is out of range"
    if usage.prompt_tokens is None and usage.completion_tokens is None:
        return None, "the usage object held no prompt or completion token count"
    return usage, None


_OPENAI_KEYS = (
    "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens",
    "prompt_cache_hit_tokens", "prompt_tokens_details.cached_tokens",
    "completion_tokens_details.reasoning_tokens",
)  # fmt: skip


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def usage_from_openai(u: dict[str, Any]) -> Usage:
    """Read an OpenAI-dialect ``usage`` object.

    Shapes (examples from providers.md):
    ``{"prompt_tokens": 90, "completion_tokens": 50, "cached_tokens": 64,
    "prompt_tokens_details": {"cached_tokens": 64},
    "completion_tokens_details": {"reasoning_tokens": 33}}`` (Moonshot);
    ``{"prompt_tokens": 10, ..., "prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": 10}``
    (DeepSeek). Cached tokens are taken from, in order, ``prompt_tokens_details.cached_tokens``,
    top-level ``cached_tokens``, ``prompt_cache_hit_tokens`` (the first that is an integer).
    Missing or wrongly typed fields are ``None`` (and ``problem`` says which); never raises.
    """
    u = _dict(u)
    cached = _count(_dict(u.get("prompt_tokens_details")).get("cached_tokens"))
    if cached is None:
        cached = _count(u.get("cached_tokens"))
    if cached is None:
        cached = _count(u.get("prompt_cache_hit_tokens"))
    prompt = _count(u.get("prompt_tokens"))
    completion = _count(u.get("completion_tokens"))
    reasoning = _count(_dict(u.get("completion_tokens_details")).get("reasoning_tokens"))
    total = _count(u.get("total_tokens"))
    raw = None
    if (
        prompt is not None
        and completion is not None
        and reasoning
        and total == prompt + completion + reasoning
    ):
        # xAI: total = prompt + completion + reasoning, i.e. reasoning outside completion
        # (https://docs.x.ai/docs/guides/reasoning); our completion always includes it.
        completion, raw = completion + reasoning, u
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
        raw=raw,
        problem=count_problem(u, _OPENAI_KEYS),
    )


def _error_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ``error`` payload of a body or chunk (``{"error": {"message", "type", ...}}``)."""
    err = obj.get("error")
    if isinstance(err, dict):
        return err
    if isinstance(err, str):
        return {"message": err}
    return None


def _tool_call_text(calls: Any, out: list[str]) -> None:
    """Append ``function.name`` and ``function.arguments`` of each tool call to ``out``."""
    if not isinstance(calls, list):
        return
    for call in calls:
        fn = _dict(_dict(call).get("function"))
        for key in ("name", "arguments"):
            text = fn.get(key)
            if isinstance(text, str) and text:
                out.append(text)


def _message_text(msg: dict[str, Any], out: list[str]) -> None:
    """Append the generated text of a ``delta`` (stream) or ``message`` (JSON) to ``out``:
    ``content``, ``reasoning_content`` (Moonshot/DeepSeek), ``refusal`` (OpenAI), tool calls
    and the legacy ``function_call``."""
    for key in ("content", "reasoning_content", "refusal"):
        text = msg.get(key)
        if isinstance(text, str) and text:
            out.append(text)
    _tool_call_text(msg.get("tool_calls"), out)
    if "function_call" in msg:
        _tool_call_text([{"function": msg["function_call"]}], out)


class ChatStreamMeter:
    """Meters a ``text/event-stream`` chat-completions response body chunk by chunk.

    Call :meth:`feed` with each raw body chunk as it passes through the proxy and
    :meth:`finish` at end of stream. Cost per chunk is one SSE scan plus one ``json.loads``
    per completed event, so it is safe on the proxy's event loop.

    Attributes after (or during) the stream:

    - ``usage``: last usage object seen (top-level ``usage``, ``choices[i].usage`` or
      ``x_groq.usage``), or ``None`` if the provider sent none;
    - ``response_id``: first non-empty ``id``; ``model``: first non-empty ``model``;
    - ``finish_reason``: last non-null ``choices[i].finish_reason``;
    - ``completion_text``: ``delta.content`` + ``reasoning_content`` + ``refusal`` + tool-call
      names/arguments in arrival order, capped at :data:`MAX_COMPLETION_TEXT_CHARS`
      (``text_truncated`` tells);
    - ``answer_text``: ``delta.content`` alone; ``saw_tool_calls``: a tool-call delta arrived;
    - ``saw_done``: ``data: [DONE]`` arrived; ``error``: an in-stream ``{"error": {...}}``;
    - ``events``: SSE events with data (including ``[DONE]``); ``malformed_events``: events
      whose data was not a JSON object;
    - ``truncated`` (after :meth:`finish`): the body ended in the middle of an SSE event.
    """

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._text: list[str] = []
        self._text_len = 0
        self.usage: Usage | None = None
        self.response_id: str | None = None
        self.model: str | None = None
        self.finish_reason: str | None = None
        self.saw_done = False
        self.error: dict[str, Any] | None = None
        self.events = 0
        self.malformed_events = 0
        self.text_truncated = False
        self.truncated = False
        self.saw_tool_calls = False
        self._answer: list[str] = []

    @property
    def answer_parts(self) -> list[str]:
        """The ``delta.content`` pieces in arrival order (do not modify)."""
        return self._answer

    @property
    def answer_text(self) -> str:
        """Only the ``delta.content`` text (no reasoning, no tool calls): what the user reads,
        used as the assistant prefix when a broken stream is continued elsewhere."""
        return "".join(self._answer)

    @property
    def completion_text(self) -> str:
        if len(self._text) > 1:
            self._text = ["".join(self._text)]
        return self._text[0] if self._text else ""

    def feed(self, chunk: bytes) -> None:
        """Consume one raw body chunk (any boundary)."""
        for event in self._parser.feed(chunk):
            self._on_data(event.data)

    def finish(self) -> None:
        """End of body: flush the parser and note whether the stream was cut mid-event."""
        self._parser.close()
        self.truncated = self._parser.pending_bytes > 0

    def _on_data(self, data: str) -> None:
        self.events += 1
        if data.strip() == "[DONE]":
            self.saw_done = True
            return
        try:
            obj = wire_json.loads(data)
        except (ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict):
            self.malformed_events += 1
            logger.debug("skipping SSE data that is not a JSON object: %.200r", data)
            return
        self._on_chunk(obj)

    def _on_chunk(self, obj: dict[str, Any]) -> None:
        if self.response_id is None and isinstance(obj.get("id"), str) and obj["id"]:
            self.response_id = obj["id"]
        if self.model is None and isinstance(obj.get("model"), str) and obj["model"]:
            self.model = obj["model"]
        err = _error_of(obj)
        if err is not None:
            self.error = err
        found: list[str] = []
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                reason = choice.get("finish_reason")
                if isinstance(reason, str):
                    self.finish_reason = reason
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    _message_text(delta, found)
                    if (
                        isinstance(delta.get("content"), str)
                        and self._text_len < MAX_COMPLETION_TEXT_CHARS
                    ):
                        self._answer.append(delta["content"])
                    if delta.get("tool_calls") or delta.get("function_call"):
                        self.saw_tool_calls = True
                if isinstance(choice.get("usage"), dict):
                    self.usage = usage_from_openai(choice["usage"])
        x_groq = obj.get("x_groq")
        if isinstance(x_groq, dict) and isinstance(x_groq.get("usage"), dict):
            self.usage = usage_from_openai(x_groq["usage"])
        if isinstance(obj.get("usage"), dict):
            self.usage = usage_from_openai(obj["usage"])
        if found:
            self._add_text(found)

    def _add_text(self, parts: list[str]) -> None:
        for text in parts:
            room = MAX_COMPLETION_TEXT_CHARS - self._text_len
            if room <= 0:
                self.text_truncated = True
                return
            if len(text) > room:
                text = text[:room]
                self.text_truncated = True
            self._text.append(text)
            self._text_len += len(text)


@dataclass(frozen=True)
class JsonMeter:
    """What :func:`meter_chat_json` read from a non-streamed chat-completions body.

    Same meaning as the :class:`ChatStreamMeter` attributes of the same name.
    """

    usage: Usage | None = None
    response_id: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    completion_text: str = ""
    error: dict[str, Any] | None = None


def meter_chat_json(body: bytes) -> JsonMeter:
    """Meter a non-streamed chat-completions response body (``application/json``).

    Success shape (providers.md §1.4, real kimi-k3):
    ``{"id", "model", "choices": [{"message": {"content", "reasoning_content", "tool_calls"},
    "finish_reason"}], "usage": {...}}``; error shape (§1.6, ``tests/wire/documented/*error*``):
    ``{"error": {"message", "type", ...}}``. Malformed JSON, non-UTF-8 or a non-object body
    give an empty :class:`JsonMeter`; never raises.
    """
    try:
        obj = wire_json.loads(body)
    except (ValueError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
        logger.debug("chat response body is not JSON (%d bytes)", len(body or b""))
        return JsonMeter()
    if not isinstance(obj, dict):
        return JsonMeter()
    usage: Usage | None = None
    finish_reason: str | None = None
    text: list[str] = []
    choices = obj.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if isinstance(choice.get("finish_reason"), str):
                finish_reason = choice["finish_reason"]
            if isinstance(choice.get("message"), dict):
                _message_text(choice["message"], text)
            if isinstance(choice.get("usage"), dict):
                usage = usage_from_openai(choice["usage"])
    if isinstance(obj.get("usage"), dict):
        usage = usage_from_openai(obj["usage"])
    joined = "".join(text)[:MAX_COMPLETION_TEXT_CHARS]
    return JsonMeter(
        usage=usage,
        response_id=obj["id"] if isinstance(obj.get("id"), str) and obj["id"] else None,
        model=obj["model"] if isinstance(obj.get("model"), str) and obj["model"] else None,
        finish_reason=finish_reason,
        completion_text=joined,
        error=_error_of(obj),
    )


MAX_JSON_BODY = 16 * 1024 * 1024


class JsonBuffer:
    """Collects a non-streamed body (up to 16 MiB) and meters it with ``meter_json`` when it
    ends (:func:`~.usage.meter_chat_json` or a dialect's ``meter_json``)."""

    def __init__(self, meter_json: Callable[[bytes], Any] = meter_chat_json) -> None:
        self._meter_json = meter_json
        self._parts: list[bytes] = []
        self._size = 0
        self._result: Any = None

    def feed(self, chunk: bytes) -> None:
        if self._size < MAX_JSON_BODY:
            self._parts.append(chunk)
        self._size += len(chunk)

    def body_bytes(self) -> bytes:
        return b"".join(self._parts)

    def finish(self) -> None:
        if self._size <= MAX_JSON_BODY:
            self._result = self._meter_json(self.body_bytes())
        self._parts = []

    def __getattr__(self, name: str) -> Any:  # usage, model, response_id, … of the result
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._result, name, None) if self._result is not None else None
