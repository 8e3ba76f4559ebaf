"""The real Codex CLI (npm `@openai/codex`) through the proxy, answered by a chat-completions
Kimi fake that first asks for a shell command (Codex's ``exec_command`` tool) and then answers.

Runs only when a `codex` binary is given: ``KIMI_TEST_CODEX=/path/to/node_modules/.bin/codex``
(``npm install @openai/codex`` in any folder; measured with 0.171.0). Started as the shared
notes say (``clients.md``): ``OPENAI_API_KEY``, ``HTTPS_PROXY``, ``CODEX_HOME`` and
``CODEX_CA_CERTIFICATE`` = the mitm CA. Codex sends ``web_search`` and a ``namespace`` tool,
so the config drops built-in tools.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from proxyproc import wait_rows

from kimi_intercept.commands.simulator import Reply

CODEX = os.environ.get("KIMI_TEST_CODEX", "")
WIRE = Path(__file__).resolve().parents[1] / "wire" / "documented"

pytestmark = pytest.mark.skipif(
    not (CODEX and Path(CODEX).exists()),
    reason="set KIMI_TEST_CODEX to a codex binary to run the real Codex test",
)


def call_stream(name: str, arguments: dict) -> bytes:
    """Moonshot's documented tool-call stream, calling ``name`` with ``arguments`` instead."""
    raw = (WIRE / "moonshot_tool_calls_stream.sse").read_text()
    args = json.dumps(json.dumps(arguments))[1:-1]  # as it sits inside the JSON string
    raw = raw.replace('"name":"get_weather"', f'"name":"{name}"')
    return raw.replace('{\\"city\\": \\"Paris\\"}', args).encode()


#: (model flag, the tool call Kimi makes): an explicit older model gets plain function tools
#: (``exec_command``); Codex's default model runs in "code mode": one free-form ``exec`` tool
#: (JavaScript, in the ``functions`` namespace of an ``additional_tools`` input item).
MODES = {
    "gpt-5.1": (["-m", "gpt-5.1"], "exec_command", {"cmd": "echo kimi-$((6*7))"}),
    "default": ([], "functions__exec", {
        "input": 'const r = await tools.exec_command({cmd: "echo kimi-$((6*7))"});\ntext(r);'}),
}  # fmt: skip


@pytest.mark.parametrize("mode", sorted(MODES))
def test_codex_exec_runs_a_shell_call_and_prints_the_answer(
    mode, tmp_path, fake_upstream, start_proxy
):
    flags, tool, arguments = MODES[mode]
    kimi = fake_upstream()
    kimi.enqueue(
        Reply.sse_file(call_stream(tool, arguments), gap_s=0.01),
        Reply.sse_file((WIRE / "moonshot_stream.sse").read_bytes()),
    )
    db = tmp_path / "kimi.db"
    proxy = start_proxy(f"""
[intercept]
hosts = ["api.openai.com"]
[routing]
primary = "kimi"
fallbacks = []
max_retries = 0
[storage]
database = "{db}"
[dialects.responses]
drop_builtin_tools = true
[providers.kimi]
base_url = "{kimi.url}/v1"
api_key = "${{MOONSHOT_API_KEY}}"
model = "kimi-k2.6"
""")
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        OPENAI_API_KEY="sk-client-codex", HTTPS_PROXY=proxy.proxy_url, HOME=str(tmp_path),
        CODEX_HOME=str(home), CODEX_CA_CERTIFICATE=str(proxy.ca_path),
    )  # fmt: skip
    done = subprocess.run(
        [CODEX, "exec", "--skip-git-repo-check", "-s", "danger-full-access", *flags,
         "Print 6*7 with the shell."],
        env=env, capture_output=True, text=True, timeout=120, cwd=work, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "OK"
    first, second = kimi.received
    assert first.path == "/v1/chat/completions"
    assert tool in [t["function"]["name"] for t in first.json["tools"]]
    tool_output = [m for m in second.json["messages"] if m["role"] == "tool"]
    assert len(tool_output) == 1 and "kimi-42" in tool_output[0]["content"]
    # one WebSocket attempt, refused with 426, then straight to POST (no WebSocket retries)
    assert proxy.log_text().count("refused a Responses WebSocket upgrade") == 1
    a, b = wait_rows(db, 2)
    assert [(r["dialect"], r["provider"], r["outcome"]) for r in (a, b)] == [
        ("responses", "kimi", "ok"), ("responses", "kimi", "ok"),
    ]  # fmt: skip
    assert (a["prompt_tokens"], a["completion_tokens"]) == (213, 99)
    assert (b["prompt_tokens"], b["completion_tokens"]) == (90, 50)
