"""Strict config: every misspelled key of the shipped config is an error naming the key, its
table and the right key; one check for CLI and proxy; secrets from ``${VAR}`` never echoed."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from kimi_intercept.commands.checks import check_config, unusable_chain_warning
from kimi_intercept.config.settings import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {
    "config.toml": REPO / "config.toml",
    "default_config.toml": REPO / "kimi_intercept" / "config" / "default_config.toml",
}
SECRET = "sk-live-4f9a8b7c6d5e-never-print-me"


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    assert isinstance(v, list), v
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


def header(path: tuple[str, ...]) -> str:
    return "[" + ".".join(p if p.replace("_", "").isalnum() else json.dumps(p) for p in path) + "]"


def misspell(key: str) -> str:
    """Drop the middle letter: ``primary`` → ``priary``, ``models`` → ``modls``."""
    return key[: len(key) // 2] + key[len(key) // 2 + 1 :]


def _tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def shipped_keys(name: str) -> list[tuple[tuple[str, ...], str, Any]]:
    """(table path, key, value) for every key of a shipped config, sub-tables included
    (their key is the last part of the path; free-form names such as model names are not keys
    and are skipped: a new name is a new provider or model)."""
    out: list[tuple[tuple[str, ...], str, Any]] = []

    def walk(path: tuple[str, ...], table: dict[str, Any]) -> None:
        for key, value in table.items():
            if _tables(value):  # [[prices."MODEL"]]: a free-form name, entries checked below
                continue
            if isinstance(value, dict):
                free_form = path in (("providers",), ("models",)) or path[-1:] == ("models",)
                if not free_form:
                    out.append((path, key, value))
                walk((*path, key), value)
            else:
                out.append((path, key, value))

    walk((), tomllib.loads(SHIPPED[name].read_text()))
    return out


CASES = [
    pytest.param(name, path, key, value, id=f"{name}:{'.'.join((*path, key))}")
    for name in SHIPPED
    for path, key, value in shipped_keys(name)
]


def test_the_walk_covers_every_table_the_code_reads():
    paths = {(*p, k) for p, k, _ in shipped_keys("config.toml")}
    for expected in [
        ("intercept",), ("routing", "primary"), ("storage", "retention_days"),
        ("sanitizer", "store_originals"), ("context", "keep_last_turns"), ("models",),
        ("providers", "kimi", "api_key"), ("providers", "kimi", "models"),
        ("providers", "kimi", "models", "kimi-k2.6", "cached_input_per_mtok"),
    ]:  # fmt: skip
        assert expected in paths
    assert len(CASES) > 80


@pytest.mark.parametrize(("name", "path", "key", "value"), CASES)
def test_every_misspelled_shipped_key_names_the_key_and_the_right_one(
    tmp_path, name, path, key, value
):
    wrong = misspell(key)
    if isinstance(value, dict):  # a table: misspell its name, keep one of its keys
        inner = next(iter(value.items()), None)
        body = "" if inner is None or isinstance(inner[1], dict) or _tables(inner[1]) else (
            f"{inner[0]} = {toml_value(inner[1])}\n"
        )  # fmt: skip
        text = f"{header((*path, wrong))}\n{body}"
    else:
        text = f"{header(path)}\n{wrong} = {toml_value(value)}\n" if path else ""
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        check_config(p, env={})
    where = f"[{'.'.join(path)}]" if path else "unknown table"
    message = str(e.value)
    assert f"`{wrong}`" in message or f"[{wrong}]" in message, message
    assert f"did you mean `{key}`?" in message, message
    if path and not isinstance(value, dict):
        assert message.startswith(where.replace('"', "")) or message.startswith(header(path)), (
            message
        )


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_price_entry_key_misspelled_is_named(tmp_path, name):
    prices = tomllib.loads(SHIPPED[name].read_text())["prices"]
    assert len(prices) > 15
    keys = {k for entries in prices.values() for e in entries for k in e}
    for key in sorted(keys):
        p = tmp_path / "c.toml"
        p.write_text(f'[[prices."m"]]\nsince = "2026-01-01"\ninput_per_mtok = 1\n'
                     f"output_per_mtok = 1\n{misspell(key)} = 1\n")  # fmt: skip
        with pytest.raises(ConfigError) as e:
            check_config(p, env={})
        assert f"`{misspell(key)}`" in str(e.value), str(e.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[routng]\nprimary = 'kimi'\n", "unknown table [routng] — did you mean `routing`?"),
        ("[routing]\nprimry = 'deepseek'\n",
         "[routing] unknown key `primry` — did you mean `primary`?"),
        ("[routing.shadow]\nprovider = 'deepseek'\nshar = 5\n",
         "[routing.shadow] unknown key `shar` — did you mean `share`?"),
        ("[[routing.rules]]\nname = 'a'\nchain = ['kimi']\nmach = {}\n",
         "routing rule 'a': unknown key `mach` — did you mean `match`?"),
        ("[[routing.rules]]\nnme = 'a'\nchain = ['kimi']\n",
         "routing.rules #1: unknown key `nme` — did you mean `name`?"),
        ("[[routing.rules]]\nname = 'a'\nchain = ['kimi']\nmatch = { has_tool = true }\n",
         "routing rule 'a', match: unknown key `has_tool` — did you mean `has_tools`?"),
        ("[[routing.rules]]\nname = 'a'\nchain = [{ provider = 'kimi', modle = 'x' }]\n",
         "routing rule 'a', chain entry: unknown key `modle` — did you mean `model`?"),
        ("[[routing.rules]]\nname = 'a'\nchain = ['kimi']\nweights = { latncy = 1 }\n",
         "routing rule 'a', weights: unknown key `latncy` — did you mean `latency`?"),
        ("[[routing.rules]]\nname = 'a'\nchain = ['kimi']\nvalidate = { jsn = true }\n",
         "routing rule 'a', validate: unknown key `jsn` — did you mean `json`?"),
        ("[storage]\nretention_day = 3\n",
         "[storage] unknown key `retention_day` — did you mean `retention_days`?"),
        ("[proxy]\nmax_body = 3\n", "[proxy] unknown key `max_body` — did you mean `max_body_mb`?"),
        ("[sanitizer]\nkeep_char = 3\n",
         "[sanitizer] unknown key `keep_char` — did you mean `keep_chars`?"),
        ("[sanitizer]\nskip_tool = []\n",
         "[sanitizer] unknown key `skip_tool` — did you mean `skip_tools`?"),
        ("[context]\nwarn = [0.9]\n", "[context] unknown key `warn` — did you mean `warn_at`?"),
        ("[import]\nclien = 'x'\n", "[import] unknown key `clien` — did you mean `cline`?"),
        ("[[prices.'kimi-k2.6']]\nsince = '2026-01-01'\ninput_per_mtok = 1\n"
         "output_per_mtok = 1\nprovder = 'kimi'\n",
         "[[prices.\"kimi-k2.6\"]] unknown key `provder` — did you mean `provider`?"),
        ("[providers.kimi]\nrpn = 3\n", "[providers.kimi] unknown key `rpn` — did you mean `rpm`?"),
        ("[providers.x]\nbase_url = 'http://h'\nzzz = 1\n",
         "[providers.x] unknown key `zzz` — valid keys: api_key, base_url, dialect, model, "
         "models, rpm, system_append, system_prepend, tpm"),
        ("[providers]\nkimi = 3\n", "providers.kimi must be a table"),
        ("proxy = 3\n", "[proxy] must be a table"),
    ],
)  # fmt: skip
def test_unknown_keys_in_tables_the_shipped_config_leaves_out(tmp_path, text, message):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        check_config(p, env={})
    assert str(e.value) == message


def test_keys_other_features_add_are_accepted(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(
        '[storage]\nspool = "spool"\n'
        '[routing]\non_plan_error = "passthrough"\nmax_answer_s = 600\n'
        "[proxy]\nmax_body_mb = 32\ndrain_s = 5\n"
    )
    assert check_config(p, env={}).cfg.routing.primary == "kimi"


@pytest.mark.parametrize(
    "text",
    [
        '[routing]\nshare = "${MOONSHOT_API_KEY}"\n',  # settings
        '[providers.kimi]\nbase_url = "${MOONSHOT_API_KEY}"\n',  # a provider table
        '[providers.kimi]\nmodel = "m"\nrpm = "${MOONSHOT_API_KEY}"\n',
        '[sanitizer]\nthreshold_tokens = "${MOONSHOT_API_KEY}"\n',  # the Preparer
        '[context]\nwarn_at = "x-${MOONSHOT_API_KEY}-y"\n',
        '[[prices.m]]\nsince = "${MOONSHOT_API_KEY}"\ninput_per_mtok = 1\noutput_per_mtok = 1\n',
        '[storage]\nretention_days = "${MOONSHOT_API_KEY}"\n',
        '[[routing.rules]]\nname = "${MOONSHOT_API_KEY}"\nchain = ["nope"]\n',
        '[models]\n"gpt-4o" = ["${MOONSHOT_API_KEY}"]\n',
    ],
)
def test_a_value_from_an_env_var_is_shown_as_the_reference_never_expanded(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        check_config(p, env={"MOONSHOT_API_KEY": SECRET})
    assert SECRET not in str(e.value)
    assert "${MOONSHOT_API_KEY}" in str(e.value)
    assert e.value.__cause__ is None and e.value.__context__ is None  # no chained original


def test_no_usable_provider_names_every_variable_to_set(tmp_path):
    assert unusable_chain_warning(load_config(None, env={})) == (
        "kimi-intercept: no provider can be used — set MOONSHOT_API_KEY (kimi) or "
        "DEEPSEEK_API_KEY (deepseek)"
    )
    assert unusable_chain_warning(load_config(None, env={"DEEPSEEK_API_KEY": "sk-d"})) is None
    p = tmp_path / "c.toml"
    p.write_text(
        '[routing]\nprimary = "kimi_anthropic"\nfallbacks = ["kimi", "local"]\n'
        '[providers.local]\nbase_url = "http://127.0.0.1:9/v1"\napi_key = ""\n'
    )
    assert unusable_chain_warning(load_config(p, env={})) == (
        "kimi-intercept: no provider can be used — set MOONSHOT_API_KEY (kimi_anthropic, kimi) "
        "or providers.local.api_key (local)"
    )
    p.write_text('[[routing.rules]]\nname = "fast"\nchain = ["groq"]\n')
    assert unusable_chain_warning(load_config(p, env={"GROQ_API_KEY": "sk-g"})) is None
    assert unusable_chain_warning(load_config(p, env={})) == (
        "kimi-intercept: no provider can be used — set MOONSHOT_API_KEY (kimi) or "
        "DEEPSEEK_API_KEY (deepseek) or GROQ_API_KEY (groq)"
    )
