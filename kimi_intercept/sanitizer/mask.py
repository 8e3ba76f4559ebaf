"""Masking one text — the deterministic core of the sanitizer (:mod:`.sanitize` walks the
requests, :mod:`.walk` finds the texts).

How (:func:`mask_text`): a text at or under the threshold is left alone. Above it: CRLF → LF,
ANSI escapes and other control characters removed, each ``\\r``-overwritten line reduced to its
last state, lines longer than ``max_line_chars`` cut in the middle (``[kimi-intercept: N chars
cut]``), runs of 3+ identical lines → the line and ``[kimi-intercept: previous line repeated N
more times]``, runs of 2+ blank lines → one, runs of 5+ lines equal but for their digits (not
error lines) → first, ``[kimi-intercept: N similar lines]``, last. If that is at or under the
threshold the result is the collapsed text after a ``collapsed`` marker line; otherwise the first
lines (at most ``head_lines`` and a third of ``kept_chars``), a ``masked`` marker, up to
``max_error_lines`` error-looking lines of the removed middle (:data:`ERROR_RE`; when there are
more, the first and last halves), and the last lines (at most ``tail_lines`` and two thirds of
``kept_chars``, by default 4 × the threshold). Cuts fall on line and code-point boundaries, so
UTF-8 stays valid. If the result would not be smaller in tokens, the text is left alone.

The marker (:data:`MARKER_RE` parses it)::

    [kimi-intercept: 18,304 lines / 1.2 MB masked — id 7f3a9c0e12ab34cd]
    [kimi-intercept: 5 lines / 312 B collapsed — id 7f3a9c0e12ab34cd]

With error lines kept below it, the marker ends ``— id 7f3a9c0e12ab34cd; 3 error lines kept
below]`` and the error lines are followed by ``[kimi-intercept: end of kept error lines]``.
Lines and bytes (UTF-8; B, KB, MB, GB in powers of 1000) are what the model no longer sees
verbatim (original minus the kept lines); ``id`` is :func:`content_id` of the original. The
marker states no token count: that would mean tokenizing every long original whole before
sending (~45 ms for 550 KB of logs, the first turn's main cost). The decisions count only as far
as they need (:func:`~kimi_intercept.accounting.tokens.count_until`: is the original over the
threshold, is it over its masked form), and the original's whole count
(:attr:`~.settings.MaskedItem.tokens_before`, for the savings) is made after the answer.
Markers of earlier versions (``… / 1.2 MB / 310k tokens masked — …``) still parse.

Deterministic and prefix-stable: a text's masked form depends only on the text and the
settings, never on its position, neighbours or later turns; ids and tool-call pairing are never
changed. :class:`MaskCache` memoises masks and token counts by content, so the next turn of a
conversation only pays for what is new.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from typing import Any

from kimi_intercept.accounting import tokens
from kimi_intercept.dialects.memo import ContentMemo
from kimi_intercept.sanitizer.settings import (  # noqa: F401 (re-exported)
    DEFAULT_SKIP_TOOLS,
    KINDS,
    SANITIZER_KEYS,
    MaskedItem,
    SanitizeResult,
    SanitizeSettings,
)

ERROR_LINE_CHARS = 300  # kept error lines are cut in the middle to this length

MARKER_RE = re.compile(
    r"\[kimi-intercept: (?P<lines>\d[\d,]*) lines? / (?P<size>\d+(?:\.\d)? (?:B|KB|MB|GB))"
    r"(?: / (?P<tokens>\d+(?:\.\d)?[kM]?) tokens)? (?P<action>masked|collapsed)"
    r" — id (?P<id>[0-9a-f]{16})"
    r"(?:; (?P<errors>\d[\d,]*) error lines? kept below)?\]"
)
END_OF_ERRORS = "[kimi-intercept: end of kept error lines]"
#: Lines kept from the masked middle: error words, failures, tracebacks, exit codes, panics.
ERROR_RE = re.compile(
    r"(?i:\b(?:error|fail(?:ed|ure|s)?|fatal|panic(?:ked)?)\b|traceback \(most recent"
    r"|\bexit(?:ed)? (?:code|status|with)\b|segmentation fault|core dumped)"
    r"|(?:Error|Exception)\b|ERR!|✗|✘"
)
# Lower-case words at least one of which every ERROR_RE match contains.
_ERROR_WORDS = ("error", "fail", "fatal", "panic", "traceback", "exit", "segmentation fault",
                "core dumped", "exception", "err!", "✗", "✘")  # fmt: skip
_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # all but \t \n \r
_DIGITS_RE = re.compile(r"[0-9]+")
_HEADER = r"\[(?P<tool>[a-z][a-z0-9_]*)(?: for (?P<desc>.{0,4000}?))?\] Result:"
_START_RE = re.compile(
    rf"<(?P<tag>environment_details|system-reminder|system)>|^{_HEADER}", re.M | re.S
)
_HEADER_ONLY_RE = re.compile(rf"\s*{_HEADER}\s*", re.S)
_BOUNDARY_RE = re.compile(
    r"^(?:\[[a-z][a-z0-9_]*(?: for .{0,4000}?)?\] Result:"
    r"|<(?:environment_details|system-reminder|feedback|user_message|answer|task)>)",
    re.M | re.S,
)
_TAG_KINDS = {
    "environment_details": "environment_details",
    "system-reminder": "system_reminder",
    "system": "system",
}
_REMINDER_TOOL_RE = re.compile(r"Result of calling the (\w+) tool")
_INSTRUCTION_REMINDER_RE = re.compile(r"^# (?:claudeMd|MCP Server Instructions)\b", re.M)
_MEMORY_TOOL_RE = re.compile(
    r"(?:^|_)(?:read_graph|search_nodes|open_nodes|create_entities|create_relations"
    r"|add_observations|delete_entities|delete_observations|delete_relations)$"
)
_JSON_OBJECT_RE = re.compile(r"\s*\{")
_MISSING = object()
_NOT_MASKED = "-"  # cache value: the text stays as it is


@dataclass(frozen=True)
class _Mask:
    id: str
    masked: str
    tokens_after: int
    lines: int
    bytes: int


class MaskCache(ContentMemo):
    """Bounded, thread-safe LRU memo of masks and token counts, keyed by the text itself (and the
    settings): a hit costs one string hash and compare, no SHA-256 and no tokenizer. Bounded by
    ``max_entries`` and ``max_bytes`` (sizes of the cached strings, originals included); the
    LRU itself is :class:`~kimi_intercept.dialects.memo.ContentMemo`. ``get`` answers
    ``_MISSING`` for a key it does not hold."""

    def __init__(self, max_entries: int = 16384, max_bytes: int = 64 << 20) -> None:
        super().__init__(max_entries, max_bytes)

    def get(self, key: Any, default: Any = _MISSING) -> Any:
        return super().get(key, default)

    def count(self, text: str) -> int:
        """:func:`~.tokens.count_text`, memoised for texts of 64+ characters."""
        if len(text) < 64:
            return tokens.count_text(text)
        key = ("count", text)
        n = self.get(key)
        if n is _MISSING:
            n = tokens.count_text(text)
            self.put(key, n, sys.getsizeof(text))
        return int(n)

    def known(self, text: str) -> bool:
        """Whether :meth:`count` of ``text`` is a memo hit (costs no tokenizing)."""
        return len(text) < 64 or self.get(("count", text)) is not _MISSING

    def remember(self, text: str, n: int) -> None:
        """Keep ``n`` (:func:`~.tokens.count_text` of ``text``, counted elsewhere) for
        :meth:`count`."""
        if len(text) >= 64:
            self.put(("count", text), n, sys.getsizeof(text))


def content_id(text: str) -> str:
    """The id of an original: SHA-256 of its UTF-8 bytes (lone surrogates passed through), first
    16 hex digits."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _fmt_bytes(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    for unit, scale in (("KB", 1e3), ("MB", 1e6)):
        if n < scale * 1000:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e9:.1f} GB"


def _marker(lines: int, size: int, action: str, ident: str, errors: int) -> str:
    """The marker line (:data:`MARKER_RE`); negative sizes are shown as 0."""
    plural = "" if lines == 1 else "s"
    text = (
        f"[kimi-intercept: {max(lines, 0):,} line{plural} / {_fmt_bytes(max(size, 0))} "
        f"{action} — id {ident}"
    )
    if errors:
        text += f"; {errors:,} error line{'' if errors == 1 else 's'} kept below"
    return text + "]"


def _cut_line(line: str, limit: int) -> str:
    if len(line) <= limit:
        return line
    keep = max(limit - 40, 2)
    head = keep // 2
    cut = len(line) - keep
    return f"{line[:head]} [kimi-intercept: {cut:,} chars cut] {line[len(line) - (keep - head) :]}"


def _collapse(text: str, settings: SanitizeSettings) -> tuple[list[str], list[int]]:
    """Collapsed lines and how many original lines each stands for (they sum to the original's
    line count)."""
    text = text.replace("\r\n", "\n")
    if "\x1b" in text:
        text = _ANSI_RE.sub("", text)
    data = _utf8(text)
    if len(data.translate(None, _CONTROL_BYTES)) != len(data):  # control characters to remove
        text = _CONTROL_RE.sub("", text)
        data = _utf8(text)
    raw = text.split("\n")
    if "\r" in text or max(map(len, raw)) > settings.max_line_chars:
        for i, line in enumerate(raw):
            if "\r" in line:
                raw[i] = next((s for s in reversed(line.split("\r")) if s), "")
            if len(raw[i]) > settings.max_line_chars:
                raw[i] = _cut_line(raw[i], settings.max_line_chars)
        data = _utf8("\n".join(raw))
    # Lines are "similar" when equal with each run of digits read as "0" (their keys). Two
    # lines whose digit-free bytes differ cannot be (a cheap test in C for every line); only
    # the others get their key made (a regex per line was ~3x collapse's other work).
    undigited = data.translate(None, b"0123456789").split(b"\n")
    keys: dict[int, str] = {}

    def similar(a: int, b: int) -> bool:
        if undigited[a] != undigited[b]:
            return False
        ka = keys.get(a) or keys.setdefault(a, _DIGITS_RE.sub("0", raw[a]))
        kb = keys.get(b) or keys.setdefault(b, _DIGITS_RE.sub("0", raw[b]))
        return ka == kb

    lines: list[str] = []
    weights: list[int] = []
    i, n = 0, len(raw)
    while i < n:
        same = i + 1
        while same < n and raw[same] == raw[i]:
            same += 1
        j = same
        if (
            same < n
            and undigited[same] == undigited[i]  # the pre-test, inline: most lines stop here
            and similar(same, i)
            and not ERROR_RE.search(raw[i])
        ):
            while j < n and similar(j, i) and not ERROR_RE.search(raw[j]):
                j += 1
        if j > same and j - i >= 5:  # near-identical (digits aside): first, marker, last
            lines += [raw[i], f"[kimi-intercept: {j - i - 2:,} similar lines]", raw[j - 1]]
            weights += [1, j - i - 2, 1]
            i = j
            continue
        run = same - i
        if run == 1:
            lines.append(raw[i])
            weights.append(1)
        elif run >= 2 and not raw[i].strip():
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


#: The characters of :data:`_CONTROL_RE`, all ASCII: one byte each in UTF-8.
_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


def _utf8(text: str) -> bytes:
    """``text`` in UTF-8, lone surrogates (a JavaScript client's cut emoji) included as bytes."""
    return text.encode("utf-8", "surrogatepass")


def _error_lines(text: str) -> list[str]:
    """The lines of ``text`` that match :data:`ERROR_RE`, in order, each cut to
    :data:`ERROR_LINE_CHARS`. Candidates are found with ``str.find`` on literal words (much
    faster than the regex over megabytes of log), then checked with the regex."""
    low = text.lower()
    starts: set[int] = set()
    if len(low) != len(text):  # a character whose lower case is longer: no shared offsets
        starts.update(text.rfind("\n", 0, m.start()) + 1 for m in ERROR_RE.finditer(text))
    else:
        for needle in _ERROR_WORDS:
            i = low.find(needle)
            while i >= 0:
                starts.add(text.rfind("\n", 0, i) + 1)
                end = text.find("\n", i)
                i = low.find(needle, end) if end >= 0 else -1
    out = []
    for start in sorted(starts):
        end = text.find("\n", start)
        line = text[start : end if end >= 0 else len(text)]
        if ERROR_RE.search(line):
            out.append(_cut_line(line, ERROR_LINE_CHARS))
    return out


def _take(lines: list[str], max_lines: int, max_chars: int) -> int:
    """How many of ``lines`` fit (at least one)."""
    used = 0
    for k, line in enumerate(lines[:max_lines]):
        used += len(line) + 1
        if k and used > max_chars:
            return k
    return min(len(lines), max_lines)


def _mask_uncached(text: str, settings: SanitizeSettings, cache: MaskCache | None) -> Any:
    """The :class:`_Mask` of ``text``, or :data:`_NOT_MASKED`. The original is counted only as
    far as each decision needs (:func:`~.tokens.count_until`): over the threshold at all, then
    over its masked form; an original counted whole on the way is remembered in ``cache`` (a
    text left alone is sent as it is, and counted again for the whole prompt)."""
    limit = settings.threshold_tokens
    seen, end = tokens.count_until(text, limit)
    whole = end == len(text)  # counted to its end already
    if whole:
        if cache is not None:
            cache.remember(text, seen)
        if seen <= limit:
            return _NOT_MASKED
    lines, weights = _collapse(text, settings)
    collapsed = "\n".join(lines)
    size = _utf8_len(text)
    total_lines = sum(weights)
    estimate = seen * len(collapsed) / max(end, 1)  # at the counted part's tokens per character
    small = estimate <= 2 * limit
    collapsed_tokens = tokens.count_text(collapsed) if small else None
    ident = content_id(text)
    n = len(lines)
    h = t = n
    if collapsed_tokens is None or collapsed_tokens > limit:
        share = settings.head_lines + settings.tail_lines
        head_chars = settings.kept_chars * settings.head_lines // share
        h = _take(lines, settings.head_lines, head_chars)
        t = _take(lines[h:][::-1], settings.tail_lines, settings.kept_chars - head_chars)
    if h + t >= n:  # nothing to cut: the collapsed text is the result
        marker = _marker(total_lines - n, size - _utf8_len(collapsed), "collapsed", ident, 0)
        masked = f"{marker}\n{collapsed}"
    else:
        errors = _error_lines("\n".join(lines[h : n - t]))
        found = len(errors)
        if found > settings.max_error_lines:
            k = settings.max_error_lines
            errors = errors[: k // 2] + errors[found - (k - k // 2) :] if k else []
        kept = lines[:h] + errors + lines[n - t :]
        masked_lines = total_lines - sum(weights[:h]) - sum(weights[n - t :]) - len(errors)
        removed = size - _utf8_len("\n".join(kept))
        marker = _marker(masked_lines, removed, "masked", ident, len(errors))
        body = [*lines[:h], marker, *errors, *([END_OF_ERRORS] if errors else []), *lines[n - t :]]
        masked = "\n".join(body)
    after = cache.count(masked) if cache is not None else tokens.count_text(masked)
    seen, end = tokens.count_until(text, after, end, seen)  # the original is over it: masked
    if not whole and end == len(text) and cache is not None:
        cache.remember(text, seen)
    if seen <= after:
        return _NOT_MASKED
    return _Mask(ident, masked, after, total_lines, size)


def _mask(text: str, settings: SanitizeSettings, cache: MaskCache | None) -> _Mask | None:
    # Cheap exit before any counting or caching: tokens never exceed UTF-8 bytes.
    limit = settings.threshold_tokens
    if len(text) * 4 <= limit or (len(text) <= limit and text.isascii()):
        return None
    if cache is None:
        result = _mask_uncached(text, settings, None)
    else:
        key = ("mask", settings, text)
        result = cache.get(key)
        if result is _MISSING:
            result = _mask_uncached(text, settings, cache)
            masked_size = sys.getsizeof(result.masked) if isinstance(result, _Mask) else 0
            cache.put(key, result, sys.getsizeof(text) + masked_size)
    return result if isinstance(result, _Mask) else None


def mask_text(
    text: str,
    settings: SanitizeSettings,
    *,
    tool: str | None,
    kind: str,
    cache: MaskCache | None = None,
) -> MaskedItem | None:
    """The masked form of one tool/console text, or ``None`` when it stays as it is (sanitizer
    disabled, at or under the threshold, or masking would not save tokens). Ignores
    ``skip_tools``/``skip_kinds`` (the request walkers apply them)."""
    if not settings.enabled:
        return None
    m = _mask(text, settings, cache)
    if m is None:
        return None
    return MaskedItem(m.id, tool, kind, text, m.masked, m.tokens_after, m.lines, m.bytes, cache)
