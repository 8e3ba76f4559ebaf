"""Answer validation: an answer must pass these checks before it counts as a success.

- **Empty**: an OpenAI-dialect answer that ends without any content, reasoning or tool call is a
  failure, and the relay falls back (it commits to a provider on its first content token, not
  its first byte, so it still can).
- **JSON mode**: when the request asked for ``response_format`` ``json_object`` /
  ``json_schema``, a non-streamed answer whose content does not parse is a failure.
- **Repetition**: a stream caught repeating itself — the same span of at least
  :data:`MIN_SPAN` characters :data:`REPEATS` times in a row at the end of the answer — is cut
  with an in-band error (the loop MoonPalace, Moonshot's debugging proxy, warns about:
  https://github.com/MoonshotAI/moonpalace).

Pure functions and a small stateful detector; the relay applies them per rule
(``validate = { empty, json, repetition }``).
"""

from __future__ import annotations

from typing import Any

from kimi_intercept.accounting import wire_json

MIN_SPAN = 40  # characters: shorter repeats (table rows, short lines) are normal output
REPEATS = 6
WINDOW = 8192  # characters of the answer's end kept for the check
CHECK_EVERY = 64  # characters between checks


def answer_has_content(meter: Any) -> bool:
    """Content, reasoning or a tool call arrived (a meter from :mod:`.usage`)."""
    return bool(meter.completion_text) or bool(meter.saw_tool_calls)


def wants_json(request_json: dict[str, Any]) -> bool:
    fmt = request_json.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def json_answer_problem(body: bytes) -> str | None:
    """Why a non-streamed chat-completions answer in JSON mode is not valid JSON, or ``None``."""
    try:
        answer = wire_json.loads(body)
        content = answer["choices"][0]["message"].get("content")
    except (ValueError, UnicodeDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return None  # not a chat answer we can read: other checks decide
    if answer["choices"][0]["message"].get("tool_calls"):
        return None
    if not isinstance(content, str):
        return "JSON mode answer has no text content"
    try:
        wire_json.loads(content)
    except ValueError as e:
        return f"JSON mode answer does not parse: {e}"
    return None


class RepetitionDetector:
    """Fed the answer's text as it streams; :meth:`feed` returns a description once the end of
    the answer is the same span repeated :data:`REPEATS` times."""

    def __init__(self, min_span: int = MIN_SPAN, repeats: int = REPEATS) -> None:
        self.min_span, self.repeats = min_span, repeats
        self._buf = ""
        self._since_check = 0

    def feed(self, text: str) -> str | None:
        if not text:
            return None
        self._buf = (self._buf + text)[-WINDOW:]
        self._since_check += len(text)
        if self._since_check < CHECK_EVERY:
            return None
        self._since_check = 0
        return self._check()

    def _check(self) -> str | None:
        s, n, span = self._buf, len(self._buf), self.min_span
        if n < span * self.repeats:
            return None
        tail = s[-span:]
        i = s.rfind(tail, 0, n - span)
        for _ in range(16):  # a few candidate periods, nearest first
            if i < 0:
                return None
            period = n - span - i
            if period >= span and period * self.repeats <= n:
                unit = s[n - period :]
                if _primitive_period(unit) < span:
                    return None  # short lines repeated (a table, x += 1 …): not a long span
                if s[n - period * self.repeats :] == unit * self.repeats:
                    return (
                        f"repetition loop: the same {period}-character span "
                        f"{self.repeats} times in a row ({unit[:60]!r}…)"
                    )
            i = s.rfind(tail, 0, i)
        return None


def _primitive_period(unit: str) -> int:
    """The length of the shortest string whose repetition makes ``unit``."""
    n = len(unit)
    for d in range(1, n // 2 + 1):
        if n % d == 0 and unit[:d] * (n // d) == unit:
            return d
    return n
