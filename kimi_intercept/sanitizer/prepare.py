"""Preparing a rerouted request before it is sent: sanitize, gauge the context, compress.

Runs in a worker thread (everything here is CPU-bound), once per client request, before the
first attempt; the passed-through share is never changed. Steps:

1. **Sanitize** the client's own body (:func:`.sanitize.sanitize_request`: verbose tool and
   console output masked to a head + tail preview), then translate it to the OpenAI hub and
   rebuild the upstream requests.
2. **Gauge** the prompt against the first provider's context window
   (:func:`.sanitize.count_prompt_tokens`, cached by content so the next turn only counts what is
   new); log a warning when it crosses ``[context] warn_at`` thresholds. A request whose bytes
   bound its tokens below the lowest threshold (:data:`~.tokens.MIN_BYTES_PER_TOKEN`), or with
   no known window, is not counted here: the relay counts it after the answer, for the row
   (``Prepared.counted_later``).
3. **Compress** (:func:`.compress.compress_request`) at or above ``[context] compress_at``; and,
   when a provider answers "context length exceeded", compress to fit and retry that provider
   once (:meth:`Preparer.compress_for_retry`).

``[sanitizer]`` keys: :data:`.mask.SANITIZER_KEYS` plus ``store_originals`` (default ``true``:
masked originals are kept in SQLite, retrievable with ``kimi-intercept masked show``) and
``holdout_share`` (percent of conversations only measured, not masked: :mod:`.measure`).
Every sanitized request is measured by position (:class:`.measure.PrefixMemory`): the row's
``sanitizer_saved_usd`` is priced from it once the answering model is known.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from kimi_intercept.accounting.tokens import MIN_BYTES_PER_TOKEN
from kimi_intercept.accounting.tokens import loaded as tokens_loaded
from kimi_intercept.config.keys import unknown_key_message
from kimi_intercept.config.settings import Config, ConfigError
from kimi_intercept.routing.plan import RoutePlan, iso_utc, to_hub
from kimi_intercept.sanitizer.compress import (
    ContextSettings,
    compress_request,
    context_share,
    warning_level,
)
from kimi_intercept.sanitizer.measure import (
    Measurement,
    PrefixMemory,
    holdout_roll,
    parse_holdout_share,
)
from kimi_intercept.sanitizer.sanitize import (
    MaskCache,
    SanitizeResult,
    SanitizeSettings,
    count_prompt_tokens,
    leaf_tokens,
    messages_key,
    sanitize_request,
)
from kimi_intercept.sanitizer.settings import SANITIZER_KEYS

log = logging.getLogger(__name__)

PREPARE_KEYS = frozenset({"store_originals", "holdout_share"})
#: How many masked originals' ids a proxy remembers as recorded (~40 bytes each).
CARRIED_IDS = 16_384


@dataclass
class Prepared:
    """What preparation did to one request (for its row and the savings ledger)."""

    sanitized: SanitizeResult | None = None
    prompt_tokens_after: int | None = None  # estimate of what is sent
    share: float | None = None  # of the first provider's context window
    compression: list[str] = field(default_factory=list)
    retried_compressed: bool = False
    measured: Measurement | None = None  # the sanitizer's removal by position
    holdout: bool | None = None  # True: measured only, the original was sent
    carried: frozenset[str] = frozenset()  # masked ids an earlier request already recorded
    counted_later: bool = False  # surely far below the window: counted after the answer


class Preparer:
    """Settings and the shared mask/count cache; one per proxy."""

    def __init__(self, cfg: Config):
        table = cfg.raw.get("sanitizer", {})
        if not isinstance(table, dict):
            raise ConfigError("[sanitizer] must be a table")
        if message := unknown_key_message(table, SANITIZER_KEYS | PREPARE_KEYS, "[sanitizer]"):
            raise ConfigError(message)
        self.settings = SanitizeSettings.from_table(table)
        self.context = ContextSettings.from_table(cfg.raw.get("context", {}) or {})
        store = table.get("store_originals", True)
        if not isinstance(store, bool):
            raise ConfigError("sanitizer.store_originals must be true or false")
        self.store_originals = store
        try:
            self.holdout_share = parse_holdout_share(table.get("holdout_share", 0))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.cache = MaskCache()
        self.memory = PrefixMemory()
        # ids of masked originals already handed to the writer (its ``masked`` rows): the next
        # turns carry them again, and would compress and offer each one again for nothing
        self._carried: OrderedDict[str, None] = OrderedDict()
        self._carried_lock = threading.Lock()

    def prepare(self, plan: RoutePlan) -> Prepared:
        """Sanitize and gauge (and maybe compress) ``plan`` in place; never raises for bad
        input (a failure leaves the request as the client sent it, logged)."""
        done = Prepared()
        plan.prepared = done
        if plan.kind != "reroute" or plan.dialect not in ("openai", "anthropic", "gemini"):
            return done
        try:
            if self.settings.enabled:
                result = sanitize_request(plan.dialect, plan.native, self.settings, self.cache)
                done.sanitized = result
                done.holdout = bool(
                    self.holdout_share and holdout_roll(plan.conversation) < self.holdout_share
                )
                if not done.holdout:
                    done.carried = self._carry(result.items)
                key = messages_key(plan.dialect)
                originals = plan.native.get(key) or []
                sent = originals if done.holdout else result.body.get(key) or []
                done.measured = self.memory.measure(
                    plan.conversation, originals, sent, result.items,
                    lambda msgs: leaf_tokens(msgs, self.cache.count),
                )  # fmt: skip
                if result.items and not done.holdout:
                    self._rebuild(plan, result.body)
            window = _window(plan)
            if self._count_later(plan, window):
                done.counted_later = True  # the relay's row counts it (rows.build_row)
                return done
            tokens = count_prompt_tokens(plan.request_json, self.cache) if plan.request_json else 0
            plan.prompt_tokens_estimate = done.prompt_tokens_after = tokens
            done.share = context_share(tokens, window)
            level = warning_level(done.share, self.context)
            if level is not None and done.share is not None:
                log.warning(
                    "kimi-intercept: prompt at %.0f%% of the %s-token context window (≥ %.0f%%)",
                    done.share * 100, f"{window:,}", level * 100,
                )  # fmt: skip
            if done.share is not None and window and done.share >= self.context.compress_at:
                self._compress(plan, tokens, window, None)
        except Exception:
            log.exception("kimi-intercept: could not prepare the request; sending it unchanged")
        return done

    def _count_later(self, plan: RoutePlan, window: int | None) -> bool:
        """Whether the prompt's count can wait for the answer: an OpenAI client (Anthropic's
        ``message_start`` carries the estimate), a tokenizer already loaded (the first
        requests wait for it, as before), and a prompt that surely stays below the lowest
        ``warn_at`` / ``compress_at`` share of ``window`` (tokens; by the bytes of the body
        that goes first, whose model gives ``window``) or no known window."""
        if plan.dialect != "openai" or not plan.request_json or not tokens_loaded():
            return False
        if not window:
            return True
        sent = next((len(t.body) for t in plan.targets if not t.skip_reason), 0)
        lowest = min((*self.context.warn_at, self.context.compress_at))
        return sent / MIN_BYTES_PER_TOKEN < lowest * window

    def _carry(self, items: Any) -> frozenset[str]:
        """The ids of ``items`` an earlier request already recorded; all of them are
        remembered now (at most :data:`CARRIED_IDS`, least recently carried forgotten)."""
        with self._carried_lock:
            known = frozenset(i.id for i in items if i.id in self._carried)
            for item in items:
                self._carried[item.id] = None
                self._carried.move_to_end(item.id)
            while len(self._carried) > CARRIED_IDS:
                self._carried.popitem(last=False)
        return known

    def compress_for_retry(self, plan: RoutePlan, window: int | None) -> bool:
        """After "context length exceeded": our estimate was evidently too low for that
        provider's tokenizer, so compress to the lower of ``compress_at - 0.10`` of its window
        and 70 % of the current estimate. True if the request changed."""
        done: Prepared = plan.prepared or Prepared()
        if done.retried_compressed:
            return False
        done.retried_compressed = True
        tokens = plan.prompt_tokens_estimate or count_prompt_tokens(plan.request_json, self.cache)
        try:
            window = window or tokens
            share = min(self.context.compress_at - 0.10, 0.7 * tokens / max(window, 1))
            return self._compress(plan, tokens, window, share)
        except Exception:
            log.exception("kimi-intercept: could not compress the request for a retry")
            return False

    def _compress(
        self, plan: RoutePlan, tokens: int, window: int, target_share: float | None
    ) -> bool:
        done: Prepared = plan.prepared
        c = compress_request(
            plan.dialect, plan.native, prompt_tokens=tokens, context_window=window,
            settings=self.context, target_share=target_share, cache=self.cache,
        )  # fmt: skip
        if not c.steps:
            return False
        done.compression.extend(c.steps)
        self._rebuild(plan, c.body)
        plan.prompt_tokens_estimate = done.prompt_tokens_after = c.tokens_after
        log.warning(
            "kimi-intercept: context compressed from ~%s to ~%s tokens: %s",
            f"{c.tokens_before:,}", f"{c.tokens_after:,}", "; ".join(c.steps),
        )  # fmt: skip
        return True

    @staticmethod
    def _rebuild(plan: RoutePlan, native: dict[str, Any]) -> None:
        plan.native = native
        hub, hub_error = to_hub(plan.dialect, native, plan.client_model, plan.stream)
        plan.request_json = hub or {}
        if plan.rebuild is not None:
            plan.targets = plan.rebuild(native, hub, hub_error)


def _window(plan: RoutePlan) -> int | None:
    for t in plan.targets:
        if not t.skip_reason and t.model_info and t.model_info.context_window:
            return t.model_info.context_window
    return None


def ledger_rows(plan: RoutePlan, store_originals: bool) -> dict[str, list[dict[str, Any]]]:
    """Rows for the ``masked`` and ``savings`` tables (the writer adds the request id, stores
    each original once per content hash, and sums savings per tool). A ``masked`` row is
    offered once per proxy run: texts an earlier request carried (``Prepared.carried``) get
    only their ``savings``."""
    done: Prepared | None = plan.prepared
    if done is None or done.sanitized is None or not done.sanitized.items or done.holdout:
        return {}
    now = iso_utc(plan.received)
    masked, savings = [], []
    for item in done.sanitized.items:
        savings.append(
            {"tool": item.tool or item.kind, "items": 1,
             "tokens_before": item.tokens_before, "tokens_after": item.tokens_after}
        )  # fmt: skip
        if item.id in done.carried:
            continue
        row = {
            "id": item.id, "created_at": now, "tool": item.tool, "kind": item.kind,
            "dialect": plan.dialect, "lines": item.lines, "bytes": item.bytes,
            "tokens_before": item.tokens_before, "tokens_after": item.tokens_after,
        }  # fmt: skip
        if store_originals:
            row["original"] = item.original
        masked.append(row)
    return {"masked": masked, "savings": savings}


def row_fields(plan: RoutePlan) -> dict[str, Any]:
    """Columns of the ``requests`` row about preparation."""
    done: Prepared | None = plan.prepared
    if done is None:
        return {}
    saved = 0
    memory = None
    if done.sanitized is not None and not done.holdout:
        saved = done.sanitized.tokens_before - done.sanitized.tokens_after
    if done.sanitized is not None:
        memory = done.sanitized.memory_tokens or None
    after = done.prompt_tokens_after
    return {
        "tokens_before_sanitize": after + saved if after is not None else None,
        "tokens_after_sanitize": after,
        "memory_tokens": memory,
        "sanitizer_holdout": None if done.holdout is None else int(done.holdout),
    }
