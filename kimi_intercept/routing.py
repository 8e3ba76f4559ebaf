"""Routing decisions: which intercepted requests go where, and the exact upstream requests.

Pure functions over the request's parts; the addon feeds them, the relay executes the plan.

A request is *routed* when its host is intercepted and it is an OpenAI chat-completions call
(``POST …/chat/completions``, any prefix, any query — the OpenAI dialect:
https://platform.openai.com/docs/api-reference/chat/create). It is then either

- ``reroute``: sent to ``[routing] primary`` with the provider's key and model, then to the
  fallbacks in order; or
- ``passthrough`` (the ``100 - share`` percent): sent to the original URL with the client's
  own headers, unchanged, and counted.

Everything else (other paths, a body that is not a JSON object) is left to mitmproxy untouched.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .config import Config, ModelInfo

CHAT_COMPLETIONS = "/chat/completions"

# RFC 9110 §7.6.1 hop-by-hop headers, plus what the relay sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)
# Client credentials and account scoping that must not reach another provider.
_CLIENT_SECRETS = frozenset(
    {
        "authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "openai-organization",
        "openai-project",
    }
)


@dataclass(frozen=True)
class Target:
    """One upstream attempt: where, with which headers and body. ``headers`` may hold a key."""

    provider: str
    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    model: str | None
    model_info: ModelInfo | None
    skip_reason: str | None = None  # set when the target cannot be tried (e.g. no API key)


@dataclass
class RoutePlan:
    """Everything the relay needs for one client request, and what the row will say about it.

    Times: ``received`` is ``time.time()`` when the proxy had the whole request (seconds);
    ``started_at`` is the ISO 8601 UTC start of the request.
    """

    kind: str  # "reroute" | "passthrough"
    targets: list[Target]
    stream: bool
    request_json: dict[str, Any] = field(repr=False)
    client_model: str | None
    host: str
    client: str | None
    client_host: str | None
    started_at: str
    conversation: str = ""
    received: float = field(default_factory=time.time)
    prompt_tokens_estimate: int | None = None  # tiktoken count, filled in only when needed


def is_chat_completions(method: str, path: str) -> bool:
    """``POST`` to a path ending in ``/chat/completions`` (the query string is ignored)."""
    return method.upper() == "POST" and path.split("?", 1)[0].rstrip("/").endswith(CHAT_COMPLETIONS)


def client_name(user_agent: str | None) -> str | None:
    """A short client name from a User-Agent: ``"OpenAI/Python 2.54.0"`` stays whole,
    ``"claude-cli/2.1.328 (external, sdk-cli)"`` becomes ``"claude-cli/2.1.328"``."""
    if not user_agent:
        return None
    parts = user_agent.split()
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


def conversation_key(headers: list[tuple[str, str]], request_json: dict[str, Any]) -> str:
    """A stable id for the conversation a request belongs to (hex SHA-256).

    An explicit session header wins (``x-kimi-session``, then Claude Code's
    ``x-claude-code-session-id``); otherwise the conversation's stable prefix — every system
    message and the first user message — plus the client's User-Agent product name. Later turns
    only append messages, so every turn of one conversation gets the same key.
    """
    lower = {k.lower(): v for k, v in headers}
    for name in SESSION_HEADERS:
        if lower.get(name):
            return hashlib.sha256(f"{name}:{lower[name]}".encode()).hexdigest()
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
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


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
) -> RoutePlan | None:
    """Plan a request, or return ``None`` to leave it to mitmproxy untouched.

    ``url`` is the original absolute URL; ``roll`` a number in [0, 100) that is compared with
    ``[routing] share`` (below → reroute); by default :func:`share_roll` of the conversation, so
    the choice is sticky per conversation. Never raises on bad input: a body that is not a JSON
    object gives ``None``.
    """
    if host not in cfg.hosts or not is_chat_completions(method, path):
        return None
    try:
        request_json = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(request_json, dict):
        return None
    client_model = request_json.get("model") if isinstance(request_json.get("model"), str) else None
    lower = [(k.lower(), v) for k, v in headers]
    ua = next((v for k, v in lower if k == "user-agent"), None)
    conversation = conversation_key(headers, request_json)
    if roll is None:
        roll = share_roll(conversation)
    reroute = roll < cfg.routing.share
    if reroute:
        targets = _reroute_targets(cfg, request_json, client_model, lower)
    else:
        targets = [_passthrough_target(cfg, url, host, client_model, lower, body)]
    started = time.time() if started is None else started
    return RoutePlan(
        kind="reroute" if reroute else "passthrough",
        targets=targets,
        stream=request_json.get("stream") is True,
        request_json=request_json,
        client_model=client_model,
        host=host,
        client=client_name(ua),
        client_host=client_host,
        started_at=iso_utc(started),
        conversation=conversation,
    )


def _forwardable(headers: list[tuple[str, str]], drop: frozenset[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in headers:
        if k in _HOP_BY_HOP or k in drop or k.startswith("x-kimi-intercept"):
            continue
        out[k] = f"{out[k]}, {v}" if k in out else v
    out["accept-encoding"] = "identity"  # keep the SSE parseable while it passes
    return out


def _reroute_targets(
    cfg: Config,
    request_json: dict[str, Any],
    client_model: str | None,
    headers: list[tuple[str, str]],
) -> list[Target]:
    base = _forwardable(headers, _CLIENT_SECRETS)
    base["content-type"] = "application/json"
    targets = []
    for provider in cfg.chain:
        if provider.name == cfg.routing.primary:
            model = cfg.primary_model(client_model)
        else:
            model = provider.model or client_model
        body = dict(request_json)
        if model:
            body["model"] = model
        h = dict(base)
        if provider.api_key:
            h["authorization"] = f"Bearer {provider.api_key}"
        targets.append(
            Target(
                provider=provider.name,
                url=provider.url(CHAT_COMPLETIONS),
                headers=h,
                body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                model=model,
                model_info=cfg.model_info(model, provider.name),
                skip_reason=None if provider.api_key else provider.missing_key_hint(),
            )
        )
    return targets


def _passthrough_target(
    cfg: Config,
    url: str,
    host: str,
    client_model: str | None,
    headers: list[tuple[str, str]],
    body: bytes,
) -> Target:
    known = cfg.provider_for_host(host)
    return Target(
        provider=known.name if known else host,
        url=url,
        headers=_forwardable(headers, frozenset()),
        body=body,
        model=client_model,
        model_info=cfg.model_info(client_model, known.name if known else None),
    )
