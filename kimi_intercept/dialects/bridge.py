"""The bridge between one provider's answer and the client: meter it, and translate it when the
provider speaks the OpenAI hub dialect and the client does not.

The relay asks the bridge, per committed answer, for the usage meter (over the *provider's*
bytes, so usage is read where it was written), for the client-dialect bytes of each whole SSE
event, for the closing bytes, and for errors in the client's dialect.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from kimi_intercept.accounting import wire_json
from kimi_intercept.accounting.usage import ChatStreamMeter, JsonBuffer, meter_chat_json
from kimi_intercept.dialects import json_bytes
from kimi_intercept.dialects.errors import error_message

log = logging.getLogger(__name__)


class TranslationFailed(Exception):
    """A provider's answer (plausible, but wrong somewhere the translator did not foresee)
    could not be put in the client's dialect; the relay cuts the stream with an in-band error
    in the client's dialect instead of sending half-translated bytes."""


def module(dialect: str) -> ModuleType | None:
    """The dialect module (``None`` for the OpenAI hub)."""
    if dialect == "anthropic":
        from kimi_intercept.dialects import anthropic

        return anthropic
    if dialect == "gemini":
        from kimi_intercept.dialects import gemini

        return gemini
    if dialect == "responses":
        from kimi_intercept.dialects import responses

        return responses
    return None


def openai_error_body(message: str, code: str) -> dict[str, Any]:
    """OpenAI's error shape (https://platform.openai.com/docs/guides/error-codes)."""
    return {
        "error": {"message": message, "type": "kimi_intercept_error", "param": None, "code": code}
    }


def error_json(dialect: str, status: int, message: str, code: str) -> dict[str, Any]:
    """A JSON error body in ``dialect``."""
    mod = module(dialect)
    if mod is None or not hasattr(mod, "error_body"):  # OpenAI's shape (Responses API too)
        return openai_error_body(message, code)
    return mod.error_body(status, message, code)


class Bridge:
    """One committed answer: ``provider`` dialect in, ``client`` dialect out.

    ``request`` is the client's own request body (a translator reads what the client asked
    for, e.g. Gemini's ``includeThoughts``); ``prompt_tokens`` our estimate of the prompt, which
    an Anthropic client sees in ``message_start`` before the provider's exact count."""

    def __init__(
        self,
        client: str,
        provider: str,
        model: str | None,
        *,
        request: dict[str, Any] | None = None,
        prompt_tokens: int | None = None,
    ):
        self.client, self.provider = client, provider
        self.translate = client != provider
        self._client_mod = module(client)
        self._provider_mod = module(provider)
        self._request = request
        self._translator = (
            self._client_mod.StreamTranslator(model, request=request, prompt_tokens=prompt_tokens)
            if self.translate and hasattr(self._client_mod, "StreamTranslator")
            else None
        )

    def meter(self, sse: bool) -> Any:
        """Usage meter over the provider's bytes."""
        mod = self._provider_mod
        if sse:
            return mod.StreamMeter() if mod else ChatStreamMeter()
        return JsonBuffer(mod.meter_json if mod else meter_chat_json)

    def content_type(self, upstream: str, sse: bool) -> str:
        if not self.translate:
            return upstream
        return "text/event-stream; charset=utf-8" if sse else "application/json"

    def piece(self, raw_event: bytes) -> bytes:
        """Client bytes for one whole upstream SSE event (itself when not translating).
        Raises :class:`TranslationFailed` if the translator failed on it."""
        if self._translator is None:
            return raw_event
        try:
            return self._translator.feed(raw_event)
        except Exception as e:
            log.exception("kimi-intercept: cannot translate an event for a %s client", self.client)
            raise TranslationFailed(f"{type(e).__name__}: {e}") from e

    def finish(self) -> bytes:
        """Client bytes that close a translated stream the upstream ended (raises
        :class:`TranslationFailed` like :meth:`piece`)."""
        if self._translator is None:
            return b""
        try:
            return self._translator.finish()
        except Exception as e:
            log.exception("kimi-intercept: cannot close the stream for a %s client", self.client)
            raise TranslationFailed(f"{type(e).__name__}: {e}") from e

    def body(self, status: int, raw: bytes) -> bytes:
        """A whole non-streamed answer in the client's dialect; an answer that is not a JSON
        object, or that cannot be translated, becomes an error body (``bad_upstream``)."""
        mod = self._client_mod
        if not self.translate or mod is None:
            return raw
        if status >= 400:
            return json_bytes(mod.error_body(status, error_message(raw), "upstream_error"))
        try:
            answer = wire_json.loads(raw)
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            message = "kimi-intercept: the provider's answer was not a JSON object"
            return json_bytes(mod.error_body(502, message, "bad_upstream"))
        try:
            return json_bytes(mod.from_openai_response(answer, request=self._request))
        except Exception as e:
            log.exception("kimi-intercept: cannot translate an answer for a %s client", self.client)
            message = f"kimi-intercept could not translate the provider's answer: {e}"
            return json_bytes(mod.error_body(502, message, "bad_upstream"))

    def error_event(self, message: str, code: str) -> bytes:
        """An in-band error event in the client's dialect (the stream is cut after it)."""
        if not hasattr(self._client_mod, "StreamTranslator"):  # OpenAI chat / Responses API
            return b"data: " + json_bytes(openai_error_body(message, code)) + b"\n\n"
        translator = self._translator or self._client_mod.StreamTranslator(None)
        return translator.error_event(message, code)
