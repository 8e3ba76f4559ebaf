"""``[sanitizer]`` settings and what masking produces: :class:`SanitizeSettings` (the table,
validated), :class:`MaskedItem` (one masked text) and :class:`SanitizeResult` (one request).

The tool names whose results are never masked (:data:`DEFAULT_SKIP_TOOLS`) come from the agents'
own tool-name constants (shared notes ``providers.md`` §9).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kimi_intercept.accounting import tokens
from kimi_intercept.config.settings import ConfigError

# fmt: off
#: Tools whose results must stay byte-exact (file contents read for editing, edits, diffs). From
#: source: Claude Code, Cline, Continue, Kimi CLI, Gemini CLI (providers.md §9 and the agents'
#: tool-name constants); ⚠ Roo Code, Codex and OpenCode names are from secondary material.
DEFAULT_SKIP_TOOLS = frozenset({
    # Claude Code
    "Read", "Edit", "MultiEdit", "Write", "NotebookEdit",
    # Cline (Roo Code: apply_diff, insert_content, search_and_replace ⚠)
    "read_file", "write_to_file", "replace_in_file", "apply_diff", "insert_content",
    "search_and_replace",
    # Continue (legacy builtin_* names too)
    "read_file_range", "read_currently_open_file", "edit_existing_file",
    "single_find_and_replace", "multi_edit", "create_new_file", "view_diff",
    "builtin_read_file", "builtin_edit_existing_file", "builtin_create_new_file",
    "builtin_read_currently_open_file",
    # Kimi CLI
    "ReadFile", "WriteFile", "StrReplaceFile",
    # Gemini CLI
    "write_file", "replace", "read_many_files",
    # Codex / OpenCode ⚠
    "apply_patch", "read", "edit", "write", "patch",
})
#: ``[sanitizer]`` keys :meth:`SanitizeSettings.from_table` reads.
SANITIZER_KEYS = frozenset({"enabled", "threshold_tokens", "head_lines", "tail_lines", "keep_chars",
                            "max_line_chars", "max_error_lines", "skip_tools", "skip_kinds"})
# fmt: on
KINDS = ("tool_result", "environment_details", "system_reminder", "system")


@dataclass(frozen=True)
class SanitizeSettings:
    """``[sanitizer]``. A masked text keeps at most ``head_lines`` first and ``tail_lines`` last
    lines (errors live at the end, so the tail is twice the head) within ``keep_chars``
    characters (a third for the head; default ``4 × threshold_tokens``, so a masked text is about
    the threshold's size, plus the marker and up to ``max_error_lines`` error lines)."""

    threshold_tokens: int = 1000
    head_lines: int = 40
    tail_lines: int = 80
    keep_chars: int | None = None
    max_line_chars: int = 2000
    max_error_lines: int = 20
    skip_tools: frozenset[str] = DEFAULT_SKIP_TOOLS
    skip_kinds: frozenset[str] = frozenset()
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("threshold_tokens", "head_lines", "tail_lines", "keep_chars"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_line_chars < 100:
            raise ValueError("max_line_chars must be at least 100")
        if self.max_error_lines < 0:
            raise ValueError("max_error_lines must be 0 or more")

    @property
    def kept_chars(self) -> int:
        """``keep_chars``, or its default ``4 × threshold_tokens``."""
        return self.keep_chars or 4 * self.threshold_tokens

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> SanitizeSettings:
        """Settings from a ``[sanitizer]`` TOML table (keys of :data:`SANITIZER_KEYS`; others
        are ignored: the caller owns them). ``skip_tools`` replaces the default list. Raises
        :class:`~kimi_intercept.config.settings.ConfigError` naming the key."""
        kwargs: dict[str, Any] = {}
        for key in SANITIZER_KEYS & table.keys():
            value = table[key]
            if key == "enabled":
                ok = isinstance(value, bool)
            elif key in ("skip_tools", "skip_kinds"):
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
                value = frozenset(value) if ok else value
            else:
                ok = isinstance(value, int) and not isinstance(value, bool)
            if not ok:
                raise ConfigError(f"[sanitizer] {key} has the wrong type ({value!r})")
            kwargs[key] = value
        if bad := set(kwargs.get("skip_kinds", ())) - set(KINDS):
            raise ConfigError(f"[sanitizer] skip_kinds: unknown {sorted(bad)}; use {KINDS}")
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ConfigError(f"[sanitizer] {e}") from e


@dataclass(frozen=True)
class MaskedItem:
    """One masked text. ``id`` is :func:`content_id` of ``original`` (exact: the caller stores
    it, compressed, keyed by ``id``); ``tool`` the tool's name when known (a wrapper's kind
    otherwise, e.g. ``environment_details``); ``tokens_after`` counts ``masked``; ``lines`` and
    ``bytes`` (UTF-8) measure ``original``; ``memo`` (the sanitizer's
    :class:`~.mask.MaskCache`, or any object with ``count(text) -> int`` and ``known(text) ->
    bool``) counts ``original`` for :attr:`tokens_before` (default
    :func:`~kimi_intercept.accounting.tokens.count_text`)."""

    id: str
    tool: str | None
    kind: str
    original: str
    masked: str
    tokens_after: int
    lines: int
    bytes: int
    memo: Any = field(default=None, repr=False, compare=False)

    @property
    def tokens_before(self) -> int:
        """Tokens of ``original``, counted on first use and kept: masking never needs the whole
        count (the marker states none), and the relay asks for it after the answer, in a worker
        thread when :meth:`pending_chars` is big (an original can be megabytes: ~80 ms per MB)."""
        n = self.__dict__.get("_tokens_before")
        if n is None:
            memo, text = self.memo, self.original
            n = memo.count(text) if memo is not None else tokens.count_text(text)
            object.__setattr__(self, "_tokens_before", n)
        return int(n)

    def pending_chars(self) -> int:
        """Characters :attr:`tokens_before` would still tokenize: 0 once counted, here or in
        ``memo`` (the same output on every turn of a conversation is counted once)."""
        if "_tokens_before" in self.__dict__:
            return 0
        if self.memo is not None and self.memo.known(self.original):
            return 0
        return len(self.original)


@dataclass(frozen=True)
class SanitizeResult:
    """``tokens_before``/``tokens_after`` cover the masked texts only (saved = before − after;
    ``tokens_before`` counts the originals on first use: :attr:`MaskedItem.tokens_before`);
    ``memory_tokens`` counts MCP memory content seen in the request, masked or not."""

    body: dict[str, Any]
    items: tuple[MaskedItem, ...]
    tokens_after: int
    memory_tokens: int = 0
    memory_by_tool: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_before(self) -> int:
        return sum(i.tokens_before for i in self.items)
