"""Routing rules: ``[[routing.rules]]``, first match wins, else the default chain.

```toml
[[routing.rules]]
name = "fast"
match = { model = "gpt-4o-mini*", client = "claude-cli*", dialect = "openai",
          min_prompt_tokens = 1000, has_tools = true, thinking = false,
          header = { "x-mode" = "fast" } }        # keys combine with AND; strings may be globs
chain = ["groq", { provider = "kimi", model = "kimi-k2.5" }]
overrides = { temperature = 0.2, max_tokens = 4000 }   # set these request fields
unset = ["top_p"]                                      # remove these
strategy = "ordered"                                   # or "weighted" (see below)
weights = { context = 1.0, price = 1.0, latency = 1.0 }
validate = { empty = true, json = true, repetition = true }
system_append = "@prompts/fast.md"                     # or inline text; also system_prepend
```

``overrides`` / ``unset`` name OpenAI chat-completions fields and apply to what is sent to
OpenAI-dialect providers; for providers that speak the client's own Anthropic or Gemini dialect
only the fields with the same meaning there are applied (``temperature``, ``top_p``,
``max_tokens`` → Anthropic's same names, Gemini's ``generationConfig.temperature`` / ``topP`` /
``maxOutputTokens``). Kimi normalisation still runs after them (a model-fixed temperature wins).

``strategy = "weighted"`` orders the chain by a score per provider — context capacity (window
÷ what the request needs), price (cheaper is better) and observed latency (faster is better),
each weighted — and picks the first provider by a draw fixed by the conversation, so one
conversation stays on one provider and its prompt cache keeps hitting.

``system_prepend`` / ``system_append`` (text, or ``@file`` relative to the config file's folder)
are added to the system prompt of every request the rule routes, the same bytes on every turn
(see :mod:`kimi_intercept.dialects.system_prompt`).

Errors: :class:`~kimi_intercept.config.settings.ConfigError` naming the rule, the key and the fix.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kimi_intercept.config.keys import unknown_key_message
from kimi_intercept.config.kimi import prompt_text

MATCH_KEYS = ("model", "client", "dialect", "min_prompt_tokens", "has_tools", "thinking", "header")
RULE_KEYS = (
    "name", "match", "chain", "overrides", "unset", "strategy", "weights", "validate",
    "system_prepend", "system_append",
)  # fmt: skip
WEIGHT_KEYS = ("context", "price", "latency")
VALIDATE_KEYS = ("empty", "json", "repetition")
CHAIN_ENTRY_KEYS = ("provider", "model")
# OpenAI field -> (Anthropic field, Gemini generationConfig field) with the same meaning.
SAME_MEANING = {
    "temperature": ("temperature", "temperature"),
    "top_p": ("top_p", "topP"),
    "max_tokens": ("max_tokens", "maxOutputTokens"),
    "max_completion_tokens": ("max_tokens", "maxOutputTokens"),
}


class RuleError(ValueError):
    """A rule is invalid; the config loader turns it into a ConfigError."""


@dataclass(frozen=True)
class ChainEntry:
    provider: str
    model: str | None = None  # None: the provider's own model (the primary: the [models] map)


@dataclass(frozen=True)
class Validation:
    """Checks an answer must pass before it counts as a success (see the relay)."""

    empty: bool = True  # an answer without content or tool call is a failure
    json: bool = True  # in JSON mode a non-streamed answer must parse
    repetition: bool = True  # a stream repeating the same long span is cut


@dataclass(frozen=True)
class Rule:
    name: str
    match: Mapping[str, Any]
    chain: tuple[ChainEntry, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    unset: tuple[str, ...] = ()
    strategy: str = "ordered"
    weights: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(WEIGHT_KEYS, 1.0))
    validate: Validation = Validation()
    system_prepend: str = ""  # text put before the system prompt ("" = none)
    system_append: str = ""  # text put after it


@dataclass(frozen=True)
class RequestFacts:
    """What rules can match on. ``headers`` has lower-case names."""

    model: str | None
    client: str | None
    dialect: str
    prompt_tokens: int
    has_tools: bool
    thinking: bool
    headers: Mapping[str, str]


def first_match(rules: tuple[Rule, ...], facts: RequestFacts) -> Rule | None:
    """The first rule whose every ``match`` key holds, or ``None``."""
    return next((r for r in rules if matches(r.match, facts)), None)


def matches(match: Mapping[str, Any], f: RequestFacts) -> bool:
    for key, want in match.items():
        if key in ("model", "client", "dialect"):
            have = getattr(f, key)
            if have is None or not fnmatch.fnmatchcase(have, want):
                return False
        elif key == "min_prompt_tokens" and f.prompt_tokens < want:
            return False
        elif key in ("has_tools", "thinking") and getattr(f, key) is not want:
            return False
        elif key == "header":
            for name, value in want.items():
                have = f.headers.get(name.lower())
                if have is None or not fnmatch.fnmatchcase(have, value):
                    return False
    return True


def apply_overrides(body: dict[str, Any], rule: Rule | None, dialect: str) -> dict[str, Any]:
    """A copy of ``body`` (in ``dialect``: the provider's) with the rule's overrides applied."""
    if rule is None or not (rule.overrides or rule.unset):
        return body
    out = dict(body)
    if dialect == "openai":
        out.update(rule.overrides)
        for name in rule.unset:
            out.pop(name, None)
        return out
    index = 0 if dialect == "anthropic" else 1
    target = out if dialect == "anthropic" else dict(out.get("generationConfig") or {})
    for name, value in rule.overrides.items():
        if name in SAME_MEANING:
            target[SAME_MEANING[name][index]] = value
    for name in rule.unset:
        if name in SAME_MEANING:
            target.pop(SAME_MEANING[name][index], None)
    if dialect == "gemini":
        out["generationConfig"] = target
    return out


def parse_rules(
    raw: Any, providers: Mapping[str, Any], base: Path | None = None
) -> tuple[Rule, ...]:
    """``[[routing.rules]]`` → rules; ``@file`` prompts are read relative to ``base`` (the
    config file's folder). Raises :class:`RuleError` naming the rule and the fix."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RuleError("routing.rules must be an array of tables: [[routing.rules]]")
    rules, names = [], set()
    for n, table in enumerate(raw, start=1):
        where = f"routing.rules #{n}"
        if not isinstance(table, dict):
            raise RuleError(f"{where} must be a table")
        name = table.get("name")
        if isinstance(name, str) and name:
            where = f"routing rule {name!r}"
        _check_keys(table, RULE_KEYS, f"{where}:")
        if not isinstance(name, str) or not name:
            raise RuleError(f'{where} needs a name: name = "…"')
        if name in names:
            raise RuleError(f"{where}: another rule has the same name; names must be unique")
        names.add(name)
        rules.append(_rule(name, table, where, providers, base))
    return tuple(rules)


def _check_keys(table: Any, allowed: tuple[str, ...], where: str) -> None:
    message = unknown_key_message(table, allowed, where)
    if message:
        raise RuleError(message)


def _rule(
    name: str, t: dict[str, Any], where: str, providers: Mapping[str, Any], base: Path | None
) -> Rule:
    match = t.get("match", {})
    if not isinstance(match, dict):
        raise RuleError(f'{where}: match must be a table, e.g. match = {{ model = "gpt-4o*" }}')
    _check_keys(match, MATCH_KEYS, f"{where}, match:")
    for key, value in match.items():
        _check_match(where, key, value)
    chain = _chain(where, t.get("chain"), providers)
    overrides = t.get("overrides", {})
    if not isinstance(overrides, dict):
        raise RuleError(f"{where}: overrides must be a table of request fields to set")
    unset = t.get("unset", [])
    if not isinstance(unset, list) or not all(isinstance(u, str) for u in unset):
        raise RuleError(f"{where}: unset must be a list of request field names")
    strategy = t.get("strategy", "ordered")
    if strategy not in ("ordered", "weighted"):
        raise RuleError(f'{where}: strategy must be "ordered" or "weighted", got {strategy!r}')
    weights = _numbers(where, "weights", t.get("weights", {}), WEIGHT_KEYS, 1.0)
    checks = t.get("validate", {})
    if not isinstance(checks, dict):
        raise RuleError(f"{where}: validate takes {', '.join(VALIDATE_KEYS)} (true/false)")
    _check_keys(checks, VALIDATE_KEYS, f"{where}, validate:")
    if not all(isinstance(v, bool) for v in checks.values()):
        raise RuleError(f"{where}: validate values must be true or false")
    return Rule(
        name, dict(match), chain, dict(overrides), tuple(unset), strategy, weights,
        Validation(**checks), prompt_text(t, "system_prepend", where, base),
        prompt_text(t, "system_append", where, base),
    )  # fmt: skip


def _check_match(where: str, key: str, value: Any) -> None:
    if key in ("model", "client", "dialect") and not isinstance(value, str):
        raise RuleError(f"{where}: match.{key} must be a string (globs allowed)")
    if key == "min_prompt_tokens" and (
        isinstance(value, bool) or not isinstance(value, int) or value < 0
    ):
        raise RuleError(f"{where}: match.min_prompt_tokens must be a whole number of tokens")
    if key in ("has_tools", "thinking") and not isinstance(value, bool):
        raise RuleError(f"{where}: match.{key} must be true or false")
    if key == "header" and (
        not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())
    ):
        raise RuleError(
            f"{where}: match.header must be a table of names to values, "
            'e.g. { "x-mode" = "fast" }'
        )


def _chain(where: str, raw: Any, providers: Mapping[str, Any]) -> tuple[ChainEntry, ...]:
    if not isinstance(raw, list) or not raw:
        raise RuleError(f'{where}: chain must list providers, e.g. chain = ["kimi", "deepseek"]')
    entries = []
    for item in raw:
        if isinstance(item, str):
            entry = ChainEntry(item)
        elif isinstance(item, dict) and isinstance(item.get("provider"), str):
            _check_keys(item, CHAIN_ENTRY_KEYS, f"{where}, chain entry:")
            entry = ChainEntry(item["provider"], item.get("model"))
        else:
            raise RuleError(
                f'{where}: chain entries are "name" or {{ provider = "name", model = "…" }}'
            )
        if entry.provider not in providers:
            raise RuleError(
                f"{where}: chain names provider {entry.provider!r} but there is no "
                f"[providers.{entry.provider}] table; known: {', '.join(sorted(providers))}"
            )
        entries.append(entry)
    return tuple(entries)


def _numbers(
    where: str, key: str, raw: Any, allowed: tuple[str, ...], default: float
) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise RuleError(f"{where}: {key} takes {', '.join(allowed)}")
    _check_keys(raw, allowed, f"{where}, {key}:")
    out = dict.fromkeys(allowed, default)
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise RuleError(f"{where}: {key}.{k} must be a number ≥ 0")
        out[k] = float(v)
    return out
