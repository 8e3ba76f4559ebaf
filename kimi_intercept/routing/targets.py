"""Upstream requests: for each provider in the chain, the exact URL, headers and body to send.

A provider declares its dialect (``[providers.NAME] dialect``). When it is the client's dialect
the client's own body goes (with the provider's model and key); when the provider speaks the
OpenAI hub dialect and the client does not, the body translated by :mod:`.dialects` goes; any
other pair cannot be translated and the provider is skipped for that request.

Auth per dialect — OpenAI: ``Authorization: Bearer``; Anthropic: ``x-api-key`` and
``anthropic-version`` (https://docs.claude.com/en/api/versioning); Gemini: ``x-goog-api-key``
(https://ai.google.dev/gemini-api/docs/api-key). URLs: ``{base_url}/chat/completions``,
``{base_url}/v1/messages`` (Kimi's Anthropic endpoint is ``https://api.moonshot.ai/anthropic``),
``{base_url}/models/{model}:streamGenerateContent?alt=sse`` / ``:generateContent``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kimi_intercept.config.rules import ChainEntry, Rule, apply_overrides
from kimi_intercept.config.settings import Config, ModelInfo, Provider
from kimi_intercept.dialects.kimi import (
    KimiRequestError,
    normalize_anthropic_for_kimi,
    normalize_for_kimi,
)
from kimi_intercept.dialects.memo import body_bytes
from kimi_intercept.dialects.system_prompt import add_system_text

log = logging.getLogger(__name__)

KIMI_HOSTS = frozenset({"api.moonshot.ai", "api.moonshot.cn", "api.kimi.com"})
ANTHROPIC_VERSION = "2023-06-01"

# RFC 9110 §7.6.1 hop-by-hop headers, plus what the relay sets itself (the body it sends is
# always the decoded one: mitmproxy undoes the client's Content-Encoding).
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host",
        "content-length", "accept-encoding", "content-encoding",
    }
)  # fmt: skip
# Client credentials and account scoping that must not reach another provider.
_CLIENT_SECRETS = frozenset(
    {
        "authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie",
        "openai-organization", "openai-project",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Target:
    """One upstream attempt: where, with which headers and body. ``headers`` may hold a key.

    ``dialect`` is what the provider speaks; ``notes`` lists changes made to the body for this
    provider (Kimi normalisation), for the row's details. ``body_source`` is the body's bytes,
    or a function that makes them: :attr:`body` calls it on first use, so the targets a
    plan builds and then rebuilds (after the sanitizer, or for a fallback never tried) never
    serialize a body nobody sends (~1–2 ms for a 200k-token conversation).
    """

    provider: str
    url: str
    headers: dict[str, str] = field(repr=False)
    body_source: bytes | Callable[[], bytes] = field(repr=False)
    model: str | None
    model_info: ModelInfo | None
    skip_reason: str | None = None  # set when the target cannot be tried (e.g. no API key)
    dialect: str = "openai"
    notes: tuple[str, ...] = ()
    renamed: dict[str, str] = field(default_factory=dict)  # tool name sent -> client's name
    tool_ids: dict[str, str] = field(default_factory=dict)  # tool-call id sent -> client's id

    @property
    def body(self) -> bytes:
        """The request body to send (bytes), made from :attr:`body_source` on first use. Not
        ``functools.cached_property``: on Python 3.11 that holds one lock for every instance
        while it builds, so a big body built in a worker thread would stall the event loop's
        first use of any other target's body. Two threads building at once make equal bytes."""
        made = self.__dict__.get("_body")
        if made is None:
            source = self.body_source
            made = source if isinstance(source, bytes) else source()
            object.__setattr__(self, "_body", made)  # frozen: set once, as a cache
        return made  # type: ignore[no-any-return]

    @property
    def built(self) -> bool:
        """Whether :attr:`body` exists already (asking does not build it)."""
        return isinstance(self.body_source, bytes) or "_body" in self.__dict__

    def size(self, guess: int) -> int:
        """Bytes of :attr:`body` once it is built; before that ``guess`` (the client's request
        body size: the same within what the plan changes), so that asking never builds it on
        the event loop. A ``guess`` of 0 builds it."""
        return len(self.body) if self.built or not guess else guess


def is_kimi(provider: Provider) -> bool:
    """Moonshot's own endpoints (not Kimi models hosted by Groq or NVIDIA)."""
    return provider.host in KIMI_HOSTS


def reroute_targets(
    cfg: Config,
    *,
    client_dialect: str,
    native: dict[str, Any],
    hub: dict[str, Any] | None,
    hub_error: str | None,
    client_model: str | None,
    stream: bool,
    headers: list[tuple[str, str]],
    chain: Sequence[ChainEntry],
    rule: Rule | None = None,
) -> list[Target]:
    """One target per entry of ``chain`` (a rule's, or primary + fallbacks), in order, with
    the rule's overrides and the rule's and provider's ``system_prepend`` / ``system_append``
    applied (the rule's text outermost), then Kimi's rules (``cfg.kimi``) for Moonshot hosts.

    ``native`` is the client's body; ``hub`` the same request in the OpenAI dialect (``None``
    with ``hub_error`` when it could not be translated). ``headers`` are lower-cased.
    """
    base = forwardable(headers, _CLIENT_SECRETS)
    base["content-type"] = "application/json"
    targets = []
    seen: dict[int, tuple[Any, bytes]] = {}  # message JSON texts shared by the targets' bodies
    for entry in chain:
        provider = cfg.providers[entry.provider]
        if entry.model:
            model: str | None = entry.model
        elif provider.name == cfg.routing.primary:
            model = cfg.primary_model(client_model)
        else:
            model = provider.model or client_model
        skip = None if provider.api_key else provider.missing_key_hint()
        notes: tuple[str, ...] = ()
        renamed: dict[str, str] = {}
        ids: dict[str, str] = {}
        if provider.dialect == client_dialect:
            body = dict(native)
        elif provider.dialect == "openai" and hub is not None:
            body = dict(hub) if is_kimi(provider) else _without_kimi_fields(hub)
        else:
            body = {}
            skip = skip or (
                f"provider {provider.name!r} speaks {provider.dialect}; a {client_dialect} "
                "request can only be translated to an openai-dialect provider"
                + (f" ({hub_error})" if hub_error else "")
            )
        if model and provider.dialect != "gemini":
            body["model"] = model
        if body:
            body = apply_overrides(body, rule, provider.dialect)
            body = _system_text(body, provider, rule)
        if is_kimi(provider) and provider.dialect == "openai" and body and model:
            k = cfg.kimi
            try:
                fixed = normalize_for_kimi(
                    body, model=model, on_too_many_tools=k.on_too_many_tools,
                    fixed_sampling=k.fixed_sampling,
                    default_max_completion_tokens=k.default_max_completion_tokens,
                    rewrite_ids=k.rewrite_tool_call_ids, missing_reasoning=k.missing_reasoning,
                )  # fmt: skip
                body, notes = fixed.body, fixed.changes
                renamed, ids = dict(fixed.renamed), dict(fixed.ids)
            except KimiRequestError as e:
                skip = skip or str(e)
        elif is_kimi(provider) and provider.dialect == "anthropic" and body:
            fixed = normalize_anthropic_for_kimi(body, missing_reasoning=cfg.kimi.missing_reasoning)
            body, notes = fixed.body, fixed.changes
            for line in notes:
                log.warning(
                    "kimi-intercept: for %s (Kimi's Anthropic endpoint): %s", provider.name, line
                )
        targets.append(
            Target(
                provider=provider.name,
                url=_url(provider, model, stream),
                headers={**base, **_auth(provider, headers)},
                body_source=functools.partial(body_bytes, body, seen=seen),
                model=model,
                model_info=cfg.model_info(model, provider.name),
                skip_reason=skip,
                dialect=provider.dialect,
                notes=notes,
                renamed=renamed,
                tool_ids=ids,
            )
        )
    return targets


def _system_text(body: dict[str, Any], provider: Provider, rule: Rule | None) -> dict[str, Any]:
    """``body`` (in the provider's dialect) with the provider's, then the rule's, texts added
    around the system prompt: rule prepend, provider prepend, client's prompt, provider append,
    rule append."""
    body = add_system_text(body, provider.dialect, provider.system_prepend, provider.system_append)
    if rule is None:
        return body
    return add_system_text(body, provider.dialect, rule.system_prepend, rule.system_append)


def passthrough_target(
    cfg: Config,
    *,
    url: str,
    host: str,
    client_dialect: str,
    client_model: str | None,
    headers: list[tuple[str, str]],
    body: bytes,
) -> Target:
    """The original request to the original URL, unchanged (the client's own key included)."""
    known = cfg.provider_for_host(host)
    return Target(
        provider=known.name if known else host,
        url=url,
        headers=forwardable(headers, frozenset()),
        body_source=body,
        model=client_model,
        model_info=cfg.model_info(client_model, known.name if known else None),
        dialect=client_dialect,
    )


def _without_kimi_fields(hub: dict[str, Any]) -> dict[str, Any]:
    """A translated request for a non-Kimi OpenAI-dialect provider: no Kimi ``thinking`` field
    and no ``reasoning_content`` on earlier turns (DeepSeek rejects reasoning sent back,
    api-docs.deepseek.com/guides/reasoning_model; OpenAI rejects unknown message fields)."""
    body = {k: v for k, v in hub.items() if k != "thinking"}
    messages = body.get("messages")
    if isinstance(messages, list):
        body["messages"] = [
            {k: v for k, v in m.items() if k != "reasoning_content"}
            if isinstance(m, dict) and "reasoning_content" in m
            else m
            for m in messages
        ]
    return body


def forwardable(headers: list[tuple[str, str]], drop: frozenset[str]) -> dict[str, str]:
    """Client headers that may travel upstream (lower-cased names in, merged duplicates out)."""
    out: dict[str, str] = {}
    for k, v in headers:
        if k in _HOP_BY_HOP or k in drop or k.startswith("x-kimi-intercept"):
            continue
        out[k] = f"{out[k]}, {v}" if k in out else v
    out["accept-encoding"] = "identity"  # keep the SSE parseable while it passes
    return out


def _url(provider: Provider, model: str | None, stream: bool) -> str:
    if provider.dialect == "anthropic":
        return provider.url("/v1/messages")
    if provider.dialect == "gemini":
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return provider.url(f"/models/{model or 'gemini'}:{method}")
    return provider.url("/chat/completions")


def _auth(provider: Provider, headers: list[tuple[str, str]]) -> dict[str, str]:
    if not provider.api_key:
        return {}
    if provider.dialect == "anthropic":
        version = next((v for k, v in headers if k == "anthropic-version"), ANTHROPIC_VERSION)
        return {"x-api-key": provider.api_key, "anthropic-version": version}
    if provider.dialect == "gemini":
        return {"x-goog-api-key": provider.api_key}
    return {"authorization": f"Bearer {provider.api_key}"}
