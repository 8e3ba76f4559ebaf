"""``[kimi]``: switches for the Kimi (Moonshot) request rules where Moonshot's documentation is
ambiguous, and ``system_prepend`` / ``system_append`` prompt text (inline or ``@file``).

The rules themselves live in :mod:`kimi_intercept.dialects.kimi`; each key here names the
Moonshot page it hinges on in docs/configuration.md.

Errors: :class:`~kimi_intercept.config.values.ConfigError` naming the key and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kimi_intercept.config.keys import unknown_key_message
from kimi_intercept.config.values import ConfigError, _choice

KIMI_KEYS = (
    "on_too_many_tools", "fixed_sampling", "default_max_completion_tokens",
    "rewrite_tool_call_ids", "missing_reasoning",
)  # fmt: skip


@dataclass(frozen=True)
class KimiSettings:
    """``[kimi]``. ``default_max_completion_tokens`` is in tokens (0: send none)."""

    on_too_many_tools: str = "drop"  # "drop" the tools beyond 128, or "reject" the request
    fixed_sampling: str = "set"  # "set" the documented value, or "remove" the field
    default_max_completion_tokens: int = 32768
    rewrite_tool_call_ids: bool = True  # history ids → functions.<name>:<index>
    missing_reasoning: str = "backfill"  # "backfill" "" or "disable_thinking" for the request


def parse_kimi(raw: Any) -> KimiSettings:
    """``[kimi]`` → :class:`KimiSettings`; missing keys keep the defaults."""
    if raw is None:
        return KimiSettings()
    if not isinstance(raw, dict):
        raise ConfigError("[kimi] must be a table")
    message = unknown_key_message(raw, KIMI_KEYS, "[kimi]")
    if message:
        raise ConfigError(message)
    d = KimiSettings()
    t = {k: raw.get(k, getattr(d, k)) for k in KIMI_KEYS}
    cap = t["default_max_completion_tokens"]
    if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= 1_048_576:
        raise ConfigError(
            "kimi.default_max_completion_tokens must be a whole number of tokens from 0 (send "
            f"none) to 1048576, got {cap!r}"
        )
    if not isinstance(t["rewrite_tool_call_ids"], bool):
        raise ConfigError(
            f"kimi.rewrite_tool_call_ids must be true or false, got {t['rewrite_tool_call_ids']!r}"
        )
    return KimiSettings(
        on_too_many_tools=_choice(t, "kimi.on_too_many_tools", ("drop", "reject")),
        fixed_sampling=_choice(t, "kimi.fixed_sampling", ("set", "remove")),
        default_max_completion_tokens=cap,
        rewrite_tool_call_ids=t["rewrite_tool_call_ids"],
        missing_reasoning=_choice(t, "kimi.missing_reasoning", ("backfill", "disable_thinking")),
    )


def prompt_text(t: Mapping[str, Any], key: str, where: str, base: Path | None) -> str:
    """The text of ``system_prepend`` / ``system_append`` (``key``) in table ``t``: the string
    itself, or with a leading ``@`` the UTF-8 file it names (relative to ``base``, the config
    file's folder; the working directory without one). ``""`` when unset."""
    value = t.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f'{where}: {key} must be text or "@path/to/file.md", got {value!r}')
    if not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    path = path if path.is_absolute() else (base or Path.cwd()) / path
    try:
        return path.read_text(encoding="utf-8").strip("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{where}: {key} names {str(path)!r}, which cannot be read ({e.__class__.__name__}); "
            "create the file or fix the path (relative to the config file's folder)"
        ) from None
