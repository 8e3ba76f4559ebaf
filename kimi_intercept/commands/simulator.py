"""A fake OpenAI-dialect upstream that answers like Moonshot's Kimi API.

Used by ``kimi-intercept demo`` and by the tests. :class:`FakeUpstream` is an aiohttp server on
``127.0.0.1`` (port 0) running in its own thread with its own event loop, so synchronous code can
start it, point a proxy config at :attr:`FakeUpstream.url` and make assertions on
:attr:`FakeUpstream.received`.

Every request gets the next scripted :class:`Reply` from :meth:`FakeUpstream.enqueue`, in order.
When the queue is empty, ``POST {any prefix}/chat/completions`` gets a Kimi answer built in the
documented Moonshot format (anything else gets a Moonshot-shaped 404). Byte formats follow:

- streaming, ``stream: true`` — ``../shared/wire/documented/moonshot_stream.sse`` and
  ``../shared/notes/providers.md`` §1.5 (live kimi-k3 captures from vercel/ai's Moonshot fixtures;
  the legacy doc example at https://platform.moonshot.cn/docs/api/chat): events are
  ``data: <compact json>\\n\\n``; the first delta carries ``{"role":"assistant","content":""}``;
  usage always sits in the finish chunk's ``choices[0].usage``, with Moonshot's top-level
  ``cached_tokens`` beside ``prompt_tokens_details.cached_tokens``; only when the request has
  ``stream_options.include_usage=true`` is it repeated in a trailing ``"choices":[]`` chunk with a
  top-level ``usage``; then ``data: [DONE]\\n\\n``. Moonshot's stream Content-Type is not
  documented; OpenAI's ``text/event-stream; charset=utf-8`` is used (providers.md §2.1).
- non-streaming — providers.md §1.4 (a ``chat.completion`` object with ``usage``),
  ``Content-Type: application/json; charset=utf-8`` and a ``Msh-Request-Id`` header (§1.7).
- errors — providers.md §1.6 and ``../shared/wire/documented/moonshot_error_*.json``: the body
  is ``{"error":{"message":…,"type":…}}`` with no ``code`` or ``param``; see :meth:`Reply.error`.

Failure modes a test can script on a :class:`Reply`: a status, a delay before the headers, a gap
between body writes, closing the connection after N body chunks (no terminating chunk: a mid-stream
upstream reset) and closing it before any response. :func:`closed_port` gives a loopback port with
nothing listening, for "connection refused".
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NoReturn

from aiohttp import web

from kimi_intercept.commands.fake_cache import PrefixCache

__all__ = [
    "DEFAULT_ANSWER_DELTAS",
    "DEFAULT_COMPLETION_TOKENS",
    "FakeUpstream",
    "ReceivedRequest",
    "Reply",
    "closed_port",
    "default_usage",
]

#: The default answer, one content delta per item (joined: "Hello from the fake Kimi upstream.").
DEFAULT_ANSWER_DELTAS: tuple[str, ...] = ("Hello", " from", " the", " fake", " Kimi", " upstream.")
#: ``completion_tokens`` reported for the default answer (fixed, so tests can compare exactly).
DEFAULT_COMPLETION_TOKENS = 9
DEFAULT_MODEL = "kimi-k2.6"

_SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
_JSON_CONTENT_TYPE = "application/json; charset=utf-8"
# One SSE event ends at a blank line; the three line endings the SSE spec allows.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def _compact(obj: Any) -> bytes:
    # Moonshot sends compact JSON with non-ASCII text as-is (moonshot_stream_legacy_docs.sse).
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the fake upstream saw it (headers lowercased; path includes the query)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any | None


@dataclass
class Reply:
    """A scripted answer. The body is written one item of ``chunks`` per write, ``gap_s`` apart.

    A one-chunk body is sent with ``Content-Length``, a longer one chunked. ``abort_after_chunks=N``
    closes the TCP connection right after the N-th chunk, without the terminating chunk (the
    client sees an incomplete body, as on a mid-stream upstream reset); ``reset_before_headers``
    closes it after ``delay_before_headers_s`` without sending anything.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    gap_s: float = 0.0
    delay_before_headers_s: float = 0.0
    abort_after_chunks: int | None = None
    reset_before_headers: bool = False

    @classmethod
    def sse_file(cls, raw: bytes, gap_s: float = 0.0, status: int = 200) -> Reply:
        """Replay a captured ``.sse`` body, one event per write, bytes kept exactly.

        Each chunk ends with its own blank-line framing (``\\n\\n`` or ``\\r\\n\\r\\n`` as in the
        file); bytes after the last blank line, if any, form a final chunk.
        """
        chunks: list[bytes] = []
        start = 0
        for m in _EVENT_END.finditer(raw):
            chunks.append(raw[start : m.end()])
            start = m.end()
        if start < len(raw):
            chunks.append(raw[start:])
        return cls(
            status=status,
            headers={"Content-Type": _SSE_CONTENT_TYPE},
            chunks=chunks,
            gap_s=gap_s,
        )

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        """A JSON body in one write (``Content-Type: application/json; charset=utf-8``)."""
        hdrs = {"Content-Type": _JSON_CONTENT_TYPE}
        hdrs.update(headers or {})
        return cls(status=status, headers=hdrs, chunks=[_compact(obj)])

    @classmethod
    def error(cls, status: int, body_obj: Any) -> Reply:
        """A provider error, e.g. ``Reply.error(429, json.loads(moonshot_error_429_quota))``."""
        return cls.json(body_obj, status=status)


def default_usage(messages: Any) -> dict[str, Any]:
    """The usage the default answer reports for a request's ``messages`` (deterministic).

    ``prompt_tokens = len(json.dumps(messages)) // 4``; ``completion_tokens`` is
    :data:`DEFAULT_COMPLETION_TOKENS`; nothing is cached.
    """
    prompt = len(json.dumps(messages)) // 4
    return {
        "prompt_tokens": prompt,
        "completion_tokens": DEFAULT_COMPLETION_TOKENS,
        "total_tokens": prompt + DEFAULT_COMPLETION_TOKENS,
        "cached_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def kimi_stream_events(
    model: str, usage: dict[str, Any], include_usage: bool, deltas: tuple[str, ...]
) -> list[bytes]:
    """The default streamed answer as SSE events, each ``data: <json>\\n\\n`` (see module doc)."""
    head = {
        "id": f"chatcmpl-{uuid.uuid4()}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + _compact({**head, "choices": choices, **extra}) + b"\n\n"

    def delta(d: dict[str, Any]) -> dict[str, Any]:
        return {"index": 0, "delta": d, "finish_reason": None}

    events = [event([delta({"role": "assistant", "content": ""})])]
    events += [event([delta({"content": text})]) for text in deltas]
    events.append(event([{"index": 0, "delta": {}, "finish_reason": "stop", "usage": usage}]))
    if include_usage:
        events.append(event([], usage=usage))
    events.append(b"data: [DONE]\n\n")
    return events


def kimi_completion(model: str, usage: dict[str, Any], text: str) -> dict[str, Any]:
    """The default non-streamed answer, a ``chat.completion`` object (providers.md §1.4)."""
    return {
        "id": f"chatcmpl-{uuid.uuid4()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


class FakeUpstream:
    """A scripted OpenAI-dialect server on ``127.0.0.1:<ephemeral>`` in a background thread.

    ``default_gap_s`` is the delay between the events of the default streamed answer (the first
    event goes out at once). Use as ``with FakeUpstream() as up: ...`` or ``start()``/``stop()``.
    """

    def __init__(self, default_gap_s: float = 0.0, prefix_cache: bool = False) -> None:
        self.default_gap_s = default_gap_s
        # prefix_cache: report cached tokens as a prompt cache would (.fake_cache)
        self.cache = PrefixCache() if prefix_cache else None
        self.received: list[ReceivedRequest] = []
        self.last_usage: dict[str, Any] | None = None
        self.port = 0
        self._queue: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def enqueue(self, *replies: Reply) -> None:
        """Script the next replies, consumed one per request in order."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        """How many scripted replies have not been used yet."""
        with self._lock:
            return len(self._queue)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            raise RuntimeError("FakeUpstream already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as e:  # reported to start() below
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="FakeUpstream", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            raise RuntimeError("FakeUpstream did not start") from (failure[0] if failure else None)
        return self

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None and loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            try:
                fut.result(10)
            except Exception:  # a stuck handler must not keep the test process alive
                pass
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = self._runner = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- serving -----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        self.received.append(
            ReceivedRequest(
                method=request.method,
                path=request.path_qs,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                json=parsed,
            )
        )
        with self._lock:
            reply = self._queue.popleft() if self._queue else None
        if reply is None:
            reply = self._default_reply(request, parsed)
        return await self._send(request, reply)

    def _default_reply(self, request: web.Request, parsed: Any) -> Reply:
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            return Reply.error(
                404,
                {
                    "error": {
                        "message": f"Not found: {request.path}",
                        "type": "resource_not_found_error",
                    }
                },
            )
        if not isinstance(parsed, dict):
            return Reply.error(
                400,
                {
                    "error": {
                        "message": "Invalid request: body is not a JSON object",
                        "type": "invalid_request_error",
                    }
                },
            )
        model = parsed.get("model") or DEFAULT_MODEL
        usage = default_usage(parsed.get("messages", []))
        if self.cache is not None:
            usage = self.cache.usage(parsed, DEFAULT_COMPLETION_TOKENS)
        self.last_usage = usage
        msh = {"Msh-Request-Id": str(uuid.uuid4())}
        if not parsed.get("stream"):
            completion = kimi_completion(model, usage, "".join(DEFAULT_ANSWER_DELTAS))
            return Reply.json(completion, headers=msh)
        opts = parsed.get("stream_options") or {}
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        events = kimi_stream_events(model, usage, include_usage, DEFAULT_ANSWER_DELTAS)
        return Reply(
            headers={"Content-Type": _SSE_CONTENT_TYPE, "Cache-Control": "no-cache", **msh},
            chunks=events,
            gap_s=self.default_gap_s,
        )

    async def _send(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.delay_before_headers_s:
            await asyncio.sleep(reply.delay_before_headers_s)
        if reply.reset_before_headers:
            return self._drop(request)
        resp = web.StreamResponse(status=reply.status, headers=reply.headers)
        if len(reply.chunks) == 1:
            resp.content_length = len(reply.chunks[0])
        try:
            await resp.prepare(request)
            for i, chunk in enumerate(reply.chunks):
                if reply.abort_after_chunks is not None and i >= reply.abort_after_chunks:
                    break
                if i and reply.gap_s:
                    await asyncio.sleep(reply.gap_s)
                await resp.write(chunk)
            if reply.abort_after_chunks is not None:
                return self._drop(request)
            await resp.write_eof()
        except ConnectionError:  # the client went away mid-body; nothing more to do
            pass
        return resp

    @staticmethod
    def _drop(request: web.Request) -> NoReturn:
        """Close the connection (FIN after flushing what was written) and send nothing more."""
        transport = request.transport
        if transport is not None:
            transport.close()
        raise _Dropped


class _Dropped(web.HTTPException):
    # Raised after the transport is closed so aiohttp writes nothing more. aiohttp treats an
    # HTTPException as a response; writing it to a closing transport is silently skipped.
    status_code = 500


_HELD: list[socket.socket] = []


def closed_port() -> int:
    """A loopback TCP port where connecting is refused.

    The port stays bound (never listening) for the life of this process, so nothing else can take
    it and a connect gets ``ECONNREFUSED`` at once.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    _HELD.append(s)
    return int(s.getsockname()[1])
