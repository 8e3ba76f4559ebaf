"""Measuring the sanitizer's saving in dollars, by position, and the holdout.

A token the sanitizer removed saves what it would have been billed at **its position**:

- inside the previous turn's prefix (the same masked text was already sent in the previous
  request of the conversation, so the provider's prompt cache would have served it) → the
  model's cached-input price;
- new this turn → the input price, or the cache-write price when the answer reported cache
  writes (Anthropic-style providers write every new cached-prefix token at 1.25×/2× input).

The sanitizer can also *cost* money: when a message the previous turn sent is sent differently
now although the client sent it unchanged (its mask changed), the provider's cache prefix breaks
there, and every token from that message to the end of the previous prompt is billed again as
new instead of cached. Those ``rebilled`` tokens are subtracted at (new − cached) price::

    saved_usd = (removed_cached * cached + removed_new * new
                 - rebilled * (new - cached)) / 1e6

with prices in USD per million tokens (:class:`~kimi_intercept.config.settings.ModelInfo` of
the model that answered; token counts are our tokenizer's estimate, ``accounting.tokens``).

**Holdout** (``[sanitizer] holdout_share``, percent of conversations, default 0): a
conversation whose :func:`holdout_roll` is below the share is only measured — the sanitizer
computes what it would remove, but the original request is sent — so the report can compare
masked and held-out conversations' observed cost per turn and cache-hit rate.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kimi_intercept.accounting.pricing import CACHE_WRITE_5M_MULTIPLIER
from kimi_intercept.config.settings import ModelInfo
from kimi_intercept.dialects.memo import content_key
from kimi_intercept.sanitizer.settings import MaskedItem


@dataclass(frozen=True)
class Measured:
    """Tokens the sanitizer removed (or, in a holdout, would have removed), by position."""

    removed_cached: int = 0  # already sent in the previous turn: would have been a cache hit
    removed_new: int = 0  # new this turn: would have been billed as input / cache write
    rebilled: int = 0  # previous-turn tokens the sanitizer made miss the cache

    def as_dict(self) -> dict[str, int]:
        return {"removed_cached": self.removed_cached, "removed_new": self.removed_new,
                "rebilled": self.rebilled}  # fmt: skip


class Measurement:
    """What :meth:`PrefixMemory.measure` found in one request: the masked items by position and
    the ``rebilled`` tokens. :meth:`tokens` makes the :class:`Measured`, counting the removed
    tokens then: the originals' whole counts, which the request does not wait for (the relay
    asks after the answer, in a worker thread when :meth:`size` is big)."""

    def __init__(
        self, cached: Sequence[MaskedItem], new: Sequence[MaskedItem], rebilled: int
    ) -> None:
        self.cached, self.new, self.rebilled = tuple(cached), tuple(new), rebilled
        self._tokens: Measured | None = None

    def size(self) -> int:
        """Characters :meth:`tokens` would still tokenize (originals not counted yet: an output
        carried from turn to turn is counted once)."""
        return sum(i.pending_chars() for i in self.cached + self.new)

    def tokens(self) -> Measured:
        if self._tokens is None:
            removed = [sum(i.tokens_before - i.tokens_after for i in side)
                       for side in (self.cached, self.new)]  # fmt: skip
            self._tokens = Measured(removed[0], removed[1], self.rebilled)
        return self._tokens


def holdout_roll(conversation: str) -> float:
    """A number in [0, 100) fixed by the conversation id (hex), independent of the routing
    share's roll (it reads other digits), compared with ``holdout_share``."""
    digits = conversation[8:16] if len(conversation) >= 16 else conversation
    try:
        return int(digits, 16) / 16 ** len(digits) * 100.0
    except ValueError:
        return 100.0  # not hex: never held out


def parse_holdout_share(value: Any) -> float:
    """``[sanitizer] holdout_share``: a percentage 0–100.

    :raises ValueError: naming the key and the fix
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(
            f"sanitizer.holdout_share must be a percentage from 0 to 100, got {value!r}"
        )
    return float(value)


@dataclass
class _Turn:
    originals: tuple[int, ...]  # hashes of the client's messages
    sent: tuple[int, ...]  # hashes of the messages as sent
    items: frozenset[str]  # content ids of the texts masked (or, in a holdout, maskable)


class PrefixMemory:
    """The previous turn of each conversation (at most ``max_conversations``, least recently
    used dropped). Thread-safe: the relay prepares requests in worker threads."""

    def __init__(self, max_conversations: int = 4096) -> None:
        self.max = max_conversations
        self.turns: OrderedDict[str, _Turn] = OrderedDict()
        self.lock = threading.Lock()

    def measure(
        self,
        conversation: str,
        originals: Sequence[Any],
        sent: Sequence[Any],
        items: Sequence[MaskedItem],
        count: Callable[[Any], int],
    ) -> Measurement:
        """Classify ``items`` (the texts masked in this request) against the previous turn,
        count the ``rebilled`` tokens, and remember this turn (the removed tokens are counted
        by :meth:`Measurement.tokens`).

        :param originals: the client's messages; ``sent``: the messages as sent upstream
        :param count: tokens of a list of messages (an estimate)
        """
        with self.lock:
            prev = self.turns.get(conversation) if conversation else None
        o_hash = tuple(_hash(m) for m in originals)
        s_hash = tuple(  # most messages are sent as they came: hashed once
            o_hash[j] if j < len(originals) and m is originals[j] else _hash(m)
            for j, m in enumerate(sent)
        )
        ids = frozenset(i.id for i in items)
        rebilled = 0
        before = prev.items if prev is not None else frozenset()
        cached = [i for i in items if i.id in before]
        new = [i for i in items if i.id not in before]
        if prev is not None:
            n = min(len(prev.sent), len(s_hash), len(o_hash), len(prev.originals))
            for j in range(n):
                if o_hash[j] == prev.originals[j] and s_hash[j] != prev.sent[j]:
                    rebilled = count(list(sent[j : len(prev.sent)]))
                    break
        if conversation:
            with self.lock:
                self.turns[conversation] = _Turn(o_hash, s_hash, ids)
                self.turns.move_to_end(conversation)
                while len(self.turns) > self.max:
                    self.turns.popitem(last=False)
        return Measurement(cached, new, rebilled)


def _hash(message: Any) -> int:
    """A hash of one message's content (:func:`~kimi_intercept.dialects.memo.content_key`:
    key order counts, as it does for a provider's prompt cache); no serialization."""
    try:
        return hash(content_key(message))
    except (TypeError, RecursionError):  # not JSON: hashed as it prints
        return hash(json.dumps(message, sort_keys=True, ensure_ascii=False, default=str))


def saved_usd(info: ModelInfo | None, m: Measured, cache_writes: bool) -> float | None:
    """USD the sanitizer saved on one request at ``info``'s prices (see the module docstring),
    rounded to 1e-9; ``None`` when the model has no input price (unpriced).

    :param cache_writes: the answer reported cache-write tokens: new tokens are priced as
        cache writes (``cache_write_per_mtok``, else 1.25 × input)
    """
    if info is None or info.input_per_mtok is None:
        return None
    price_in = info.input_per_mtok
    cached = info.cached_input_per_mtok if info.cached_input_per_mtok is not None else price_in
    new = price_in
    if cache_writes:
        write = info.cache_write_per_mtok
        new = write if write is not None else price_in * CACHE_WRITE_5M_MULTIPLIER
    micro = m.removed_cached * cached + m.removed_new * new - m.rebilled * (new - cached)
    return round(micro / 1e6, 9)
