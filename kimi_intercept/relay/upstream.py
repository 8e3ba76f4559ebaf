"""Talking to one upstream: sending an attempt, holding it until its first content, and how
long to wait before trying the same provider again.

:class:`Upstream` is the part of the relay that :mod:`.answer` (continuing a broken answer) and
:mod:`.shadow` (mirroring a request) need as well; it owns the aiohttp client session. It raises
:class:`~.failures.AttemptFailed` with a classified failure (:mod:`.failures`) for anything the
relay can still retry or fall back from.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time

import aiohttp
import certifi

from kimi_intercept.accounting.usage import ChatStreamMeter, JsonBuffer
from kimi_intercept.config.rules import Validation
from kimi_intercept.config.settings import Routing
from kimi_intercept.relay.bounds import DataClock
from kimi_intercept.relay.failures import (
    Action,
    AttemptFailed,
    Failure,
    classify_response,
    classify_transport,
    describe_exc,
)
from kimi_intercept.relay.forwarding import Held
from kimi_intercept.relay.health import ProviderHealth, backoff_delay
from kimi_intercept.relay.validate import answer_has_content, json_answer_problem, wants_json
from kimi_intercept.routing.plan import RoutePlan
from kimi_intercept.routing.targets import Target


class Upstream:
    """The relay's client side: one aiohttp session (certifi's CAs, plus or instead of them what
    the user gave mitmproxy: :attr:`extra_ca`, :attr:`insecure`; no proxy from the environment;
    no decompression: bytes pass as the provider sent them), the routing timeouts and the
    providers' health."""

    def __init__(self, routing: Routing, health: ProviderHealth):
        self.routing = routing
        self.health = health
        self.session: aiohttp.ClientSession | None = None
        #: mitmproxy's ``ssl_verify_upstream_trusted_ca`` (a PEM also trusted) and
        #: ``ssl_insecure`` (no verification), as the user set them; read by :meth:`start`
        self.extra_ca: str | None = None
        self.insecure = False

    def start(self) -> None:
        """Open the client session (on the running event loop)."""
        ctx: ssl.SSLContext | bool = ssl.create_default_context(cafile=certifi.where())
        if self.extra_ca:
            ctx.load_verify_locations(cafile=self.extra_ca)
        if self.insecure:
            ctx = False  # aiohttp: no certificate verification
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            trust_env=False,  # never send our own upstream calls back into the proxy
            cookie_jar=aiohttp.DummyCookieJar(),  # providers' cookies are not ours to keep
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def retry_delay(self, f: Failure, retry: int) -> float | None:
        """Seconds to wait before trying the same provider again, or ``None`` to move on."""
        rc = self.routing
        if retry >= rc.max_retries:
            return None
        if f.action is Action.RETRY:
            delay = backoff_delay(retry)
            if f.retry_after_s is not None:
                delay = max(delay, f.retry_after_s)
            return (
                delay if delay <= max(rc.retry_max_wait_s, 0.0) or f.retry_after_s is None else None
            )
        if f.action is Action.FALLBACK and f.retry_after_s is not None:
            return f.retry_after_s if f.retry_after_s <= rc.retry_max_wait_s else None
        return None

    async def open(
        self, target: Target, budget: float, plan: RoutePlan | None = None
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """Send the request; return the response and its first body bytes (the whole body for
        a client error), or raise :class:`AttemptFailed`.

        With ``plan`` and the rule's ``validate.empty`` (on by default) an OpenAI-dialect answer
        is held until its first content, reasoning or tool-call token (or, non-streamed, read
        whole): an answer without any, a provider error event before it, or — in JSON mode —
        content that does not parse, is a failure the relay can still fall back from."""
        assert self.session is not None
        deadline = time.monotonic() + budget
        try:
            async with asyncio.timeout(budget):  # no task per await, unlike wait_for on 3.11
                upstream = await self.session.post(
                    target.url,
                    data=target.body,
                    headers=target.headers,
                    timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=self.routing.connect_timeout_s
                    ),
                )
        except asyncio.TimeoutError as e:
            raise AttemptFailed(
                classify_transport("timeout", f"no answer within {budget:g} s")
            ) from e
        except aiohttp.ClientSSLError as e:
            raise AttemptFailed(classify_transport("tls", describe_exc(e))) from e
        except (aiohttp.ClientError, OSError) as e:
            raise AttemptFailed(classify_transport("connect", describe_exc(e))) from e
        try:
            remaining = max(deadline - time.monotonic(), 0.001)
            if upstream.status >= 400:
                async with asyncio.timeout(remaining):
                    body = await upstream.read()
                failure = classify_response(upstream.status, upstream.headers, body)
                if failure is None or failure.action is Action.CLIENT:
                    return upstream, body  # the client's own error: forwarded unchanged
                upstream.release()
                raise AttemptFailed(failure)
            async with asyncio.timeout(remaining):
                first = await upstream.content.readany()
            checks = plan.rule.validate if plan and plan.rule else Validation()
            validating = plan is not None and plan.kind == "reroute"  # passthrough: as is
            if validating and target.dialect == "openai" and checks.empty:
                first = await self._hold_until_content(upstream, first, deadline, plan, checks)
            return upstream, first
        except AttemptFailed:
            upstream.close()
            raise
        except asyncio.TimeoutError as e:
            upstream.close()
            raise AttemptFailed(
                classify_transport("timeout", f"no first byte within {budget:g} s")
            ) from e
        except (aiohttp.ClientError, OSError) as e:
            upstream.close()
            raise AttemptFailed(classify_transport("reset", describe_exc(e))) from e
        except asyncio.CancelledError:
            upstream.close()
            raise

    async def _hold_until_content(
        self,
        upstream: aiohttp.ClientResponse,
        first: bytes,
        deadline: float,
        plan: RoutePlan,
        checks: Validation,
    ) -> bytes:
        """Read (and keep) the answer until it shows content; see :meth:`open`."""
        sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        held, meter = [first], (ChatStreamMeter() if sse else JsonBuffer())
        chunk, clock, stall = first, DataClock(sse), self.routing.stall_timeout_s
        clock.feed(first)
        while chunk:
            meter.feed(chunk)
            if sse and meter.error is not None:
                message = json.dumps(meter.error)[:300]
                raise AttemptFailed(
                    Failure("stream_error", Action.FALLBACK, upstream.status, message)
                )
            if sse and answer_has_content(meter):
                out = Held(b"".join(held))  # the relay goes on with this meter and clock
                out.meter, out.clock = meter, clock
                return out
            stalled = clock.left(stall)
            wait = min(max(deadline - time.monotonic(), 0.001), stalled)
            try:
                if wait <= 0:
                    raise asyncio.TimeoutError
                async with asyncio.timeout(wait):
                    chunk = await upstream.content.readany()
            except asyncio.TimeoutError:
                if stalled > wait:
                    raise  # the first-content budget ran out
                only = " (keep-alives do not count)" if clock.keepalives else ""
                raise AttemptFailed(
                    classify_transport("timeout", f"no data for {stall:g} s{only}")
                ) from None
            clock.feed(chunk)
            held.append(chunk)
        body = b"".join(held)
        meter.finish()
        if not answer_has_content(meter):
            raise AttemptFailed(
                Failure("empty_answer", Action.FALLBACK, upstream.status,
                        "the answer ended without content, reasoning or a tool call")
            )  # fmt: skip
        if not sse and checks.json and wants_json(plan.request_json):
            problem = json_answer_problem(body)
            if problem:
                raise AttemptFailed(
                    Failure("invalid_json", Action.FALLBACK, upstream.status, problem)
                )
        # the whole answer is read: hand it over as one piece, the stream is at its end
        return body
