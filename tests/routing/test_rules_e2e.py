"""Routing rules end to end: real mitmdump + addon, openai SDK, fake providers."""

from __future__ import annotations

from proxyproc import rows, wait_rows


def config(db, kimi_url, deepseek_url, rules):
    return f"""
[intercept]
hosts = ["api.openai.com"]
[storage]
database = "{db}"
[providers.kimi]
base_url = "{kimi_url}/v1"
[providers.deepseek]
base_url = "{deepseek_url}/v1"
{rules}
"""


def setup(tmp_path, fake_upstream, start_proxy, openai_client, rules):
    kimi, deepseek = fake_upstream(), fake_upstream()
    db = tmp_path / "kimi.db"
    client = openai_client(start_proxy(config(db, kimi.url, deepseek.url, rules)))
    return kimi, deepseek, client, db


def test_requests_land_where_their_rule_says_with_its_overrides(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    kimi, deepseek, client, db = setup(
        tmp_path,
        fake_upstream,
        start_proxy,
        openai_client,
        """
[[routing.rules]]
name = "cheap"
match = { model = "gpt-4o-mini*" }
chain = ["deepseek", "kimi"]
overrides = { temperature = 0.2, max_tokens = 4000 }
unset = ["top_p"]
""",
    )
    msgs = [{"role": "user", "content": "hi"}]
    client.chat.completions.create(model="gpt-4o-mini", messages=msgs, top_p=0.5)
    client.chat.completions.create(model="gpt-4o", messages=msgs, top_p=0.5)
    [cheap] = deepseek.received
    assert (cheap.json["temperature"], cheap.json["max_tokens"], "top_p" in cheap.json) == (
        0.2, 4000, False,
    )  # fmt: skip
    [default] = kimi.received
    assert default.json["top_p"] == 0.5 and "temperature" not in default.json
    got = wait_rows(db, 2)
    assert [(r["provider"], r["rule"]) for r in got] == [
        ("deepseek", "cheap"), ("kimi", None),
    ]  # fmt: skip


def test_weighted_choice_is_sticky_per_conversation(
    tmp_path, fake_upstream, start_proxy, openai_client
):
    kimi, deepseek, client, db = setup(
        tmp_path,
        fake_upstream,
        start_proxy,
        openai_client,
        """
[[routing.rules]]
name = "spread"
chain = ["kimi", "deepseek"]
strategy = "weighted"
weights = { price = 1, context = 0, latency = 0 }
""",
    )
    chosen = []
    for n in range(12):
        history = [{"role": "user", "content": f"conversation {n}"}]
        for turn in range(2):
            client.chat.completions.create(model="gpt-4o", messages=history)
            history += [{"role": "assistant", "content": "ok"},
                        {"role": "user", "content": f"turn {turn}"}]  # fmt: skip
        got = wait_rows(db, 2 * (n + 1))
        chosen.append({r["provider"] for r in got[-2:]})
    assert all(len(c) == 1 for c in chosen)  # a conversation stays on its provider
    firsts = [next(iter(c)) for c in chosen]
    # deepseek-chat is ~3.4x cheaper than kimi-k2.6: chosen more often, kimi still sometimes
    assert firsts.count("deepseek") > firsts.count("kimi") > 0
    assert all(a["status_code"] == 200 for a in rows(db, "attempts"))
