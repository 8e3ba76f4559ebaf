"""Bad input end to end: a real mitmdump with the addon, fake Kimi/DeepSeek upstreams, and a fake
"original provider" on ``localhost`` that must never see a request.

Each case sends hostile or odd input the way a client would (hand-built bodies through the
proxy; the compressed bodies over HTTPS with the mitmproxy CA) and asserts the client's outcome
(the fake Kimi's answer, or a clear error in the client's own dialect), that requests sent
equals rows stored, and that nothing reached the original host.
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import brotli
import httpx
import pytest
import zstandard
from proxyproc import CLIENT_KEY, clean_env, render_config, rows, start_proxy_process, wait_rows

from kimi_intercept.commands.simulator import FakeUpstream, Reply

PROMPT = [{"role": "user", "content": "Say OK."}]
MAX_BODY_MB = 0.5
GEMINI_KEY = "AIza-client-key-in-the-query"


class Setup:
    """One proxy for the module; each test counts the rows it added."""

    def __init__(self, tmp: Path, on_plan_error: str = "error"):
        self.original, self.kimi, self.deepseek = (FakeUpstream().start() for _ in range(3))
        self.db = tmp / "kimi.db"
        config = render_config(
            self.db, self.kimi.url, self.deepseek.url, hosts=["localhost", "api.openai.com"]
        )
        config = config.replace(
            'fallbacks = ["deepseek"]',
            f'fallbacks = ["deepseek"]\non_plan_error = "{on_plan_error}"',
        )
        config += f"\n[proxy]\nmax_body_mb = {MAX_BODY_MB}\n"
        (tmp / "config.toml").write_text(config)
        (tmp / "confdir").mkdir()
        self.proxy = start_proxy_process(
            tmp / "config.toml", tmp / "confdir", env=clean_env(), cwd=tmp
        )
        port = self.original.url.rsplit(":", 1)[1]
        self.base = f"http://localhost:{port}"
        self.http = httpx.Client(proxy=self.proxy.proxy_url, timeout=30, trust_env=False)

    def stop(self) -> None:
        self.http.close()
        self.proxy.stop()
        for up in (self.original, self.kimi, self.deepseek):
            up.stop()

    def row_count(self) -> int:
        return len(rows(self.db)) if self.db.exists() else 0

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        h = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}
        return self.http.post(self.base + path, content=body, headers={**h, **(headers or {})})

    def new_rows(self, before: int, sent: int) -> list[dict[str, Any]]:
        """The rows the last ``sent`` requests added: exactly one each."""
        got = wait_rows(self.db, before + sent)[before:]
        assert len(got) == sent, got
        assert self.original.received == [], "a request reached the original host"
        return got


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Setup]:
    s = Setup(tmp_path_factory.mktemp("bad-input"))
    yield s
    s.stop()


def chat(content: Any = "Say OK.", **extra: Any) -> bytes:
    """A chat body as JavaScript clients write it: lone surrogates as ``\\ud83d`` escapes."""
    return json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": content}],
                       **extra}).encode()  # fmt: skip


def test_a_lone_surrogate_in_the_prompt_is_routed_as_the_same_escape(env):
    before = env.row_count()
    r = env.post("/v1/chat/completions", chat("a cut emoji: \ud83d"))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello from the fake Kimi upstream."
    sent = env.kimi.received[-1]
    assert sent.json["messages"] == [{"role": "user", "content": "a cut emoji: \ud83d"}]
    assert b"\\ud83d" in sent.body  # JSON's escape, not invalid UTF-8
    [row] = env.new_rows(before, 1)
    assert (row["outcome"], row["provider"], row["route"]) == ("ok", "kimi", "reroute")


def raw_post(env: Setup, path: str, body: bytes, user_agent: bytes) -> tuple[int, bytes]:
    """A request through the proxy over a plain socket: HTTP clients refuse to send header
    values like these, but anything on the machine can."""
    host, port = env.proxy.proxy_url.removeprefix("http://").rsplit(":", 1)
    head = (
        f"POST {env.base}{path} HTTP/1.1\r\nHost: {env.base.removeprefix('http://')}\r\n"
        f"Authorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + b"User-Agent: " + user_agent + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def test_a_user_agent_of_only_whitespace_or_control_characters_is_routed(env):
    before = env.row_count()
    # (mitmproxy itself answers 400 to C0 controls other than whitespace in a header value)
    for ua in (b"\x0b\x0c", b" \t ", b"\xff\xfe"):
        status, body = raw_post(env, "/v1/chat/completions", chat(), ua)
        assert status == 200, body
        assert b"Hello from the fake Kimi upstream." in body
    got = env.new_rows(before, 3)
    assert [(g["outcome"], g["client"]) for g in got] == [
        ("ok", None),
        ("ok", None),
        ("ok", "\ufffd\ufffd"),
    ]


def test_a_content_part_whose_type_is_a_list_is_routed(env):
    before = env.row_count()
    r = env.post("/v1/chat/completions", chat([{"type": ["text"], "text": "hi"}]))
    assert r.status_code == 200, r.text
    [row] = env.new_rows(before, 1)
    assert (row["outcome"], row["provider"]) == ("ok", "kimi")


ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_a_compressed_body_over_https_is_decoded_and_sent_without_its_encoding(env, encoding):
    before = env.row_count()
    body = chat(f"{encoding} compressed prompt")
    with httpx.Client(
        proxy=env.proxy.proxy_url,
        verify=ssl.create_default_context(cafile=str(env.proxy.ca_path)),
        trust_env=False,
        timeout=30,
    ) as client:
        r = client.post(
            "https://api.openai.com/v1/chat/completions",
            content=ENCODERS[encoding](body),
            headers={
                "authorization": f"Bearer {CLIENT_KEY}",
                "content-type": "application/json",
                "content-encoding": encoding,
            },
        )
    assert r.status_code == 200, r.text
    sent = env.kimi.received[-1]
    assert "content-encoding" not in sent.headers
    assert sent.json["messages"] == [{"role": "user", "content": f"{encoding} compressed prompt"}]
    [row] = env.new_rows(before, 1)
    assert (row["outcome"], row["host"]) == ("ok", "api.openai.com")


def test_a_body_that_cannot_be_decoded_gets_a_400_and_a_row(env):
    before = env.row_count()
    r = env.post("/v1/chat/completions", b"this is not gzip", {"content-encoding": "gzip"})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert message.startswith("cannot decode the request body (Content-Encoding: gzip)")
    [row] = env.new_rows(before, 1)
    assert (row["outcome"], row["status_code"], row["route"]) == ("rejected", 400, "rejected")
    assert row["error"] == message


def test_a_body_over_max_body_mb_gets_a_413_in_the_clients_dialect_zip_bombs_too(env):
    before = env.row_count()
    big = chat("x" * int(MAX_BODY_MB * 1024 * 1024))
    r = env.post("/v1/chat/completions", big)
    assert r.status_code == 413
    assert r.json()["error"]["message"] == (
        f"the request body is over [proxy] max_body_mb = {MAX_BODY_MB:g} MB"
    )
    messages = [{"role": "user", "content": "y" * 600_000}]
    anthropic = json.dumps({"model": "claude", "max_tokens": 5, "messages": messages}).encode()
    r = env.post("/v1/messages", anthropic)
    assert r.status_code == 413
    assert r.json() == {
        "type": "error",
        "error": {
            "type": "request_too_large",
            "message": f"the request body is over [proxy] max_body_mb = {MAX_BODY_MB:g} MB",
        },
    }
    bomb = gzip.compress(chat("z" * 50_000_000))  # about 50 KB on the wire, 50 MB decoded
    assert len(bomb) < MAX_BODY_MB * 1024 * 1024 / 4
    r = env.post("/v1/chat/completions", bomb, {"content-encoding": "gzip"})
    assert r.status_code == 413
    got = env.new_rows(before, 3)
    assert [(g["outcome"], g["status_code"], g["dialect"]) for g in got] == [
        ("rejected", 413, "openai"),
        ("rejected", 413, "anthropic"),
        ("rejected", 413, "openai"),
    ]


def test_bodies_that_are_not_json_objects_get_a_400_in_each_dialect(env):
    before = env.row_count()
    r = env.post("/v1/chat/completions", b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    r = env.post(f"/v1beta/models/gemini-2.5-pro:generateContent?key={GEMINI_KEY}", b"[1, 2]")
    assert r.status_code == 400
    assert r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert r.json()["error"]["message"] == "the request body is a JSON list, not an object"
    got = env.new_rows(before, 2)
    assert [(g["outcome"], g["dialect"]) for g in got] == [
        ("rejected", "openai"),
        ("rejected", "gemini"),
    ]
    assert env.proxy.wait_for_log("answered 400: the request body is a JSON list")
    assert GEMINI_KEY not in env.proxy.log_text()  # the warning names the URL without its query
    assert all(GEMINI_KEY not in json.dumps(g) for g in got)


def test_an_untranslatable_request_gets_a_400_not_a_502(env):
    before = env.row_count()
    body = {"model": "claude", "max_tokens": 5, "messages": [{"role": "wizard", "content": "x"}]}
    r = env.post("/v1/messages", json.dumps(body).encode())
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "cannot translate the anthropic request: "
            "messages[0] has role 'wizard'; expected user or assistant",
        },
    }
    [row] = env.new_rows(before, 1)
    assert (row["outcome"], row["status_code"]) == ("rejected", 400)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 1e30, "completion_tokens": 5, "total_tokens": 1e30},
        {"prompt_tokens": 10**30, "completion_tokens": 5},
        {"prompt_tokens": -7, "completion_tokens": 5},
        {"prompt_tokens": "12", "completion_tokens": 5},
    ],
)
def test_absurd_provider_usage_is_estimated_and_the_row_kept(env, usage):
    before = env.row_count()
    answer = {
        "id": "chatcmpl-absurd",
        "object": "chat.completion",
        "model": "kimi-k2.6",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"},
                     "finish_reason": "stop"}],
        "usage": usage,
    }  # fmt: skip
    env.kimi.enqueue(Reply.json(answer))
    r = env.post("/v1/chat/completions", chat())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "OK"
    [row] = env.new_rows(before, 1)
    assert (row["outcome"], row["usage_source"]) == ("ok", "estimate")
    assert row["prompt_tokens"] == row["prompt_tokens_estimate"] and 0 < row["prompt_tokens"] < 50
    assert json.loads(row["details"])["usage_ignored"].startswith("usage.prompt_tokens = ")


@pytest.mark.parametrize("reason", [["stop"], {"x": 1}, 7])
def test_a_gemini_client_gets_a_whole_answer_when_finish_reason_is_not_a_string(env, reason):
    before = env.row_count()
    answer = {
        "id": "chatcmpl-odd",
        "object": "chat.completion",
        "model": "kimi-k2.6",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"},
                     "finish_reason": reason}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }  # fmt: skip
    env.kimi.enqueue(Reply.json(answer))
    gemini = {"contents": [{"role": "user", "parts": [{"text": "Say OK."}]}]}
    r = env.post("/v1beta/models/gemini-2.5-pro:generateContent", json.dumps(gemini).encode())
    assert r.status_code == 200
    [candidate] = r.json()["candidates"]
    assert candidate["content"]["parts"] == [{"text": "OK"}]
    assert candidate["finishReason"] == "STOP"  # not a reason: the answer simply ended
    [row] = env.new_rows(before, 1)
    assert row["outcome"] == "ok"


def test_on_plan_error_passthrough_sends_it_on_unchanged_and_records_it(tmp_path):
    s = Setup(tmp_path, on_plan_error="passthrough")
    try:
        r = s.post("/v1/chat/completions", b"{not json")
        # the original provider's own answer (the fake rejects a body that is not JSON)
        assert r.status_code == 400
        [got] = s.original.received
        assert got.body == b"{not json"
        assert got.headers["authorization"] == f"Bearer {CLIENT_KEY}"
        [row] = wait_rows(s.db, 1)
        assert (row["route"], row["outcome"], row["status_code"], row["error"]) == (
            "passthrough",
            "error",
            400,
            "HTTP 400",
        )
        assert json.loads(row["details"])["plan_error"].startswith("the request body is not JSON")
        assert s.kimi.received == []
    finally:
        s.stop()


def test_a_plausible_but_wrong_stream_reaches_an_anthropic_client_as_a_valid_stream(env):
    before = env.row_count()
    head = {"id": "chatcmpl-w", "object": "chat.completion.chunk", "model": "kimi-k2.6"}
    events = [
        {**head, "choices": True},
        {**head, "choices": [{"index": 0, "delta": {"content": "O", "tool_calls": {"a": 1}}}]},
        {**head, "choices": [{"index": 0, "delta": None, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "K"}, "finish_reason": ["stop"]}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
    ]  # fmt: skip
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    env.kimi.enqueue(Reply.sse_file(raw + b"data: [DONE]\n\n"))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "Say OK."}]}  # fmt: skip
    r = env.post("/v1/messages", json.dumps(body).encode())
    assert r.status_code == 200
    kinds, text = [], ""
    for block in r.text.strip().split("\n\n"):
        name, data = block.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        kinds.append(event["type"])
        if event["type"] == "content_block_delta":
            text += event["delta"].get("text", "")
    assert text == "OK"
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    [row] = env.new_rows(before, 1)
    assert (row["outcome"], row["usage_source"], row["prompt_tokens"]) == ("ok", "provider", 5)
