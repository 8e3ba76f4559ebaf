"""Routing decisions: which intercepted requests go where.

Pure functions over the request's parts; the addon feeds them, the relay executes the plan.

A request is *routed* when its host is intercepted and it is an LLM call in one of the dialects
(:func:`detect_dialect`: OpenAI chat completions, https://platform.openai.com/docs/api-reference/chat/create;
Anthropic Messages; Gemini generateContent). It is then either

- ``reroute``: sent to ``[routing] primary`` with the provider's key and model, then to the
  fallbacks in order (the upstream requests themselves: :mod:`.targets`); or
- ``passthrough`` (the ``100 - share`` percent of conversations): sent to the original URL
  with the client's own headers, unchanged, and counted;
- ``count_tokens``: Anthropic's ``/v1/messages/count_tokens``, answered locally.

An LLM call that cannot be planned — a body that is not a JSON object, a request that cannot be
translated for any provider in the chain — raises :class:`Unplannable` with the HTTP status and
reason the client is answered with (:mod:`.unplanned` turns it into a ``rejected`` plan).
Everything else (other hosts, methods and paths) is left to mitmproxy untouched.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from kimi_intercept.accounting import wire_json
from kimi_intercept.config.rules import ChainEntry, RequestFacts, Rule, first_match
from kimi_intercept.config.settings import Config
from kimi_intercept.dialects import DialectError, text_of
from kimi_intercept.routing.conversations import (
    ConversationTracker,
    conversation_digest,
    title_text,
)
from kimi_intercept.routing.targets import Target, passthrough_target, reroute_targets

CHAT_COMPLETIONS = "/chat/completions"
_JSON_ERRORS = (ValueError, RecursionError)  # UnicodeDecodeError is a ValueError
_GEMINI_PATH = re.compile(r"/models/([^/:]+):(generateContent|streamGenerateContent)$")


@dataclass(frozen=True)
class Problem:
    """Why an LLM call is answered by the proxy itself: the HTTP ``status`` the client gets
    (400 rejected input, 413 too large, 500 a bug of ours), an error ``code`` (e.g.
    ``invalid_request``) and a ``message`` for a person."""

    status: int
    code: str
    message: str


class Unplannable(Exception):
    """An LLM call that cannot be planned; ``problem`` says what the client is told."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.problem = Problem(status, code, message)


@dataclass
class RoutePlan:
    """Everything the relay needs for one client request, and what the row will say about it.

    Times: ``received`` is ``time.time()`` when the proxy had the whole request (seconds);
    ``started_at`` is the ISO 8601 UTC start of the request.
    """

    kind: str  # "reroute" | "passthrough" | "count_tokens" | "rejected"
    targets: list[Target]
    stream: bool
    request_json: dict[str, Any] = field(repr=False)  # the request in the OpenAI hub dialect
    client_model: str | None
    host: str
    client: str | None
    client_host: str | None
    started_at: str
    conversation: str = ""
    title: str | None = None  # start of the first user message
    rule: Rule | None = None  # the [[routing.rules]] entry that chose the chain (None: default)
    native: dict[str, Any] = field(default_factory=dict, repr=False)  # the client's own body
    # (native, hub, hub_error) -> targets: the upstream requests again, after sanitizing
    rebuild: Callable[..., list[Target]] | None = field(default=None, repr=False)
    prepared: Any = None  # prepare.Prepared, once the relay prepared the request
    cache_view: Any = None  # the client's own request (hub), kept for relay.cache_breaks
    dialect: str = "openai"  # the client's: openai | anthropic | gemini
    received: float = field(default_factory=time.time)
    prompt_tokens_estimate: int | None = None  # tiktoken count, filled in only when needed
    problem: Problem | None = None  # set when the call could not be planned (kind "rejected")
    request_bytes: int = 0  # of the client's (decoded) request body


def client_name(user_agent: str | None) -> str | None:
    """A short client name from a User-Agent: ``"OpenAI/Python 2.54.0"`` stays whole,
    ``"claude-cli/2.1.328 (external, sdk-cli)"`` becomes ``"claude-cli/2.1.328"``."""
    parts = text_of(user_agent or "").split()
    if not parts:  # missing, empty, or only whitespace / control characters
        return None
    name = parts[0]
    if (
        "/" in name
        and len(parts) > 1
        and parts[1][:1].isdigit()
        and not name.split("/")[1][:1].isdigit()
    ):
        name = f"{name} {parts[1]}"
    return name[:120]


SESSION_HEADERS = ("x-kimi-session", "x-claude-code-session-id")


def session_key(lower: dict[str, str], request_json: dict[str, Any]) -> str | None:
    """The conversation id a client stated (32 hex, :func:`~.conversations.conversation_digest`),
    or ``None``: a session header (``lower``: lower-cased header names), or the session in
    Anthropic's ``metadata.user_id``
    (translated to ``user``): ``user_…_account_…_session_<uuid>`` as older Claude Code sends it,
    or a JSON object with ``session_id`` as newer versions do."""
    for name in SESSION_HEADERS:
        if lower.get(name):
            return conversation_digest(f"{name}:{lower[name]}")
    user = request_json.get("user")
    session = None
    if isinstance(user, str) and "_session_" in user:
        session = user.rsplit("_session_", 1)[1]
    elif isinstance(user, str) and user.startswith("{"):
        try:
            found = json.loads(user).get("session_id")
        except (ValueError, AttributeError, RecursionError):
            found = None
        session = found if isinstance(found, str) and found else None
    return conversation_digest(f"session:{session}") if session else None


def conversation_key(headers: list[tuple[str, str]], request_json: dict[str, Any]) -> str:
    """A stable id for the conversation a request belongs to (32 hex,
    :func:`~.conversations.conversation_digest`).

    An explicit session header wins (``x-kimi-session``, then Claude Code's
    ``x-claude-code-session-id``), then the session suffix of Anthropic's ``metadata.user_id``
    (``user_…_account_…_session_<uuid>``, as Claude Code sends it; translated to ``user``);
    otherwise the conversation's stable prefix — every system
    message and the first user message — plus the client's User-Agent product name. Later turns
    only append messages, so every turn of one conversation gets the same key.
    """
    lower = {k.lower(): v for k, v in headers}
    session = session_key(lower, request_json)
    if session is not None:
        return session
    prefix: list[Any] = []
    messages = request_json.get("messages")
    for m in messages if isinstance(messages, list) else []:
        if not isinstance(m, dict):
            continue
        if m.get("role") in ("system", "developer"):
            prefix.append(m.get("content"))
        elif m.get("role") == "user":
            prefix.append(m.get("content"))
            break
    ua = (lower.get("user-agent") or "").split("/")[0]
    blob = json.dumps([ua, prefix], ensure_ascii=False, sort_keys=True, default=str)
    return conversation_digest(blob)


def conversation_title(request_json: dict[str, Any], limit: int = 80) -> str | None:
    """The start of the user's own first words (:func:`~.conversations.title_text`: injected
    blocks such as ``<system-reminder>`` left out; whitespace folded), for reports. Raw text:
    the report escapes it."""
    messages = request_json.get("messages")
    for m in messages if isinstance(messages, list) else []:
        if isinstance(m, dict) and m.get("role") == "user":
            text = text_of(title_text(m.get("content")))
            if text:
                return text if len(text) <= limit else text[: limit - 1] + "…"
    return None


def share_roll(key: str) -> float:
    """A number in [0, 100) fixed by the conversation key, compared with ``[routing] share``:
    one conversation always lands on the same side, so its prompt cache keeps hitting."""
    return int(key[:8], 16) / 0x1_0000_0000 * 100.0


AUTO_BASE_S = 60.0
AUTO_MAX_S = 600.0
AUTO_PREFILL_TOKENS_PER_S = 2000.0
AUTO_DECODE_TOKENS_PER_S = 50.0
AUTO_DEFAULT_MAX_TOKENS = 4096


def first_byte_timeout(
    setting: float | None, *, stream: bool, prompt_tokens: int, max_tokens: int | None
) -> float:
    """Seconds to wait for an upstream's first byte before trying the next provider.

    ``setting`` is ``[routing] first_byte_timeout_s`` (``None`` = "auto"). Auto: 60 s plus
    1 s per 2,000 prompt tokens (prefill); a non-streamed answer arrives whole, so it also gets
    ``max_tokens`` / 50 s (4,096 when the request gives none); capped at 600 s.
    """
    if setting is not None:
        return setting
    budget = AUTO_BASE_S + prompt_tokens / AUTO_PREFILL_TOKENS_PER_S
    if not stream:
        budget += (max_tokens or AUTO_DEFAULT_MAX_TOKENS) / AUTO_DECODE_TOKENS_PER_S
    return min(budget, AUTO_MAX_S)


def requested_max_tokens(request_json: dict[str, Any]) -> int | None:
    """``max_completion_tokens`` or the older ``max_tokens`` of a chat request, if a number."""
    for key in ("max_completion_tokens", "max_tokens"):
        v = request_json.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def iso_utc(ts: float) -> str:
    """``1700000000.5`` → ``"2023-11-14T22:13:20.500Z"``."""
    return (
        datetime.fromtimestamp(ts, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def detect_dialect(method: str, path: str) -> tuple[str, str | None, bool | None] | None:
    """``(dialect, model, stream)`` of an LLM call, from its method and path (query ignored).

    ``openai``: ``POST …/chat/completions``; ``anthropic``: ``POST …/v1/messages``
    (``anthropic_count``: ``…/v1/messages/count_tokens``,
    https://docs.claude.com/en/api/messages-count-tokens); ``responses``: ``POST …/v1/responses``
    (OpenAI's Responses API, :mod:`kimi_intercept.dialects.responses`); ``gemini``: ``POST
    …/models/{model}:generateContent`` or ``:streamGenerateContent``
    (https://ai.google.dev/api/generate-content), whose model and streaming live in the path
    (streaming only as SSE, ``?alt=sse``; the JSON-array stream is left untouched).
    ``None`` for anything else.
    """
    if method.upper() != "POST":
        return None
    p = path.split("?", 1)[0].rstrip("/")
    if p.endswith(CHAT_COMPLETIONS):
        return "openai", None, None
    if p.endswith("/v1/responses"):
        return "responses", None, None
    if p.endswith("/v1/messages/count_tokens"):
        return "anthropic_count", None, None
    if p.endswith("/v1/messages"):
        return "anthropic", None, None
    m = _GEMINI_PATH.search(p)
    if m:
        stream = m.group(2) == "streamGenerateContent"
        if stream and "alt=sse" not in path.partition("?")[2]:
            return None  # a streamed JSON array, not SSE: left untouched
        return "gemini", m.group(1), stream
    return None


def plan_route(
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
    """Plan a request, or return ``None`` to leave it to mitmproxy untouched (not an LLM call).

    ``url`` is the original absolute URL; ``body`` the decoded request body; ``roll`` a number
    in [0, 100) that is compared with ``[routing] share`` (below → reroute); by default
    :func:`share_roll` of the conversation, so the choice is sticky per conversation.
    ``tracker`` splits fingerprinted conversations into runs
    (:class:`~.conversations.ConversationTracker`); the share stays decided by the fingerprint.
    Raises :class:`Unplannable` (status 400) for an LLM call whose body is not a JSON object, or
    that no provider of its chain can take (it cannot be translated); use
    :func:`.unplanned.plan_or_reject` for a function that never raises.
    """
    rule: Rule | None = None
    rebuild = None
    found = detect_dialect(method, path) if host in cfg.hosts else None
    if found is None:
        return None
    dialect, path_model, path_stream = found
    try:
        native = wire_json.loads(body)
    except _JSON_ERRORS as e:
        raise Unplannable(400, "invalid_request", f"the request body is not JSON: {e}") from e
    if not isinstance(native, dict):
        kind = type(native).__name__
        raise Unplannable(
            400, "invalid_request", f"the request body is a JSON {kind}, not an object"
        )
    model = native.get("model") if dialect != "gemini" else path_model
    client_model = model if isinstance(model, str) else None
    stream = path_stream if dialect == "gemini" else native.get("stream") is True
    drop = cfg.responses_drop_builtin_tools
    hub, hub_error = to_hub(dialect, native, client_model, bool(stream), drop_builtin_tools=drop)
    lower = [(k.lower(), v) for k, v in headers]
    ua = next((v for k, v in lower if k == "user-agent"), None)
    conversation = conversation_key(headers, hub or {})
    if roll is None:
        roll = share_roll(conversation)
    reroute = roll < cfg.routing.share or dialect == "anthropic_count"
    if dialect == "anthropic_count":
        targets: list[Target] = []  # answered by the relay itself, with a local count
    elif reroute:
        rule = first_match(cfg.rules, _facts(dialect, native, hub, client_model, ua, body, lower))
        rebuild = functools.partial(
            _targets, cfg, dialect, client_model, bool(stream), lower,
            rule.chain if rule else cfg.default_chain, rule,
        )  # fmt: skip
        targets = rebuild(native, hub, hub_error)
        if hub is None and not any(t.dialect == dialect for t in targets):
            code = getattr(hub_error, "code", None) or "invalid_request"  # Responses: the API's
            raise Unplannable(400, code, str(hub_error or "cannot translate the request"))
    else:
        targets = [
            passthrough_target(
                cfg, url=url, host=host, client_dialect=dialect, client_model=client_model,
                headers=lower, body=body,
            )
        ]  # fmt: skip
    started = time.time() if started is None else started
    messages = (hub or {}).get("messages")
    if (
        tracker is not None
        and isinstance(messages, list)
        and session_key(dict(lower), hub or {}) is None
    ):
        conversation = tracker.resolve(conversation, messages, started)
    return RoutePlan(
        kind="count_tokens"
        if dialect == "anthropic_count"
        else "reroute"
        if reroute
        else "passthrough",
        targets=targets,
        stream=bool(stream),
        request_json=hub or {},
        client_model=client_model,
        host=host,
        client=client_name(ua),
        client_host=client_host,
        started_at=iso_utc(started),
        conversation=conversation,
        title=conversation_title(hub or {}),
        rule=rule,
        native=native,
        rebuild=rebuild,
        dialect="anthropic" if dialect == "anthropic_count" else dialect,
        request_bytes=len(body),
    )


def retarget(plan: RoutePlan, chain: tuple[ChainEntry, ...]) -> bool:
    """Send a rerouted plan to another chain (a spent budget's cheaper one): its targets are
    built again from the client's request, and no rule applies. False if it cannot be."""
    p = plan.rebuild
    if plan.kind != "reroute" or not isinstance(p, functools.partial) or len(p.args) != 7:
        return False
    plan.rebuild = functools.partial(p.func, *p.args[:5], chain, None)
    drop = p.args[0].responses_drop_builtin_tools  # args[0] is the Config
    hub, hub_error = to_hub(
        plan.dialect, plan.native, plan.client_model, plan.stream, drop_builtin_tools=drop
    )
    plan.targets = plan.rebuild(plan.native, hub, hub_error)
    plan.rule = None
    return True


def _targets(
    cfg: Config,
    dialect: str,
    client_model: str | None,
    stream: bool,
    headers: list[tuple[str, str]],
    chain: Any,
    rule: Rule | None,
    native: dict[str, Any],
    hub: dict[str, Any] | None,
    hub_error: str | None,
) -> list[Target]:
    return reroute_targets(
        cfg, client_dialect=dialect, native=native, hub=hub, hub_error=hub_error,
        client_model=client_model, stream=stream, headers=headers, chain=chain, rule=rule,
    )  # fmt: skip


def _facts(
    dialect: str,
    native: dict[str, Any],
    hub: dict[str, Any] | None,
    client_model: str | None,
    ua: str | None,
    body: bytes,
    headers: list[tuple[str, str]],
) -> RequestFacts:
    """What a rule can match on. Prompt tokens are a cheap estimate (body bytes ÷ 4) so that
    matching costs microseconds, not a tokenizer run."""
    h = hub or {}
    thinking = h.get("thinking") if isinstance(h.get("thinking"), dict) else {}
    return RequestFacts(
        model=client_model,
        client=client_name(ua),
        dialect=dialect,
        prompt_tokens=len(body) // 4,
        has_tools=bool(h.get("tools") or native.get("tools")),
        thinking=thinking.get("type") == "enabled" or "reasoning_effort" in h,
        headers=dict(headers),
    )


def to_hub(
    dialect: str, native: dict[str, Any], model: str | None, stream: bool, **responses: bool
) -> tuple[dict[str, Any] | None, Any]:
    """The request in the OpenAI hub dialect, or ``(None, why)`` when it cannot be translated
    (Responses API: ``why`` is the ``DialectError``; ``responses``: ``drop_builtin_tools``)."""
    if dialect == "openai":
        return native, None
    if dialect == "responses":
        from kimi_intercept.dialects import responses as api

        return api.hub_or_error(native, model, **responses)
    try:
        if dialect in ("anthropic", "anthropic_count"):
            from kimi_intercept.dialects import anthropic

            return anthropic.to_openai_request(native, model=model), None
        from kimi_intercept.dialects import gemini

        return gemini.to_openai_request(native, model=model, stream=stream), None
    except (DialectError, ValueError, TypeError, KeyError, RecursionError) as e:
        return None, f"cannot translate the {dialect} request: {e}"
