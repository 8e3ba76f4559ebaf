"""The relay: plans an intercepted call, tries upstream providers in order and streams the
winner back.

mitmproxy cannot fall back once a request is in flight without buffering the answer, and cannot
rescue a refused connection at all (shared notes ``mitmproxy.md`` §3). So the addon points an
intercepted LLM call, unchanged, at this aiohttp server on ``127.0.0.1``, which runs in a
process of its own (:mod:`kimi_intercept.commands.relay_process`), so its work runs on another
core than mitmproxy's (docs/performance.md):

0. The call is planned (:func:`~kimi_intercept.routing.unplanned.plan_received`: decoded,
   parsed, translated, its conversation and targets found); one that cannot be planned is
   answered in its dialect, or passed through unchanged (``on_plan_error``, :mod:`.intake`).
   A rerouted request is prepared (:mod:`.prepare`: sanitized, gauged against the context
   window, compressed near it), in a worker thread when it is big; shadow mode may mirror it
   (:mod:`.shadow`).
1. Targets are ordered (:mod:`.choice` for a weighted rule). For each it first checks whether
   it may be tried: an API key, a context window that fits the prompt plus the requested
   output, the provider's circuit breaker and cooldowns, and local rpm/tpm limits
   (:mod:`.health`). Then it sends the request and waits for the first content — text,
   reasoning or a tool call — of a rerouted OpenAI-dialect answer (the first bytes otherwise),
   within :func:`~.routing.first_byte_timeout`. A failure, an empty answer, an error event
   before any content or an invalid JSON-mode answer is classified (:mod:`.failures`,
   :mod:`.validate`): transient ones are retried on the same provider with exponential backoff
   and jitter, a short ``Retry-After`` is waited out, "context length exceeded" compresses and
   retries once, the rest move on to the next provider. Nothing has reached the client yet.
2. The first answer that passes, or the client's own error (other 4xx), is committed
   (:mod:`.answer`): its status and headers go to the client, then every whole SSE event as it
   arrives (translated for Anthropic/Gemini clients), while a meter reads the usage.
3. If the upstream breaks off after that (reset, stall, a malformed SSE event, a provider
   error event, a repetition loop), the client gets an in-band error event in its dialect and
   a cut connection — never a clean end — and the row says ``incomplete``. If the client leaves,
   the upstream request is closed at once and the row says ``client_abort``.
4. One ``requests`` row, one ``attempts`` row per try and the sanitizer's ledger go to the
   store writer, off the response path (:mod:`.accounting`, :mod:`.prepare`), with a
   ``cache_breaks`` row when the provider's cache stopped hitting (:mod:`.cache_breaks`).

If every target fails the client gets an error in its dialect (OpenAI's
``{"error": {"message", "type", "code"}}``, https://platform.openai.com/docs/guides/error-codes)
with the last provider's status and message.

The relay answers only calls that carry this run's token (404 otherwise, :mod:`.intake`), so it
is not an open proxy to anything on the machine; on its TLS listener (:mod:`.direct`), only calls
to a host it holds a certificate for.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from kimi_intercept.config.budget import budget_settings
from kimi_intercept.config.cache import cache_settings
from kimi_intercept.config.settings import Config
from kimi_intercept.dialects import text_of
from kimi_intercept.dialects.bridge import error_json
from kimi_intercept.relay import direct, intake, offload, refusal, shadow
from kimi_intercept.relay.admission import cannot_try, tokens_guess
from kimi_intercept.relay.answer import attempt_row, client_left, count_tokens, ms_since, pipe
from kimi_intercept.relay.budget import BudgetTracker, gate
from kimi_intercept.relay.cache_breaks import CacheBreaks
from kimi_intercept.relay.failures import (
    Action,
    AttemptFailed,
    Failure,
    redact,
)
from kimi_intercept.relay.health import ProviderHealth, RateLimiter, health_key
from kimi_intercept.relay.inflight import InFlight, cut_before_answer, refused
from kimi_intercept.relay.live import LiveStatus
from kimi_intercept.relay.rows import SKIPPED, Outcome, build_row, clean_row
from kimi_intercept.relay.upstream import Upstream
from kimi_intercept.routing.choice import Chooser
from kimi_intercept.routing.conversations import ConversationTracker
from kimi_intercept.routing.plan import (
    Problem,
    RoutePlan,
    first_byte_timeout,
    requested_max_tokens,
)
from kimi_intercept.routing.targets import Target
from kimi_intercept.routing.unplanned import internal_problem, plan_received, rejected_plan
from kimi_intercept.sanitizer.prepare import Preparer, ledger_rows, row_fields

log = logging.getLogger(__name__)

# record(request_row, attempt_rows, extra_rows_by_table): must not block (a queue put)
Recorder = Callable[..., None]


class Relay:
    """aiohttp server + client on the running loop. ``record(row, attempts)`` must not block;
    ``token``: what a call must carry in :data:`.intake.TOKEN_HEADER` (default: a random one);
    ``certs_dir``: the addon's certificates, to listen with TLS too (:mod:`.direct`)."""

    def __init__(
        self,
        cfg: Config,
        record: Recorder,
        status_path: Path | None = None,
        preparer: Preparer | None = None,
        token: str | None = None,
        certs_dir: Path | None = None,
    ):
        self.cfg = cfg
        self.certs = direct.Certificates(certs_dir) if certs_dir is not None else None
        self.tls_port: int | None = None
        self.preparer = preparer or Preparer(cfg)
        self.record = record
        self.status_path = status_path
        self.port: int | None = None
        self.token = token or secrets.token_urlsafe(24)
        rc = cfg.routing
        self.health = ProviderHealth(
            failures_to_open=rc.failures_to_open,
            window_s=rc.breaker_window_s,
            cooldown_s=rc.cooldown_s,
            auth_cooldown_s=rc.auth_cooldown_s,
        )
        self.limiter = RateLimiter({p.name: (p.rpm, p.tpm) for p in cfg.providers.values()})
        self._runner: web.ServerRunner | None = None
        self.upstream = Upstream(rc, self.health)
        self._tasks: set[asyncio.Task[None]] = set()
        self.budget = BudgetTracker(budget_settings(cfg))
        self.live = LiveStatus(status_path, self.health, self.budget)
        self.chooser = Chooser()
        self.breaks = CacheBreaks(cache_settings(cfg))  # .cache_breaks
        self._rng = random.Random()
        self.inflight = InFlight()
        self.conversations = ConversationTracker(rc.conversation_idle_s)
        self.arriving = 0  # calls received and still being planned

    async def start(self) -> int:
        """Listen on ``127.0.0.1`` (an ephemeral port) and return the port; with ``certs_dir``
        also with TLS (another ephemeral port, :attr:`tls_port`)."""
        # aiohttp's low-level server: no application, router or middleware on the path of a
        # call (the hop measured cheaper, docs/performance.md). handler_cancellation: a client
        # that leaves cancels its handler, which closes upstream.
        # auto_decompress=False: a body reaches planning as the client encoded it (the limit
        # applies while it is decoded, :mod:`.routing.body`), and passes through unchanged.
        server = web.Server(
            self._handle, handler_cancellation=True, access_log=None, auto_decompress=False
        )
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        if self.certs is not None:
            self.tls_port = await direct.listen(self._runner, self.certs)
        self.upstream.start()
        return self.port

    async def drain(self, drain_s: float) -> None:
        """Graceful shutdown, before :meth:`stop`: new LLM calls get a 503 in their dialect
        (row outcome ``shutdown``), answers in flight get ``drain_s`` seconds, the rest are cut
        (:class:`~.inflight.InFlight`); then every row is handed to the writer."""
        busy, cut = await self.inflight.drain(drain_s, self._coming)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
        if busy:  # mitmproxy forwards the last answers' last bytes before the server closes
            await asyncio.sleep(0.2)
            log.info("kimi-intercept: drained %d answer(s) in flight, %d cut", busy, cut)

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
        await self.live.flush()
        await self.upstream.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _coming(self) -> bool:
        """Calls received and still being planned: they get their 503 and row (drain)."""
        return bool(self.arriving)

    def reconfigure(self, cfg: Config, preparer: Preparer) -> None:
        """A new config (``:set kimi_config=…``): the next calls use it; health, limits and
        calls in flight stay."""
        self.cfg, self.preparer = cfg, preparer
        self.upstream.routing = cfg.routing
        self.budget.budget = budget_settings(cfg)
        self.breaks.settings = cache_settings(cfg)
        self.conversations = ConversationTracker(cfg.routing.conversation_idle_s)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        early = await direct.gate(request, self.token, self.certs, self._session())
        if early is not None:  # not ours, or not an HTTP call
            return early
        self.arriving += 1  # a shutdown waits for it to be planned (drain)
        try:
            call = await intake.received(request)
            plan = await offload.sized(len(call.body), self._plan, call)
        finally:
            self.arriving -= 1
        if plan is None:  # not an LLM call, or (a reload) no longer intercepted: sent unchanged
            if not request.secure:  # the addon sent it as an LLM call
                log.info("kimi-intercept: %s passed through: not intercepted by the current config",
                         text_of(call.host))  # fmt: skip
            return (await intake.forward_unchanged(self._session(), request, call))[0]
        if plan.kind == "rejected":
            return await self._unplanned(request, call, plan)
        if plan.kind == "count_tokens":
            return await count_tokens(plan)
        attempts: list[dict[str, Any]] = []
        result = Outcome()
        if self.inflight.draining:  # shutting down: take no new LLM call
            self._spawn(self._finish(plan, attempts, result))
            return refused(plan, result)
        live_key = self.live.started(plan)
        blocked = gate(self.budget, plan)  # may also send it to the cheaper chain
        if blocked:
            answer = refusal.refuse(plan, result, 402, blocked, "budget_exceeded")
            self._spawn(self._finish(plan, attempts, result, None, live_key))
            return answer
        timer = self.inflight.enter(result, plan.received, self.cfg.routing.max_answer_s)
        mirrored = None
        try:
            if plan.kind == "reroute":
                await offload.sized(
                    offload.planned_bytes(plan), self.breaks.prepare, plan, self.preparer.prepare
                )
            if shadow.wanted(self.cfg.routing, plan, self._rng):
                mirrored = asyncio.ensure_future(shadow.mirror(self.cfg, self.upstream, plan))
            return await self._serve(request, plan, attempts, result)
        except asyncio.CancelledError:
            if (cut := result.cut) is None:
                client_left(result)
                raise
            return cut_before_answer(plan, result, cut)
        except Exception as e:  # a bug of ours: a 500 in the client's dialect, and a row
            log.exception("kimi-intercept: relaying a request failed")
            result.outcome, result.error = "error", internal_problem(e).message
            if result.meter is not None:  # the answer had begun: it can only be cut
                raise
            result.status = 500
            body = error_json(plan.dialect, 500, result.error, "internal_error")
            return web.json_response(body, status=500)
        finally:
            self.inflight.leave(timer)
            self._spawn(self._finish(plan, attempts, result, mirrored, live_key,
                                     ms_since(plan.received)))  # fmt: skip

    def _plan(self, call: intake.Received) -> RoutePlan | None:
        return plan_received(
            self.cfg, method=call.method, url=call.url, host=call.host, path=call.path,
            headers=call.headers, raw_body=call.body, client_host=call.client_host,
            started=call.started, tracker=self.conversations,
        )  # fmt: skip

    async def _unplanned(
        self, request: web.BaseRequest, call: intake.Received, plan: RoutePlan
    ) -> web.StreamResponse:
        """A call that cannot be planned: answered in the client's dialect (:mod:`.refusal`),
        or with ``[routing] on_plan_error = "passthrough"`` sent to its original host as the
        client sent it; recorded either way."""
        reason = plan.problem.message if plan.problem else "?"
        url = text_of(call.url.partition("?")[0])  # Gemini clients may carry a key in the query
        if self.cfg.routing.on_plan_error == "passthrough":
            log.warning("kimi-intercept: %s %s cannot be planned (%s); passed through unchanged "
                        "(on_plan_error = passthrough)", call.method, url, reason)  # fmt: skip
            plan.kind = "passthrough"
            try:
                answer, status, error = await intake.forward_unchanged(
                    self._session(), request, call
                )
            except asyncio.CancelledError:
                self._spawn(self._finish(plan, [], refusal.passed_through(None, "client_abort")))
                raise
            self._spawn(self._finish(plan, [], refusal.passed_through(status, error)))
            return answer
        status, headers, body, outcome = refusal.answer(plan)
        log.warning("kimi-intercept: %s %s answered %d: %s", call.method, url, status, reason)
        self._spawn(self._finish(plan, [], outcome))
        return web.Response(status=status, headers=headers, body=body)

    def record_unavailable(self, call: dict[str, Any]) -> None:
        """The row of a call the proxy answered with a 503 while no relay process ran (sent
        when one is back): ``call`` has ``method``, ``host``, ``path``, ``user_agent``,
        ``client_host``, ``started`` (``time.time()`` s) and ``message``."""
        ua = call.get("user_agent")
        plan = rejected_plan(
            Problem(503, "proxy_unavailable", str(call.get("message"))),
            method=str(call.get("method")), host=str(call.get("host")),
            path=str(call.get("path")), headers=[("user-agent", ua)] if ua else [],
            client_host=call.get("client_host"), started=call.get("started"),
        )  # fmt: skip
        error = plan.problem.message if plan.problem else None
        self._spawn(self._finish(plan, [], Outcome(status=503, outcome="error", error=error)))

    def _session(self) -> Any:
        assert self.upstream.session is not None, "start() opens it"
        return self.upstream.session

    async def _serve(
        self, request: web.BaseRequest, plan: RoutePlan, attempts: list[dict[str, Any]], r: Outcome
    ) -> web.StreamResponse:
        rc = self.cfg.routing
        body_bytes = offload.planned_bytes(plan)
        max_tokens = requested_max_tokens(plan.request_json)
        budget = first_byte_timeout(
            rc.first_byte_timeout_s,
            stream=plan.stream,
            prompt_tokens=int(body_bytes / 4),
            max_tokens=max_tokens,
        )
        waited = 0.0  # seconds spent on upstreams and backoff: not the proxy's own overhead
        last: Failure | None = None
        window_floor = 0  # after a context-length failure, only larger windows are tried
        ordered = self.chooser.order(plan)
        positions = [next(i for i, t in enumerate(plan.targets) if t is o) for o in ordered]
        for position in positions:
            target = plan.targets[position]  # looked up again: a compression rebuilds them
            if not target.built:  # made on first use: a big one in a worker thread
                await offload.sized(plan.request_bytes, getattr, target, "body")
            key = health_key(plan, target)  # passed-through calls have their own health
            why = await cannot_try(target, plan, max_tokens, window_floor)
            verdict = None if why else self.health.check(key)
            if verdict is not None and not verdict.ok:
                why = verdict.reason or "unavailable"
            if not why and not self.limiter.try_acquire(key, tokens_guess(plan)):
                why = "local rpm/tpm limit reached"
                if verdict is not None and verdict.probe:
                    self.health.probe_abandoned(key)
            if why:
                log.info("kimi-intercept: skipping %s: %s", target.provider, redact(why))
                r.skipped.append(f"{target.provider}: {why}")
                attempts.append(
                    attempt_row(len(attempts) + 1, target, time.time(), None, SKIPPED + why, 0)
                )
                continue
            retry = 0
            while retry <= rc.max_retries:
                started = time.time()
                try:
                    upstream, first = await self.upstream.open(target, budget, plan)
                except AttemptFailed as e:
                    f = last = e.failure
                    waited += time.time() - started
                    attempts.append(
                        attempt_row(
                            len(attempts) + 1,
                            target,
                            started,
                            f.status,
                            f"{f.kind}: {f.message}",
                            ms_since(started),
                        )
                    )
                    self.health.record_failure(key, f)
                    if f.action is Action.CONTEXT and await self._compressed(plan, target):
                        target = plan.targets[position]  # the same provider, a smaller request
                        log.warning("kimi-intercept: retrying %s compressed", target.provider)
                        continue
                    delay = self.upstream.retry_delay(f, retry)
                    log.warning(
                        "kimi-intercept: %s failed (%s: %s); %s",
                        target.provider,
                        f.kind,
                        redact(f.message),
                        f"retrying in {delay:.2f} s" if delay is not None else "moving on",
                    )
                    if delay is None:
                        break
                    await asyncio.sleep(delay)
                    waited += delay
                    retry += 1
                    continue
                except asyncio.CancelledError:
                    if verdict is not None and verdict.probe:
                        self.health.probe_abandoned(key)
                    raise
                waited += time.time() - started
                attempts.append(
                    attempt_row(
                        len(attempts) + 1,
                        target,
                        started,
                        upstream.status,
                        None,
                        ms_since(started),
                    )
                )
                self.health.record_success(key)
                self.chooser.observe(key, ms_since(started))
                r.overhead_ms = round(max(ms_since(plan.received) - waited * 1000, 0.0), 2)
                return await pipe(
                    self.upstream, request, plan, target, upstream, first, attempts, r, budget
                )
            if last is not None and last.action is Action.CONTEXT:
                info = target.model_info
                window_floor = max(window_floor, info.context_window or 0) if info else 0
        return refusal.all_failed(plan, last, r)

    async def _compressed(self, plan: RoutePlan, target: Target) -> bool:
        """On "context length exceeded": compress the request to fit ``target``'s window, once
        per request (then the same provider is retried). True if the request changed."""
        if plan.kind != "reroute":
            return False
        window = target.model_info.context_window if target.model_info else None
        return await asyncio.to_thread(self.preparer.compress_for_retry, plan, window)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(
        self,
        plan: RoutePlan,
        attempts: list[dict[str, Any]],
        r: Outcome,
        mirrored: asyncio.Future[dict[str, Any]] | None = None,
        live_key: str = "",
        duration_ms: float | None = None,
    ) -> None:
        """Build and hand over the ``requests`` row (``duration_ms``: when the answer ended,
        default now). Never raises (a bug here is only logged)."""
        try:
            took = ms_since(plan.received) if duration_ms is None else duration_ms
            row = await build_row(plan, attempts, r, took, self.cfg, self.preparer.cache)
            for i, a in enumerate(attempts):
                attempts[i] = clean_row({**a, "request_id": row["id"]})
            for alert in self.budget.add(row):
                log.warning("%s", alert)
            row.update(row_fields(plan))
            extra = ledger_rows(plan, self.preparer.store_originals)
            size = offload.planned_bytes(plan)
            if brk := await offload.sized(size, self.breaks.observe, plan, row):
                extra["cache_breaks"] = [brk]
            if mirrored is not None:  # shadow mode: compare with what the client got
                answer = getattr(r.meter, "answer_text", None) or getattr(
                    r.meter, "completion_text", ""
                )
                extra["shadow"] = [shadow.finish_row(await mirrored, row, answer or "")]
            if extra:
                self.record(row, attempts, extra)
            else:
                self.record(row, attempts)
        except Exception:
            log.exception("kimi-intercept: could not record a request (the client was answered)")
        finally:
            self.live.ended(live_key)  # publishes the providers' health with it
