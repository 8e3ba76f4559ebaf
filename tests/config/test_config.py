"""Config parsing: defaults, merging, ${VAR} expansion, and errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from kimi_intercept.config.settings import ConfigError, ModelInfo, allow_hosts_patterns, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_missing_file_gives_the_documented_defaults():
    cfg = load_config("does-not-exist.toml", env={})
    assert cfg.source is None
    assert cfg.routing.primary == "kimi" and cfg.routing.fallbacks == ("deepseek",)
    assert cfg.routing.share == 100.0
    assert [p.name for p in cfg.chain] == ["kimi", "deepseek"]
    assert cfg.providers["kimi"].base_url == "https://api.moonshot.ai/v1"
    assert cfg.providers["kimi"].model == "kimi-k2.6"
    assert cfg.model_info("kimi-k2.6", "kimi") == ModelInfo(262144, 0.95, 0.16, 4.00)
    assert "api.openai.com" in cfg.hosts and "api.moonshot.cn" in cfg.hosts
    assert (cfg.routing.on_plan_error, cfg.max_body_mb) == ("error", 64.0)


def test_repository_config_toml_is_the_packaged_defaults():
    shipped = (REPO / "kimi_intercept" / "config" / "default_config.toml").read_text()
    assert (REPO / "config.toml").read_text() == shipped


def test_user_file_is_merged_over_defaults_and_env_is_expanded(tmp_path):
    p = write(
        tmp_path,
        """
[routing]
fallbacks = []
share = 25
[providers.kimi]
base_url = "http://127.0.0.1:9/v1"
[models]
"gpt-4o*" = "kimi-k2.5"
""",
    )
    cfg = load_config(p, env={"MOONSHOT_API_KEY": "sk-from-env"})
    kimi = cfg.providers["kimi"]
    assert kimi.base_url == "http://127.0.0.1:9/v1"
    assert kimi.api_key == "sk-from-env" and kimi.api_key_ref == "${MOONSHOT_API_KEY}"
    assert kimi.model == "kimi-k2.6"  # kept from the defaults
    assert "sk-from-env" not in repr(kimi)
    assert cfg.routing.share == 25.0 and cfg.routing.fallbacks == ()
    assert cfg.primary_model("gpt-4o-mini") == "kimi-k2.5"
    assert cfg.primary_model("claude-x") == "kimi-k2.6"


def test_unset_key_variable_leaves_the_provider_keyless_with_a_hint():
    kimi = load_config(None, env={}).providers["kimi"]
    assert kimi.api_key is None
    assert kimi.missing_key_hint() == (
        "no API key for provider 'kimi': set the MOONSHOT_API_KEY environment variable"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[routing]\nprimary = "nope"', "no [providers.nope] table"),
        ("[routing]\nshare = 150", "routing.share must be a number from 0 to 100"),
        ('[providers.kimi]\nbase_url = "ftp://x"', "must be an http:// or https:// URL"),
        ('[providers.kimi.models."m"]\ninput_per_mtok = -1', "price in USD per million"),
        ("[bogus]\nx = 1", "unknown table [bogus]"),
        (
            '[routing]\non_plan_error = "ignore"',
            'routing.on_plan_error must be "error" or "passthrough", got \'ignore\'',
        ),
        ("[proxy]\nmax_body_mb = 0", "proxy.max_body_mb must be a number from 0.001 to 4096"),
        ("[routing\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key_and_the_fix(tmp_path, text, message):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(write(tmp_path, text), env={})
    assert message in str(e.value)


def test_allow_hosts_patterns_match_host_and_port_only():
    import re

    [pat] = allow_hosts_patterns(("api.openai.com",))
    assert re.search(pat, "api.openai.com:443")
    assert not re.search(pat, "evil-api.openai.com:443")
    assert not re.search(pat, "api.openai.com.evil.net:443")
