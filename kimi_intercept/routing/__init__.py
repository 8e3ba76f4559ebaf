"""Deciding where a request goes, before anything is sent.

Modules: :mod:`.plan` (:func:`plan_route`: detect the client's dialect, identify the
conversation, apply the rollout share and the first matching routing rule, give a
:class:`RoutePlan`), :mod:`.unplanned` (:func:`plan_or_reject`: the one rule for an LLM call
that cannot be planned — a ``rejected`` plan with the status and reason, never a silent
pass-through), :mod:`.body` (the request body with its ``Content-Encoding`` undone, within
``[proxy] max_body_mb``), :mod:`.targets` (one :class:`Target` per provider of the chain: URL, key,
model and the body in the provider's dialect), :mod:`.choice` (the weighted, conversation-sticky
order of a ``strategy = "weighted"`` rule). Pure functions over dicts and the config; depends on
:mod:`kimi_intercept.config` and :mod:`kimi_intercept.dialects`.
"""

from __future__ import annotations

from kimi_intercept.routing.choice import Chooser
from kimi_intercept.routing.plan import (
    RoutePlan,
    conversation_key,
    detect_dialect,
    iso_utc,
    plan_route,
)
from kimi_intercept.routing.targets import Target, passthrough_target, reroute_targets
from kimi_intercept.routing.unplanned import plan_or_reject

__all__ = [
    "Chooser",
    "RoutePlan",
    "Target",
    "conversation_key",
    "detect_dialect",
    "iso_utc",
    "passthrough_target",
    "plan_or_reject",
    "plan_route",
    "reroute_targets",
]
