"""Configuration: ``config.toml`` parsed once into frozen dataclasses.

The user's file is merged over the packaged ``default_config.toml`` (tables merge key by key,
lists and scalars replace), so a config can be as short as the keys it changes. ``${VAR}``
in any string is replaced by the environment variable ``VAR``; a variable that is not set
leaves the value empty (a provider without an API key is skipped, with a log line that names
the variable). Relative paths in a config file (``[storage] database``, ``[import]`` paths) are
relative to that file's folder; without ``[storage] database`` the database is
:func:`~kimi_intercept.config.dirs.default_database` (the user data folder).

Every table accepts only its declared keys (``ROUTING_KEYS``, ``PROVIDER_KEYS`` … here, the
other tables' sets next to their parsers); any other key is an error naming the closest valid
key (:mod:`.keys`). An error about a value that came from ``${VAR}`` shows ``${VAR}``, never the
secret (:meth:`Config.redact`).

Errors: :class:`ConfigError` (a ``ValueError``) whose message names the key and the fix.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kimi_intercept.config.dirs import default_database
from kimi_intercept.config.env import env_refs, expand, redact
from kimi_intercept.config.keys import suggestion, unknown_key_message
from kimi_intercept.config.kimi import KimiSettings, parse_kimi, prompt_text
from kimi_intercept.config.rules import ChainEntry, Rule, RuleError, parse_rules
from kimi_intercept.config.values import (  # noqa: F401 (ConfigError: re-exported)
    ConfigError,
    _bool,
    _choice,
    _leaf,
    _number,
    _opt_int,
    _opt_price,
    _str,
    _str_list,
    _table,
)

DEFAULT_CONFIG_NAME = "default_config.toml"
DIALECTS = ("openai", "anthropic", "gemini")

# The keys each table may have. [sanitizer], [context], [prices], [import], [budget] declare
# theirs next to their parsers (sanitizer, accounting, commands.importers, .budget, .cache);
# [[routing.rules]] in .rules.
TABLES = (
    "intercept", "routing", "storage", "models", "providers",
    "prices", "sanitizer", "context", "import", "proxy", "budget", "dialects", "kimi", "cache",
    "otel", "team",
)  # fmt: skip
INTERCEPT_KEYS = ("hosts",)
ROUTING_KEYS = (
    "primary", "fallbacks", "share", "connect_timeout_s", "first_byte_timeout_s",
    "stall_timeout_s", "max_retries", "retry_max_wait_s", "failures_to_open", "breaker_window_s",
    "cooldown_s", "auth_cooldown_s", "continue_on_break", "on_plan_error", "max_answer_s",
    "conversation_idle_s", "shadow", "rules",
)  # fmt: skip
SHADOW_KEYS = ("provider", "share")
STORAGE_KEYS = ("database", "retention_days", "spool")  # retention_days: storage.retention
PROXY_KEYS = ("max_body_mb", "drain_s", "relay_tls")
DIALECTS_KEYS = ("responses",)
RESPONSES_KEYS = ("drop_builtin_tools",)  # [dialects.responses]
PROVIDER_KEYS = (
    "base_url", "dialect", "api_key", "model", "models", "rpm", "tpm", "system_prepend",
    "system_append",
)  # fmt: skip
MODEL_KEYS = (
    "context_window", "input_per_mtok", "cached_input_per_mtok", "output_per_mtok",
    "cache_write_per_mtok", "cache_write_1h_per_mtok",
)  # fmt: skip


@dataclass(frozen=True)
class ModelInfo:
    """What the config knows about one upstream model.

    Prices are USD per million tokens; ``None`` means unknown (the request is then unpriced,
    never $0). ``context_window`` is in tokens. Cache writes (prompt tokens the provider stores
    in its cache on this request; only Anthropic reports them) default to Anthropic's
    multipliers of the input price: 1.25× for the 5-minute TTL, 2× for the 1-hour TTL
    (https://docs.claude.com/en/docs/build-with-claude/prompt-caching#pricing).
    """

    context_window: int | None = None
    input_per_mtok: float | None = None
    cached_input_per_mtok: float | None = None
    output_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None
    cache_write_1h_per_mtok: float | None = None


@dataclass(frozen=True)
class Provider:
    """One upstream provider (``[providers.NAME]``).

    ``api_key`` is the expanded secret (``None`` when its variable is unset); it is kept out of
    ``repr`` so it never reaches a log line. ``api_key_ref`` is the unexpanded ``${VAR}`` text,
    safe to show.
    """

    name: str
    base_url: str
    model: str | None
    dialect: str = "openai"
    api_key: str | None = field(default=None, repr=False)
    api_key_ref: str = ""
    models: Mapping[str, ModelInfo] = field(default_factory=dict)
    rpm: int | None = None  # local limit, requests per minute
    tpm: int | None = None  # local limit, tokens per minute
    system_prepend: str = ""  # text put before every request's system prompt (kimi.prompt_text)
    system_append: str = ""  # text put after it

    def url(self, endpoint: str) -> str:
        """``base_url`` joined with an endpoint path such as ``/chat/completions``."""
        return self.base_url.rstrip("/") + endpoint

    @functools.cached_property
    def host(self) -> str:
        """``base_url``'s host name (parsed once: planning asks for it several times a call)."""
        return urlsplit(self.base_url).hostname or ""

    def missing_key_hint(self) -> str:
        names = sorted(env_refs(self.api_key_ref))
        if names:
            return f"no API key for provider {self.name!r}: set the {names[0]} environment variable"
        return f"no API key for provider {self.name!r}: set providers.{self.name}.api_key"


@dataclass(frozen=True)
class Routing:
    """``[routing]``: which provider answers and what happens when it fails (seconds, percent)."""

    primary: str
    fallbacks: tuple[str, ...]
    share: float
    connect_timeout_s: float
    first_byte_timeout_s: float | None  # None = "auto" (see :func:`routing.first_byte_timeout`)
    stall_timeout_s: float
    max_retries: int
    retry_max_wait_s: float
    failures_to_open: int
    breaker_window_s: float
    cooldown_s: float
    auth_cooldown_s: float
    continue_on_break: bool = False
    max_answer_s: float = 1800.0  # an answer still running this long after the request is cut
    conversation_idle_s: float = 3600.0  # a fingerprinted conversation idle this long ends
    shadow_provider: str | None = None  # [routing.shadow] provider: mirrored in the background
    shadow_share: float = 0.0  # percent of requests mirrored
    # An LLM call that cannot be parsed or planned: "error" answers it with a clear error in the
    # client's dialect (400 / 413 / 500), "passthrough" sends it to its original host unchanged.
    # Either way it gets a row.
    on_plan_error: str = "error"


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``source`` is the file it came from (``None``: defaults only)."""

    hosts: tuple[str, ...]
    routing: Routing
    database: Path
    providers: Mapping[str, Provider]
    models: Mapping[str, str]
    source: Path | None = None
    # The merged TOML with ${VAR} expanded, for sections other modules own ([prices], [sanitizer],
    # [context], [import]); they validate their own keys with ConfigError.
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    rules: tuple[Rule, ...] = ()  # [[routing.rules]], first match wins
    max_body_mb: float = 64.0  # [proxy] max_body_mb: larger request bodies get a 413
    kimi: KimiSettings = KimiSettings()  # [kimi]: switches of the Kimi request rules
    # ${VAR} name -> expanded value, only to take secrets back out of messages (redact)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    drain_s: float = 30.0  # [proxy] drain_s: on SIGTERM/SIGINT, streams in flight get this long
    # [proxy] relay_tls: a local client's TLS to an LLM host is passed through by mitmproxy to
    # the relay process, which decrypts it itself (docs/request-path.md, "TLS at the relay")
    relay_tls: bool = True
    # [dialects.responses] drop_builtin_tools: drop (logged) the Responses API's hosted tools
    # (web_search …) of a rerouted request instead of refusing it with a 400
    responses_drop_builtin_tools: bool = True

    def redact(self, text: str) -> str:
        """``text`` with every expanded ``${VAR}`` value written back as ``${VAR}``."""
        return redact(text, self.secrets)

    @property
    def default_chain(self) -> tuple[ChainEntry, ...]:
        """Primary then fallbacks (each once): the chain when no rule matches."""
        return tuple(ChainEntry(p.name) for p in self.chain)

    @property
    def chain(self) -> tuple[Provider, ...]:
        """Primary then fallbacks, each once, in order."""
        names = dict.fromkeys((self.routing.primary, *self.routing.fallbacks))
        return tuple(self.providers[n] for n in names)

    def primary_model(self, client_model: str | None) -> str | None:
        """Model sent to the primary provider for a client model (``[models]`` map, globs)."""
        primary = self.providers[self.routing.primary]
        if client_model:
            for pattern, target in self.models.items():
                if fnmatch.fnmatchcase(client_model, pattern):
                    return target
        return primary.model or client_model

    def model_info(self, model: str | None, provider: str | None = None) -> ModelInfo | None:
        """Price/context facts for ``model``: that provider's table first, then any provider's."""
        if not model:
            return None
        if provider in self.providers and model in self.providers[provider].models:
            return self.providers[provider].models[model]
        for p in self.providers.values():
            if model in p.models:
                return p.models[model]
        return None

    def resolve_path(self, path: str | Path) -> Path:
        """``path`` (``~`` expanded) made absolute against the config file's folder (the working
        directory when there is no file)."""
        p = Path(path).expanduser()
        base = self.source.parent if self.source is not None else Path.cwd()
        return p if p.is_absolute() else base / p

    def provider_for_host(self, host: str) -> Provider | None:
        for p in self.providers.values():
            if p.host == host:
                return p
        return None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (missing file or ``None``: defaults only) and return a :class:`Config`.

    Raises :class:`ConfigError` for unreadable TOML, unknown providers, bad types or ranges.
    """
    env = os.environ if env is None else env
    defaults = tomllib.loads(default_config_text())
    user: dict[str, Any] = {}
    source: Path | None = None
    if path is not None:
        p = Path(path).expanduser()
        if p.exists():
            source = p.resolve()
            try:
                user = tomllib.loads(p.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"{p}: not valid TOML ({e}); fix the file or remove it") from e
    merged = _merge(defaults, user)
    secrets = {name: env[name] for name in env_refs(merged) if env.get(name)}
    try:
        return _build(expand(merged, env), source, merged, secrets)
    except ConfigError as e:
        redacted = ConfigError(redact(str(e), secrets))
    raise redacted  # outside the except: no __context__ holding the expanded secret


def default_config_text() -> str:
    """The packaged defaults (``kimi_intercept/config/default_config.toml``), comments included."""
    return resources.files("kimi_intercept.config").joinpath(DEFAULT_CONFIG_NAME).read_text("utf-8")


def allow_hosts_patterns(hosts: tuple[str, ...]) -> list[str]:
    """mitmproxy ``allow_hosts`` regexes (matched against ``host:port``) for these hosts."""
    return [rf"^{re.escape(h)}:\d+$" for h in hosts]


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    message = unknown_key_message(table, allowed, where)
    if message:
        raise ConfigError(message)


def _build(
    raw: dict[str, Any], source: Path | None, unexpanded: dict[str, Any], secrets: dict[str, str]
) -> Config:
    for key in raw:
        if key not in TABLES:
            raise ConfigError(f"unknown table [{key}] — {suggestion(key, TABLES)}")
    for key, allowed in (
        ("intercept", INTERCEPT_KEYS), ("routing", ROUTING_KEYS), ("storage", STORAGE_KEYS),
        ("proxy", PROXY_KEYS), ("dialects", DIALECTS_KEYS),
    ):  # fmt: skip
        _check_keys(_table(raw, key), allowed, f"[{key}]")
    responses = _table(_table(raw, "dialects"), "responses")
    _check_keys(responses, RESPONSES_KEYS, "[dialects.responses]")
    base = source.parent if source is not None else None
    providers = {
        name: _provider(name, table, _api_key_ref(unexpanded, name), base)
        for name, table in _table(raw, "providers").items()
    }
    r = _table(raw, "routing")
    routing = Routing(
        primary=_str(r, "routing.primary"),
        fallbacks=tuple(_str_list(r, "routing.fallbacks")),
        share=_number(r, "routing.share", 0, 100),
        connect_timeout_s=_number(r, "routing.connect_timeout_s", 0.001, 3600),
        first_byte_timeout_s=None
        if r.get("first_byte_timeout_s") == "auto"
        else _number(r, "routing.first_byte_timeout_s", 0.001, 3600),
        stall_timeout_s=_number(r, "routing.stall_timeout_s", 0.001, 3600),
        max_retries=int(_number(r, "routing.max_retries", 0, 10)),
        retry_max_wait_s=_number(r, "routing.retry_max_wait_s", 0, 600),
        failures_to_open=int(_number(r, "routing.failures_to_open", 1, 1000)),
        breaker_window_s=_number(r, "routing.breaker_window_s", 0.001, 86400),
        cooldown_s=_number(r, "routing.cooldown_s", 0, 86400),
        auth_cooldown_s=_number(r, "routing.auth_cooldown_s", 0, 86400),
        continue_on_break=_bool(r, "routing.continue_on_break"),
        max_answer_s=_number(r, "routing.max_answer_s", 0.001, 7 * 86400),
        conversation_idle_s=_number(r, "routing.conversation_idle_s", 1, 30 * 86400),
        on_plan_error=_choice(r, "routing.on_plan_error", ("error", "passthrough")),
        **_shadow(r),
    )
    for name in (routing.primary, *routing.fallbacks, *filter(None, [routing.shadow_provider])):
        if name not in providers:
            raise ConfigError(
                f"routing names provider {name!r} but there is no [providers.{name}] table; "
                f"known providers: {sorted(providers)}"
            )
    models = _table(raw, "models")
    for k, v in models.items():
        if not isinstance(v, str):
            raise ConfigError(f"models.{k!r} must be a model name string, got {v!r}")
    try:
        rules = parse_rules(r.get("rules"), providers, base)
    except RuleError as e:
        raise ConfigError(str(e)) from e
    hosts = tuple(_str_list(_table(raw, "intercept"), "intercept.hosts"))
    storage = _table(raw, "storage")
    database = default_database()
    if "database" in storage:
        database = Path(_str(storage, "storage.database")).expanduser()
        if not database.is_absolute() and source is not None:
            database = source.parent / database
    max_body_mb = _number(_table(raw, "proxy"), "proxy.max_body_mb", 0.001, 4096)
    drain_s = _number(_table(raw, "proxy"), "proxy.drain_s", 0, 3600)
    relay_tls = _bool(_table(raw, "proxy"), "proxy.relay_tls")
    return Config(
        hosts, routing, database, providers, dict(models), source, raw, rules,
        max_body_mb=max_body_mb, drain_s=drain_s, relay_tls=relay_tls,
        kimi=parse_kimi(raw.get("kimi")),
        secrets=secrets,
        responses_drop_builtin_tools=_bool(responses, "dialects.responses.drop_builtin_tools"),
    )  # fmt: skip


def _api_key_ref(unexpanded: Mapping[str, Any], name: str) -> str:
    """The ``api_key`` text of ``[providers.NAME]`` before ``${VAR}`` expansion (or "")."""
    table = unexpanded.get("providers", {}).get(name)
    ref = table.get("api_key") if isinstance(table, dict) else None
    return ref if isinstance(ref, str) else ""


def _provider(name: str, t: Any, api_key_ref: str, base: Path | None) -> Provider:
    if not isinstance(t, dict):
        raise ConfigError(f"providers.{name} must be a table")
    _check_keys(t, PROVIDER_KEYS, f"[providers.{name}]")
    base_url = _str(t, f"providers.{name}.base_url")
    if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).hostname:
        raise ConfigError(
            f"providers.{name}.base_url must be an http:// or https:// URL, got {base_url!r}"
        )
    dialect = t.get("dialect", "openai")
    if dialect not in DIALECTS:
        raise ConfigError(
            f"providers.{name}.dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}"
        )
    models = {}
    for model, info in (t.get("models") or {}).items():
        key = f"providers.{name}.models.{model!r}"
        if not isinstance(info, dict):
            raise ConfigError(f"{key} must be a table")
        _check_keys(info, MODEL_KEYS, f'[providers.{name}.models."{model}"]')
        models[model] = ModelInfo(
            context_window=_opt_int(info, f"{key}.context_window"),
            input_per_mtok=_opt_price(info, f"{key}.input_per_mtok"),
            cached_input_per_mtok=_opt_price(info, f"{key}.cached_input_per_mtok"),
            output_per_mtok=_opt_price(info, f"{key}.output_per_mtok"),
            cache_write_per_mtok=_opt_price(info, f"{key}.cache_write_per_mtok"),
            cache_write_1h_per_mtok=_opt_price(info, f"{key}.cache_write_1h_per_mtok"),
        )
    return Provider(
        name=name,
        base_url=base_url,
        model=t.get("model") or None,
        dialect=dialect,
        api_key=t.get("api_key") or None,
        api_key_ref=api_key_ref,
        models=models,
        rpm=_opt_int(t, f"providers.{name}.rpm"),
        tpm=_opt_int(t, f"providers.{name}.tpm"),
        system_prepend=prompt_text(t, "system_prepend", f"[providers.{name}]", base),
        system_append=prompt_text(t, "system_append", f"[providers.{name}]", base),
    )


def _shadow(r: Mapping[str, Any]) -> dict[str, Any]:
    t = r.get("shadow", {})
    if not isinstance(t, dict):
        raise ConfigError('[routing.shadow] takes provider and share, e.g. provider = "deepseek"')
    _check_keys(t, SHADOW_KEYS, "[routing.shadow]")
    if not t:
        return {}
    return {
        "shadow_provider": _str(t, "routing.shadow.provider"),
        "shadow_share": _number({"share": t.get("share", 10)}, "routing.shadow.share", 0, 100),
    }
