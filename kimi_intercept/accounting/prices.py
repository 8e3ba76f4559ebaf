"""Prices that change over time: the ``[prices]`` config table.

Each model may have a list of dated entries; an entry applies from its ``since`` day (UTC) on,
until the next entry's ``since``. Before the first entry — or for a model without entries — the
price is the one of ``[providers.NAME.models."MODEL"]`` (:meth:`Config.model_info`)::

    [[prices."kimi-k2.6"]]
    since = "2026-01-01"          # a day, "YYYY-MM-DD" or a TOML date
    input_per_mtok = 0.95         # USD per million prompt tokens (cache miss)
    cached_input_per_mtok = 0.16  # optional; cached prompt tokens, else billed as input
    cache_write_per_mtok = 1.19   # optional; cache writes (5-minute TTL), else 1.25 × input
    cache_write_1h_per_mtok = 1.9 # optional; 1-hour cache writes, else 2 × input
    output_per_mtok = 4.00
    provider = "kimi"             # optional; only rows answered by this provider

    [[prices."kimi-k2.6"]]
    since = "2026-09-01"
    input_per_mtok = 0.80
    output_per_mtok = 3.50

When two entries match a day, the later ``since`` wins, then the one with a ``provider``.
A model no table prices stays unpriced (``None``), never $0.

A model name may be a glob (``fnmatch``: ``*``, ``?``, ``[...]``), e.g. ``"claude-sonnet-4-5*"``
prices ``claude-sonnet-4-5-20250929`` too. Order of lookup: the model's exact dated entries,
then its provider table price, then the longest glob that matches it (the most specific one:
``"gpt-4o-mini*"`` before ``"gpt-4o*"``).

Errors: :class:`~kimi_intercept.config.settings.ConfigError` naming the key and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from fnmatch import fnmatchcase
from typing import Any

from kimi_intercept.config.keys import unknown_key_message
from kimi_intercept.config.settings import Config, ConfigError, ModelInfo

_OPTIONAL_PRICES = ("cached_input_per_mtok", "cache_write_per_mtok", "cache_write_1h_per_mtok")
_PRICES = ("input_per_mtok", "output_per_mtok", *_OPTIONAL_PRICES)
_KEYS = {"since", "provider", *_PRICES}


@dataclass(frozen=True)
class PriceEntry:
    """One dated price of one model."""

    since: date
    info: ModelInfo
    provider: str | None = None


class PriceBook:
    """Dated prices over the config's base prices. Build it with :func:`price_book`."""

    def __init__(self, cfg: Config, entries: Mapping[str, tuple[PriceEntry, ...]]) -> None:
        self.cfg = cfg
        self.entries = dict(entries)
        #: glob names, longest (most specific) first
        self.globs = sorted(
            (m for m in self.entries if any(c in m for c in "*?[")), key=len, reverse=True
        )

    def entries_for(self, model: str, has_base: bool) -> tuple[PriceEntry, ...]:
        """The dated entries of ``model``: its own, else (when no provider table prices it)
        those of the longest matching glob."""
        own = self.entries.get(model)
        if own or has_base:
            return own or ()
        for pattern in self.globs:
            if fnmatchcase(model, pattern):
                return self.entries[pattern]
        return ()

    def model_info_at(
        self, model: str | None, when: str | date | datetime, provider: str | None = None
    ) -> ModelInfo | None:
        """The prices of ``model`` on the day of ``when`` (``None``: unknown model).

        A dated entry's ``context_window`` is the base one's.
        """
        if not model:
            return None
        base = self.cfg.model_info(model, provider)
        day = to_day(when)
        best: PriceEntry | None = None
        for e in self.entries_for(model, base is not None):
            if e.since > day or (e.provider is not None and e.provider != provider):
                continue
            if best is None or (e.since, e.provider is not None) > (
                best.since,
                best.provider is not None,
            ):
                best = e
        if best is None:
            return base
        return ModelInfo(
            context_window=base.context_window if base else None,
            input_per_mtok=best.info.input_per_mtok,
            cached_input_per_mtok=best.info.cached_input_per_mtok,
            output_per_mtok=best.info.output_per_mtok,
            cache_write_per_mtok=best.info.cache_write_per_mtok,
            cache_write_1h_per_mtok=best.info.cache_write_1h_per_mtok,
        )


_books: dict[int, tuple[Config, PriceBook]] = {}


def price_book(cfg: Config) -> PriceBook:
    """The :class:`PriceBook` of ``cfg`` (parsed once per config object).

    :raises ConfigError: if ``[prices]`` is malformed
    """
    cached = _books.get(id(cfg))
    if cached is not None and cached[0] is cfg:
        return cached[1]
    book = PriceBook(cfg, parse_prices(cfg.raw.get("prices", {})))
    if len(_books) >= 8:
        _books.pop(next(iter(_books)))
    _books[id(cfg)] = (cfg, book)
    return book


def parse_prices(table: Any) -> dict[str, tuple[PriceEntry, ...]]:
    """Validate a ``[prices]`` table: ``{model: [entry, …]}`` (a single table is one entry).

    :raises ConfigError: naming the key and the fix
    """
    if not isinstance(table, Mapping):
        raise ConfigError('[prices] must be a table of models: [[prices."MODEL"]] entries')
    out: dict[str, tuple[PriceEntry, ...]] = {}
    for model, entries in table.items():
        if isinstance(entries, Mapping):
            entries = [entries]
        if not isinstance(entries, list) or not entries:
            raise ConfigError(
                f'prices."{model}" must be a list of dated entries: write [[prices."{model}"]]'
            )
        parsed = []
        seen: set[tuple[date, str | None]] = set()
        for n, e in enumerate(entries):
            parsed.append(_entry(f'prices."{model}"[{n}]', e))
            key = (parsed[-1].since, parsed[-1].provider)
            if key in seen:
                raise ConfigError(
                    f'prices."{model}" has two entries since {key[0]} for the same provider; '
                    "remove one"
                )
            seen.add(key)
        out[str(model)] = tuple(sorted(parsed, key=lambda p: p.since))
    return out


def _entry(key: str, e: Any) -> PriceEntry:
    if not isinstance(e, Mapping):
        raise ConfigError(f"{key} must be a table with since, input_per_mtok, output_per_mtok")
    if message := unknown_key_message(e, _KEYS, f"[[{key.rsplit('[', 1)[0]}]]"):
        raise ConfigError(message)
    since = e.get("since")
    try:
        day = to_day(since) if isinstance(since, (str, date)) else None
    except ValueError:
        day = None
    if day is None:
        raise ConfigError(f'{key}.since must be a day like "2026-01-01", got {since!r}')
    provider = e.get("provider")
    if provider is not None and (not isinstance(provider, str) or not provider):
        raise ConfigError(f"{key}.provider must be a provider name, got {provider!r}")
    prices = {}
    for name in _PRICES:
        v = e.get(name)
        if v is None and name not in _OPTIONAL_PRICES:
            raise ConfigError(f"{key}.{name} is missing: give the price in USD per 1M tokens")
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise ConfigError(
                f"{key}.{name} must be a price in USD per million tokens (>= 0), got {v!r}"
            )
        prices[name] = None if v is None else float(v)
    return PriceEntry(since=day, info=ModelInfo(**prices), provider=provider)


def to_day(when: str | date | datetime) -> date:
    """The UTC day of an ISO 8601 string (``2026-11-21T23:54:42.123Z`` → 2026-11-21), a date or
    a datetime (converted to UTC when it is aware).

    :raises ValueError: if a string does not start with a ``YYYY-MM-DD`` day
    """
    if isinstance(when, datetime):
        if when.tzinfo is not None:
            when = when.astimezone(timezone.utc)
        return when.date()
    if isinstance(when, date):
        return when
    return date.fromisoformat(str(when)[:10])
