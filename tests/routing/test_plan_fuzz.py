"""Every intercepted LLM call is routed, or answered with a clear error and recorded.

Hypothesis writes request bodies for every dialect (the right keys with values of any type,
lone UTF-16 surrogates, control characters, whole bodies that are any JSON or any bytes),
headers and User-Agents (whitespace only, control characters, undecodable bytes). For each:
:func:`~kimi_intercept.routing.unplanned.plan_or_reject` never raises and never reports a bug
of ours (500); a routed plan survives the relay's preparation and has bodies that are JSON;
a rejected one is a 400 whose answer is an error body in the client's dialect; and the row of
either is storable in the real SQLite schema. The addon test drives the ``request`` hook
itself: the flow is pointed at the relay process unchanged, never left to go to its original
host, and what the hop carries is planned there
(:func:`~kimi_intercept.routing.unplanned.plan_received`) into a routed or rejected plan."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow, tutils

from kimi_intercept.addon import KimiIntercept
from kimi_intercept.commands.relay_process import RelayProcess
from kimi_intercept.config.settings import load_config
from kimi_intercept.relay import refusal
from kimi_intercept.relay.intake import HOST_HEADER, META, TOKEN_HEADER, URL_HEADER
from kimi_intercept.relay.rows import Outcome, build_row
from kimi_intercept.routing.unplanned import plan_or_reject, plan_received
from kimi_intercept.sanitizer.prepare import Preparer
from kimi_intercept.storage.schema import open_db

ENV = {"MOONSHOT_API_KEY": "sk-moon", "DEEPSEEK_API_KEY": "sk-deep"}
CFG = load_config(None, env=ENV)
PREPARER = Preparer(CFG)

PATHS = {
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "anthropic_count": "/v1/messages/count_tokens",
    "gemini": "/v1beta/models/gemini-2.5-pro:generateContent",
    "gemini_stream": "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
    "responses": "/v1/responses",
}

# Text as clients really send it, and as they should not: lone surrogates (a cut emoji),
# control characters, zero-width and bidi characters.
CHAR = st.one_of(
    st.characters(),
    st.integers(0xD800, 0xDFFF).map(chr),
    st.sampled_from("\x00\x01\t\r\n \x7f\u200b\u202e\ufeff"),
)
TEXT = st.text(CHAR, max_size=20)
ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def maybe(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(right, right, ANY)


def fields(**shapes: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={k: maybe(v) for k, v in shapes.items()})


PART = fields(
    type=st.sampled_from(["text", "image_url", "tool_use", "tool_result", "thinking"]),
    text=TEXT,
    image_url=fields(url=TEXT),
    id=TEXT,
    name=TEXT,
    input=ANY,
    content=TEXT,
    tool_use_id=TEXT,
)
CONTENT = st.one_of(TEXT, st.lists(PART, max_size=3))
ROLE = st.sampled_from(["system", "developer", "user", "assistant", "tool"])
TOOL_CALL = fields(id=TEXT, type=st.just("function"), function=fields(name=TEXT, arguments=TEXT))
TOOL = fields(type=st.just("function"), function=fields(name=TEXT, parameters=ANY), name=TEXT)
OPENAI = fields(
    model=TEXT,
    messages=st.lists(
        fields(role=ROLE, content=CONTENT, name=TEXT, tool_calls=st.lists(TOOL_CALL, max_size=2),
               tool_call_id=TEXT, reasoning_content=TEXT),
        max_size=4,
    ),
    stream=st.booleans(),
    stream_options=fields(include_usage=st.booleans()),
    max_tokens=st.integers(),
    tools=st.lists(TOOL, max_size=2),
    response_format=fields(type=st.sampled_from(["json_object", "text"])),
    temperature=st.floats(allow_nan=False),
    n=st.integers(),
    stop=st.lists(TEXT, max_size=6),
)  # fmt: skip
ANTHROPIC = fields(
    model=TEXT,
    system=st.one_of(TEXT, st.lists(PART, max_size=2)),
    messages=st.lists(fields(role=ROLE, content=CONTENT), max_size=4),
    max_tokens=st.integers(),
    stream=st.booleans(),
    tools=st.lists(fields(name=TEXT, description=TEXT, input_schema=ANY), max_size=2),
    tool_choice=fields(type=st.sampled_from(["auto", "any", "tool"]), name=TEXT),
    thinking=fields(type=st.sampled_from(["enabled", "disabled"]), budget_tokens=st.integers()),
    metadata=fields(user_id=TEXT),
)
GEMINI_PART = fields(
    text=TEXT, thought=st.booleans(), functionCall=fields(name=TEXT, args=ANY),
    functionResponse=fields(name=TEXT, response=ANY), inlineData=fields(mimeType=TEXT, data=TEXT),
)  # fmt: skip
GEMINI = fields(
    contents=st.lists(fields(role=st.sampled_from(["user", "model"]),
                             parts=st.lists(GEMINI_PART, max_size=3)), max_size=3),
    systemInstruction=fields(parts=st.lists(GEMINI_PART, max_size=2)),
    generationConfig=fields(maxOutputTokens=st.integers(), temperature=st.floats(allow_nan=False),
                            responseMimeType=TEXT, stopSequences=st.lists(TEXT, max_size=3)),
    tools=st.lists(fields(functionDeclarations=st.lists(
        fields(name=TEXT, parameters=ANY), max_size=2)), max_size=2),
)  # fmt: skip
BODY_OF = {
    "openai": OPENAI,
    "anthropic": ANTHROPIC,
    "anthropic_count": ANTHROPIC,
    "gemini": GEMINI,
    "gemini_stream": GEMINI,
    "responses": fields(model=TEXT, input=st.one_of(TEXT, st.lists(ANY, max_size=2))),
}


def encoded(body: Any) -> bytes:
    """What a client puts on the wire: lone surrogates as ``\\ud83d`` escapes."""
    return json.dumps(body).encode()


BYTES_BODY = st.one_of(st.binary(max_size=40), ANY.map(encoded))
HEADER_NAME = st.sampled_from(
    ["user-agent", "x-kimi-session", "x-claude-code-session-id", "anthropic-version",
     "openai-organization", "x-stainless-os", "accept"]
)  # fmt: skip
HEADERS = st.lists(st.tuples(HEADER_NAME, TEXT), max_size=4)
USER_AGENT = st.one_of(
    TEXT, st.sampled_from([" ", "\t\r\n", "\x00\x01", "\u200b", "OpenAI/Python 1.0", ""])
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, list[tuple[str, str]]]:
    dialect = draw(st.sampled_from(sorted(PATHS)))
    body = draw(st.one_of(BODY_OF[dialect].map(encoded), BODY_OF[dialect].map(encoded), BYTES_BODY))
    headers = [("user-agent", draw(USER_AGENT)), *draw(HEADERS)]
    return PATHS[dialect], body, headers


def storable(row: dict[str, Any], db: Any) -> None:
    """The row goes into the real ``requests`` table (no OverflowError, no encoding error)."""
    db["requests"].insert(row)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return open_db(tmp_path_factory.mktemp("fuzz") / "k.db")


# The inputs of issue #11, always run whatever the profile draws.
KNOWN = [
    ("/v1/chat/completions", encoded({"messages": [{"role": "user", "content": "\ud83d"}]}), []),
    ("/v1/chat/completions", encoded({"model": "m", "stop": ["\ud800"]}), []),
    ("/v1/chat/completions", encoded({"messages": [{"content": [{"type": []}]}]}), []),
    ("/v1/chat/completions", encoded({"messages": [{"content": [{"type": {}}]}]}), []),
    ("/v1/messages", encoded({"messages": [{"role": "user", "content": [{"type": ["x"]}]}]}), []),
    ("/v1/chat/completions", b"{}", [("user-agent", " \t\x0b")]),
    ("/v1/chat/completions", b"{}", [("user-agent", "\x00\x01")]),
    ("/v1/chat/completions", b"{}", [("x-kimi-session", "\udcff")]),
]


@given(request=requests(), roll=st.floats(min_value=0, max_value=99.99))
@example(request=KNOWN[0], roll=0.0)
@example(request=KNOWN[1], roll=0.0)
@example(request=KNOWN[2], roll=0.0)
@example(request=KNOWN[3], roll=0.0)
@example(request=KNOWN[4], roll=0.0)
@example(request=KNOWN[5], roll=0.0)
@example(request=KNOWN[6], roll=0.0)
@example(request=KNOWN[7], roll=0.0)
def test_planning_routes_or_rejects_every_llm_call(request, roll, db):
    path, body, headers = request
    plan = plan_or_reject(
        CFG, method="POST", url=f"https://api.openai.com{path}", host="api.openai.com",
        path=path, headers=headers, body=body, roll=roll, started=1.7e9,
    )  # fmt: skip
    assert plan is not None
    if plan.kind == "rejected":
        assert plan.problem is not None and plan.problem.status == 400, plan.problem
        status, _, answer, outcome = refusal.answer(plan)
        error = json.loads(answer)
        assert status == 400 and error["error"]["message"] == plan.problem.message  # all dialects
        assert outcome.outcome == "rejected" and outcome.error == plan.problem.message
    else:
        assert plan.kind in ("reroute", "passthrough", "count_tokens")
        PREPARER.prepare(plan)  # what the relay does next, in a worker thread
        for target in plan.targets:
            if target.body and plan.kind == "reroute":
                assert isinstance(json.loads(target.body), dict)
        outcome = Outcome()
    row = asyncio.run(build_row(plan, [], outcome, 1.0, CFG))
    storable(row, db)


@pytest.fixture(scope="module")
def hooked(tmp_path_factory):
    """The addon, configured, with a relay process that is not running (the hook only points
    flows at it)."""
    folder = tmp_path_factory.mktemp("addon")
    cfg = folder / "c.toml"
    cfg.write_text(f'[storage]\ndatabase = "{folder / "k.db"}"\n')
    a = KimiIntercept()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ENV.items():
            mp.setenv(k, v)
        with taddons.context(Proxyserver(), a) as tctx:
            tctx.configure(a, kimi_config=str(cfg))
            a.relay = RelayProcess(lambda line: None, lambda *record: None)
            a.relay.port = 5555
            yield a


def flow_for(path: str, body: bytes, headers: list[tuple[str, str]]) -> http.HTTPFlow:
    # header bytes as a client may send them (lone surrogates become undecodable bytes, which
    # mitmproxy reads back with surrogateescape)
    fields = [(b"host", b"api.openai.com"), (b"authorization", b"Bearer sk-client-secret")]
    fields += [(k.encode(), v.encode("utf-8", "surrogatepass")) for k, v in headers]
    h = http.Headers(fields)
    req = tutils.treq(
        host="api.openai.com", port=443, scheme=b"https", authority=b"api.openai.com",
        method=b"POST", path=path.encode(), headers=h, content=body,
    )  # fmt: skip
    return tflow.tflow(req=req)


@given(request=requests())
@example(request=KNOWN[0])
@example(request=KNOWN[2])
@example(request=KNOWN[5])
def test_the_addon_never_lets_an_llm_call_through_unplanned(request, hooked):
    """The hook sends every LLM call to the relay as the client sent it; what the hop carries
    is planned there into a routed or a rejected (400) plan, never left unplanned."""
    a = hooked
    path, body, headers = request
    f = flow_for(path, body, headers)
    a.request(f)
    assert f.response is None
    assert (f.request.host, f.request.port) == ("127.0.0.1", 5555)
    assert f.request.headers[TOKEN_HEADER] == a.relay.token
    assert f.request.raw_content == body and "authorization" in f.request.headers
    hop = [(k, v) for k, v in f.request.headers.items(multi=True) if k.lower() not in META]
    plan = plan_received(
        CFG, method=f.request.method, url=f.request.headers[URL_HEADER],
        host=f.request.headers[HOST_HEADER], path=path, headers=hop,
        raw_body=f.request.raw_content, started=1.7e9,
    )  # fmt: skip
    assert plan is not None
    if plan.kind == "rejected":
        assert plan.problem is not None and plan.problem.status == 400, plan.problem
