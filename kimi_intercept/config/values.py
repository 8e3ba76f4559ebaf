"""Reading typed values out of config tables, each error a :class:`ConfigError` naming the
key (``routing.share must be a number from 0 to 100, got 'x'``) — the vocabulary every table's
parser uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and how to fix it."""


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = raw.get(key, {})
    if not isinstance(v, dict):
        raise ConfigError(f"[{key}] must be a table")
    return v


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _str(t: Mapping[str, Any], key: str) -> str:
    v = t.get(_leaf(key))
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{key} must be a non-empty string, got {v!r}")
    return v


def _str_list(t: Mapping[str, Any], key: str) -> list[str]:
    v = t.get(_leaf(key), [])
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise ConfigError(f"{key} must be a list of strings, got {v!r}")
    return v


def _number(t: Mapping[str, Any], key: str, lo: float, hi: float) -> float:
    v = t.get(_leaf(key))
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError(f"{key} must be a number from {lo:g} to {hi:g}, got {v!r}")
    return float(v)


def _choice(t: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = t.get(_leaf(key))
    if value not in choices:
        wanted = " or ".join(f'"{c}"' for c in choices)
        raise ConfigError(f"{key} must be {wanted}, got {value!r}")
    return str(value)


def _bool(t: Mapping[str, Any], key: str) -> bool:
    v = t.get(_leaf(key), False)
    if not isinstance(v, bool):
        raise ConfigError(f"{key} must be true or false, got {v!r}")
    return v


def _opt_int(t: Mapping[str, Any], key: str) -> int | None:
    v = t.get(_leaf(key))
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(f"{key} must be a positive whole number, got {v!r}")
    return v


def _opt_price(t: Mapping[str, Any], key: str) -> float | None:
    v = t.get(_leaf(key))
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ConfigError(f"{key} must be a price in USD per million tokens (>= 0), got {v!r}")
    return float(v)
