"""Context gauge and emergency compression of a request near the model's context window.

Pure functions over native request bodies (``openai``, ``anthropic``, ``gemini``); CPU-bound
(token counting): call them from a worker thread.

:func:`compress_request` works in a fixed order and stops as soon as the estimate is at or
under the target (default ``compress_at − 0.10`` of the window):

1. **Older tool outputs** — in turns before the last ``keep_last_turns`` — oldest first, each
   replaced by one line, :data:`DROP_FORMAT` (``[kimi-intercept: tool output dropped to fit the
   context window — 31,204 tokens]``). Tool outputs as in :mod:`kimi_intercept.sanitizer.sanitize`
   (OpenAI ``tool`` messages, Anthropic ``tool_result`` content, Gemini ``functionResponse``
   strings, Cline ``[tool for '...'] Result:`` bodies), ``skip_tools`` included: the marker says
   the content is gone, so nothing is silently altered. Ids and pairing are unchanged.
2. **The middle of the conversation** — whole turns, oldest first, between the head (everything
   before the first assistant message: system prompt, first user message) and the last
   ``keep_last_turns`` turns. A turn is an assistant (Gemini ``model``) message and everything
   after it up to the next one, so a tool call and its results always go together, and in
   Anthropic and Gemini bodies user/assistant alternation is kept (the head ends with a user
   message, the kept tail starts with an assistant message). System messages inside dropped
   turns stay. One note, :data:`NOTE_FORMAT`, is appended to the last head message when it is
   a user message (a text block, or ``\\n\\n`` + note on string content), else inserted as a
   user message.

Never touched: the system prompt, the head, the last ``keep_last_turns`` turns, tool
definitions. The estimate is ``prompt_tokens`` minus what each step removed (counted with
:func:`kimi_intercept.accounting.tokens.count_text`), so a provider's own count can be passed in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kimi_intercept.accounting import tokens
from kimi_intercept.config.keys import unknown_key_message
from kimi_intercept.config.settings import ConfigError
from kimi_intercept.sanitizer.sanitize import (
    MaskCache,
    leaf_tokens,
    messages_key,
    note_calls,
    rewrite_message,
    rewrite_spans,
)

CONTEXT_KEYS = frozenset({"compress_at", "warn_at", "keep_last_turns"})
DROP_FORMAT = "[kimi-intercept: tool output dropped to fit the context window — {tokens:,} tokens]"
DROP_RE = re.compile(
    r"\[kimi-intercept: tool output dropped to fit the context window — (?P<tokens>\d[\d,]*) "
    r"tokens\]"
)
NOTE_FORMAT = (
    "[kimi-intercept: {turns:,} earlier turns ({messages:,} messages, {tokens:,} tokens) dropped "
    "to fit the context window]"
)
NOTE_RE = re.compile(
    r"\[kimi-intercept: (?P<turns>\d[\d,]*) earlier turns \((?P<messages>\d[\d,]*) messages, "
    r"(?P<tokens>\d[\d,]*) tokens\) dropped to fit the context window\]"
)
_SYSTEM_ROLES = ("system", "developer")
_ID_KEYS = ("role", "id", "tool_use_id", "tool_call_id", "type", "cache_control")


@dataclass(frozen=True)
class ContextSettings:
    """``[context]``: compress above ``compress_at`` of the window, log warnings when the share
    crosses each of ``warn_at``, never touch the last ``keep_last_turns`` turns (at least 1)."""

    compress_at: float = 0.85
    warn_at: tuple[float, ...] = (0.80, 0.90, 0.95)
    keep_last_turns: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.compress_at <= 1:
            raise ValueError("compress_at must be a share of the window, above 0 and at most 1")
        if any(not 0 < w <= 1 for w in self.warn_at) or list(self.warn_at) != sorted(self.warn_at):
            raise ValueError("warn_at must be increasing shares of the window, each in (0, 1]")
        if self.keep_last_turns < 1:
            raise ValueError("keep_last_turns must be at least 1 (the turn being answered)")

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> ContextSettings:
        """Settings from a ``[context]`` TOML table (keys of :data:`CONTEXT_KEYS`); raises
        :class:`~kimi_intercept.config.settings.ConfigError` naming the key."""
        if not isinstance(table, Mapping):
            raise ConfigError("[context] must be a table, e.g. compress_at = 0.85")
        if message := unknown_key_message(table, CONTEXT_KEYS, "[context]"):
            raise ConfigError(message)
        kwargs: dict[str, Any] = {}
        for key in CONTEXT_KEYS & table.keys():
            value = table[key]
            if key == "keep_last_turns":
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif key == "warn_at":
                ok = isinstance(value, list) and all(_is_number(v) for v in value)
                value = tuple(float(v) for v in value) if ok else value
            else:
                ok = _is_number(value)
                value = float(value) if ok else value
            if not ok:
                raise ConfigError(f"[context] {key} has the wrong type ({value!r})")
            kwargs[key] = value
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ConfigError(f"[context] {e}") from e


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Compressed:
    """The compressed body (a new dict; the input is never mutated), the estimates before and
    after, and what was done, in order (one line each)."""

    body: dict[str, Any]
    tokens_before: int
    tokens_after: int
    steps: tuple[str, ...]


def context_share(prompt_tokens: int | None, context_window: int | None) -> float | None:
    """The prompt's share of the window (may exceed 1), ``None`` when either is unknown."""
    if prompt_tokens is None or not context_window or context_window <= 0:
        return None
    return prompt_tokens / context_window


def warning_level(share: float | None, settings: ContextSettings) -> float | None:
    """The highest ``warn_at`` threshold ``share`` has reached, ``None`` below all of them."""
    if share is None:
        return None
    reached = [w for w in settings.warn_at if share >= w]
    return reached[-1] if reached else None


def estimate_tokens(dialect: str, body: dict[str, Any], cache: MaskCache | None = None) -> int:
    """A dialect-neutral estimate for a native body: 3 per message plus the tokens of its
    strings (ids, roles and base64 data aside), the system prompt, and the tools as JSON."""
    count = _counter(cache)
    key = messages_key(dialect)
    total = tokens.REPLY_PRIMING_TOKENS
    messages = body.get(key)
    for msg in messages if isinstance(messages, list) else ():
        total += _message_tokens(msg, count)
    for name in ("system", "systemInstruction"):
        total += leaf_tokens(body.get(name), count, _ID_KEYS)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        total += count(json.dumps(tools, ensure_ascii=False, separators=(",", ":")))
    return total


def _counter(cache: MaskCache | None) -> Callable[[str], int]:
    return cache.count if cache is not None else tokens.count_text


def _message_tokens(msg: Any, count: Callable[[str], int]) -> int:
    return tokens.TOKENS_PER_MESSAGE + leaf_tokens(msg, count, _ID_KEYS)


def _role(msg: Any) -> Any:
    return msg.get("role") if isinstance(msg, dict) else None


def _turn_starts(dialect: str, messages: list[Any]) -> list[int]:
    assistant = "model" if dialect == "gemini" else "assistant"
    return [i for i, m in enumerate(messages) if _role(m) == assistant]


class _Dropper:
    """Replaces tool outputs by the drop marker until ``need`` tokens are saved."""

    def __init__(self, need: int, count: Callable[[str], int]) -> None:
        self.need = need
        self.count = count
        self.saved = 0
        self.dropped: list[tuple[str | None, int]] = []

    def tool(self, text: str, tool: str | None, kind: str, server: str | None) -> str | None:
        if self.saved >= self.need or kind != "tool_result":
            return None
        n = self.count(text)
        marker = DROP_FORMAT.format(tokens=n)
        saving = n - self.count(marker)
        if saving <= 0:
            return None
        self.saved += saving
        self.dropped.append((tool, n))
        return marker

    def text(self, text: str) -> str | None:
        return rewrite_spans(text, self) if "Result:" in text else None


def _with_note(msg: dict[str, Any], note: str, dialect: str) -> dict[str, Any]:
    if dialect == "gemini":
        parts = msg.get("parts") if isinstance(msg.get("parts"), list) else []
        return {**msg, "parts": [*parts, {"text": note}]}
    content = msg.get("content")
    if isinstance(content, str):
        return {**msg, "content": f"{content}\n\n{note}"}
    blocks = content if isinstance(content, list) else []
    return {**msg, "content": [*blocks, {"type": "text", "text": note}]}


def compress_request(
    dialect: str,
    body: dict[str, Any],
    *,
    prompt_tokens: int,
    context_window: int,
    settings: ContextSettings,
    target_share: float | None = None,
    cache: MaskCache | None = None,
) -> Compressed:
    """Compress ``body`` (see the module docstring) until the estimate is at or under
    ``target_share`` (default ``settings.compress_at − 0.10``) of ``context_window``. When
    everything allowed is done and it is still over, the result says so by its
    ``tokens_after``; the caller decides (fall back to a bigger window)."""
    if context_window <= 0:
        raise ValueError(
            f"context_window must be a positive number of tokens, not {context_window}"
        )
    share = settings.compress_at - 0.10 if target_share is None else target_share
    target = int(max(share, 0.0) * context_window)
    key = messages_key(dialect)
    messages = body.get(key)
    estimate = prompt_tokens
    if estimate <= target or not isinstance(messages, list):
        return Compressed(dict(body), prompt_tokens, prompt_tokens, ())
    count = _counter(cache)
    steps: list[str] = []
    starts = _turn_starts(dialect, messages)
    keep = min(settings.keep_last_turns, len(starts))
    head_end = starts[0] if starts else len(messages)
    tail_start = starts[-keep] if keep else len(messages)
    msgs = list(messages)

    # 1. older tool outputs, oldest first
    names: dict[str, str] = {}
    for i, msg in enumerate(msgs):
        note_calls(dialect, msg, names)
        if not head_end <= i < tail_start or estimate <= target:
            continue
        dropper = _Dropper(estimate - target, count)
        new = rewrite_message(dialect, msg, names, dropper)
        if new is msg:
            continue
        msgs[i] = new
        estimate -= dropper.saved
        for tool, n in dropper.dropped:
            steps.append(f"messages[{i}]: {tool or 'tool'} output, {n:,} tokens → drop marker")

    # 2. whole turns from the middle, oldest first; the note's own tokens count too
    ends = [*starts[1:], len(msgs)] if starts else []
    middle = [(s, e) for s, e in zip(starts, ends, strict=True) if e <= tail_start]
    head = msgs[:head_end]
    append = bool(head) and _role(head[-1]) == "user" and isinstance(head[-1], dict)
    dropped_until = head_end
    saved = removed = turns = note_tokens = 0
    note = ""
    for s, e in middle:
        if estimate - saved + note_tokens <= target:
            break
        gone = [m for m in msgs[s:e] if _role(m) not in _SYSTEM_ROLES]
        saved += sum(_message_tokens(m, count) for m in gone)
        removed += len(gone)
        turns += 1
        dropped_until = e
        note = NOTE_FORMAT.format(turns=turns, messages=removed, tokens=saved)
        note_tokens = count(note) + (0 if append else tokens.TOKENS_PER_MESSAGE)
    if turns:
        estimate += note_tokens - saved
        kept_system = [m for m in msgs[head_end:dropped_until] if _role(m) in _SYSTEM_ROLES]
        if append:
            head[-1] = _with_note(head[-1], note, dialect)
            where = f"appended to messages[{head_end - 1}]"
        else:
            head.append(
                {"role": "user", "parts": [{"text": note}]}
                if dialect == "gemini"
                else {"role": "user", "content": note}
            )
            where = f"inserted as messages[{head_end}]"
        msgs = head + kept_system + msgs[dropped_until:]
        steps.append(
            f"messages[{head_end}:{dropped_until}]: {turns:,} turns ({removed:,} messages, "
            f"{saved:,} tokens) dropped → one note, {where}"
        )
    return Compressed({**body, key: msgs}, prompt_tokens, estimate, tuple(steps))


def explain(
    dialect: str,
    body: dict[str, Any],
    *,
    context_window: int,
    settings: ContextSettings | None = None,
    prompt_tokens: int | None = None,
    target_share: float | None = None,
    cache: MaskCache | None = None,
) -> list[str]:
    """What :func:`compress_request` would remove from ``body``, as lines for
    ``kimi-intercept compress``: the gauge, each step, the result. ``prompt_tokens`` defaults to
    :func:`estimate_tokens`; pass ``target_share=0`` to list everything that could go."""
    settings = settings or ContextSettings()
    if context_window <= 0:
        raise ValueError(
            f"context_window must be a positive number of tokens, not {context_window}"
        )
    if prompt_tokens is None:
        prompt_tokens = estimate_tokens(dialect, body, cache)
    share = settings.compress_at - 0.10 if target_share is None else target_share
    result = compress_request(
        dialect,
        body,
        prompt_tokens=prompt_tokens,
        context_window=context_window,
        settings=settings,
        target_share=share,
        cache=cache,
    )
    lines = [
        f"prompt ≈ {prompt_tokens:,} tokens = {prompt_tokens / context_window:.0%} of the "
        f"{context_window:,}-token window; target {share:.0%} "
        f"({int(max(share, 0.0) * context_window):,} tokens)"
    ]
    if not result.steps:
        lines.append("nothing would be removed")
    lines += result.steps
    lines.append(
        f"after: ≈ {result.tokens_after:,} tokens = {result.tokens_after / context_window:.0%} "
        "of the window"
    )
    return lines
