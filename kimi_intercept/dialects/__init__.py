"""Wire dialects. OpenAI chat completions is the hub every provider can speak; a client that
speaks another dialect (Anthropic Messages, Gemini, OpenAI Responses) is translated to it and back.

Each non-hub dialect module (:mod:`.anthropic`, :mod:`.gemini`, :mod:`.responses`) offers the
same seam:

- ``to_openai_request(body: dict, *, model: str | None) -> dict`` — the client's request as an
  OpenAI chat-completions body (``stream_options.include_usage`` set when streaming, so usage
  arrives); raises :class:`DialectError` for input that cannot be translated.
- ``StreamTranslator(model: str | None)`` — ``feed(raw_event: bytes) -> bytes`` takes one
  complete SSE event of an OpenAI chat-completions stream (as cut by
  :class:`~kimi_intercept.accounting.sse.EventSplitter`) and returns the client-dialect bytes to
  send now (zero or more events); ``finish() -> bytes`` closes the client's stream when the upstream
  ended; ``error_event(message: str, code: str) -> bytes`` is an in-band error in the client's
  dialect.
- ``from_openai_response(body: dict) -> dict`` — a non-streamed answer.
- ``error_body(status: int, message: str, code: str) -> dict`` — a JSON error body.
- ``StreamMeter`` / ``meter_json(body: bytes)`` — usage of the dialect's *native* answers (when
  the provider speaks the client's dialect), with the attributes of
  :class:`kimi_intercept.accounting.usage.ChatStreamMeter`.

Provider-side request rules: :mod:`.kimi` (with :mod:`.kimi_sampling`, :mod:`.kimi_ids`,
:mod:`.kimi_anthropic`, :mod:`.kimi_types`) makes a body acceptable to Moonshot and puts the
client's tool names and ids back into the answer; :mod:`.system_prompt` adds a route's
``system_prepend`` / ``system_append`` in any dialect.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from kimi_intercept.accounting import wire_json

logger = logging.getLogger(__name__)
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_of(value: str) -> str:
    """``value`` with every lone UTF-16 surrogate — a JavaScript client's cut emoji
    (``"\\ud83d"`` in JSON), or a header byte that was not UTF-8 (mitmproxy decodes those with
    ``surrogateescape``) — replaced by one U+FFFD, so that it can be encoded as UTF-8, stored in
    SQLite and logged. Text without surrogates is returned as is."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", value)


def list_of(value: Any) -> list[Any]:
    """``value`` if it is a list, else ``[]``: a provider's ``choices``, ``tool_calls`` or
    ``parts`` of the wrong type (``true``, ``5``, an object) read as none, never an error."""
    return value if isinstance(value, list) else []


def json_bytes(obj: Any, separators: tuple[str, str] | None = None) -> bytes:
    """``obj`` as compact-enough JSON in UTF-8 (non-ASCII kept as is). A string holding a lone
    surrogate cannot be UTF-8: the body is then written with ``\\uXXXX`` escapes
    (``ensure_ascii``), which JSON allows and which carries exactly what the client sent."""
    text = json.dumps(obj, ensure_ascii=False, separators=separators)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=separators).encode("ascii")


class DialectError(ValueError):
    """A request that cannot be translated; the message says what and why.

    ``code`` and ``param`` (optional) are what the client's API itself would put in its error
    for this input (e.g. the Responses API's ``previous_response_not_found``); a request that
    carries a ``code`` is answered at once with a 400 in the client's dialect."""

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


def event_object(data: str) -> dict[str, Any] | None:
    """The JSON object of one SSE event's data, or ``None`` (not JSON, or not an object: such
    events are skipped by the translators, never fatal)."""
    try:
        obj = wire_json.loads(data)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        logger.debug("skipping SSE data that is not a JSON object: %.200r", data)
        return None
    return obj
