"""A request body as the client meant it: ``Content-Encoding`` undone, within a size bound.

mitmproxy's own ``request.content`` decodes the whole body in memory whatever it expands to;
:func:`decoded_body` stops as soon as the output passes ``limit`` bytes, so a small compressed
body that expands to gigabytes (a "zip bomb") is refused after ``limit`` bytes of work. The
encodings are the ones mitmproxy decodes (``mitmproxy.net.encoding``): ``gzip``/``x-gzip``,
``deflate`` (zlib-wrapped or raw, RFC 9110 §8.4.1.2), ``br`` (RFC 7932), ``zstd`` (RFC 8878),
and ``identity``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import brotli
import zstandard

#: Compressed input fed at a time to the brotli and zstd decoders (they have no output limit of
#: their own).
_STEP = 1024


class BodyTooLarge(ValueError):
    """The decoded body is over the limit; ``limit`` in bytes."""

    def __init__(self, limit: int):
        super().__init__(f"the decoded request body is over {limit:,} bytes")
        self.limit = limit


def decoded_body(raw: bytes, encoding: str, limit: int) -> bytes:
    """``raw`` with ``encoding`` (a ``Content-Encoding`` value, case-insensitive) undone.

    Raises :class:`BodyTooLarge` when the result would be over ``limit`` bytes, and
    ``ValueError`` naming the problem for an unknown encoding or data that does not decode.
    """
    kind = encoding.strip().lower()
    if kind in ("", "identity", "none"):
        out = raw
    elif kind in ("gzip", "x-gzip"):
        out = _zlib(raw, 16 + zlib.MAX_WBITS, limit)
    elif kind == "deflate":
        try:
            out = _zlib(raw, zlib.MAX_WBITS, limit)
        except BodyTooLarge:
            raise
        except ValueError:
            out = _zlib(raw, -zlib.MAX_WBITS, limit)  # raw deflate, as some clients send
    elif kind == "br":
        out = _brotli(raw, limit)
    elif kind == "zstd":
        out = _zstd(raw, limit)
    else:
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    if len(out) > limit:
        raise BodyTooLarge(limit)
    return out


def _zlib(raw: bytes, wbits: int, limit: int) -> bytes:
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(raw, limit + 1)
    except zlib.error as e:
        raise ValueError(str(e)) from e
    if len(out) > limit or d.unconsumed_tail:
        raise BodyTooLarge(limit)
    if not d.eof:
        raise ValueError("the compressed data ends early")
    return out


def _brotli(raw: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    try:
        out = _stepped(d.process, raw, limit)
    except brotli.error as e:
        raise ValueError(str(e) or "not brotli data") from e
    if not d.is_finished():
        raise ValueError("the compressed data ends early")
    return out


def _zstd(raw: bytes, limit: int) -> bytes:
    d = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = _stepped(d.decompress, raw, limit)
    except zstandard.ZstdError as e:
        raise ValueError(str(e)) from e
    if not d.eof:
        raise ValueError("the compressed data ends early")
    return out


def _stepped(process: Callable[[bytes], bytes], raw: bytes, limit: int) -> bytes:
    """Feed a decoder without an output limit :data:`_STEP` input bytes at a time, and stop as
    soon as its output passes ``limit``."""
    parts, size = [], 0
    for start in range(0, len(raw), _STEP):
        part = process(raw[start : start + _STEP])
        size += len(part)
        if size > limit:
            raise BodyTooLarge(limit)
        parts.append(part)
    return b"".join(parts)
