"""The overview's "where the money went" in headless Chromium at 420 px and 1400 px: the page
body never scrolls sideways, every chart has a title naming its unit, and the cost-by-model
chart's bars equal the SQL sums. Skipped without /usr/bin/chromium (as test_report_browser)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from pathlib import Path

import aiohttp
import pytest
from reportrows import SUITE, kimi, row, write
from test_report_browser import CHROMIUM, Chromium, _Cdp

from kimi_intercept.reports import pages as report

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"headless Chromium not installed at {CHROMIUM} (Debian package 'chromium')",
)

MONEY = [
    (kimi("m1", "2026-11-21T12:00:00.000Z", client_model="claude-sonnet-4-5-20250929",
          conversation_id="ab" * 32, conversation_title="refactor the parser",
          prompt_tokens=20_000, completion_tokens=900, cost_usd=0.0226,
          requested_cost_usd=0.0735, sanitizer_saved_usd=0.0011, sanitizer_holdout=0),
     [], None),
    (row("m2", "2026-11-21T13:00:00.000Z", provider="anthropic", route="passthrough",
         model="claude-sonnet-4-5-20250929", client="claude-cli/2.1", prompt_tokens=9_000,
         completion_tokens=400, cost_usd=0.033), [], None),
    (row("m3", "2026-11-21T14:00:00.000Z", provider="openai", model="gpt-4.1",
         client="a-client-with-a-really-long-user-agent-name/1.0 (linux; x86_64)",
         prompt_tokens=4_000, completion_tokens=100, cost_usd=0.0088), [], None),
]  # fmt: skip

PROBE = """
(() => {
  const d = document.documentElement;
  const charts = [...document.querySelectorAll('svg.chart')].map(s => ({
    id: s.id, title: (s.querySelector(':scope > title') || {}).textContent || '',
    caption: (s.parentElement.previousElementSibling || {}).textContent || ''}));
  const bars = [...document.querySelectorAll('#chart-cost-by-model g.bar')].map(g => ({
    label: g.querySelector('title').textContent,
    value: parseFloat(g.querySelector('rect').getAttribute('data-value'))}));
  const overlap = (a, b) => !(a.right <= b.left || b.right <= a.left ||
                              a.bottom <= b.top || b.bottom <= a.top);
  const collisions = [];
  for (const svg of document.querySelectorAll('svg.chart')) {
    const label = svg.querySelector('.axis.y .axis-label');
    if (!label) continue;
    const box = label.getBoundingClientRect();
    for (const tick of svg.querySelectorAll('.axis.y text:not(.axis-label)'))
      if (overlap(box, tick.getBoundingClientRect()))
        collisions.push(svg.id + ': ' + tick.textContent);
  }
  return JSON.stringify({scroll: d.scrollWidth, collisions, client: d.clientWidth,
                         body: document.body.scrollWidth, charts, bars,
                         text: document.body.innerText});
})()
"""


async def probe(port: int, url: str, width: int) -> dict:
    import json

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        ws_url = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
        async with http.ws_connect(ws_url, max_msg_size=0) as ws:
            cdp = _Cdp(ws)
            await cdp.call("Page.enable")
            await cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=900,
                           deviceScaleFactor=1, mobile=False)  # fmt: skip
            await cdp.call("Page.navigate", url=url)
            await cdp.wait_for("Page.loadEventFired")
            result = await cdp.call("Runtime.evaluate", expression=PROBE, returnByValue=True)
            return json.loads(result["result"]["value"])


@pytest.fixture(scope="module")
def browser():
    profile = Path(tempfile.mkdtemp(prefix="kimi-chromium-"))
    chrome = Chromium(profile)
    yield chrome
    chrome.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.parametrize("width", [420, 1400])
def test_money_overview_fits_and_every_chart_is_titled(browser, tmp_path, width):
    db = tmp_path / "money.db"
    write(db, SUITE + MONEY)
    result = report.build_report(db, tmp_path / "site")
    got = asyncio.run(probe(browser.port, result.path.resolve().as_uri(), width))
    assert got["scroll"] <= got["client"], f"page body overflows at {width} px: {got['scroll']}"
    assert got["body"] <= got["client"]
    ids = [c["id"] for c in got["charts"]]
    assert {"chart-cost-by-model-per-day", "chart-cost-by-model", "chart-cost-by-client"} <= set(
        ids
    )
    for chart in got["charts"]:
        assert chart["title"], chart["id"]
        assert chart["caption"] == chart["title"], chart  # shown above the chart too
        # the unit is named in the title: USD, tokens or a percentage
        assert any(u in chart["title"] for u in ("USD", "tokens", "%", "ms")), chart
    money = {c["id"]: c for c in got["charts"]}
    assert money["chart-cost-by-model"]["title"] == "Cost by provider / model (USD)"
    text = got["text"]
    assert text.index("Where the money went") < text.index("Per day")
    for label in (
        "Saved by provider caching",
        "Saved by the sanitizer (net)",
        "Saved by rerouting",
    ):
        assert label.upper() in text.upper()
    assert "Top conversations by cost" in text and "refactor the parser" in text

    assert got["collisions"] == []  # no axis label over its tick labels
    for page in result.pages:  # every page fits too
        other = asyncio.run(probe(browser.port, page.resolve().as_uri(), width))
        assert other["scroll"] <= other["client"], f"{page.name} overflows at {width} px"
        assert all(c["title"] for c in other["charts"]), page.name
        assert other["collisions"] == [], page.name

    # the bars equal the SQL sums of counted requests per provider/model
    con = sqlite3.connect(db)
    sums = {
        f"{p} / {m}": c
        for p, m, c in con.execute(
            "select provider, model, sum(cost_usd) from requests where duplicate_of is null "
            "and cost_usd is not null group by provider, model"
        )
    }
    con.close()
    bars = {b["label"].rsplit(": ", 1)[0]: b["value"] for b in got["bars"]}
    assert bars.keys() == sums.keys()
    for name, value in bars.items():
        assert value == pytest.approx(sums[name], abs=1e-12), name


def test_axis_labels_clear_long_tick_labels(browser, tmp_path):
    # a cost axis in steps of $0.0025: the longest tick labels ("$0.0025", "$0.0075")
    db = tmp_path / "small.db"
    write(db, [
        (kimi("x1", "2026-11-20T10:00:00.000Z", prompt_tokens=1000, completion_tokens=10,
              cost_usd=0.009), [], None),
        (kimi("x2", "2026-11-21T10:00:00.000Z", prompt_tokens=1_250_000, completion_tokens=10,
              cost_usd=0.004), [], None),
    ])  # fmt: skip
    result = report.build_report(db, tmp_path / "site")
    page = result.path.read_text()
    assert ">$0.0075</text>" in page
    for width in (420, 1400):
        got = asyncio.run(probe(browser.port, result.path.resolve().as_uri(), width))
        assert got["collisions"] == [], width
