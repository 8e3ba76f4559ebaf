"""``[proxy] drain_s`` and ``[routing] max_answer_s``: parsed, defaulted and checked."""

from __future__ import annotations

import pytest

from kimi_intercept.config.settings import ConfigError, load_config


def test_defaults():
    cfg = load_config(None, env={})
    assert (cfg.drain_s, cfg.routing.max_answer_s) == (30.0, 1800.0)


def test_values_from_the_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[proxy]\ndrain_s = 0\n[routing]\nmax_answer_s = 600\n")
    cfg = load_config(p, env={})
    assert (cfg.drain_s, cfg.routing.max_answer_s) == (0.0, 600.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[proxy]\ndrain_s = -1\n", "proxy.drain_s must be a number from 0 to 3600, got -1"),
        ('[proxy]\ndrain_s = "30"\n', "proxy.drain_s must be a number from 0 to 3600, got '30'"),
        (
            "[routing]\nmax_answer_s = 0\n",
            "routing.max_answer_s must be a number from 0.001 to 604800, got 0",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, message):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    assert str(e.value) == message
