"""Shadow mode end to end: the client's answer comes from kimi on its own timing while a copy
goes to deepseek in the background; the comparison rows, the CLI table and the report page."""

from __future__ import annotations

import time

from click.testing import CliRunner
from proxyproc import render_config, rows, wait_rows

from kimi_intercept.commands.cli import main as cli_main
from kimi_intercept.commands.simulator import Reply


def test_shadow_mirrors_without_touching_the_clients_answer(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    text = render_config(db, kimi.url, deepseek.url) + (
        '\n[routing.shadow]\nprovider = "deepseek"\nshare = 100\n'
    )
    client = openai_client(start_proxy(text))
    slow = Reply.sse_file(
        b'data: {"id":"s","object":"chat.completion.chunk","model":"deepseek-chat",'
        b'"choices":[{"index":0,"delta":{"content":"Hello from the slow shadow"},'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":5,'
        b'"total_tokens":12}}\n\ndata: [DONE]\n\n'
    )
    slow.delay_before_headers_s = 5.0
    deepseek.enqueue(slow)

    t0 = time.perf_counter()
    answer = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        if c.choices
    )
    assert answer == "Hello from the fake Kimi upstream."
    assert time.perf_counter() - t0 < 3.5  # not waiting for the 5 s shadow

    [row] = wait_rows(db, 1)
    assert row["provider"] == "kimi"
    [mirror] = rows(db, "shadow")
    assert (mirror["request_id"], mirror["primary_provider"], mirror["shadow_provider"]) == (
        row["id"], "kimi", "deepseek",
    )  # fmt: skip
    assert (mirror["outcome"], mirror["prompt_tokens"], mirror["completion_tokens"]) == ("ok", 7, 5)
    assert mirror["duration_ms"] >= 5000
    # "Hello from the fake Kimi upstream." vs "Hello from the slow shadow": 3 of 8 words
    assert mirror["similarity"] == round(3 / 8, 4)
    assert deepseek.received[0].headers["authorization"] == "Bearer sk-test-deepseek-provider-key"

    out = CliRunner().invoke(cli_main, ["compare", "--db", str(db), "--since", "1d"])
    assert out.exit_code == 0, out.output
    assert "kimi → deepseek" in out.output and " 1 " in out.output
    report = tmp_path / "report"
    done = CliRunner().invoke(cli_main, ["report", "--db", str(db), "--out", str(report)])
    assert done.exit_code == 0, done.output
    page = (report / "compare.html").read_text()
    assert 'id="shadow-pairs"' in page and "deepseek" in page
