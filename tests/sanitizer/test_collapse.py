"""Collapsing repeated and similar lines (``mask._collapse``) gives what the plain definition
gives: similar lines are lines equal once each run of digits reads ``0``. The module finds them
with a cheap digit-free pre-test; this checks it against the definition on generated logs."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from kimi_intercept.sanitizer.mask import (
    _ANSI_RE,
    _CONTROL_RE,
    ERROR_RE,
    SanitizeSettings,
    _collapse,
    _cut_line,
)

_DIGITS = re.compile(r"[0-9]+")


def reference(text: str, s: SanitizeSettings) -> tuple[list[str], list[int]]:
    """The definition, written plainly: every line's key made with the regex."""
    text = text.replace("\r\n", "\n")
    text = _CONTROL_RE.sub("", _ANSI_RE.sub("", text))
    raw = text.split("\n")
    for i, line in enumerate(raw):
        if "\r" in line:
            raw[i] = next((p for p in reversed(line.split("\r")) if p), "")
        if len(raw[i]) > s.max_line_chars:
            raw[i] = _cut_line(raw[i], s.max_line_chars)
    keys = [_DIGITS.sub("0", line) for line in raw]
    lines: list[str] = []
    weights: list[int] = []
    i, n = 0, len(raw)
    while i < n:
        same = i + 1
        while same < n and raw[same] == raw[i]:
            same += 1
        j = same
        if same < n and keys[same] == keys[i] and not ERROR_RE.search(raw[i]):
            while j < n and keys[j] == keys[i] and not ERROR_RE.search(raw[j]):
                j += 1
        if j > same and j - i >= 5:
            lines += [raw[i], f"[kimi-intercept: {j - i - 2:,} similar lines]", raw[j - 1]]
            weights += [1, j - i - 2, 1]
            i = j
            continue
        run = same - i
        if run >= 2 and not raw[i].strip():
            lines.append("")
            weights.append(run)
        elif run >= 3:
            lines += [raw[i], f"[kimi-intercept: previous line repeated {run - 1:,} more times]"]
            weights += [1, run - 1]
        else:
            lines += raw[i:same]
            weights += [1] * run
        i = same
    return lines, weights


# Lines built to be similar often: a few shapes, digits of any length, some without digits
# (where the digit-free pre-test alone would wrongly match "a1b" with "ab"), control bytes,
# carriage returns, errors, non-ASCII and lone surrogates.
_PART = st.sampled_from(
    ["CC src/a.c", "[", "/", "]", " ", "ok", "a", "b", "error: x", "é", "数据", "\x00", "\x1b[31m",
     "\r", "\t", "\ud83d", "", "line"]
)  # fmt: skip
_NUMBER = st.integers(0, 10**6).map(str)
_LINE = st.lists(st.one_of(_PART, _NUMBER, st.just("")), max_size=6).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(range(6)), min_size=0, max_size=60), st.lists(_LINE, min_size=6,
       max_size=6), st.lists(_NUMBER, min_size=60, max_size=60))  # fmt: skip
def test_collapse_matches_its_definition(picks, shapes, numbers):
    text = "\n".join(shapes[k].replace("0", numbers[i], 1) for i, k in enumerate(picks))
    s = SanitizeSettings()
    assert _collapse(text, s) == reference(text, s)


def test_similar_lines_need_equal_digit_runs_not_just_equal_letters():
    s = SanitizeSettings()
    log = "\n".join(["a1b", "ab", "a22b", "ab", "a3b", "ab", "a4b"])  # digit-free: all "ab"
    assert _collapse(log, s) == (log.split("\n"), [1] * 7)
    similar = "\n".join(f"[{i}/900] CC src/x{i}.c" for i in range(1, 8))
    assert _collapse(similar, s)[0][1] == "[kimi-intercept: 5 similar lines]"
