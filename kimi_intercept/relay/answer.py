"""Committing to an answer: forwarding it to the client event by event, and what happens
when it breaks.

Once an upstream's answer is committed (:mod:`.server` decided), :func:`pipe` sends its status and
headers, then each whole SSE event as it arrives (translated by :class:`~.dialects.bridge.Bridge`
when the client speaks another dialect), while the meter reads the usage and the repetition
check watches the text. An upstream that breaks off — reset, no data for ``stall_timeout_s``
(keep-alives do not count, :class:`~.bounds.DataClock`), a malformed SSE event, a provider error
event, a repetition loop — gets the client an in-band error event in its dialect and a cut
connection, never a clean end; with ``continue_on_break`` the answer is instead finished by the
next provider (:func:`continue_answer`). The relay's own cuts (shutdown, ``max_answer_s``:
:mod:`.inflight`) end the answer the same way (:func:`cut_answer`), without blaming the provider.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from kimi_intercept.accounting import tokens
from kimi_intercept.accounting.sse import EventSplitter
from kimi_intercept.config.rules import Validation
from kimi_intercept.dialects import json_bytes
from kimi_intercept.dialects.anthropic import count_tokens_response
from kimi_intercept.dialects.bridge import Bridge, error_json
from kimi_intercept.dialects.kimi import restore_answer
from kimi_intercept.relay.bounds import DataClock
from kimi_intercept.relay.failures import (
    AttemptFailed,
    classify_transport,
    describe_exc,
    error_message,
    redact,
)
from kimi_intercept.relay.forwarding import (
    Answer,
    ClientGone,
    StreamBroken,
    finish,
    forward,
    ms_since,
    send,
    translated,
    write_or_gone,
)
from kimi_intercept.relay.health import health_key
from kimi_intercept.relay.rows import Outcome
from kimi_intercept.relay.upstream import Upstream
from kimi_intercept.relay.validate import RepetitionDetector
from kimi_intercept.routing.plan import RoutePlan, iso_utc
from kimi_intercept.routing.targets import Target

log = logging.getLogger(__name__)

_DROP_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}
)


async def pipe(
    sender: Upstream,
    request: web.BaseRequest,
    plan: RoutePlan,
    target: Target,
    upstream: aiohttp.ClientResponse,
    first: bytes,
    attempts: list[dict[str, Any]],
    r: Outcome,
    budget: float,
) -> web.StreamResponse:
    """Commit to ``upstream``: forward status, headers and every chunk as it arrives."""
    r.target, r.status = target, upstream.status
    r.upstream_request_id = upstream.headers.get("msh-request-id") or upstream.headers.get(
        "x-request-id"
    )
    content_type = upstream.headers.get("content-type", "")
    sse = content_type.startswith("text/event-stream")
    bridge = r.bridge = Bridge(
        plan.dialect,
        target.dialect,
        target.model,
        request=plan.native,
        prompt_tokens=plan.prompt_tokens_estimate,
    )
    r.meter = bridge.meter(sse)
    held = getattr(first, "meter", None)  # read while held for its first content: once only
    metered = type(held) is type(r.meter) and not getattr(held, "malformed_events", 1)
    if metered:
        r.meter = held
    checks = plan.rule.validate if plan.rule else Validation()
    if sse and checks.repetition and target.dialect == "openai" and plan.kind == "reroute":
        r.repetition = RepetitionDetector()
    out = Answer(status=upstream.status, reason=upstream.reason)
    for k, v in upstream.headers.items():
        if k.lower() not in _DROP_RESPONSE_HEADERS:
            out.headers.add(k, v)
    if bridge.translate:
        out.headers["content-type"] = bridge.content_type(content_type, sse)
    out.headers["x-kimi-intercept-provider"] = target.provider
    out.headers["x-kimi-intercept-attempts"] = str(len(attempts))
    if r.overhead_ms is not None:
        out.headers["x-kimi-intercept-overhead-ms"] = f"{r.overhead_ms:.1f}"
    clock = first.clock if metered else DataClock(sse)  # type: ignore[attr-defined]
    if not metered:
        clock.feed(first)
    try:
        return await _stream(sender, request, out, plan, target, upstream, first, attempts, r,
                             budget, sse, clock, metered)  # fmt: skip
    except asyncio.CancelledError:
        if r.cut is None:  # the client left (aiohttp cancels the handler)
            raise
        _uncancel()
        await cut_answer(request, out, r, sse)
        return out


async def _stream(
    sender: Upstream,
    request: web.BaseRequest,
    out: web.StreamResponse,
    plan: RoutePlan,
    target: Target,
    upstream: aiohttp.ClientResponse,
    chunk: bytes,
    attempts: list[dict[str, Any]],
    r: Outcome,
    budget: float,
    sse: bool,
    clock: DataClock,
    metered: bool,
) -> web.StreamResponse:
    bridge, meter, stall = r.bridge, r.meter, sender.routing.stall_timeout_s
    events = EventSplitter() if sse else None
    try:
        # a translated JSON answer goes out whole, so does one whose tool names / ids change
        whole = not sse and (bridge.translate or bool(target.renamed or target.tool_ids))
        left = upstream.content_length if not sse and not whole else None
        if left is not None:  # passed through unchanged: same length, no chunked framing
            out.content_length = left
        await write_or_gone(out.prepare(request))
        tail = b""  # the last bytes, sent with the end of the response (one write)
        while chunk:
            # one write per upstream read, however many events it held (fewer syscalls)
            pieces = events.push(chunk) if events is not None else (chunk,)
            data = await forward(out, pieces, meter, sse, plan, r, target, bridge, whole, metered)
            metered = False  # (only the held first bytes were read already)
            if left is not None and (left := left - len(chunk)) <= 0:
                tail = data  # the whole body is in
                break
            if upstream.content.at_eof():  # nothing more to come: sent with the end (one write)
                tail = data
                break
            await send(out, data, plan, r)
            chunk = await next_chunk(upstream, clock, stall)
        if events is not None:
            tail += await forward(out, (events.flush(),), meter, sse, plan, r, target, bridge)
        r.upstream_done = True  # all of the answer is in; only the closing bytes are left
        if whole:
            raw = restore_answer(meter.body_bytes(), target.renamed, target.tool_ids)
            tail += bridge.body(upstream.status, raw)
        elif sse:
            tail += translated(bridge, None)
        await finish(out, tail, plan, r)
        r.outcome = "ok" if upstream.status < 400 else "error"
        if upstream.status >= 400:
            r.error = f"HTTP {upstream.status}: {_body_message(meter)}"
        return out
    except ClientGone:
        client_left(r)
        return out
    except StreamBroken as e:
        broken = str(e)
        if attempts:  # the committed attempt: say why it did not end well
            attempts[-1]["error"] = redact(f"broke off mid-answer: {broken}")
        sender.health.record_failure(health_key(plan, target), classify_transport("reset", broken))
        upstream.close()
        if may_continue(sender, plan, target, meter, sse):
            try:
                if await continue_answer(
                    sender, out, plan, target, meter, attempts, r, budget, broken
                ):
                    return out
            except StreamBroken as again:
                broken = str(again)
            except ClientGone:
                client_left(r)
                return out
        r.outcome = "incomplete"
        r.error = (
            f"upstream {r.target.provider if r.target else '?'} broke off the answer: {broken}"
        )
        log.warning("kimi-intercept: %s", redact(r.error))
        if sse and meter.error is None:
            try:
                await out.write(bridge.error_event(r.error, "stream_interrupted"))
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                pass  # the client left too; the cut below is all that is left to do
        if request.transport is not None:
            request.transport.abort()  # no terminating chunk: the client sees a broken body
        return out
    finally:
        if r.outcome == "ok":
            upstream.release()
        else:
            upstream.close()
        meter.finish()


def may_continue(sender: Upstream, plan: RoutePlan, target: Target, meter: Any, sse: bool) -> bool:
    """``continue_on_break`` applies: a rerouted text stream (no tool call in flight) with a
    provider after this one."""
    return (
        sender.routing.continue_on_break
        and sse
        and plan.kind == "reroute"
        and meter.error is None
        and not meter.saw_tool_calls
        and target.dialect == "openai"
        and target is not plan.targets[-1]
    )


async def continue_answer(
    sender: Upstream,
    out: web.StreamResponse,
    plan: RoutePlan,
    broken_target: Target,
    meter: Any,
    attempts: list[dict[str, Any]],
    r: Outcome,
    budget: float,
    why: str,
) -> bool:
    """Re-send the conversation plus the partial answer as an assistant prefix (Moonshot
    partial mode, https://platform.kimi.ai/docs/guide/use-partial-mode-feature-of-kimi-api)
    to the next providers, and stream the continuation into the same response. True when
    it completed; False when no provider would take it. Raises :class:`StreamBroken` if the
    continuation breaks too, :class:`ClientGone` if the client leaves."""
    prefix = {"role": "assistant", "content": meter.answer_text, "partial": True}
    for target in plan.targets[plan.targets.index(broken_target) + 1 :]:
        if target.dialect != "openai" or target.skip_reason:
            continue
        if not sender.health.check(target.provider).ok:
            continue
        body = json.loads(target.body)
        body["messages"] = [*body.get("messages", []), prefix]
        cont = dataclasses.replace(target, body_source=json_bytes(body))
        started = time.time()
        try:
            upstream, first = await sender.open(cont, budget)
        except AttemptFailed as e:
            f = e.failure
            sender.health.record_failure(target.provider, f)
            attempts.append(
                attempt_row(
                    len(attempts) + 1,
                    target,
                    started,
                    f.status,
                    f"continuation: {f.kind}: {f.message}",
                    ms_since(started),
                )
            )
            continue
        attempts.append(
            attempt_row(
                len(attempts) + 1,
                target,
                started,
                upstream.status,
                None if upstream.status < 400 else "continuation refused",
                ms_since(started),
            )
        )
        if upstream.status >= 400 or not upstream.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            upstream.close()
            continue
        log.warning(
            "kimi-intercept: continuing the broken answer on %s (%s)",
            target.provider,
            redact(why),
        )
        r.target, r.continued_after = target, why
        events, clock = EventSplitter(), DataClock(True)
        chunk = first
        clock.feed(first)
        try:
            while chunk:
                data = await forward(out, events.push(chunk), meter, True, plan, r, target,
                                     r.bridge)  # fmt: skip
                await send(out, data, plan, r)
                chunk = await next_chunk(
                    upstream, clock, sender.routing.stall_timeout_s, "the continuation stalled"
                )
            tail = await forward(out, (events.flush(),), meter, True, plan, r, target, r.bridge)
            await finish(out, tail + translated(r.bridge, None), plan, r)
        except BaseException:
            upstream.close()
            raise
        upstream.release()
        sender.health.record_success(target.provider)
        r.outcome = "ok"
        return True
    return False


async def next_chunk(
    upstream: aiohttp.ClientResponse, clock: DataClock, stall: float, what: str = "stalled"
) -> bytes:
    """The next chunk of a committed answer; :class:`StreamBroken` when ``stall`` seconds pass
    without data (keep-alives do not count: :class:`~.bounds.DataClock`) or the read fails."""
    try:
        left = clock.left(stall)
        if left <= 0:
            raise asyncio.TimeoutError
        async with asyncio.timeout(left):  # no task per read, unlike wait_for on 3.11
            chunk = await upstream.content.readany()
    except asyncio.TimeoutError as e:
        only = " (keep-alives do not count)" if clock.keepalives else ""
        raise StreamBroken(f"{what}: no data for {stall:g} s{only}") from e
    except (aiohttp.ClientError, OSError) as e:
        raise StreamBroken(describe_exc(e)) from e
    clock.feed(chunk)
    return chunk


async def cut_answer(
    request: web.BaseRequest, out: web.StreamResponse, r: Outcome, sse: bool
) -> None:
    """The relay ends a committed answer itself (:class:`~.bounds.Cut`): an in-band error event
    in the client's dialect when it streams, then a cut connection (never a clean end)."""
    cut = r.cut
    r.outcome, r.error = cut.outcome, cut.message
    log.warning("kimi-intercept: %s", cut.message)
    if sse and out.prepared and r.bridge is not None:
        try:
            await out.write(r.bridge.error_event(cut.message, cut.code))
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass  # the client left too; the cut below is all that is left to do
    if request.transport is not None:
        request.transport.abort()


def _uncancel() -> None:
    """Our own cancel (a :class:`~.bounds.Cut`) was handled: the task goes on normally."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def client_left(r: Outcome) -> None:
    """The client closed its connection. If the whole answer had already reached it (the
    upstream ended, or the stream's own end marker passed) that is a normal end: clients close
    right after ``[DONE]``, sometimes before the relay's closing chunk arrives."""
    if r.upstream_done or getattr(r.meter, "saw_done", False):
        r.outcome, r.error = ("ok", None) if (r.status or 0) < 400 else ("error", r.error)
    else:
        r.outcome, r.error = "client_abort", "client disconnected"


def attempt_row(
    n: int, target: Target, started: float, status: int | None, error: str | None, ms: float
) -> dict[str, Any]:
    return {
        "attempt": n,
        "provider": target.provider,
        "model": target.model,
        "started_at": iso_utc(started),
        "status_code": status,
        "error": redact(error) if error else None,
        "duration_ms": round(ms, 2),
    }


def _body_message(meter: Any) -> str:
    body = meter.body_bytes() if hasattr(meter, "body_bytes") else b""
    return error_message(body)


async def count_tokens(plan: RoutePlan) -> web.Response:
    """Anthropic ``/v1/messages/count_tokens``, answered locally with the tiktoken estimate of
    the translated request (no upstream call, no row: it is not model usage)."""
    try:
        n = await asyncio.to_thread(tokens.estimate_prompt_tokens, plan.request_json)
    except Exception as e:  # a tokenizer problem: say so in the client's dialect
        log.warning("kimi-intercept: count_tokens failed: %s", e)
        message = f"kimi-intercept could not count tokens: {e}"
        return web.json_response(error_json("anthropic", 500, message, "count_failed"), status=500)
    return web.json_response(count_tokens_response(n))
