"""A real coding agent through the proxy: Claude Code (npm `@anthropic-ai/claude-code`).

Runs only when a `claude` binary is given: `KIMI_TEST_CLAUDE=/path/to/node_modules/.bin/claude`
(install with `npm install @anthropic-ai/claude-code` in any folder). Claude Code talks the
Anthropic Messages API to api.anthropic.com; the proxy translates it for an OpenAI-dialect Kimi
fake and translates the streamed answer back. How it is started follows the shared notes
(`clients.md`): HTTPS_PROXY + NODE_EXTRA_CA_CERTS, a throwaway HOME, non-essential traffic off.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from proxyproc import wait_rows

CLAUDE = os.environ.get("KIMI_TEST_CLAUDE", "")

pytestmark = pytest.mark.skipif(
    not (CLAUDE and Path(CLAUDE).exists()),
    reason="set KIMI_TEST_CLAUDE to a claude binary to run the real-agent test",
)


def test_claude_code_gets_a_streamed_answer_from_kimi(tmp_path, fake_upstream, start_proxy):
    kimi, deepseek = fake_upstream(0.02), fake_upstream()
    db = tmp_path / "kimi.db"
    proxy = start_proxy(f"""
[intercept]
hosts = ["api.anthropic.com"]
[storage]
database = "{db}"
[providers.kimi]
base_url = "{kimi.url}/v1"
[providers.deepseek]
base_url = "{deepseek.url}/v1"
""")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        HOME=str(home), ANTHROPIC_API_KEY="sk-ant-client-key", HTTPS_PROXY=proxy.proxy_url,
        NODE_EXTRA_CA_CERTS=str(proxy.ca_path), DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )  # fmt: skip
    done = subprocess.run(
        [CLAUDE, "-p", "say hi", "--output-format", "json"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["result"] == "Hello from the fake Kimi upstream."
    [sent] = kimi.received
    assert sent.path == "/v1/chat/completions" and sent.json["tools"]
    assert sent.headers["user-agent"].startswith("claude-cli/")
    [row] = wait_rows(db, 1)
    assert (row["dialect"], row["provider"], row["outcome"]) == ("anthropic", "kimi", "ok")
    # what Claude Code read from the translated stream is what the proxy recorded
    assert result["usage"]["input_tokens"] == row["prompt_tokens"]
    assert result["usage"]["output_tokens"] == row["completion_tokens"]
