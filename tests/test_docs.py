"""The README stays true: every config key and every kimi_ option is documented."""

from __future__ import annotations

import tomllib
from pathlib import Path

from mitmproxy.test import taddons

from kimi_intercept.addon import KimiIntercept
from kimi_intercept.config.settings import default_config_text

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def config_keys() -> set[str]:
    raw = tomllib.loads(default_config_text())
    keys = {
        f"{table}.{k}"
        for table in ("intercept", "routing", "storage", "sanitizer", "context")
        for k in raw[table]
    }
    keys |= {f"dialects.responses.{k}" for k in raw["dialects"]["responses"]}
    for provider in raw["providers"].values():
        keys |= {f"providers.<name>.{k}" for k in provider if k != "models"}
        for info in provider.get("models", {}).values():
            keys |= {f'providers.<name>.models."<model>".{k}' for k in info}
    return keys


def test_every_config_key_is_in_the_readme_table():
    missing = sorted(k for k in config_keys() if f"`{k}`" not in README)
    assert missing == []


def test_every_kimi_option_is_in_the_readme():
    a = KimiIntercept()
    with taddons.context(a) as tctx:
        options = [name for name in tctx.options.keys() if name.startswith("kimi_")]
    assert options  # the addon registers at least kimi_config
    assert [o for o in options if f"`{o}`" not in README] == []


def test_readme_gives_the_install_and_test_commands_ci_runs():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    demo = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/kimi-intercept demo"
    assert f"\n{demo}\n" in README
    [ci_line] = [line for line in ci.splitlines() if line.startswith("python3 -m venv")]
    assert "pytest" in ci_line and f"\n{ci_line}\n" in README


def test_readme_error_table_is_the_one_the_code_applies():
    from kimi_intercept.relay.failures import decision_table

    start = README.index("-->\n", README.index("<!-- decision table")) + 4
    end = README.index("<!-- end decision table -->")
    assert README[start:end] == decision_table()
