"""Which config every command uses, and where relative paths in it point.

Order: ``--config``, ``$KIMI_INTERCEPT_CONFIG``, ``./config.toml``, the user config folder; a
file named explicitly must exist. The user folders are ``tmp_path/xdg/*`` (conftest).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kimi_intercept.commands.cli import main
from kimi_intercept.config.discovery import find_config
from kimi_intercept.config.settings import ConfigError, load_config


def user_config(tmp_path: Path) -> Path:
    return tmp_path / "xdg" / "config" / "kimi-intercept" / "config.toml"


def test_discovery_order(tmp_path, monkeypatch):
    home = user_config(tmp_path)
    assert find_config().path == home and find_config().origin == "user config dir"
    assert find_config().describe() == f"built-in defaults (no {home})"

    (tmp_path / "config.toml").write_text("")
    assert find_config().path == tmp_path / "config.toml"

    (tmp_path / "env.toml").write_text("")
    monkeypatch.setenv("KIMI_INTERCEPT_CONFIG", "env.toml")
    assert find_config().path == tmp_path / "env.toml"
    assert find_config().describe() == f"{tmp_path / 'env.toml'} (from $KIMI_INTERCEPT_CONFIG)"

    (tmp_path / "flag.toml").write_text("")
    assert find_config("flag.toml").path == tmp_path / "flag.toml"


def test_an_explicit_config_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"--config names .*nope\.toml, which does not exist"):
        find_config("nope.toml")
    monkeypatch.setenv("KIMI_INTERCEPT_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"\$KIMI_INTERCEPT_CONFIG names .*gone\.toml"):
        find_config()


@pytest.mark.parametrize("command", ["stats", "report", "export", "status", "env", "proxy"])
def test_cli_explicit_missing_config_is_one_line_naming_the_fix(tmp_path, command):
    result = CliRunner().invoke(main, [command, "--config", "nope.toml"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: --config names {tmp_path / 'nope.toml'}, which does not exist; create it with "
        "`kimi-intercept init`, fix the path, or leave --config unset\n"
    )


def test_cli_missing_config_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KIMI_INTERCEPT_CONFIG", "nope.toml")
    result = CliRunner().invoke(main, ["run", "--", "true"])
    assert result.exit_code == 1
    assert "$KIMI_INTERCEPT_CONFIG names" in result.output and "Traceback" not in result.output


def test_relative_paths_are_relative_to_the_config_folder(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "config.toml").write_text(
        '[storage]\ndatabase = "data/usage.db"\n[import]\ncline = "ledgers/taskHistory.json"\n'
    )
    cfg = load_config(folder / "config.toml")
    assert cfg.database == folder / "data" / "usage.db"
    from kimi_intercept.commands.importers import import_config

    assert import_config(cfg) == {"cline": folder / "ledgers" / "taskHistory.json"}


def test_without_a_database_key_the_database_is_in_the_user_data_folder(tmp_path):
    expected = tmp_path / "xdg" / "data" / "kimi-intercept" / "kimi_intercept.db"
    assert load_config(None).database == expected
    (tmp_path / "config.toml").write_text('[routing]\nprimary = "deepseek"\n')
    assert load_config(tmp_path / "config.toml").database == expected
    (tmp_path / "abs.toml").write_text(f'[storage]\ndatabase = "{tmp_path / "x.db"}"\n')
    assert load_config(tmp_path / "abs.toml").database == tmp_path / "x.db"


def test_stats_from_another_folder_reads_the_database_the_config_names(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "config.toml").write_text('[storage]\ndatabase = "usage.db"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(main, ["stats", "--config", str(folder / "config.toml")])
    assert result.exit_code == 1
    assert f"No database at {folder / 'usage.db'}" in result.output


def test_the_addon_discovers_its_config_and_refuses_a_named_missing_one(tmp_path):
    from mitmproxy import exceptions
    from mitmproxy.addons.proxyserver import Proxyserver
    from mitmproxy.test import taddons

    from kimi_intercept.addon import KimiIntercept

    (tmp_path / "config.toml").write_text('[storage]\ndatabase = "here.db"\n')
    a = KimiIntercept()
    with taddons.context(Proxyserver(), a) as tctx:
        tctx.configure(a, kimi_config="")  # empty: discovery finds ./config.toml
        assert a.cfg is not None and a.cfg.database == tmp_path / "here.db"
        with pytest.raises(exceptions.OptionsError, match=r"kimi_config names .*nope\.toml"):
            tctx.configure(a, kimi_config="nope.toml")
