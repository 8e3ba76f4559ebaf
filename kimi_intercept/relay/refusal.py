"""The proxy's own answers to LLM calls it could not plan (:mod:`kimi_intercept.routing.unplanned`).

:func:`answer` gives the HTTP answer for a ``rejected`` plan — its problem's status (400 input
we reject, 413 a body over ``[proxy] max_body_mb``, 500 a bug of ours) and the reason, as an
error body in the client's dialect (OpenAI ``{"error": {"message", "type", "code"}}``,
Anthropic ``{"type": "error", "error": {...}}``, Gemini ``google.rpc.Status``; shapes in
:mod:`kimi_intercept.dialects.bridge`) — and the :class:`~.rows.Outcome` its row records:
``outcome = 'rejected'`` for a 4xx, ``'error'`` for a 500, the reason in ``error``.
:func:`passed_through` is the outcome of such a call that ``[routing] on_plan_error =
"passthrough"`` sent to its original host unchanged.

:func:`all_failed` answers a call no provider of its chain could serve, :func:`refuse` one the
relay did not try at all (a spent ``[budget]``).
"""

from __future__ import annotations

from aiohttp import web

from kimi_intercept.dialects import json_bytes
from kimi_intercept.dialects.bridge import error_json
from kimi_intercept.relay.failures import Failure, redact
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


def all_failed(plan: RoutePlan, last: Failure | None, r: Outcome) -> web.Response:
    """The answer when every target failed or was skipped, in the client's dialect: the last
    failure's status (504 for a timeout, 400 when the prompt fits no provider's context
    window, else 502), its message with the secrets redacted, its ``Retry-After``."""
    tried = ", ".join(t.provider for t in plan.targets)
    detail = f"{last.kind}: {last.message}" if last else "no provider could be tried"
    if r.skipped:
        detail += " (skipped: " + "; ".join(r.skipped) + ")"
    message = redact(f"kimi-intercept: every provider failed ({tried}); last: {detail}")
    code = "all_providers_failed"
    if last is not None and last.status:
        status = last.status
    elif last is not None and last.kind == "timeout":
        status = 504
    elif last is None and r.skipped and all("context window" in s for s in r.skipped):
        status, code = 400, "context_length_exceeded"  # too long for every provider
    else:
        status = 502
    r.status, r.outcome, r.error = status, "error", message
    r.target = plan.targets[-1] if plan.targets else None
    headers = {}
    if last is not None and last.retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(last.retry_after_s)))
    body = error_json(plan.dialect, status, message, code)
    return web.json_response(body, status=status, headers=headers)


def refuse(plan: RoutePlan, r: Outcome, status: int, message: str, code: str) -> web.Response:
    """Answer without trying any provider (a spent budget), in the client's dialect."""
    r.status, r.outcome, r.error = status, "error", message
    body = error_json(plan.dialect, status, message, code)
    return web.json_response(body, status=status)
