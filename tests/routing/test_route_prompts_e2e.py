"""Prompts per route end to end: a rule's ``system_prepend`` / ``system_append`` (one inline,
one ``@file`` next to the config) seen by the fake Kimi, the same bytes on turns 1 and 2 of a
conversation, for the openai SDK, the anthropic SDK and a Gemini client (httpx), each through
a real mitmdump + addon and answered by an OpenAI-dialect Kimi fake (its default answer)."""

from __future__ import annotations

import ssl

import anthropic
import httpx
from proxyproc import wait_rows

PREPEND = "MODE: REVIEW"
APPEND = "List defects first, each with file and line.\nNo praise."


def config(db, kimi_url: str) -> str:
    return f"""
[intercept]
hosts = ["api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com"]
[routing]
primary = "kimi"
fallbacks = []
max_retries = 0
[[routing.rules]]
name = "review"
chain = ["kimi"]
system_prepend = "{PREPEND}"
system_append = "@prompts/review.md"
[storage]
database = "{db}"
[providers.kimi]
base_url = "{kimi_url}/v1"
api_key = "${{MOONSHOT_API_KEY}}"
model = "kimi-k2.6"
"""


def test_rule_prompt_text_reaches_kimi_identically_on_both_turns_for_three_dialects(
    tmp_path, fake_upstream, start_proxy, openai_client, monkeypatch
):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "review.md").write_text(APPEND + "\n", encoding="utf-8")
    kimi, db = fake_upstream(), tmp_path / "kimi.db"
    proxy = start_proxy(config(db, kimi.url))

    # OpenAI chat completions, two turns of one conversation
    oa = openai_client(proxy)
    turn1 = [{"role": "system", "content": "You review code."},
             {"role": "user", "content": "Review a.py"}]  # fmt: skip
    answer = oa.chat.completions.create(model="gpt-4o", messages=turn1)
    assert answer.choices[0].message.content == "Hello from the fake Kimi upstream."
    turn2 = turn1 + [{"role": "assistant", "content": answer.choices[0].message.content},
                     {"role": "user", "content": "And b.py?"}]  # fmt: skip
    oa.chat.completions.create(model="gpt-4o", messages=turn2)

    # Anthropic Messages (translated to the OpenAI hub for the Kimi fake), two turns
    for name, value in proxy.client_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    an = anthropic.Anthropic(api_key="sk-ant-client-key", max_retries=0)
    a_turn1 = [{"role": "user", "content": "Review a.py"}]
    first = an.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, system="You review code.", messages=a_turn1
    )
    a_turn2 = a_turn1 + [{"role": "assistant", "content": first.content[0].text},
                         {"role": "user", "content": "And b.py?"}]  # fmt: skip
    an.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, system="You review code.", messages=a_turn2
    )

    # Gemini generateContent, two turns
    url = ("https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:"
           "generateContent")  # fmt: skip
    system = {"parts": [{"text": "You review code."}]}
    g_turn1 = [{"role": "user", "parts": [{"text": "Review a.py"}]}]
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
    with httpx.Client(proxy=proxy.proxy_url, verify=ctx, trust_env=False) as c:
        headers = {"x-goog-api-key": "AIzaSyFakeClientKey0000000000000000000"}
        r1 = c.post(url, json={"systemInstruction": system, "contents": g_turn1}, headers=headers)
        assert r1.status_code == 200, r1.text
        said = r1.json()["candidates"][0]["content"]["parts"][0]["text"]
        g_turn2 = g_turn1 + [{"role": "model", "parts": [{"text": said}]},
                             {"role": "user", "parts": [{"text": "And b.py?"}]}]  # fmt: skip
        r2 = c.post(url, json={"systemInstruction": system, "contents": g_turn2}, headers=headers)
        assert r2.status_code == 200, r2.text

    expected = f"{PREPEND}\n\nYou review code.\n\n{APPEND}"
    received = [r.json["messages"] for r in kimi.received]
    assert len(received) == 6
    for i, client in enumerate(("openai", "anthropic", "gemini")):
        one, two = received[2 * i], received[2 * i + 1]
        assert one[0] == {"role": "system", "content": expected}, client
        assert two[0] == one[0], client  # identical on turn 2: the prompt cache keeps hitting
        assert two[: len(one)] == one, client  # and turn 1 is a prefix of turn 2
        assert [m["role"] for m in two[1:]] == ["user", "assistant", "user"], client
    rows = wait_rows(db, 6)
    assert [r["rule"] for r in rows] == ["review"] * 6
    assert [r["dialect"] for r in rows] == ["openai"] * 2 + ["anthropic"] * 2 + ["gemini"] * 2
