"""WebSocket upgrades on ``/v1/responses``: Codex CLI tries OpenAI's Responses WebSocket mode
(``GET wss://api.openai.com/v1/responses`` with ``Upgrade: websocket``) before it falls back to
``POST /v1/responses``. kimi-intercept does not serve that mode, so the upgrade is answered at
once with ``426 Upgrade Required`` and an OpenAI error body, without contacting the host; Codex
then sends the same turn over HTTPS (measured with Codex CLI: README "Codex CLI").
"""

from __future__ import annotations

import json
from collections.abc import Iterable

#: Status of the refusal: 426 is the one Codex treats as "use HTTPS instead" (no retries).
REFUSAL_STATUS = 426


def is_responses_websocket(method: str, path: str, headers: Iterable[tuple[str, str]]) -> bool:
    """True for a WebSocket upgrade (``GET`` with ``Upgrade: websocket``) of ``…/v1/responses``
    (query ignored)."""
    if method.upper() != "GET":
        return False
    if not path.split("?", 1)[0].rstrip("/").endswith("/v1/responses"):
        return False
    return any(k.lower() == "upgrade" and "websocket" in v.lower() for k, v in headers)


def refusal_body() -> bytes:
    """The JSON error body of the refusal (OpenAI's error shape)."""
    message = (
        "kimi-intercept does not serve the Responses API over WebSocket; "
        "send the request as POST /v1/responses (HTTPS)"
    )
    error = {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": "websocket_not_supported",
    }
    return json.dumps({"error": error}).encode()
