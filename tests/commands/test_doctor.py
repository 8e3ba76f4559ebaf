"""``kimi-intercept doctor``: the right ✗ and fix for a missing key, a broken CA, no proxy or a
bad config, exit code 0 only when every check passes, and a canary request per client (python,
node, curl) answered by the local simulator. User folders are ``tmp_path/xdg/*`` (conftest)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from proxyproc import PROVIDER_ENV, clean_env, rows

from kimi_intercept.commands.cli import main

SCRIPT = Path(sys.executable).with_name("kimi-intercept")


def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "xdg" / "data" / "kimi-intercept"


def doctor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["doctor", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def lines_starting(output: str, mark: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(mark)]


@pytest.fixture
def no_keys(monkeypatch):
    for name in ("MOONSHOT_API_KEY", "DEEPSEEK_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_fresh_machine_fails_on_keys_ca_and_proxy_with_their_fixes(tmp_path, no_keys):
    code, out = doctor()
    assert code == 1
    home = tmp_path / "xdg" / "config" / "kimi-intercept" / "config.toml"
    ca = data_dir(tmp_path) / "mitmproxy" / "mitmproxy-ca-cert.pem"
    assert lines_starting(out, "✓") == [f"✓ config: built-in defaults (no {home})"]
    assert lines_starting(out, "✗") == [
        "✗ key for kimi: no API key for provider 'kimi': set the MOONSHOT_API_KEY environment "
        "variable (primary)",
        "✗ key for deepseek: no API key for provider 'deepseek': set the DEEPSEEK_API_KEY "
        "environment variable (fallback)",
        "✗ usable provider: no provider of the chain has a key: nothing would be rerouted",
        f"✗ CA: {ca}: No such file or directory",
        f"✗ proxy: no proxy is running for {home}",
    ]
    assert "    fix: export MOONSHOT_API_KEY=…" in out.splitlines()
    assert "– canary (python): not run: the CA is missing" in out.splitlines()
    assert "update-ca-certificates" in out or "update-ca-trust" in out  # how to trust, remove


def test_a_broken_ca_and_a_bad_config_are_named(tmp_path, monkeypatch):
    ca = data_dir(tmp_path) / "mitmproxy" / "mitmproxy-ca-cert.pem"
    ca.parent.mkdir(parents=True)
    ca.write_text("not a certificate")
    (tmp_path / "config.toml").write_text('[routing]\nprimary = "nobody"\n')
    code, out = doctor("--json")
    assert code == 1
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["config"]["status"] == "fail"
    assert "routing names provider 'nobody'" in checks["config"]["detail"]
    assert checks["config"]["fix"] == f"edit {tmp_path / 'config.toml'}"
    assert checks["CA"] == {
        "name": "CA",
        "status": "fail",
        "detail": f"{ca} is not a PEM certificate",
        "fix": f"rm '{ca}' and restart",
    }
    assert checks["canary (python)"]["status"] == "skip"


def test_everything_passes_with_a_running_proxy_and_each_client_canary(tmp_path, monkeypatch):
    env = clean_env()
    proxy = subprocess.Popen(
        [str(SCRIPT), "proxy", "--listen-port", "0"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proxy.stdout is not None
        for line in proxy.stdout:
            if "kimi-intercept: ready" in line:
                break
        for name, value in PROVIDER_ENV.items():
            monkeypatch.setenv(name, value)
        [record] = (tmp_path / "xdg" / "state" / "kimi-intercept").glob("proxy-*.json")
        monkeypatch.setenv(
            "HTTPS_PROXY", f"http://127.0.0.1:{json.loads(record.read_text())['port']}"
        )

        code, out = doctor("python")
        assert lines_starting(out, "✗") == [], out
        assert code == 0
        assert "✓ canary (python): python reached https://api.openai.com/v1/chat/completions" in out
        for client in ("node", "curl"):
            code, out = doctor(client, "--json")
            report = json.loads(out)
            assert (code, report["ok"]) == (0, True), out
            [canary] = [c for c in report["checks"] if c["name"] == f"canary ({client})"]
            assert canary["status"] == "ok"
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(20)
        proxy.stdout.close()
    # the canary's rows never reach the user's database (the running proxy may have created it)
    db = data_dir(tmp_path) / "kimi_intercept.db"
    assert not db.exists() or rows(db) == []
