"""The launcher as a new user runs it, through the installed console script, from folders that
are not the checkout: ``init``, ``run -- python client.py`` (an openai SDK script with no proxy or
CA setting of its own), a Node client under ``run``, then ``stats`` and ``report`` finding the
same database; exit codes, ``--keep`` and reuse, ``env`` per shell, ``proxy`` in the foreground.

The user folders are ``tmp_path/xdg/*`` (conftest's autouse fixture); the fakes stand in for
Kimi and DeepSeek, and the intercepted host is api.openai.com as the SDK's default.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from proxyproc import CLIENT_KEY, PROVIDER_ENV, clean_env, wait_rows

from kimi_intercept.commands.proxyrecord import ProxyRecord, port_open, write_record
from kimi_intercept.commands.simulator import DEFAULT_ANSWER_DELTAS, closed_port

DEFAULT_TEXT = "".join(DEFAULT_ANSWER_DELTAS)

SCRIPT = Path(sys.executable).with_name("kimi-intercept")
XDG = ("config", "data", "state")
# An unmodified openai SDK script: the key is the client's own, nothing about proxies or CAs.
CLIENT_PY = f"""\
import openai

client = openai.OpenAI(api_key="{CLIENT_KEY}", max_retries=0)
reply = client.chat.completions.create(
    model="gpt-4o", messages=[{{"role": "user", "content": "Say hello."}}]
)
print("ANSWER:", reply.choices[0].message.content)
"""
# Node's own https.request and fetch, no proxy agent or CA option.
CLIENT_JS = f"""\
const https = require('https');
const body = JSON.stringify({{model: 'gpt-4o', messages: [{{role: 'user', content: 'Hi'}}]}});
const headers = {{'content-type': 'application/json', authorization: 'Bearer {CLIENT_KEY}'}};
const url = 'https://api.openai.com/v1/chat/completions';
const req = https.request(url, {{method: 'POST', headers}}, (res) => {{
  let data = '';
  res.on('data', (c) => (data += c));
  res.on('end', async () => {{
    console.log('HTTPS:', res.statusCode, JSON.parse(data).choices[0].message.content);
    const r = await fetch(url, {{method: 'POST', headers, body}});
    console.log('FETCH:', r.status, (await r.json()).choices[0].message.content);
  }});
}});
req.on('error', (e) => {{ console.error(e); process.exit(3); }});
req.end(body);
"""


def user_dir(tmp_path: Path, kind: str) -> Path:
    return tmp_path / "xdg" / kind / "kimi-intercept"


def cli(*args: str, cwd: Path, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    env = clean_env(extra)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "NODE_OPTIONS", "SSL_CERT_FILE"):
        env.pop(name, None)
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def user_config(tmp_path, fake_upstream):
    """``kimi-intercept init`` from an empty folder, its providers then pointed at fakes.
    Returns (config path, kimi fake, deepseek fake)."""
    kimi, deepseek = fake_upstream(), fake_upstream()
    home = tmp_path / "home"
    home.mkdir()
    done = cli("init", cwd=home)
    config = user_dir(tmp_path, "config") / "config.toml"
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"Wrote {config}"
    text = config.read_text()
    for real, fake in (
        ("https://api.moonshot.ai/v1", kimi),
        ("https://api.deepseek.com/v1", deepseek),
    ):
        assert f'base_url = "{real}"' in text
        text = text.replace(f'base_url = "{real}"', f'base_url = "{fake.url}/v1"')
    config.write_text(text)
    return config, kimi, deepseek


@pytest.fixture
def stop_kept(tmp_path):
    """Stops any proxy still recorded at teardown (tests with --keep or `proxy`)."""
    yield
    for record in user_dir(tmp_path, "state").glob("proxy-*.json"):
        pid = json.loads(record.read_text())["pid"]
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def records(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in user_dir(tmp_path, "state").glob("proxy-*.json")]


def test_init_run_python_client_then_stats_and_report_find_the_same_database(tmp_path, user_config):
    config, kimi, deepseek = user_config
    work = tmp_path / "project"
    work.mkdir()
    (work / "client.py").write_text(CLIENT_PY)

    done = cli("run", "--", sys.executable, "client.py", cwd=work)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == f"ANSWER: {DEFAULT_TEXT}\n"
    assert "kimi-intercept: proxy started at http://127.0.0.1:" in done.stderr
    [sent] = kimi.received
    assert sent.json["model"] == "kimi-k2.6"
    assert sent.headers["authorization"] == f"Bearer {PROVIDER_ENV['MOONSHOT_API_KEY']}"
    assert deepseek.received == []
    # the proxy it started is gone, and so is its record
    assert records(tmp_path) == []

    db = user_dir(tmp_path, "data") / "kimi_intercept.db"
    [row] = wait_rows(db, 1)
    assert (row["provider"], row["model"], row["outcome"]) == ("kimi", "kimi-k2.6", "ok")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stats = cli("stats", cwd=elsewhere)
    assert stats.returncode == 0, stats.stderr
    assert str(db) in stats.stdout.splitlines()[0]
    today = stats.stdout.splitlines()[2].split()
    assert today[:2] == ["Today", "1"]
    report = cli("report", "--out", "site", cwd=elsewhere)
    assert report.returncode == 0, report.stderr
    assert report.stdout.splitlines()[1].startswith("1 request, ")
    assert (elsewhere / "site" / "index.html").is_file()


def test_node_https_request_and_fetch_under_run(tmp_path, user_config):
    config, kimi, _ = user_config
    done = cli("run", "node", "-e", CLIENT_JS, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == f"HTTPS: 200 {DEFAULT_TEXT}\nFETCH: 200 {DEFAULT_TEXT}\n"
    assert [r.json["model"] for r in kimi.received] == ["kimi-k2.6", "kimi-k2.6"]
    assert all(r.headers["user-agent"] != "" for r in kimi.received)
    [*_, row] = wait_rows(user_dir(tmp_path, "data") / "kimi_intercept.db", 2)
    assert row["provider"] == "kimi"


def test_exit_code_passes_through_and_keep_leaves_a_proxy_that_run_and_env_reuse(
    tmp_path, user_config, stop_kept
):
    fail = cli("run", "--keep", "--", sys.executable, "-c", "import sys; sys.exit(7)", cwd=tmp_path)
    assert fail.returncode == 7, fail.stderr
    [rec] = records(tmp_path)
    assert rec["keep"] is True and rec["users"] == []
    port = rec["port"]

    again = cli(
        "run", sys.executable, "-c", "import os; print(os.environ['HTTPS_PROXY'])", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"http://127.0.0.1:{port}\n"
    assert f"using the proxy at http://127.0.0.1:{port} (pid {rec['pid']})" in again.stderr
    assert [r["pid"] for r in records(tmp_path)] == [rec["pid"]]  # still running

    missing = cli("run", "no-such-command-xyz", cwd=tmp_path)
    assert missing.returncode == 127
    assert "command not found: no-such-command-xyz" in missing.stderr

    ca = user_dir(tmp_path, "data") / "mitmproxy" / "mitmproxy-ca-cert.pem"
    bundle = ca.with_name("kimi-intercept-ca-bundle.pem")
    sh = cli("env", "--shell", "sh", cwd=tmp_path)
    assert sh.returncode == 0, sh.stderr
    lines = sh.stdout.splitlines()
    assert lines[0].startswith(f"# kimi-intercept proxy http://127.0.0.1:{port}")
    assert f"export HTTPS_PROXY=http://127.0.0.1:{port}" in lines
    assert "export NO_PROXY=localhost,127.0.0.1,::1" in lines
    assert f"export NODE_EXTRA_CA_CERTS={ca}" in lines
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"):
        assert f"export {name}={bundle}" in lines
    assert ca.read_text().strip() in bundle.read_text()
    assert bundle.read_text().count("BEGIN CERTIFICATE") > 100  # certifi's roots too
    fish = cli("env", "--shell", "fish", cwd=tmp_path).stdout.splitlines()
    assert f"set -gx HTTPS_PROXY 'http://127.0.0.1:{port}'" in fish
    ps = cli("env", "--shell", "powershell", cwd=tmp_path).stdout.splitlines()
    assert f"$env:HTTPS_PROXY = 'http://127.0.0.1:{port}'" in ps
    assert not any(line.startswith("$env:https_proxy") for line in ps)

    # the printed lines work in a real shell: curl-free check with python through the proxy
    script = (
        sh.stdout + f"\n{sys.executable} -c \"import os; print(os.environ['SSL_CERT_FILE'])\"\n"
    )
    shell = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert shell.stdout == f"{bundle}\n"


def test_proxy_runs_in_the_foreground_records_itself_and_passes_mitmproxy_options(
    tmp_path, user_config, stop_kept
):
    env = clean_env()
    proc = subprocess.Popen(
        [str(SCRIPT), "proxy", "--listen-port", "0", "--set", "termlog_verbosity=info"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        seen = []
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "kimi-intercept: ready" in line:
                break
        assert any("proxy listening at 127.0.0.1:" in line for line in seen), seen
        [rec] = records(tmp_path)
        assert rec["port"] > 0 and rec["keep"] is True  # the pid is mitmdump's, a child of proc
        shown = cli("env", cwd=tmp_path)
        assert f"export HTTPS_PROXY=http://127.0.0.1:{rec['port']}" in shown.stdout.splitlines()
        second = cli("proxy", cwd=tmp_path)
        assert second.returncode == 1 and "already runs" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        proc.stdout.close()
    assert records(tmp_path) == []


def test_env_without_a_running_proxy_names_the_fix(tmp_path):
    done = cli("env", cwd=tmp_path)
    assert done.returncode == 1
    assert "no kimi-intercept proxy is running" in done.stderr
    assert "kimi-intercept proxy" in done.stderr and "Traceback" not in done.stderr


def test_init_refuses_to_overwrite_without_force(tmp_path):
    assert cli("init", cwd=tmp_path).returncode == 0
    config = user_dir(tmp_path, "config") / "config.toml"
    config.write_text("# mine\n")
    again = cli("init", cwd=tmp_path)
    assert again.returncode == 1
    assert f"{config} already exists" in again.stderr and "--force" in again.stderr
    assert config.read_text() == "# mine\n"
    assert cli("init", "--force", cwd=tmp_path).returncode == 0
    assert "[routing]" in config.read_text()


def test_run_without_any_config_uses_the_built_in_defaults(tmp_path):
    done = cli("run", sys.executable, "-c", "print('fine')", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "fine\n"
    assert records(tmp_path) == []


CLAUDE = os.environ.get("KIMI_TEST_CLAUDE", "")


@pytest.mark.skipif(
    not (CLAUDE and Path(CLAUDE).exists()),
    reason="set KIMI_TEST_CLAUDE to a claude binary (npm @anthropic-ai/claude-code) to run it",
)
def test_run_claude_with_nothing_else_set(tmp_path, user_config):
    """`kimi-intercept run claude …`: Claude Code gets no proxy or CA setting but what run sets."""
    config, kimi, _ = user_config
    home = tmp_path / "claude-home"
    home.mkdir()
    done = cli(
        "run", CLAUDE, "-p", "say hi", "--output-format", "json", cwd=tmp_path, timeout=180,
        HOME=str(home), ANTHROPIC_API_KEY="sk-ant-client-key", DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["result"] == DEFAULT_TEXT
    assert kimi.received[0].headers["user-agent"].startswith("claude-cli/")
    row = wait_rows(user_dir(tmp_path, "data") / "kimi_intercept.db", 1)[0]
    assert (row["dialect"], row["provider"]) == ("anthropic", "kimi")


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_two_runs_share_one_proxy_and_the_last_one_out_stops_it(tmp_path, user_config):
    """The first run starts the proxy; a second reuses it; the proxy outlives the first and
    stops when the second ends."""
    waiter = (
        "import os, sys, time\n"
        "print(os.environ['HTTPS_PROXY'], flush=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.05)\n"
    )
    env = clean_env()

    def start(release: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(SCRIPT), "run", sys.executable, "-c", waiter, release], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    first = start("release-first")
    first_url = first.stdout.readline().strip()
    [rec] = records(tmp_path)
    second = start("release-second")
    assert second.stdout.readline().strip() == first_url == f"http://127.0.0.1:{rec['port']}"
    wait_for(lambda: len(records(tmp_path)[0]["users"]) == 2)

    (tmp_path / "release-first").touch()
    assert first.wait(30) == 0
    [still] = records(tmp_path)
    assert still["pid"] == rec["pid"] and len(still["users"]) == 1
    assert port_open(rec["port"])

    (tmp_path / "release-second").touch()
    assert second.wait(30) == 0
    assert records(tmp_path) == []
    wait_for(lambda: not port_open(rec["port"]), 15)
    for proc in (first, second):
        proc.stdout.close()
        proc.stderr.close()


def test_a_stale_record_is_detected_and_removed(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    config = tmp_path / "xdg" / "config" / "kimi-intercept" / "config.toml"
    stale = ProxyRecord(gone.pid, closed_port(), str(tmp_path), str(config), log="")
    write_record(config, stale)
    assert len(records(tmp_path)) == 1
    done = cli("env", cwd=tmp_path)
    assert done.returncode == 1 and "no kimi-intercept proxy is running" in done.stderr
    assert records(tmp_path) == []
