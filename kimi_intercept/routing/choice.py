"""Choosing the order of providers for one request: a rule's ``strategy = "weighted"``.

Each provider of the chain gets a score — context capacity (its model's window against what the
request needs), price (the cheapest input price of the chain scores 1) and observed latency
(exponentially weighted time to first byte; the fastest scores 1, an unseen provider 1 too, so
it gets tried) — each weighted by the rule. The first provider is drawn with probability ∝ score
by a number fixed by the conversation (:func:`~.routing.share_roll`) and remembered, so later
turns stay on it and its prompt cache keeps hitting; the others follow by score.
"""

from __future__ import annotations

from collections import OrderedDict

from kimi_intercept.routing.plan import RoutePlan, requested_max_tokens, share_roll
from kimi_intercept.routing.targets import Target

STICKY_CONVERSATIONS = 10_000  # weighted choices remembered (least recently used dropped)


class Chooser:
    """State behind weighted choices; lives as long as the relay."""

    def __init__(self) -> None:
        self._latency: dict[str, float] = {}  # provider -> EWMA ms to first byte
        self._sticky: OrderedDict[str, str] = OrderedDict()  # conversation -> first provider

    def order(self, plan: RoutePlan) -> list[Target]:
        """The targets in the order to try. A rule with ``strategy = "weighted"`` scores each
        provider — context capacity, price, observed latency, weighted by the rule — and puts
        first a provider drawn with probability ∝ score by a number fixed by the conversation;
        later turns of the conversation keep that provider (remembered here), so its prompt
        cache keeps hitting. The others follow by score."""
        rule, targets = plan.rule, plan.targets
        if rule is None or rule.strategy != "weighted" or len(targets) < 2:
            return targets
        scores = {t.provider: self._score(t, plan, rule.weights) for t in targets}
        by_score = sorted(targets, key=lambda t: -scores[t.provider])
        first = self._sticky.get(plan.conversation)
        if first not in scores:
            total = sum(scores.values()) or 1.0
            point, acc = share_roll(plan.conversation or "x") / 100.0 * total, 0.0
            first = by_score[-1].provider
            for t in by_score:
                acc += scores[t.provider]
                if point < acc:
                    first = t.provider
                    break
            self._sticky[plan.conversation] = first
            while len(self._sticky) > STICKY_CONVERSATIONS:
                self._sticky.popitem(last=False)
        else:
            self._sticky.move_to_end(plan.conversation)
        return [t for t in by_score if t.provider == first] + [
            t for t in by_score if t.provider != first
        ]

    def _score(self, target: Target, plan: RoutePlan, weights: dict[str, float]) -> float:
        """0..Σweights: each part is 1 for the best provider of the chain, less for others."""
        info = target.model_info
        need = target.size(plan.request_bytes) / 4 + (requested_max_tokens(plan.request_json) or 0)
        window = info.context_window if info else None
        context = 0.5 if window is None else min(1.0, window / max(need, 1.0))
        prices = [t.model_info.input_per_mtok for t in plan.targets if t.model_info]
        known_prices = [p for p in prices if p]
        price = info.input_per_mtok if info else None
        cheapness = 0.5 if not price or not known_prices else min(known_prices) / price
        latencies = [self._latency[t.provider] for t in plan.targets if t.provider in self._latency]
        mine = self._latency.get(target.provider)
        speed = 1.0 if mine is None or not latencies else min(latencies) / max(mine, 0.001)
        return (
            weights.get("context", 1.0) * context
            + weights.get("price", 1.0) * cheapness
            + weights.get("latency", 1.0) * speed
        )

    def observe(self, provider: str, ms: float) -> None:
        """Exponentially weighted time to first byte per provider (weight 0.2 for the new)."""
        old = self._latency.get(provider)
        self._latency[provider] = ms if old is None else 0.8 * old + 0.2 * ms
