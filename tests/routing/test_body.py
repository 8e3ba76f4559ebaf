"""Request bodies with their Content-Encoding undone, within max_body_mb — zip bombs included."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard

from kimi_intercept.routing.body import BodyTooLarge, decoded_body

BODY = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_each_encoding_mitmproxy_decodes_is_undone(encoding):
    assert decoded_body(ENCODERS[encoding](BODY), encoding.upper(), 1000) == BODY


def test_identity_and_raw_deflate():
    assert decoded_body(BODY, "", 1000) == BODY
    assert decoded_body(BODY, "identity", 1000) == BODY
    assert decoded_body(raw_deflate(BODY), "deflate", 1000) == BODY


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_a_zip_bomb_stops_at_the_limit(encoding):
    bomb = ENCODERS[encoding](b"0" * 100_000_000)  # a few hundred KB at most
    with pytest.raises(BodyTooLarge, match="the decoded request body is over 1,048,576 bytes"):
        decoded_body(bomb, encoding, 1024 * 1024)


def test_exactly_the_limit_is_fine_one_more_byte_is_not():
    data = b"x" * 1000
    assert decoded_body(gzip.compress(data), "gzip", 1000) == data
    with pytest.raises(BodyTooLarge):
        decoded_body(gzip.compress(data + b"x"), "gzip", 1000)
    with pytest.raises(BodyTooLarge):
        decoded_body(data + b"x", "", 1000)


@pytest.mark.parametrize(
    ("raw", "encoding", "message"),
    [
        (b"not gzip", "gzip", "incorrect header check"),
        (gzip.compress(BODY)[:-6], "gzip", "the compressed data ends early"),
        (brotli.compress(BODY)[:-2], "br", "the compressed data ends early"),
        (zstandard.ZstdCompressor().compress(BODY)[:-2], "zstd", "the compressed data ends early"),
        (b"not zstd", "zstd", "Unknown frame descriptor"),
        (b"x", "compress", "unsupported Content-Encoding 'compress'"),
        (b"x", "gzip, br", "unsupported Content-Encoding 'gzip, br'"),
    ],
)
def test_data_that_does_not_decode_is_a_value_error_naming_why(raw, encoding, message):
    with pytest.raises(ValueError, match=None) as e:
        decoded_body(raw, encoding, 1000)
    assert not isinstance(e.value, BodyTooLarge)
    assert message in str(e.value)
