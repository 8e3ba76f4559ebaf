"""The report pages in headless Chromium, driven over the DevTools protocol: every page loads
from file:// with no request to anything else, no console message or exception, charts drawn
(their colours are in the screenshot), and printing works.

Skipped, with the reason, when /usr/bin/chromium is not installed (CI installs the Debian
``chromium`` package).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from reportrows import C1, SUITE, write

from kimi_intercept.reports import pages as report

CHROMIUM = os.environ.get("KIMI_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"headless Chromium not installed at {CHROMIUM} (Debian package 'chromium')",
)

PROMPT_BLUE = (0x3B, 0x6E, 0xA8)  # --prompt: token bars, the gauge line
COST_GREEN = (0x3F, 0x8F, 0x56)  # --cost: the cost-per-day bars


class Chromium:
    """A headless Chromium with one page, and everything that page did."""

    def __init__(self, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def visit(self, urls: list[str]) -> list[dict[str, Any]]:
        return asyncio.run(self._visit(urls))

    async def _visit(self, urls: list[str]) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.port}/json/list") as r:
                targets = await r.json()
            ws_url = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
            async with http.ws_connect(ws_url, max_msg_size=0) as ws:
                cdp = _Cdp(ws)
                for method in ("Page.enable", "Network.enable", "Runtime.enable", "Log.enable"):
                    await cdp.call(method)
                return [await self._one(cdp, url) for url in urls]

    async def _one(self, cdp: _Cdp, url: str) -> dict[str, Any]:
        cdp.events.clear()
        await cdp.call("Page.navigate", url=url)
        await cdp.wait_for("Page.loadEventFired")
        await asyncio.sleep(0.2)  # late console messages
        size = (await cdp.call("Page.getLayoutMetrics"))["cssContentSize"]
        shot = await cdp.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": 1280, "height": min(size["height"], 6000), "scale": 1},
        )
        pdf = await cdp.call("Page.printToPDF", printBackground=True)
        events = list(cdp.events)
        return {
            "requests": [e["params"]["request"]["url"] for e in events
                         if e["method"] == "Network.requestWillBeSent"],
            "console": [e["params"] for e in events if e["method"] == "Runtime.consoleAPICalled"],
            "exceptions": [e["params"] for e in events if e["method"] == "Runtime.exceptionThrown"],
            "log": [e["params"]["entry"] for e in events if e["method"] == "Log.entryAdded"],
            "png": base64.b64decode(shot["data"]),
            "pdf": base64.b64decode(pdf["data"]),
        }  # fmt: skip


class _Cdp:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await asyncio.wait_for(self.ws.receive(), 30)).data)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    async def wait_for(self, event: str) -> None:
        if any(e.get("method") == event for e in self.events):
            return
        while True:
            msg = json.loads((await asyncio.wait_for(self.ws.receive(), 30)).data)
            self.events.append(msg)
            if msg.get("method") == event:
                return


def pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        data = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def count_colour(png: bytes, rgb: tuple[int, int, int]) -> int:
    width, _, rows = pixels(png)
    bpp = len(rows[0]) // width
    target = bytes(rgb)
    return sum(1 for line in rows for x in range(0, len(line), bpp) if line[x : x + 3] == target)


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    profile = Path(tempfile.mkdtemp(prefix="kimi-chromium-"))
    chrome = Chromium(profile)
    yield chrome
    chrome.close()
    shutil.rmtree(profile, ignore_errors=True)


def test_pages_render_offline_without_errors(browser, tmp_path):
    write(tmp_path / "suite.db", SUITE)
    out = tmp_path / "site"
    result = report.build_report(tmp_path / "suite.db", out)
    pages = [p for p in result.pages]
    assert len(pages) == 8  # 6 pages (compare.html included) + 2 conversations
    visits = browser.visit([p.resolve().as_uri() for p in pages])
    shots = tmp_path / "shots"
    shots.mkdir()
    for page, v in zip(pages, visits, strict=True):
        (shots / f"{page.stem}.png").write_bytes(v["png"])
        assert [u for u in v["requests"] if not u.startswith("file://")] == [], page.name
        assert v["requests"] == [page.resolve().as_uri()], page.name  # nothing but the page
        assert v["console"] == [] and v["exceptions"] == [], page.name
        assert [e for e in v["log"] if e["level"] in ("error", "warning")] == [], page.name
        assert v["pdf"][:5] == b"%PDF-", page.name
    by_name = {p.relative_to(out).as_posix(): v for p, v in zip(pages, visits, strict=True)}
    index = by_name["index.html"]
    assert count_colour(index["png"], PROMPT_BLUE) > 2000  # the stacked token bars
    assert count_colour(index["png"], COST_GREEN) > 2000  # the cost bars
    conversation = by_name[f"conversations/{C1}.html"]
    assert count_colour(conversation["png"], PROMPT_BLUE) > 500  # bars and the gauge line


def test_the_harness_sees_external_requests_and_console_errors(browser, tmp_path):
    hostile = tmp_path / "hostile.html"
    hostile.write_text(
        '<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/pixel.png">'
        '<script>console.error("boom")</script></body></html>'
    )
    [v] = browser.visit([hostile.as_uri()])
    assert "http://127.0.0.1:9/pixel.png" in v["requests"]
    assert [c["type"] for c in v["console"]] == ["error"]
    assert count_colour(v["png"], PROMPT_BLUE) == 0
