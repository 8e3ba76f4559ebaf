"""The proxy's own answers to LLM calls it could not plan (:mod:`kimi_intercept.routing.unplanned`).

:func:`answer` gives the HTTP answer for a ``rejected`` plan — its problem's status (400 input
we reject, 413 a body over ``[proxy] max_body_mb``, 500 a bug of ours) and the reason, as an
error body in the client's dialect (OpenAI ``{"error": {"message", "type", "code"}}``,
Anthropic ``{"type": "error", "error": {...}}``, Gemini ``google.rpc.Status``; shapes in
:mod:`kimi_intercept.dialects.bridge`) — and the :class:`~.rows.Outcome` its row records:
``outcome = 'rejected'`` for a 4xx, ``'error'`` for a 500, the reason in ``error``.
:func:`passed_through` is the outcome of such a call that ``[routing] on_plan_error =
"passthrough"`` sent to its original host unchanged.
"""

from __future__ import annotations

from kimi_intercept.dialects import json_bytes
from kimi_intercept.dialects.bridge import error_json
from kimi_intercept.relay.rows import Outcome
from kimi_intercept.routing.plan import Problem, RoutePlan

_UNKNOWN = Problem(500, "internal_error", "kimi-intercept could not plan this request")


def answer(plan: RoutePlan) -> tuple[int, dict[str, str], bytes, Outcome]:
    """``(status, headers, body, outcome)`` of the error answer to a ``rejected`` plan."""
    problem = plan.problem or _UNKNOWN
    body = json_bytes(error_json(plan.dialect, problem.status, problem.message, problem.code))
    headers = {"content-type": "application/json", "x-kimi-intercept-rejected": problem.code}
    outcome = Outcome(
        status=problem.status,
        outcome="rejected" if problem.status < 500 else "error",
        error=problem.message,
    )
    return problem.status, headers, body, outcome


def passed_through(status: int | None, error: str | None) -> Outcome:
    """The outcome of an unplanned call sent to its original host: ``ok`` for a status below
    400, else ``error`` with the status or mitmproxy's error (``None``: no answer at all)."""
    if status is not None and status < 400 and error is None:
        return Outcome(status=status, outcome="ok")
    return Outcome(status=status, outcome="error", error=error or f"HTTP {status}")
