"""What an upstream failure means, and what the relay should do about it.

Pure functions: status, headers and body bytes in, a :class:`Failure` out. No I/O; the only
clock is the optional ``now`` (wall-clock epoch seconds) used to turn an HTTP-date
``Retry-After`` into seconds.

Decision table — :data:`TRANSPORT_RULES` then :data:`RULES`, first match wins, so "(status
alone)" means any body the rows above did not claim; :func:`decision_table` prints it as
markdown for the README::

    status       kind            action    body says (error type/code/status/reason, or wording)
    -----------  --------------  --------  -------------------------------------------------------
    transport    connect         retry     connection refused or reset
    transport    tls             retry     TLS handshake or certificate failure
    transport    timeout         retry     no answer / no first byte in time
    529          overloaded      retry     (status alone)
    any          overloaded      retry     overloaded_error, engine_overloaded_error,
                                           server_is_overloaded, "the engine is currently
                                           overloaded"
    402          quota           cooldown  (status alone)
    400 403 429  quota           cooldown  exceeded_current_quota_error, insufficient_quota,
                                           credit_balance_exhausted, *_spend_limit_exceeded,
                                           billing_error, enforced_spend_limit_reached,
                                           "reached your usage limit", "monthly usage limit",
                                           "credit balance is too low", "reached your
                                           specified", "spend limit", "insufficient balance"
    401 403      auth            cooldown  (status alone)
    any          auth            cooldown  invalid_authentication_error, incorrect_api_key_error,
                                           authentication_error, permission_error,
                                           permission_denied_error, invalid_api_key,
                                           API_KEY_INVALID, UNAUTHENTICATED, PERMISSION_DENIED
    any          rate_limit      fallback  rate_limit_reached_error, rate_limit_exceeded,
                                           rate_limit_error, RESOURCE_EXHAUSTED
    429          rate_limit      fallback  (status alone)
    400 413      context_length  context   context_length_exceeded, request_too_large,
                                           "maximum context length", "input token length too
                                           long", "exceeded model token limit", "prompt is too
                                           long", "exceeds the maximum number of tokens",
                                           "total message size", "exceeds the context window"
    413          context_length  context   (status alone)
    408          timeout         retry     (status alone)
    500 502 503  server_error    retry     (status alone)
    504
    4xx          client_error    client    (status alone)
    any          server_error    fallback  (status alone: 501, 505, Cloudflare 520-524, ...)

Actions: ``retry`` = transient, retry the same provider with backoff, then fall back;
``fallback`` = go to the next provider now (the relay may retry instead when
``retry_after_s`` is short); ``cooldown`` = mark the provider unavailable, fall back;
``context`` = never resend as is, only to a provider whose window fits; ``client`` = the
client's own mistake, return it unchanged. Codes and statuses are compared lower-cased.

Two deliberate traps in the table: Gemini's 429 says "You exceeded your current quota, please
check your plan and billing details" for an ordinary per-minute limit (with a ``RetryInfo``),
which is OpenAI's ``insufficient_quota`` wording too — so quota is recognised by code/type,
never by that sentence. And Moonshot's 429 means three different things (capacity, quota, rate
limit), told apart only by ``error.type``.

Where each wording, code and header comes from (⚠ = wording seen in captures or secondary
pages, not on the provider's own page):

- Moonshot error table (``engine_overloaded_error``, ``exceeded_current_quota_error`` on 429
  and 403, ``rate_limit_reached_error`` "…please try again after {time} seconds",
  ``invalid_authentication_error``, ``incorrect_api_key_error``, ``permission_denied_error``,
  "Input token length too long", "Your request exceeded model token limit"):
  https://platform.kimi.ai/docs/api/errors (Chinese table: MoonshotAI/MoonshotAI-Cookbook
  ``examples/context_caching/kimi_api.json``). No ``Retry-After`` is documented for Moonshot.
- Kimi Code ("The engine is currently overloaded", "You've reached your usage limit for this
  billing cycle / period", "You've reached kimi monthly usage limit", 402 "unable to verify
  your membership benefits", "total message size N exceeds limit 2097152"):
  https://www.kimi.com/code/docs/en/kimi-code/error-reference.html
- OpenAI (``context_length_exceeded``, ``rate_limit_exceeded`` "Please try again in 1.4s",
  ``insufficient_quota``, ``invalid_api_key``, 503 ``server_is_overloaded``):
  https://developers.openai.com/docs/guides/error-codes ; spend-limit codes
  ``credit_balance_exhausted``, ``organization_spend_limit_exceeded``,
  ``project_spend_limit_exceeded``: https://developers.openai.com/api/docs/guides/spend-limits ;
  ``x-ratelimit-reset-requests`` / ``-tokens`` (``1s``, ``6m0s``, Go duration syntax
  https://pkg.go.dev/time#ParseDuration): https://developers.openai.com/docs/guides/rate-limits ;
  ``retry-after-ms``: openai-python ``src/openai/_base_client.py``
  (``_parse_retry_after_header``). "Your input exceeds the context window of this model" ⚠.
- DeepSeek (400/401/402 Insufficient Balance/422/429/500/503):
  https://api-docs.deepseek.com/quick_start/error_codes ; "This model's maximum context length
  is 131072 tokens. However, you requested …" ⚠ (quoted in evalstate/fast-agent#621; the same
  sentence is vLLM's and OpenAI's legacy wording).
- Anthropic (``invalid_request_error``, ``authentication_error``, 402 ``billing_error``,
  ``permission_error``, 413 ``request_too_large``, ``rate_limit_error`` + ``retry-after``,
  529 ``overloaded_error``): https://docs.claude.com/en/api/errors and
  https://docs.claude.com/en/api/rate-limits ; "prompt is too long: N tokens > M maximum" ⚠;
  spend limits ⚠ (429 with ``error.details.error_code: "enforced_spend_limit_reached"``; 400
  "You have reached your specified (workspace) API usage limits"; 400 "Your credit balance is
  too low"), as summarised from the errors page by developersdigest.tech.
- Gemini (google.rpc.Status: ``RESOURCE_EXHAUSTED`` with ``QuotaFailure`` and ``RetryInfo``
  ``retryDelay: "28s"``, ``INVALID_ARGUMENT`` + ``ErrorInfo.reason: API_KEY_INVALID``,
  ``PERMISSION_DENIED``, ``UNAVAILABLE``): https://ai.google.dev/gemini-api/docs/troubleshooting
  and https://cloud.google.com/apis/design/errors#error_details ; ``retryDelay`` is a JSON
  Duration (``"28s"``, ``"1.5s"``): https://protobuf.dev/programming-guides/proto3/#json ;
  "The input token count (N) exceeds the maximum number of tokens allowed (M)" ⚠
  (google-gemini/gemini-cli#11248).
- ``Retry-After`` (delay-seconds or HTTP-date): RFC 9110 §10.2.3,
  https://www.rfc-editor.org/rfc/rfc9110#field.retry-after ; 408 Request Timeout:
  RFC 9110 §15.5.9, https://www.rfc-editor.org/rfc/rfc9110#status.408.

The table follows Bifrost's retry table (maximhq/bifrost
``docs/features/retries-and-fallbacks.mdx``: 5xx/network → retry with backoff; 429 → move on;
401/402/403 → the credential is dead, no backoff; 400/404/422 → no retry) and adds what Bifrost
lacks: overload vs. rate limit vs. quota on one status, and context length as its own class
(LiteLLM ``context_window_fallbacks``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from kimi_intercept.dialects.errors import (  # noqa: F401 (re-exported: the failure vocabulary)
    MAX_MESSAGE,
    clip_message,
    codes_and_message,
    error_message,
    redact,
)
from kimi_intercept.relay.retry_after import retry_after_s  # noqa: F401 (re-exported)

_SCAN_BYTES = 65536  # how much of a body the wording/retryDelay scan reads


class Action(str, Enum):
    RETRY = "retry"  # transient: retry the same provider with backoff (then fall back)
    FALLBACK = "fallback"  # go to the next provider at once (e.g. 429 with a long wait)
    COOLDOWN = "cooldown"  # no retry; mark the provider unavailable for the cooldown; fall back
    CONTEXT = "context"  # context length exceeded: only a provider whose window fits
    CLIENT = "client"  # the client's own error: return it unchanged, no fallback


@dataclass(frozen=True)
class Failure:
    kind: str  # connect tls timeout server_error overloaded rate_limit quota auth
    #            context_length client_error
    action: Action
    status: int | None  # HTTP status, None for transport failures
    message: str  # the provider's message (error.message etc.), at most MAX_MESSAGE chars
    retry_after_s: float | None = None  # what the provider asked us to wait, when it said


@dataclass(frozen=True)
class Rule:
    """One row of the decision table.

    ``status`` is a space-separated list of codes, ``4xx``-style classes, or ``any`` (≥ 400).
    With neither ``codes`` nor ``phrases`` the status alone decides; otherwise one of the
    codes (``error.type``/``code``/``status``, Anthropic ``details.error_code``, Gemini
    ``details[].reason``; lower-case) or phrases (lower-case substrings of the message) must
    be present too.
    """

    status: str
    kind: str
    action: Action
    codes: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()
    source: str = ""

    def matches(self, status: int, codes: frozenset[str], text: str) -> bool:
        if not _status_matches(self.status, status):
            return False
        if not self.codes and not self.phrases:
            return True
        return any(c in codes for c in self.codes) or any(p in text for p in self.phrases)


@dataclass(frozen=True)
class TransportRule:
    kind: str  # what the caller passes to classify_transport
    failure_kind: str
    action: Action
    says: str


TRANSPORT_RULES: tuple[TransportRule, ...] = (
    TransportRule("connect", "connect", Action.RETRY, "connection refused"),
    TransportRule("reset", "connect", Action.RETRY, "connection reset"),
    TransportRule("tls", "tls", Action.RETRY, "TLS handshake or certificate failure"),
    TransportRule("timeout", "timeout", Action.RETRY, "no answer / no first byte in time"),
)

SOURCES: dict[str, str] = {
    "Moonshot": "https://platform.kimi.ai/docs/api/errors",
    "Kimi Code": "https://www.kimi.com/code/docs/en/kimi-code/error-reference.html",
    "OpenAI": "https://developers.openai.com/docs/guides/error-codes",
    "OpenAI spend limits": "https://developers.openai.com/api/docs/guides/spend-limits",
    "DeepSeek": "https://api-docs.deepseek.com/quick_start/error_codes",
    "Anthropic": "https://docs.claude.com/en/api/errors",
    "Gemini": "https://ai.google.dev/gemini-api/docs/troubleshooting",
    "RFC 9110": "https://www.rfc-editor.org/rfc/rfc9110#status.408",
    "Bifrost": (
        "https://github.com/maximhq/bifrost/blob/main/docs/features/retries-and-fallbacks.mdx"
    ),
}

CONTEXT_CODES = ("context_length_exceeded", "request_too_large")
CONTEXT_PHRASES = (
    "maximum context length",  # OpenAI (legacy), DeepSeek, vLLM
    "input token length too long",  # Moonshot
    "exceeded model token limit",  # Moonshot, Kimi Code
    "prompt is too long",  # Anthropic
    "exceeds the maximum number of tokens",  # Gemini
    "total message size",  # Kimi Code 2 MiB body cap
    "exceeds the context window",  # OpenAI Responses ⚠
)

RULES: tuple[Rule, ...] = (
    Rule("529", "overloaded", Action.RETRY, source="Anthropic"),
    Rule(
        "any",
        "overloaded",
        Action.RETRY,
        codes=("overloaded_error", "engine_overloaded_error", "server_is_overloaded"),
        phrases=("the engine is currently overloaded",),
        source="Anthropic, Moonshot, Kimi Code, OpenAI",
    ),
    Rule("402", "quota", Action.COOLDOWN, source="DeepSeek, Anthropic, Kimi Code"),
    Rule(
        "400 403 429",
        "quota",
        Action.COOLDOWN,
        codes=(
            "exceeded_current_quota_error",
            "insufficient_quota",
            "credit_balance_exhausted",
            "organization_spend_limit_exceeded",
            "project_spend_limit_exceeded",
            "billing_error",
            "enforced_spend_limit_reached",
        ),
        phrases=(
            "reached your usage limit",
            "monthly usage limit",
            "credit balance is too low",
            "reached your specified",
            "spend limit",
            "insufficient balance",
        ),
        source="Moonshot, OpenAI spend limits, Anthropic, Kimi Code",
    ),
    Rule("401 403", "auth", Action.COOLDOWN, source="Moonshot, OpenAI, Anthropic, Gemini"),
    Rule(
        "any",
        "auth",
        Action.COOLDOWN,
        codes=(
            "invalid_authentication_error",
            "incorrect_api_key_error",
            "authentication_error",
            "permission_error",
            "permission_denied_error",
            "invalid_api_key",
            "api_key_invalid",
            "unauthenticated",
            "permission_denied",
        ),
        source="Moonshot, OpenAI, Anthropic, Gemini",
    ),
    Rule(
        "any",
        "rate_limit",
        Action.FALLBACK,
        codes=(
            "rate_limit_reached_error",
            "rate_limit_exceeded",
            "rate_limit_error",
            "resource_exhausted",
        ),
        source="Moonshot, OpenAI, Anthropic, Gemini",
    ),
    Rule("429", "rate_limit", Action.FALLBACK, source="DeepSeek, Kimi Code"),
    Rule(
        "400 413",
        "context_length",
        Action.CONTEXT,
        codes=CONTEXT_CODES,
        phrases=CONTEXT_PHRASES,
        source="OpenAI, Moonshot, Kimi Code, Anthropic, DeepSeek, Gemini",
    ),
    Rule("413", "context_length", Action.CONTEXT, source="Anthropic"),
    Rule("408", "timeout", Action.RETRY, source="RFC 9110"),
    Rule("500 502 503 504", "server_error", Action.RETRY, source="Bifrost"),
    Rule("4xx", "client_error", Action.CLIENT, source="Bifrost"),
    Rule("any", "server_error", Action.FALLBACK, source="Bifrost"),
)


def classify_response(
    status: int, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> Failure | None:
    """The :class:`Failure` an upstream answer means, or ``None`` for a success (< 400).

    ``headers``: any mapping (names in any case). ``now``: wall-clock epoch seconds for an
    HTTP-date ``Retry-After`` (default: the current time).
    """
    if status < 400:
        return None
    codes, text = codes_and_message(body)
    lowered = text.lower()
    rule = next(r for r in RULES if r.matches(status, codes, lowered))
    scan = body[:_SCAN_BYTES].decode("utf-8", "replace")
    wait = retry_after_s(headers, scan, now, status=status)
    return Failure(rule.kind, rule.action, status, clip_message(text) or f"HTTP {status}", wait)


def classify_transport(kind: str, message: str) -> Failure:
    """A failure before any status line: ``kind`` is connect, reset, tls or timeout."""
    for rule in TRANSPORT_RULES:
        if rule.kind == kind:
            return Failure(rule.failure_kind, rule.action, None, clip_message(message))
    known = ", ".join(r.kind for r in TRANSPORT_RULES)
    raise ValueError(f"unknown transport failure kind {kind!r} (expected one of: {known})")


def is_context_length_error(status: int, body: bytes) -> bool:
    """True when the answer says the request does not fit the model's window or size cap."""
    codes, text = codes_and_message(body)
    lowered = text.lower()
    return any(r.kind == "context_length" and r.matches(status, codes, lowered) for r in RULES)


def describe_exc(e: BaseException) -> str:
    """``"ExceptionType: message"`` of a transport exception, keys redacted."""
    return redact(f"{type(e).__name__}: {e}".rstrip(": "))


def _status_matches(spec: str, status: int) -> bool:
    for token in spec.split():
        if token == "any":
            return True
        if token.endswith("xx"):
            if status // 100 == int(token[0]):
                return True
        elif int(token) == status:
            return True
    return False


def decision_table() -> str:
    """The decision table as markdown (transport rows, then :data:`RULES` in order)."""
    lines = [
        "| status | body says | kind | action | source |",
        "|---|---|---|---|---|",
    ]
    for t in TRANSPORT_RULES:
        kind, action = t.failure_kind, t.action.value
        lines.append(f"| transport (`{t.kind}`) | {t.says} | {kind} | {action} | |")
    for rule in RULES:
        says = ", ".join([f"`{c}`" for c in rule.codes] + [f'"{p}"' for p in rule.phrases])
        status = "any ≥ 400" if rule.status == "any" else rule.status.replace(" ", ", ")
        says = says or "(status alone)"
        links = ", ".join(
            f"[{name}]({SOURCES[name]})" if name in SOURCES else name
            for name in (s.strip() for s in rule.source.split(","))
            if name
        )
        lines.append(f"| {status} | {says} | {rule.kind} | {rule.action.value} | {links} |")
    return "\n".join(lines) + "\n"


class AttemptFailed(Exception):
    """One upstream attempt failed before anything reached the client (the relay can still
    retry or fall back); carries the classified :class:`Failure`."""

    def __init__(self, failure: Failure):
        super().__init__(f"{failure.kind}: {failure.message}")
        self.failure = failure
