"""The in-process relay: tries upstream providers in order and streams the winner back.

mitmproxy cannot fall back once a request is in flight without buffering the answer, and cannot
rescue a refused connection at all (shared notes ``mitmproxy.md`` §3). So the addon parks a
:class:`~kimi_intercept.routing.RoutePlan` under a one-shot random id and points the flow at
this aiohttp server, which runs on mitmproxy's own event loop on ``127.0.0.1``:

1. For each target in order: connect, send, and wait for the status line and the first body
   bytes (``first_byte_timeout_s`` for streams, ``nonstream_timeout_s`` otherwise). A refused or
   reset connection, a timeout, or status 429/500/502/503/504/529 moves on to the next target;
   nothing has been sent to the client yet.
2. The first other answer is committed: its status and headers go to the client, then every
   chunk as it arrives (no buffering), while a meter reads the usage from the bytes passing.
3. When the answer ends (or the client leaves, or the upstream breaks off) one ``requests`` row
   and one ``attempts`` row per try are handed to the store writer, off the response path.

If every target fails the client gets an OpenAI-dialect error
(``{"error": {"message", "type", "code"}}``, https://platform.openai.com/docs/guides/error-codes)
with the last provider's status and message.

The relay answers only requests that carry a live route id (404 otherwise), so it is not an
open proxy to anything on the machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import certifi
from aiohttp import web

from . import pricing, tokens
from .config import Config
from .routing import RoutePlan, Target, iso_utc
from .usage import ChatStreamMeter, Usage, meter_chat_json

log = logging.getLogger(__name__)

ROUTE_HEADER = "x-kimi-intercept-route"
FALLBACK_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
ROUTE_TTL_S = 300.0
MAX_JSON_BODY = 16 * 1024 * 1024
_DROP_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}
)
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{6,}|nvapi-[A-Za-z0-9_\-]{6,}|AIza[0-9A-Za-z_\-]{20,})")

Recorder = Callable[[dict[str, Any], list[dict[str, Any]]], None]


class AttemptFailed(Exception):
    """One upstream attempt failed before anything reached the client (fallback is possible)."""

    def __init__(self, message: str, status: int | None = None, error_type: str = "upstream_error"):
        super().__init__(message)
        self.status = status
        self.error_type = error_type


@dataclass
class _Outcome:
    target: Target | None = None
    status: int | None = None
    outcome: str = "error"
    error: str | None = None
    ttft_ms: float | None = None
    meter: Any = None
    upstream_request_id: str | None = None


class Relay:
    """aiohttp server + client on the running loop. ``record(row, attempts)`` must not block."""

    def __init__(self, cfg: Config, record: Recorder):
        self.cfg = cfg
        self.record = record
        self.port: int | None = None
        self._routes: dict[str, tuple[float, RoutePlan]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on ``127.0.0.1`` (an ephemeral port) and return the port."""
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ctx = ssl.create_default_context(cafile=certifi.where())
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            trust_env=False,  # never send our own upstream calls back into the proxy
        )
        return self.port

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def park(self, plan: RoutePlan) -> str:
        """Store a plan under a fresh one-shot id (the value of :data:`ROUTE_HEADER`)."""
        now = time.monotonic()
        for rid, (t, _) in list(self._routes.items()):
            if now - t > ROUTE_TTL_S:
                del self._routes[rid]
        rid = secrets.token_urlsafe(24)
        self._routes[rid] = (now, plan)
        return rid

    def discard(self, route_id: str) -> None:
        self._routes.pop(route_id, None)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        parked = self._routes.pop(request.headers.get(ROUTE_HEADER, ""), None)
        if parked is None:
            return web.json_response(
                _error_body("unknown or used route id", "not_found"), status=404
            )
        plan = parked[1]
        await request.read()  # the body travels in the plan; drain what mitmproxy sent
        attempts: list[dict[str, Any]] = []
        result = _Outcome()
        last: AttemptFailed | None = None
        response: web.StreamResponse | None = None
        for n, target in enumerate(plan.targets, start=1):
            started = time.time()
            if target.skip_reason:
                last = AttemptFailed(target.skip_reason, None, "no_api_key")
                attempts.append(_attempt_row(n, target, started, None, target.skip_reason, 0.0))
                continue
            try:
                upstream, first = await self._open(target, plan)
            except AttemptFailed as e:
                last = e
                attempts.append(
                    _attempt_row(n, target, started, e.status, str(e), _ms_since(started))
                )
                log.warning(
                    "kimi-intercept: %s failed (%s), trying the next provider", target.provider, e
                )
                continue
            attempts.append(
                _attempt_row(n, target, started, upstream.status, None, _ms_since(started))
            )
            response = await self._pipe(request, plan, target, upstream, first, n, result)
            break
        if response is None:
            response = await self._all_failed(request, plan, last, result)
        self._spawn(self._finish(plan, attempts, result))
        return response

    async def _open(self, target: Target, plan: RoutePlan) -> tuple[aiohttp.ClientResponse, bytes]:
        """Send the request; return the response and its first body bytes, or raise."""
        assert self._session is not None
        cfg = self.cfg.routing
        budget = cfg.first_byte_timeout_s if plan.stream else cfg.nonstream_timeout_s
        deadline = time.monotonic() + budget
        try:
            upstream = await asyncio.wait_for(
                self._session.post(
                    target.url,
                    data=target.body,
                    headers=target.headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout_s),
                ),
                timeout=budget,
            )
        except asyncio.TimeoutError as e:
            raise AttemptFailed(f"no answer within {budget:g} s", None, "timeout") from e
        except (aiohttp.ClientError, OSError) as e:
            raise AttemptFailed(_describe_exc(e), None, "connect_error") from e
        try:
            if upstream.status in FALLBACK_STATUSES:
                detail = await _error_message(upstream)
                raise AttemptFailed(
                    f"HTTP {upstream.status}: {detail}", upstream.status, "http_error"
                )
            first = await asyncio.wait_for(
                upstream.content.readany(), timeout=max(deadline - time.monotonic(), 0.001)
            )
            return upstream, first
        except asyncio.TimeoutError as e:
            upstream.close()
            raise AttemptFailed(f"no first byte within {budget:g} s", None, "timeout") from e
        except (aiohttp.ClientError, OSError) as e:
            upstream.close()
            raise AttemptFailed(_describe_exc(e), None, "connect_error") from e
        except AttemptFailed:
            upstream.release()
            raise

    async def _pipe(
        self,
        request: web.Request,
        plan: RoutePlan,
        target: Target,
        upstream: aiohttp.ClientResponse,
        first: bytes,
        attempt_no: int,
        result: _Outcome,
    ) -> web.StreamResponse:
        """Commit to ``upstream``: forward status, headers and every chunk as it arrives."""
        result.target, result.status = target, upstream.status
        result.upstream_request_id = upstream.headers.get("msh-request-id") or upstream.headers.get(
            "x-request-id"
        )
        sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        meter: Any = ChatStreamMeter() if sse else _JsonBuffer()
        result.meter = meter
        out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for k, v in upstream.headers.items():
            if k.lower() not in _DROP_RESPONSE_HEADERS:
                out.headers.add(k, v)
        out.headers["x-kimi-intercept-provider"] = target.provider
        out.headers["x-kimi-intercept-attempts"] = str(attempt_no)
        chunk = first
        try:
            await out.prepare(request)
            try:
                while chunk:
                    await out.write(chunk)
                    if result.ttft_ms is None:
                        result.ttft_ms = _ms_since(plan.received)
                    meter.feed(chunk)
                    chunk = await upstream.content.readany()
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                raise
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                # Upstream broke off after the client got bytes: say so in-band, never end clean.
                result.outcome = "incomplete"
                result.error = (
                    f"upstream {target.provider} broke off the answer: {_describe_exc(e)}"
                )
                log.warning("kimi-intercept: %s", result.error)
                if sse:
                    event = {"error": _error_body(result.error, "stream_interrupted")["error"]}
                    await out.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                _abort(request)
                return out
            await out.write_eof()
            result.outcome = "ok" if upstream.status < 400 else "error"
            if upstream.status >= 400:
                result.error = _message_from_json(meter.body_bytes() if not sse else b"")
            return out
        except (ConnectionError, aiohttp.ClientConnectionResetError, asyncio.CancelledError):
            result.outcome = "client_abort"
            result.error = "client disconnected"
            return out
        finally:
            if result.outcome == "ok":
                upstream.release()
            else:
                upstream.close()
            meter.finish()

    async def _all_failed(
        self, request: web.Request, plan: RoutePlan, last: AttemptFailed | None, result: _Outcome
    ) -> web.StreamResponse:
        tried = ", ".join(t.provider for t in plan.targets)
        message = f"kimi-intercept: every provider failed ({tried}); last: {last}"
        status = (
            last.status
            if last and last.status
            else (504 if last and last.error_type == "timeout" else 502)
        )
        result.status, result.outcome, result.error = status, "error", message
        result.target = plan.targets[-1] if plan.targets else None
        return web.json_response(_error_body(message, "all_providers_failed"), status=status)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, plan: RoutePlan, attempts: list[dict[str, Any]], r: _Outcome) -> None:
        """Build and hand over the ``requests`` row. Never raises (a bug here is only logged)."""
        try:
            row = await build_row(plan, attempts, r)
            for a in attempts:
                a["request_id"] = row["id"]
            self.record(row, attempts)
        except Exception:
            log.exception("kimi-intercept: could not record a request (the client was answered)")


async def build_row(plan: RoutePlan, attempts: list[dict[str, Any]], r: _Outcome) -> dict[str, Any]:
    """The ``requests`` row for one client request (estimates run in a worker thread)."""
    meter = r.meter
    usage: Usage | None = meter.usage if meter is not None else None
    source = "provider" if usage is not None else None
    if usage is None and r.status is not None and r.status < 400 and meter is not None:
        text = meter.completion_text or ""
        usage = await asyncio.to_thread(_estimate, plan.request_json, text)
        source = "estimate"
    target = r.target
    model = (meter.model if meter is not None else None) or (target.model if target else None)
    info = target.model_info if target else None
    cost = pricing.cost_usd(info, usage) if usage is not None else None
    served = next((i for i, t in enumerate(plan.targets) if t is target), 0)
    details = {
        "upstream_request_id": r.upstream_request_id,
        "finish_reason": getattr(meter, "finish_reason", None),
        "events": getattr(meter, "events", None),
        "malformed_events": getattr(meter, "malformed_events", None),
    }
    return {
        "id": uuid.uuid4().hex,
        "started_at": plan.started_at,
        "client": plan.client,
        "client_host": plan.client_host,
        "client_model": plan.client_model,
        "provider": target.provider if target else None,
        "model": model,
        "status_code": r.status,
        "outcome": r.outcome,
        "attempts": len(attempts),
        "fallback_used": int(served > 0 or (r.outcome == "error" and len(attempts) > 1)),
        "ttft_ms": _round(r.ttft_ms),
        "duration_ms": _round(_ms_since(plan.received)),
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "cached_tokens": usage.cached_tokens if usage else None,
        "reasoning_tokens": usage.reasoning_tokens if usage else None,
        "usage_source": source,
        "cost_usd": cost,
        "route": plan.kind,
        "stream": int(plan.stream),
        "response_id": getattr(meter, "response_id", None),
        "host": plan.host,
        "error": redact(r.error) if r.error else None,
        "details": json.dumps({k: v for k, v in details.items() if v is not None}),
    }


def _estimate(request_json: dict[str, Any], completion_text: str) -> Usage:
    try:
        return Usage(
            prompt_tokens=tokens.estimate_prompt_tokens(request_json),
            completion_tokens=tokens.estimate_completion_tokens(completion_text),
        )
    except Exception:
        log.exception("kimi-intercept: token estimate failed; the row is left without tokens")
        return Usage()


class _JsonBuffer:
    """Collects a non-streamed body (up to 16 MiB) and meters it at the end."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._result: Any = None

    def feed(self, chunk: bytes) -> None:
        if self._size < MAX_JSON_BODY:
            self._parts.append(chunk)
        self._size += len(chunk)

    def body_bytes(self) -> bytes:
        return b"".join(self._parts)

    def finish(self) -> None:
        if self._size <= MAX_JSON_BODY:
            self._result = meter_chat_json(self.body_bytes())
        self._parts = []

    def __getattr__(self, name: str) -> Any:  # usage, model, response_id, … from the result
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._result, name, None) if self._result is not None else None


def _attempt_row(
    n: int, target: Target, started: float, status: int | None, error: str | None, ms: float
) -> dict[str, Any]:
    return {
        "attempt": n,
        "provider": target.provider,
        "model": target.model,
        "started_at": iso_utc(started),
        "status_code": status,
        "error": redact(error) if error else None,
        "duration_ms": _round(ms),
    }


async def _error_message(resp: aiohttp.ClientResponse) -> str:
    try:
        body = await asyncio.wait_for(resp.content.read(65536), timeout=5)
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
        return resp.reason or ""
    return _message_from_json(body) or resp.reason or ""


def _message_from_json(body: bytes) -> str:
    """``error.message`` (OpenAI/Moonshot/Anthropic shapes) or the start of the body text."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:300].decode("utf-8", "replace").strip()
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        kind = err.get("type") or err.get("status") or ""
        return f"{kind}: {err['message']}" if kind else err["message"]
    return json.dumps(obj)[:300]


def _error_body(message: str, code: str) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "kimi_intercept_error", "param": None, "code": code}
    }


def redact(text: str) -> str:
    """Mask anything shaped like an API key (``sk-…``, ``nvapi-…``, ``AIza…``)."""
    return _KEYLIKE.sub(lambda m: m.group(0)[:3] + "…redacted", text)


def _describe_exc(e: BaseException) -> str:
    return redact(f"{type(e).__name__}: {e}".rstrip(": "))


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _ms_since(t: float) -> float:
    return (time.time() - t) * 1000.0


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)
