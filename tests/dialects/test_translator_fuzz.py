"""Plausible-but-wrong OpenAI chat streams and bodies (right keys, wrong types: a list as
``finish_reason``, ``null`` where an object belongs, strings as counts …) fed to every
translator (Anthropic, Gemini), every usage meter and the :class:`~.dialects.bridge.Bridge`:
nothing raises, and every byte a client gets is well-formed (each SSE event's data is JSON,
each whole body is a JSON object)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kimi_intercept.accounting.sse import EventSplitter, SSEParser
from kimi_intercept.accounting.usage import ChatStreamMeter, JsonBuffer, meter_chat_json
from kimi_intercept.dialects import anthropic_meter, gemini_meter, responses
from kimi_intercept.dialects.bridge import Bridge

# Any JSON value, small: what a wrong field may hold instead of the right one.
ANY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def maybe(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape, sometimes anything."""
    return st.one_of(right, right, ANY)


def fields(**shapes: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict with any subset of these keys, each value mostly of its right shape."""
    return st.fixed_dictionaries({}, optional={k: maybe(v) for k, v in shapes.items()})


COUNT = st.integers(min_value=-3, max_value=2**60) | st.floats() | st.text(max_size=3)
USAGE = fields(
    prompt_tokens=COUNT,
    completion_tokens=COUNT,
    total_tokens=COUNT,
    cached_tokens=COUNT,
    prompt_tokens_details=fields(cached_tokens=COUNT),
    completion_tokens_details=fields(reasoning_tokens=COUNT),
)
TOOL_CALL = fields(
    index=st.integers(min_value=-1, max_value=3),
    id=st.text(max_size=6),
    type=st.just("function"),
    function=fields(name=st.text(max_size=6), arguments=st.text(max_size=12)),
)
DELTA = fields(
    role=st.sampled_from(["assistant", "tool"]),
    content=st.text(max_size=12),
    reasoning_content=st.text(max_size=12),
    refusal=st.text(max_size=6),
    tool_calls=st.lists(TOOL_CALL, max_size=3),
)
FINISH = st.sampled_from(["stop", "length", "tool_calls", "content_filter", "weird"])
CHOICE = fields(
    index=st.integers(min_value=-1, max_value=2),
    delta=DELTA,
    message=DELTA,
    finish_reason=FINISH,
    usage=USAGE,
)
CHUNK = fields(
    id=st.text(max_size=8),
    object=st.just("chat.completion.chunk"),
    model=st.text(max_size=8),
    choices=st.lists(CHOICE, max_size=3),
    usage=USAGE,
    x_groq=fields(usage=USAGE),
    error=fields(message=st.text(max_size=8), type=st.text(max_size=8), code=ANY),
)


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


EVENT = st.one_of(
    CHUNK.map(sse),
    CHUNK.map(sse),
    CHUNK.map(sse),
    ANY.map(sse),  # data that is JSON but not an object
    st.just(b": keep-alive\n\n"),
    st.just(b"data: [DONE]\n\n"),
    st.binary(max_size=12).map(lambda b: b"data: " + b + b"\n\n"),  # not JSON, not UTF-8
    st.just('data: {"choices": [{"delta": {"content": "\\ud83d"}}]}\n\n'.encode()),
)
STREAM = st.lists(EVENT, max_size=8)
SPLITS = st.lists(st.integers(min_value=1, max_value=40), max_size=8)


def chunks(stream: list[bytes], splits: list[int]) -> list[bytes]:
    """The stream's bytes cut at arbitrary places, as a socket delivers them."""
    data, out = b"".join(stream), []
    for n in splits:
        out.append(data[:n])
        data = data[n:]
    return [c for c in [*out, data] if c]


def assert_sse_json(out: bytes) -> None:
    """Every event the client gets has JSON data (no half-written or Python-repr output)."""
    parser = SSEParser()
    events = parser.feed(out)
    parser.close()
    assert parser.pending_bytes == 0, out[-200:]
    for event in events:
        json.loads(event.data)


@given(stream=STREAM, splits=SPLITS)
def test_every_stream_translator_survives_and_writes_json_events(stream, splits):
    for client in ("anthropic", "gemini", "responses"):
        bridge = Bridge(client, "openai", "kimi-k2.6")
        meter = bridge.meter(sse=True)
        events = EventSplitter()
        out = b""
        for chunk in chunks(stream, splits):
            for piece in events.push(chunk):
                meter.feed(piece)
                out += bridge.piece(piece)
        rest = events.flush()
        if rest:
            meter.feed(rest)
            out += bridge.piece(rest)
        out += bridge.finish()
        meter.finish()
        assert_sse_json(out)
        assert_sse_json(bridge.error_event("upstream broke off", "stream_interrupted"))


@given(stream=STREAM, splits=SPLITS)
def test_every_usage_meter_survives_any_stream(stream, splits):
    for meter in (
        ChatStreamMeter(),
        anthropic_meter.StreamMeter(),
        gemini_meter.StreamMeter(),
        responses.StreamMeter(),
    ):
        for chunk in chunks(stream, splits):
            meter.feed(chunk)
        meter.finish()
        assert meter.usage is None or isinstance(meter.usage.problem, (str, type(None)))
        assert isinstance(meter.completion_text, str)


BODY = fields(
    id=st.text(max_size=8),
    model=st.text(max_size=8),
    choices=st.lists(CHOICE, max_size=3),
    usage=USAGE,
    error=fields(message=st.text(max_size=8), type=st.text(max_size=8), code=ANY),
)


@given(body=st.one_of(BODY, BODY, ANY), status=st.sampled_from([200, 200, 400, 429, 500]))
def test_every_non_streamed_translation_gives_a_json_object(body, status):
    raw = json.dumps(body).encode()
    for client in ("anthropic", "gemini", "responses"):
        out = Bridge(client, "openai", "kimi-k2.6").body(status, raw)
        assert isinstance(json.loads(out), dict)
    for meter_json in (meter_chat_json, anthropic_meter.meter_json, gemini_meter.meter_json):
        buffer = JsonBuffer(meter_json)
        buffer.feed(raw)
        buffer.finish()


def test_a_translator_failure_cuts_the_stream_with_an_error_in_the_clients_dialect(monkeypatch):
    """The safety net for what no fuzzing found: the relay gets TranslationFailed (and turns it
    into an in-band error and a cut stream, ``relay.forwarding``), never a half-written body."""
    from kimi_intercept.dialects import gemini_stream
    from kimi_intercept.dialects.bridge import TranslationFailed
    from kimi_intercept.relay import forwarding

    def broken(self, raw_event):
        raise KeyError("surprise")

    monkeypatch.setattr(gemini_stream.StreamTranslator, "feed", broken)
    bridge = Bridge("gemini", "openai", "kimi-k2.6")
    with pytest.raises(forwarding.StreamBroken) as broke:
        forwarding.translated(bridge, sse({"choices": []}))
    assert str(broke.value) == "cannot translate the provider's answer: KeyError: 'surprise'"
    assert isinstance(broke.value.__cause__, TranslationFailed)
    event = bridge.error_event(str(broke.value), "stream_interrupted")
    assert json.loads(event.removeprefix(b"data: "))["error"]["status"] == "UNAVAILABLE"
