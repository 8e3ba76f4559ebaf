"""Cache-break detection: the ``[cache]`` table.

```toml
[cache]
detect_breaks = true        # compare each request of a conversation with the previous one
break_drop = 0.5            # a break: the cached share of the prompt fell by at least this
                            # fraction of its previous value (0.90 -> 0.45 or less) ...
min_previous_ratio = 0.3    # ... from a previous cached share of at least this ...
min_prompt_tokens = 1024    # ... on a prompt of at least this many tokens that did not shrink
conversations = 200         # conversations remembered (least recently seen forgotten first)
```

The cached share is ``cached_tokens / prompt_tokens`` as the provider reported them. Errors:
:class:`~kimi_intercept.config.values.ConfigError` naming the key and the range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kimi_intercept.config.keys import unknown_key_message
from kimi_intercept.config.values import ConfigError, _number

if TYPE_CHECKING:
    from kimi_intercept.config.settings import Config

KEYS = ("detect_breaks", "break_drop", "min_previous_ratio", "min_prompt_tokens", "conversations")


@dataclass(frozen=True)
class CacheSettings:
    """Thresholds of a cache break (ratios 0..1, tokens, a count of conversations)."""

    detect_breaks: bool = True
    break_drop: float = 0.5
    min_previous_ratio: float = 0.3
    min_prompt_tokens: int = 1024
    conversations: int = 200


def cache_settings(cfg: Config | None) -> CacheSettings:
    """The ``[cache]`` table of ``cfg`` (defaults for a missing table or ``None``), checked."""
    t: Any = (cfg.raw.get("cache") if cfg is not None else None) or {}
    if not isinstance(t, dict):
        raise ConfigError("[cache] must be a table, e.g. [cache] break_drop = 0.5")
    if message := unknown_key_message(t, KEYS, "[cache]"):
        raise ConfigError(message)
    d = CacheSettings()
    detect = t.get("detect_breaks", d.detect_breaks)
    if not isinstance(detect, bool):
        raise ConfigError(f"cache.detect_breaks must be true or false, got {detect!r}")
    full = {**{k: getattr(d, k) for k in KEYS}, **t}
    return CacheSettings(
        detect_breaks=detect,
        break_drop=_number(full, "cache.break_drop", 0.01, 1),
        min_previous_ratio=_number(full, "cache.min_previous_ratio", 0, 1),
        min_prompt_tokens=int(_number(full, "cache.min_prompt_tokens", 0, 10**9)),
        conversations=int(_number(full, "cache.conversations", 1, 10**6)),
    )
