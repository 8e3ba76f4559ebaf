"""A real ``mitmdump -s addons/kimi.py``: a bad config is one line, exit code 1 and no listening
socket, with the same message the CLI gives; a chain without API keys is one loud warning."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from proxyproc import start_proxy_process

from kimi_intercept.commands.cli import main
from kimi_intercept.commands.mitmdump import MITMDUMP, addon_script, clean_env

SECRET = "sk-live-4f9a8b7c6d5e-never-print-me"
_TIME = re.compile(r"^\[\d\d:\d\d:\d\d\.\d{3}\] ")

BAD_CONFIGS = {
    "typo": ('[routing]\nprimry = "deepseek"\n',
             "[routing] unknown key `primry` — did you mean `primary`?"),
    "sanitizer": ('[sanitizer]\nthreshold_tokens = "abc"\n',
                  "[sanitizer] threshold_tokens has the wrong type ('abc')"),
    "secret": ('[providers.kimi]\nbase_url = "${MOONSHOT_API_KEY}"\n',
               "providers.kimi.base_url must be an http:// or https:// URL, "
               "got '${MOONSHOT_API_KEY}'"),
}  # fmt: skip


def no_keys_env() -> dict[str, str]:
    env = clean_env()
    for name in ("MOONSHOT_API_KEY", "DEEPSEEK_API_KEY"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_config_is_one_line_exit_1_never_listens_and_matches_the_cli(tmp_path, name):
    text, message = BAD_CONFIGS[name]
    (tmp_path / "bad.toml").write_text(text)
    env = {**no_keys_env(), "MOONSHOT_API_KEY": SECRET}
    # No --listen-host: mitmproxy's default is every interface.
    result = subprocess.run(
        [str(MITMDUMP), "--listen-port", "0", "--set", f"confdir={tmp_path / 'conf'}",
         "-s", str(addon_script()), "--set", "kimi_config=bad.toml"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    output = result.stdout + result.stderr
    lines = [_TIME.sub("", line) for line in output.splitlines()]
    assert result.returncode == 1, output
    assert lines == [
        f"Loading script {addon_script()}",
        f"kimi-intercept: kimi_config bad.toml: {message}",
    ]
    assert "listening" not in output and SECRET not in output

    cli = CliRunner().invoke(main, ["stats", "--config", "bad.toml"], env=env)
    assert cli.exit_code == 1
    assert cli.output == f"Error: {tmp_path / 'bad.toml'}: {message}\n"


def test_no_usable_provider_is_one_loud_warning(tmp_path):
    config = tmp_path / "ok.toml"
    config.write_text(f'[storage]\ndatabase = "{tmp_path / "k.db"}"\n')
    proxy = start_proxy_process(config, tmp_path / "conf", env=no_keys_env(), cwd=tmp_path)
    try:
        log = proxy.log_text()
    finally:
        proxy.stop()
    warnings = [line for line in log.splitlines() if "kimi-intercept: no" in line]
    assert [_TIME.sub("", line) for line in warnings] == [
        "kimi-intercept: no provider can be used — set MOONSHOT_API_KEY (kimi) or "
        "DEEPSEEK_API_KEY (deepseek)"
    ]
    assert "route kimi → deepseek (no provider has an API key)" in log


def test_the_warning_is_not_given_when_one_provider_has_its_key(tmp_path):
    config = tmp_path / "ok.toml"
    config.write_text(f'[storage]\ndatabase = "{tmp_path / "k.db"}"\n')
    env = {**no_keys_env(), "DEEPSEEK_API_KEY": "sk-deepseek"}
    proxy = start_proxy_process(config, tmp_path / "conf", env=env, cwd=Path(tmp_path))
    try:
        log = proxy.log_text()
    finally:
        proxy.stop()
    assert "no provider can be used" not in log
    assert "no API key for provider 'kimi': set the MOONSHOT_API_KEY environment variable" in log
