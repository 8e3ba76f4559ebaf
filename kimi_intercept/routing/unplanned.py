"""What cannot be planned: one rule for every intercepted LLM call that the proxy cannot route.

An intercepted LLM call is never sent silently to its original host because planning failed.
:func:`plan_or_reject` plans a request like :func:`.plan.plan_route` but never raises: input we
reject (a body that is not a JSON object, a request no provider can take) and our own bugs
both become a ``rejected`` :class:`~.plan.RoutePlan` whose ``problem`` holds the status the
client is answered with (400 input, 413 too large, 500 a bug of ours) and the reason. The addon
answers it in the client's dialect and the relay records a ``requests`` row
(``outcome = 'rejected'``, or ``'error'`` for a 500), unless ``[routing] on_plan_error =
"passthrough"`` asks for the request to go to its original host unchanged (then recorded as
``route = 'passthrough'``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kimi_intercept.config.settings import Config
from kimi_intercept.dialects import text_of
from kimi_intercept.routing.body import BodyTooLarge, decoded_body
from kimi_intercept.routing.conversations import ConversationTracker
from kimi_intercept.routing.plan import (
    Problem,
    RoutePlan,
    Unplannable,
    client_name,
    detect_dialect,
    iso_utc,
    plan_route,
)

log = logging.getLogger(__name__)


def plan_or_reject(
    cfg: Config,
    *,
    method: str,
    url: str,
    host: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    roll: float | None = None,
    client_host: str | None = None,
    started: float | None = None,
    tracker: ConversationTracker | None = None,
) -> RoutePlan | None:
    """:func:`.plan.plan_route`, except that it never raises: ``None`` (not an LLM call: left
    to mitmproxy), a routed plan, or a ``rejected`` plan (:func:`rejected_plan`) — status 400
    for input we reject, 500 with the exception's type and message for a bug of ours."""
    try:
        return plan_route(
            cfg, method=method, url=url, host=host, path=path, headers=headers, body=body,
            roll=roll, client_host=client_host, started=started, tracker=tracker,
        )  # fmt: skip
    except Unplannable as e:
        problem = e.problem
    except Exception as e:  # a bug of ours: say so, never fail open
        log.exception("kimi-intercept: planning %s %s failed", method, text_of(path))
        problem = internal_problem(e)
    return rejected_plan(
        problem, method=method, host=host, path=path, headers=headers,
        client_host=client_host, started=started,
    )  # fmt: skip


def plan_received(
    cfg: Config,
    *,
    method: str,
    url: str,
    host: str,
    path: str,
    headers: list[tuple[str, str]],
    raw_body: bytes,
    client_host: str | None = None,
    started: float | None = None,
    tracker: ConversationTracker | None = None,
) -> RoutePlan | None:
    """:func:`plan_or_reject` of an intercepted call as the client sent it: ``raw_body`` still
    in its ``Content-Encoding`` (gzip, deflate, br, zstd are undone, :mod:`.body`, stopping at
    ``[proxy] max_body_mb`` so no zip bomb is inflated). A body over that limit, before or after
    decoding, is rejected with 413; one that does not decode with 400. Never raises."""
    limit = int(cfg.max_body_mb * 1024 * 1024)
    encoding = next((v for k, v in headers if k.lower() == "content-encoding"), "")
    problem = None
    if len(raw_body) > limit:
        problem = _too_large(cfg)
    else:
        try:
            body = decoded_body(raw_body, encoding, limit)
        except BodyTooLarge:
            problem = _too_large(cfg)
        except ValueError as e:
            why = f"cannot decode the request body (Content-Encoding: {encoding}): {e}"
            problem = Problem(400, "invalid_request", why)
    if problem is not None:
        return rejected_plan(
            problem, method=method, host=host, path=path, headers=headers,
            client_host=client_host, started=started,
        )  # fmt: skip
    return plan_or_reject(
        cfg, method=method, url=url, host=host, path=path, headers=headers, body=body,
        client_host=client_host, started=started, tracker=tracker,
    )  # fmt: skip


def _too_large(cfg: Config) -> Problem:
    return Problem(
        413,
        "request_too_large",
        f"the request body is over [proxy] max_body_mb = {cfg.max_body_mb:g} MB",
    )


def internal_problem(e: BaseException) -> Problem:
    """A 500 :class:`~.plan.Problem` for an exception of ours (type and message, no trace)."""
    return Problem(
        500,
        "internal_error",
        f"kimi-intercept could not handle this request (a bug; please report it): "
        f"{type(e).__name__}: {text_of(str(e))[:300]}",
    )


def rejected_plan(
    problem: Problem,
    *,
    method: str,
    host: str,
    path: str,
    headers: list[tuple[str, str]],
    client_host: str | None = None,
    started: float | None = None,
) -> RoutePlan:
    """A ``rejected`` plan: no targets, the client's dialect (from the path; OpenAI's when not
    known), the client name from its User-Agent, and ``problem``. Never raises."""
    try:
        found = detect_dialect(method, path)
    except Exception:  # pragma: no cover - a str method; kept total on purpose
        found = None
    dialect = found[0] if found else "openai"
    ua: Any = next((v for k, v in headers if k.lower() == "user-agent"), None)
    try:
        client = client_name(ua)
    except Exception:
        client = None
    return RoutePlan(
        kind="rejected",
        targets=[],
        stream=False,
        request_json={},
        client_model=None,
        host=text_of(host),
        client=client,
        client_host=client_host,
        started_at=iso_utc(time.time() if started is None else started),
        dialect="anthropic" if dialect == "anthropic_count" else dialect,
        problem=Problem(problem.status, problem.code, text_of(problem.message)),
    )
