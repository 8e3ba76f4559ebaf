"""wire_json.loads gives exactly json.loads' value or exception, however the text is odd."""

from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path

import pytest

from kimi_intercept.accounting import wire_json

WIRE = Path(__file__).resolve().parents[1] / "wire"

ODD = [
    b'{"seed": 123456789012345678901234567890, "n": -98765432109876543210}',  # beyond 64 bits
    b'{"a": 1, "a": 2}',  # duplicate keys: the last wins
    b'{"t": NaN, "u": Infinity, "v": -Infinity}',  # json.loads accepts these
    b"[1e400, -1e400]",  # beyond the float range: inf
    b'"\\ud83d"',  # a lone surrogate escape (a JavaScript client's cut emoji)
    b'{"text": "\\ud83d\\ude00 \\u00e9\\/\\n"}',
    b"\xef\xbb\xbf{}",  # a UTF-8 byte-order mark
    b"[-0.0, 0e0, 1E5, 1.0, 4.9e-324, 2.4e-324, 1.7976931348623157e308]",
    b'  \r\n{"k": [true, false, null, ""]}\n',
    b'{"a": "\xff"}',  # not UTF-8
    b'{"a": 1}x',
    b"[1,]",
    b"01",
    b"",
    b"[" * 100_000,  # deeper than either parser goes
    '{"a": "\ud800"}',  # a str holding a lone surrogate
    "[1, 2.5]",
]


def _outcome(f, data):
    try:
        return "ok", repr(f(data))
    except Exception as e:  # the exception's type is what callers catch
        return "error", type(e)


@pytest.mark.parametrize("data", ODD, ids=range(len(ODD)))
def test_same_value_or_same_exception_as_json_loads(data):
    assert _outcome(wire_json.loads, data) == _outcome(json.loads, data)


def test_floats_round_trip_exactly_as_json_loads_reads_them():
    rnd = random.Random(7)
    for _ in range(20_000):
        x = struct.unpack("d", struct.pack("Q", rnd.getrandbits(64)))[0]
        if math.isnan(x) or math.isinf(x):
            continue
        for text in (repr(x), f"{x:.17g}", f"{x:.5e}", f"{x:.3f}"):
            got = wire_json.loads(text.encode())
            assert repr(got) == repr(json.loads(text)), text


def test_every_recorded_wire_body_and_event_reads_the_same():
    compared = 0
    for path in sorted(WIRE.rglob("*")):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        pieces = [raw] + [
            line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:")
        ]
        for piece in pieces:
            expected = _outcome(json.loads, piece)
            if expected[0] == "ok":
                compared += 1
            assert _outcome(wire_json.loads, piece) == expected, path
    assert compared > 100  # the recorded streams are there and were read
