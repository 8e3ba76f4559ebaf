"""The docs stay true: every config key and every kimi_ option is documented (the README for
users, docs/ for the internals), the README gives the commands CI runs, and the failure table in
docs/ is the one the code applies."""

from __future__ import annotations

import tomllib
from pathlib import Path

from mitmproxy.test import taddons

from kimi_intercept.addon import KimiIntercept
from kimi_intercept.config.settings import default_config_text

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}


def config_keys() -> set[str]:
    raw = tomllib.loads(default_config_text())
    keys = {
        f"{table}.{k}"
        for table in ("intercept", "routing", "proxy", "storage", "sanitizer", "context", "kimi")
        for k in raw[table]
    }
    keys |= {f"dialects.responses.{k}" for k in raw["dialects"]["responses"]}
    for provider in raw["providers"].values():
        keys |= {f"providers.<name>.{k}" for k in provider if k != "models"}
        for info in provider.get("models", {}).values():
            keys |= {f'providers.<name>.models."<model>".{k}' for k in info}
    return keys


def test_every_config_key_is_documented():
    missing = sorted(k for k in config_keys() if f"`{k}`" not in DOCS["configuration.md"])
    assert missing == []


def test_every_kimi_option_is_documented():
    a = KimiIntercept()
    with taddons.context(a) as tctx:
        options = [name for name in tctx.options.keys() if name.startswith("kimi_")]
    assert options  # the addon registers at least kimi_config
    assert [o for o in options if f"`{o}`" not in DOCS["configuration.md"]] == []


def test_readme_gives_the_install_and_test_commands_ci_runs():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    demo = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/kimi-intercept demo"
    assert f"\n{demo}\n" in README
    [ci_line] = [line for line in ci.splitlines() if line.startswith("python3 -m venv")]
    assert "pytest" in ci_line and f"\n{ci_line}\n" in README


def test_the_documented_error_table_is_the_one_the_code_applies():
    from kimi_intercept.relay.failures import decision_table

    page = DOCS["request-path.md"]
    start = page.index("-->\n", page.index("<!-- decision table")) + 4
    end = page.index("<!-- end decision table -->")
    assert page[start:end] == decision_table()


def test_every_docs_page_is_linked_and_every_link_resolves():
    import re

    linked = set(re.findall(r"\(docs/([a-z-]+\.md)", README)) | set(
        re.findall(r"\]\(([a-z-]+\.md)", DOCS["architecture.md"])
    )
    assert linked >= set(DOCS) - {"architecture.md"}
    for name, text in {"README.md": README, **DOCS}.items():
        for target in re.findall(r"\]\((?:docs/)?([a-z-]+\.md)(?:#[a-z0-9-]+)?\)", text):
            assert target in DOCS or target == "README.md", (name, target)
