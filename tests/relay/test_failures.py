"""Every row of the failure decision table, from the documented error bodies in tests/wire."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

from kimi_intercept.relay.failures import (
    RULES,
    TRANSPORT_RULES,
    Action,
    Failure,
    classify_response,
    classify_transport,
    decision_table,
    error_message,
    is_context_length_error,
    retry_after_s,
)

DOCUMENTED = Path(__file__).resolve().parents[1] / "wire" / "documented"
RETRY, FALLBACK, COOLDOWN, CONTEXT, CLIENT = (
    Action.RETRY,
    Action.FALLBACK,
    Action.COOLDOWN,
    Action.CONTEXT,
    Action.CLIENT,
)
MOONSHOT_RPM = (
    "Your account cn0psmmcp7fclnphkcpg<ak-ezxxxxxxxxxxxxxxxxxx> request reached max requset: 3, "
    "please try again after 1 seconds"
)
OPENAI_TPM = (
    "Rate limit reached for gpt-4o in organization org-exampleorgid123 on tokens per min (TPM): "
    "Limit 30000, Used 29500, Requested 1200. Please try again in 1.4s. Visit "
    "https://platform.openai.com/account/rate-limits to learn more."
)
ANTHROPIC_TPM = (
    "Number of request tokens has exceeded your per-minute rate limit "
    "(https://docs.anthropic.com/en/api/rate-limits); see the response headers for current "
    "usage. Please reduce the prompt length or the maximum tokens requested, or try again later. "
    "You may also contact sales at https://www.anthropic.com/contact-sales to discuss your "
    "options for a rate limit increase."
)
OPENAI_CONTEXT = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted in "
    "130536 tokens. Please reduce the length of the messages."
)


def documented(name: str) -> bytes:
    return (DOCUMENTED / name).read_bytes()


def openai_shape(message: str, type_: str, code: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}
    ).encode()


def moonshot_shape(message: str, type_: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_}}).encode()


def anthropic_shape(type_: str, message: str, **extra: object) -> bytes:
    error = {"type": type_, "message": message, **extra}
    return json.dumps({"type": "error", "error": error, "request_id": "req_01"}).encode()


def gemini_shape(code: int, status: str, message: str, details: list[object]) -> bytes:
    error = {"code": code, "message": message, "status": status, "details": details}
    return json.dumps({"error": error}).encode()


DOCUMENTED_CASES = [
    (
        "moonshot_error_429_engine_overloaded.json",
        429,
        Failure(
            "overloaded",
            RETRY,
            429,
            "The engine is currently overloaded, please try again later",
        ),
    ),
    (
        "anthropic_error_529_overloaded.json",
        529,
        Failure("overloaded", RETRY, 529, "Overloaded"),
    ),
    (
        "moonshot_error_429_rate_limit_rpm.json",
        429,
        Failure("rate_limit", FALLBACK, 429, MOONSHOT_RPM, 1.0),
    ),
    (
        "openai_error_429_rate_limit.json",
        429,
        Failure("rate_limit", FALLBACK, 429, OPENAI_TPM, 1.4),
    ),
    (
        "anthropic_error_429_rate_limit.json",
        429,
        Failure("rate_limit", FALLBACK, 429, ANTHROPIC_TPM),
    ),
    (
        "gemini_error_429.json",
        429,
        Failure(
            "rate_limit",
            FALLBACK,
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            28.0,
        ),
    ),
    (
        "moonshot_error_429_quota.json",
        429,
        Failure(
            "quota",
            COOLDOWN,
            429,
            "You exceeded your current token quota: <token_credit>, please check your "
            "account balance",
        ),
    ),
    (
        "deepseek_error_402_insufficient_balance.json",
        402,
        Failure("quota", COOLDOWN, 402, "Insufficient Balance"),
    ),
    (
        "moonshot_error_401_invalid_authentication.json",
        401,
        Failure("auth", COOLDOWN, 401, "Invalid Authentication"),
    ),
    (
        "openai_error_400_context_length.json",
        400,
        Failure("context_length", CONTEXT, 400, OPENAI_CONTEXT),
    ),
    (
        "moonshot_error_400_token_limit.json",
        400,
        Failure("context_length", CONTEXT, 400, "Your request exceeded model token limit: 262144"),
    ),
    (
        "anthropic_error_400_prompt_too_long.json",
        400,
        Failure(
            "context_length",
            CONTEXT,
            400,
            "prompt is too long: 208315 tokens > 200000 maximum",
        ),
    ),
    (
        "moonshot_error_400_content_filter.json",
        400,
        Failure(
            "client_error",
            CLIENT,
            400,
            "The request was rejected because it was considered high risk",
        ),
    ),
    (
        "moonshot_error_400_temperature.json",
        400,
        Failure(
            "client_error", CLIENT, 400, "invalid temperature: only 0.6 is allowed for this model"
        ),
    ),
    (
        "moonshot_error_404_model.json",
        404,
        Failure("client_error", CLIENT, 404, "Not found the model kimi-k9 or Permission denied"),
    ),
]


@pytest.mark.parametrize(("name", "status", "expected"), DOCUMENTED_CASES)
def test_documented_error_bodies(name: str, status: int, expected: Failure) -> None:
    assert classify_response(status, {}, documented(name)) == expected


def test_every_documented_error_body_is_covered() -> None:
    covered = {name for name, _, _ in DOCUMENTED_CASES}
    assert covered == {p.name for p in DOCUMENTED.glob("*error*.json")}
    assert len(covered) == len(DOCUMENTED_CASES) == 15


@pytest.mark.parametrize(
    ("status", "body", "kind", "action"),
    [
        # overloaded: any status whose body says so
        (500, anthropic_shape("overloaded_error", "Overloaded"), "overloaded", RETRY),
        (429, b'{"error":{"message":"The engine is currently overloaded"}}', "overloaded", RETRY),
        (
            503,
            openai_shape(
                "The server is overloaded", "service_unavailable_error", "server_is_overloaded"
            ),
            "overloaded",
            RETRY,
        ),
        # quota / billing
        (
            429,
            openai_shape(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            ),
            "quota",
            COOLDOWN,
        ),
        (
            429,
            openai_shape(
                "Spend limit reached", "insufficient_quota", "project_spend_limit_exceeded"
            ),
            "quota",
            COOLDOWN,
        ),
        (
            403,
            moonshot_shape(
                "Your account cn0p<ak-ez> is not active, current state: suspended, you may "
                "consider to check your account balance",
                "exceeded_current_quota_error",
            ),
            "quota",
            COOLDOWN,
        ),
        (402, anthropic_shape("billing_error", "Payment required"), "quota", COOLDOWN),
        (
            429,
            anthropic_shape(
                "rate_limit_error",
                "Your organization has reached its monthly usage limit.",
                details={"error_code": "enforced_spend_limit_reached"},
            ),
            "quota",
            COOLDOWN,
        ),
        (
            400,
            anthropic_shape(
                "invalid_request_error",
                "You have reached your specified API usage limits. You will regain access on "
                "2026-11-01 at 00:00 UTC.",
            ),
            "quota",
            COOLDOWN,
        ),
        (
            400,
            anthropic_shape(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API.",
            ),
            "quota",
            COOLDOWN,
        ),
        (
            403,
            b'{"error":{"message":"You\'ve reached your usage limit for this billing cycle"}}',
            "quota",
            COOLDOWN,
        ),
        (
            429,
            b'{"error":{"message":"You\'ve reached kimi monthly usage limit"}}',
            "quota",
            COOLDOWN,
        ),
        (
            402,
            b'{"error":{"message":"unable to verify your membership benefits"}}',
            "quota",
            COOLDOWN,
        ),
        # auth
        (401, anthropic_shape("authentication_error", "invalid x-api-key"), "auth", COOLDOWN),
        (403, anthropic_shape("permission_error", "no access to this model"), "auth", COOLDOWN),
        (
            403,
            moonshot_shape("The API you are accessing is not open", "permission_denied_error"),
            "auth",
            COOLDOWN,
        ),
        (
            403,
            b'{"error":{"message":"Kimi For Coding is currently only available for Coding '
            b'Agents"}}',
            "auth",
            COOLDOWN,
        ),
        (
            400,
            gemini_shape(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                    }
                ],
            ),
            "auth",
            COOLDOWN,
        ),
        # rate limits without a documented body
        (429, b'{"error":{"message":"Rate Limit Reached"}}', "rate_limit", FALLBACK),
        (429, b"We're receiving too many requests", "rate_limit", FALLBACK),
        # context length in each provider's wording
        (
            400,
            moonshot_shape("Input token length too long", "invalid_request_error"),
            "context_length",
            CONTEXT,
        ),
        (
            400,
            openai_shape(
                "This model's maximum context length is 131072 tokens. However, you requested "
                "131134 tokens (122942 in the messages, 8192 in the completion). Please reduce "
                "the length of the messages or completion.",
                "invalid_request_error",
                "invalid_request_error",
            ),
            "context_length",
            CONTEXT,
        ),
        (
            400,
            gemini_shape(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200293) exceeds the maximum number of tokens allowed "
                "(1048576).",
                [],
            ),
            "context_length",
            CONTEXT,
        ),
        (
            400,
            b'{"error":{"message":"total message size 2200000 exceeds limit 2097152"}}',
            "context_length",
            CONTEXT,
        ),
        (
            413,
            anthropic_shape("request_too_large", "Request exceeds the maximum allowed size"),
            "context_length",
            CONTEXT,
        ),
        (413, b"<html><body>413 Request Entity Too Large</body></html>", "context_length", CONTEXT),
        # transient and server-side
        (408, b"", "timeout", RETRY),
        (
            500,
            moonshot_shape("Failed to extract file: boom", "server_error"),
            "server_error",
            RETRY,
        ),
        (502, b"<html>502 Bad Gateway</html>", "server_error", RETRY),
        (503, b'{"error":{"message":"Server Overloaded"}}', "server_error", RETRY),
        (504, b"", "server_error", RETRY),
        (501, b"", "server_error", FALLBACK),
        (522, b"", "server_error", FALLBACK),
        # the client's own mistakes
        (422, openai_shape("Invalid Parameters", "invalid_request_error"), "client_error", CLIENT),
        (404, anthropic_shape("not_found_error", "model: claude-x"), "client_error", CLIENT),
    ],
)
def test_table_rows(status: int, body: bytes, kind: str, action: Action) -> None:
    failure = classify_response(status, {}, body)
    assert failure is not None
    assert (failure.kind, failure.action, failure.status, failure.retry_after_s) == (
        kind,
        action,
        status,
        None,
    )


@pytest.mark.parametrize("status", [200, 201, 204, 304, 399])
def test_success_is_not_a_failure(status: int) -> None:
    assert classify_response(status, {"Retry-After": "5"}, b'{"error":{"message":"x"}}') is None


def test_empty_body_names_the_status() -> None:
    assert classify_response(503, {}, b"") == Failure("server_error", RETRY, 503, "HTTP 503")


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("connect", Failure("connect", RETRY, None, "ConnectionRefusedError: [Errno 111]")),
        ("reset", Failure("connect", RETRY, None, "ConnectionRefusedError: [Errno 111]")),
        ("tls", Failure("tls", RETRY, None, "ConnectionRefusedError: [Errno 111]")),
        ("timeout", Failure("timeout", RETRY, None, "ConnectionRefusedError: [Errno 111]")),
    ],
)
def test_transport_failures_are_retried(kind: str, expected: Failure) -> None:
    assert classify_transport(kind, "ConnectionRefusedError: [Errno 111]") == expected


def test_unknown_transport_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError) as e:
        classify_transport("dns", "x")
    assert str(e.value) == (
        "unknown transport failure kind 'dns' (expected one of: connect, reset, tls, timeout)"
    )


def test_transport_message_is_clipped() -> None:
    failure = classify_transport("timeout", "x" * 600)
    assert failure.message == "x" * 499 + "…"


# --- retry_after_s ---------------------------------------------------------------------------

NOW = datetime(2026, 10, 21, 7, 28, 0, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("headers", "message", "status", "expected"),
    [
        ({"Retry-After": "30"}, "", None, 30.0),
        ({"retry-after": "0"}, "", None, 0.0),
        ({"RETRY-AFTER": "Wed, 21 Oct 2026 07:29:30 GMT"}, "", None, 90.0),
        ({"Retry-After": "Wed, 21 Oct 2026 07:27:00 GMT"}, "", None, 0.0),  # in the past
        ({"Retry-After": "soon"}, "", None, None),
        ({"retry-after-ms": "1500"}, "", None, 1.5),
        ({}, OPENAI_TPM, None, 1.4),
        ({}, MOONSHOT_RPM, None, 1.0),
        ({}, "Rate limit reached. Please try again in 20ms.", None, 0.02),
        ({}, "Please try again in 6m0s.", None, 360.0),
        ({}, "Please retry in 28.38s.", None, 28.38),
        ({}, "please try again after 2 minutes", None, 120.0),
        ({}, "please try again later", None, None),
        ({}, documented("gemini_error_429.json").decode(), None, 28.0),
        ({}, documented("gemini_error_429.json"), None, 28.0),  # bytes work too
        # the largest explicit statement wins
        ({"Retry-After": "2", "retry-after-ms": "500"}, OPENAI_TPM, None, 2.0),
        ({"Retry-After": "1"}, "please try again after 3 seconds", None, 3.0),
        # OpenAI reset headers: only on a 429, only when nothing explicit was said
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}, "", 429, 360.0),
        ({"x-ratelimit-reset-tokens": "1.4s"}, "", 429, 1.4),
        ({"x-ratelimit-reset-requests": "20ms"}, "", 429, 0.02),
        ({"x-ratelimit-reset-requests": "2"}, "", 429, 2.0),
        ({"x-ratelimit-reset-tokens": "6m0s"}, "", 200, None),
        ({"x-ratelimit-reset-tokens": "6m0s"}, "", None, None),
        ({"x-ratelimit-reset-tokens": "6m0s"}, OPENAI_TPM, 429, 1.4),
        ({"x-ratelimit-reset-tokens": "later"}, "", 429, None),
        ({}, "", 429, None),
    ],
)
def test_retry_after(
    headers: dict[str, str], message: str | bytes, status: int | None, expected: float | None
) -> None:
    assert retry_after_s(headers, message, NOW, status=status) == expected


def test_http_date_retry_after_is_the_same_in_any_timezone_form() -> None:
    when = datetime(2026, 10, 21, 7, 28, 45, tzinfo=timezone.utc)
    header = format_datetime(when, usegmt=True)
    assert header == "Wed, 21 Oct 2026 07:28:45 GMT"
    assert retry_after_s({"Retry-After": header}, "", NOW) == 45.0


def test_classify_response_reads_retry_after_header() -> None:
    body = documented("anthropic_error_429_rate_limit.json")
    headers = {"Retry-After": "Wed, 21 Oct 2026 07:28:12 GMT", "request-id": "req_01"}
    assert classify_response(429, headers, body, now=NOW) == Failure(
        "rate_limit", FALLBACK, 429, ANTHROPIC_TPM, 12.0
    )


def test_classify_response_uses_openai_reset_headers_on_a_bare_429() -> None:
    headers = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "7.66s"}
    assert classify_response(429, headers, b"") == Failure(
        "rate_limit", FALLBACK, 429, "HTTP 429", 7.66
    )


# --- error_message ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (documented("openai_error_400_context_length.json"), OPENAI_CONTEXT),
        (documented("anthropic_error_529_overloaded.json"), "Overloaded"),
        (
            documented("gemini_error_429.json"),
            "You exceeded your current quota, please check your plan and billing details.",
        ),
        (b'[{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}]', "bad"),
        (b'{"error":"upstream said no"}', "upstream said no"),
        (b'{"object":"error","message":"vLLM says no","type":"BadRequestError"}', "vLLM says no"),
        (b'{"detail":"Not Found"}', "Not Found"),
        (b'{"foo": 1}', '{"foo": 1}'),
        (b'"just a string"', '"just a string"'),
        (
            b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
            b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
            b"</body>\r\n</html>\r\n",
            "502 Bad Gateway 502 Bad Gateway nginx",
        ),
        (
            b"upstream connect error or disconnect/reset\n",
            "upstream connect error or disconnect/reset",
        ),
        (b"\xff\xfe upstream \x80 error", "\ufffd\ufffd upstream \ufffd error"),
        (b'{"error":{"message":"caf\xe9"}}', "caf\ufffd"),  # Latin-1 byte in "JSON"
        (b"", ""),
        (b'{"error":{"message":"' + b"y" * 600 + b'"}}', "y" * 499 + "…"),
        (b"[" * 100_000, "[" * 499 + "…"),  # nesting too deep for the json module
    ],
)
def test_error_message(body: bytes, expected: str) -> None:
    assert error_message(body) == expected


def test_non_json_non_utf8_body_still_classifies() -> None:
    assert classify_response(502, {}, b"\x80\x81 bad gateway") == Failure(
        "server_error", RETRY, 502, "\ufffd\ufffd bad gateway"
    )


# --- is_context_length_error -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "expected"),
    [
        ("openai_error_400_context_length.json", 400, True),
        ("moonshot_error_400_token_limit.json", 400, True),
        ("anthropic_error_400_prompt_too_long.json", 400, True),
        ("moonshot_error_400_temperature.json", 400, False),
        ("moonshot_error_429_rate_limit_rpm.json", 429, False),
        ("openai_error_400_context_length.json", 500, False),  # wording alone is not enough
    ],
)
def test_is_context_length_error(name: str, status: int, expected: bool) -> None:
    assert is_context_length_error(status, documented(name)) is expected


def test_a_bare_413_is_a_context_length_error() -> None:
    assert is_context_length_error(413, b"") is True


# --- the table as data -----------------------------------------------------------------------


def test_decision_table_prints_every_rule() -> None:
    lines = decision_table().splitlines()
    assert lines[:3] == [
        "| status | body says | kind | action | source |",
        "|---|---|---|---|---|",
        "| transport (`connect`) | connection refused | connect | retry | |",
    ]
    assert len(lines) == 2 + len(TRANSPORT_RULES) + len(RULES)
    assert lines[-1] == (
        "| any ≥ 400 | (status alone) | server_error | fallback | [Bifrost]("
        "https://github.com/maximhq/bifrost/blob/main/docs/features/retries-and-fallbacks.mdx) |"
    )
    assert "| 402 | (status alone) | quota | cooldown |" in decision_table()
