"""Forwarding a committed answer to the client, one upstream read at a time.

:func:`forward` meters the whole SSE events (or body chunks) of one read — each parsed once,
by the meter that may already have read them while the answer was held for its first content
(:class:`Held`) — and returns the client's form of them for one write (:func:`send`); the end
of the response goes with the last bytes (:func:`finish`). :class:`StreamBroken` and
:class:`ClientGone` are how :mod:`.answer` learns that the answer cannot go on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import web

from kimi_intercept.dialects.bridge import Bridge, TranslationFailed
from kimi_intercept.dialects.kimi import restore_answer
from kimi_intercept.relay.rows import Outcome
from kimi_intercept.routing.plan import RoutePlan
from kimi_intercept.routing.targets import Target


class Held(bytes):
    """The first bytes of an SSE answer held until its first content, with the ``meter``
    (:class:`~.accounting.usage.ChatStreamMeter`) and ``clock`` (:class:`~.bounds.DataClock`)
    that already read them, so that they are not parsed a second time."""

    meter: Any = None
    clock: Any = None


class Answer(web.StreamResponse):
    """The client's answer: its status line and headers go out with its first bytes, in one
    write. aiohttp's ``StreamResponse`` sends them on ``prepare()`` by itself — a send and a
    TCP segment of their own, which mitmproxy wakes up to read before the body's; its
    ``Response`` holds them with this same class attribute (an aiohttp without it sends them
    on ``prepare()``, as before). After the first upstream read :func:`send` flushes them even
    when there is nothing to send yet."""

    _send_headers_immediately = False


class ClientGone(Exception):
    """The client closed its connection while the answer was being sent."""


class StreamBroken(Exception):
    """The answer cannot go on (the message says why); the client gets an in-band error."""


async def forward(
    out: web.StreamResponse,
    pieces: Iterable[bytes],
    meter: Any,
    sse: bool,
    plan: RoutePlan,
    r: Outcome,
    target: Target,
    bridge: Bridge,
    whole: bool = False,
    metered: bool = False,
) -> bytes:
    """Meter the whole SSE events (or body chunks) of one upstream read; return the client's
    form of them (translated when the dialects differ; nothing when ``whole``), to be sent in
    one write. When one breaks the answer (:class:`StreamBroken`), what came before it is
    sent first (and a provider error event itself too). ``metered``: the meter has read these
    pieces already (:class:`Held`)."""
    data: list[bytes] = []
    try:
        for piece in pieces:
            if piece:
                _one(piece, data, meter, sse, r, target, bridge, whole, metered)
    except StreamBroken:
        await send(out, b"".join(data), plan, r)
        raise
    return b"".join(data)


def _one(piece: bytes, data: list[bytes], meter: Any, sse: bool, r: Outcome, target: Target,
         bridge: Bridge, whole: bool, metered: bool) -> None:  # fmt: skip
    if not metered:
        meter.feed(piece)
    if sse and meter.malformed_events:
        raise StreamBroken("malformed SSE event (not JSON)")  # never forwarded
    if r.repetition is not None and len(meter.answer_parts) > r.answer_seen:
        new, r.answer_seen = meter.answer_parts[r.answer_seen :], len(meter.answer_parts)
        for text in new:
            loop = r.repetition.feed(text)
            if loop:
                raise StreamBroken(loop)  # this piece is not forwarded
    if not whole:
        if sse and (target.renamed or target.tool_ids):
            piece = restore_answer(piece, target.renamed, target.tool_ids)
        data.append(translated(bridge, piece) if sse else piece)
    if sse and meter.error is not None:  # forwarded as the provider sent it, then cut
        raise StreamBroken(f"provider error event: {json.dumps(meter.error)[:300]}")


def translated(bridge: Bridge, piece: bytes | None) -> bytes:
    """The client's bytes for one upstream event (``None``: the closing bytes)."""
    try:
        return bridge.piece(piece) if piece is not None else bridge.finish()
    except TranslationFailed as e:  # cut with an in-band error, never half-translated bytes
        raise StreamBroken(f"cannot translate the provider's answer: {e}") from e


async def send(out: web.StreamResponse, data: bytes, plan: RoutePlan, r: Outcome) -> None:
    """One write of ``data`` to the client; the first also sets the row's ``ttft_ms``. When
    ``data`` is empty only the headers still held (:class:`Answer`) go. Raises
    :class:`ClientGone` if the client left."""
    if not data:
        await write_or_gone(out.write(b""))  # the status and headers, if not sent yet
        return
    await write_or_gone(out.write(data))
    if r.ttft_ms is None:
        r.ttft_ms = ms_since(plan.received)


async def finish(out: web.StreamResponse, data: bytes, plan: RoutePlan, r: Outcome) -> None:
    """Send the last bytes and the end of the response in one write."""
    await write_or_gone(out.write_eof(data))
    if data and r.ttft_ms is None:
        r.ttft_ms = ms_since(plan.received)


async def write_or_gone(awaitable: Any) -> None:
    try:
        await awaitable
    except (ConnectionError, aiohttp.ClientConnectionResetError) as e:
        raise ClientGone() from e


def ms_since(t: float) -> float:
    return (time.time() - t) * 1000.0
