"""The screen of ``kimi-intercept top`` (:mod:`.top`): rendering a
:class:`~.top_data.Snapshot` with Rich for an 80×24 terminal, the keys, and the refresh loop.

Keys are read without blocking: ``termios`` cbreak mode on stdin when it is a terminal, then
``select`` with the time left until the next refresh, so an idle screen wakes once a second.
"""

from __future__ import annotations

import os
import re
import select
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kimi_intercept.commands.top_data import Reader, Snapshot
from kimi_intercept.relay.console import short_client

VIEWS = ("overview", "calls", "conversations")
HELP = "q quit · tab/1-3 view · c client"


@dataclass
class State:
    view: int = 0
    client: str | None = None  # None: every client

    def key(self, key: str, clients: list[str]) -> bool:
        """Apply one key; True if the data must be read again (the filter changed)."""
        if key in ("\t", "\x1b[Z"):
            self.view = (self.view + 1) % len(VIEWS)
        elif key in ("1", "2", "3"):
            self.view = int(key) - 1
        elif key == "c":
            choices: list[str | None] = [None, *clients]
            at = choices.index(self.client) if self.client in choices else 0
            self.client = choices[(at + 1) % len(choices)]
            return True
        return False


def render(snap: Snapshot, state: State) -> RenderableType:
    """The whole screen for one snapshot (fits 80×24)."""
    tabs = Text("kimi-intercept top  ", style="bold")
    for i, name in enumerate(VIEWS):
        tabs.append(f"{i + 1} {name}", style="reverse" if i == state.view else "")
        tabs.append(" ")
    tabs.append(f" client: {state.client or 'all'}", style="cyan")
    parts: list[RenderableType] = [tabs, _summary(snap)]
    if snap.error:
        parts.append(Text(snap.error, style="yellow"))
    if state.view == 0:
        parts += [_in_flight(snap, 3), _models(snap), _calls(snap, 5), _health(snap)]
    elif state.view == 1:
        parts += [_in_flight(snap, 5), _calls(snap, 12)]
    else:
        parts += [_conversations(snap), _breaks(snap)]
    parts.append(Text(f"{HELP}  ·  {datetime.now().strftime('%H:%M:%S')}", style="dim"))
    return Group(*parts)


def _summary(s: Snapshot) -> Text:
    t = Text()
    t.append("Spend today ")
    _spend(t, s.spend_today, s.daily_usd)
    t.append(f" ({s.calls_today:,} call{'' if s.calls_today == 1 else 's'}) · this month ")
    _spend(t, s.spend_month, s.monthly_usd)
    t.append(f"\n{_k(s.tokens_per_min)} tokens/min · cache hit {_pct(s.cache_now)} last 5 min, ")
    t.append(f"{_pct(s.cache_hour)} last hour · ")
    t.append(f"{len(s.in_flight)} in flight", style="bold magenta" if s.in_flight else "")
    return t


def _spend(t: Text, spent: float | None, limit: float | None) -> None:
    """``$1.23``, or against a budget ``$1.23 of $5.00``, coloured by how much is used."""
    share = (spent or 0) / limit if limit else 0
    style = "bold red" if share >= 1 else "bold yellow" if share >= 0.75 else "bold green"
    t.append(_usd(spent), style=style)
    if limit:
        t.append(f" of {_usd(limit)}")


def _table(title: str, *columns: tuple[str, int]) -> Table:
    """Columns as (header, width); a negative width is a left-aligned column."""
    t = Table(title=title, title_justify="left", title_style="bold", box=None,
              padding=(0, 1, 0, 0), show_edge=False, header_style="dim")  # fmt: skip
    for name, width in columns:
        t.add_column(name, justify="left" if width < 0 else "right", width=abs(width),
                     no_wrap=True, overflow="ellipsis")  # fmt: skip
    return t


def _in_flight(s: Snapshot, n: int) -> RenderableType:
    if not s.in_flight:
        return Text("In flight: none" if s.providers is not None else "In flight: no proxy")
    t = _table("In flight", ("client", -14), ("provider/model", -28), ("for", 7),
               ("conversation", -26))  # fmt: skip
    now = time.time()
    for c in sorted(s.in_flight, key=lambda c: c.get("started") or 0)[:n]:
        t.add_row(
            _client(c.get("client")),
            f"{c.get('provider') or '–'}/{c.get('model') or '–'}",
            f"{max(0.0, now - (c.get('started') or now)):.1f} s",
            c.get("title") or "",
        )
    return t


def _models(s: Snapshot) -> RenderableType:
    t = _table("Last hour", ("provider/model", -30), ("calls", 6), ("errors", 6),
               ("fallbacks", 9), ("ttft", 7), ("tokens", 7), ("cost", 9))  # fmt: skip
    for m in s.models[:4]:
        t.add_row(
            f"{m['provider'] or '–'}/{m['model'] or '–'}",
            f"{m['calls']:,}",
            Text(str(m["errors"]), style="red" if m["errors"] else ""),
            str(m["fallbacks"]),
            _ms(m["ttft_ms"]),
            _k(m["tokens"]),
            _usd(m["cost_usd"]),
        )
    return t


def _calls(s: Snapshot, n: int) -> RenderableType:
    t = _table("Latest calls", ("time", -8), ("client", -12), ("provider/model", -20),
               ("in", 6), ("out", 5), ("cost", 8), ("ttft", 5), ("", -9))  # fmt: skip
    for c in s.latest[:n]:
        if c["outcome"] == "ok" and c.get("cache_break"):
            flag = Text("cachebrk", style="bold yellow")
        elif c["outcome"] == "ok":
            flag = Text("fallback", style="yellow") if c["fallback_used"] else Text("ok")
        else:
            flag = Text(f"{c['outcome']} {c['status_code'] or ''}".strip(), style="red")
        t.add_row(
            _clock(c["started_at"]),
            _client(c["client"]),
            f"{c['provider'] or '–'}/{c['model'] or '–'}",
            _k(c["prompt_tokens"]),
            _k(c["completion_tokens"]),
            _usd(c["cost_usd"]),
            _ms(c["ttft_ms"]),
            flag,
        )
    return t


def _conversations(s: Snapshot) -> RenderableType:
    t = _table("Conversations (last hour)", ("title", -24), ("client", -11), ("calls", 5),
               ("cost", 8), ("cache", 5), ("context window", -15))  # fmt: skip
    for c in s.conversations:
        window, used = c["context_window"], c["context_used"] or 0
        t.add_row(
            c["title"] or c["conversation_id"][:8],
            _client(c["client"]),
            str(c["calls"]),
            _usd(c["cost_usd"]),
            _pct(c["cached"] / c["prompt"] if c["prompt"] else None),
            _gauge(used, window),
        )
    return t


def _breaks(s: Snapshot) -> RenderableType:
    """The latest cache breaks (last 24 h): when, the cached share before → now, where, why."""
    if not s.breaks:
        return Text("Cache breaks: none in the last 24 h", style="dim")
    t = _table("Cache breaks (latest)", ("time", -8), ("cached", 9), ("position", -26),
               ("what changed", -32))  # fmt: skip
    for b in s.breaks:
        where = b["position"] or "–"
        if b["kind"] and b["kind"] not in ("model", "tools"):
            where += f" ({b['kind']})"
        hint = Text(b["hint"] or "")
        if b["caused_by_us"]:
            hint = Text(f"OURS ({b['changed_by']}): {b['hint']}", style="bold red")
        t.add_row(
            _clock(b["started_at"]),
            f"{_pct(b['previous_cached_ratio'])}→{_pct(b['cached_ratio'])}",
            where,
            hint,
        )
    return t


def _gauge(used: int, window: int | None, width: int = 10) -> Text:
    if not window:
        return Text(f"{_k(used)} / ?")
    share = min(used / window, 1.0)
    filled = round(share * width)
    style = "red" if share > 0.85 else "yellow" if share > 0.6 else "green"
    text = Text("█" * filled, style=style)
    text.append("░" * (width - filled), style="dim")
    text.append(f" {100 * share:3.0f}%")
    return text


def _health(s: Snapshot) -> Text:
    if s.providers is None:
        return Text("Providers: no running proxy publishes its state", style="dim")
    if not s.providers:
        return Text("Providers: every provider available")
    t = Text("Providers: ")
    for p in s.providers:
        bad = p.get("state") != "available"
        t.append(f"{p.get('provider')} {p.get('state')}", style="red" if bad else "green")
        t.append("  ")
    return t


def _usd(v: float | None) -> str:
    if v is None:
        return "–"
    return f"${v:.5f}" if abs(v) < 0.01 else f"${v:.3f}" if abs(v) < 1 else f"${v:,.2f}"


def _k(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v / 1e6:.1f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 10_000 else f"{v:,.0f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}ms" if v < 10_000 else f"{v / 1000:.0f}s"


def _clock(iso_utc: str | None) -> str:
    try:
        return (
            datetime.fromisoformat((iso_utc or "").replace("Z", "+00:00"))
            .astimezone()
            .strftime("%H:%M:%S")
        )
    except ValueError:
        return "--:--:--"


def _client(ua: Any) -> str:
    return short_client(ua if isinstance(ua, str) else None)


_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[@-~]|\x1bO.|\x1b")


def split_keys(chunk: str) -> list[str]:
    """What one read returned, as keys: escape sequences whole (``\\x1b[Z`` is shift-tab; a
    terminal's focus or mouse reports are dropped by :meth:`State.key`), other characters one
    by one."""
    keys: list[str] = []
    at = 0
    while at < len(chunk):
        m = _ESCAPE.match(chunk, at)
        if m:
            keys.append(m.group())
            at = m.end()
        else:
            keys.append(chunk[at])
            at += 1
    return keys


@contextmanager
def keyboard() -> Iterator[Any]:
    """``read(timeout) -> str``: a key pressed within ``timeout`` seconds, or ``""``. Puts a
    terminal stdin in cbreak mode (keys arrive unbuffered, unechoed) and restores it."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    if fd is None:
        yield lambda timeout: time.sleep(max(timeout, 0)) or ""
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read(timeout: float) -> str:
        ready, _, _ = select.select([fd], [], [], max(timeout, 0))
        return os.read(fd, 16).decode("utf-8", "replace") if ready else ""

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(reader: Reader, interval: float = 1.0, console: Console | None = None) -> None:
    """The live screen until ``q`` (or Ctrl-C)."""
    state = State()
    snap = reader.snapshot(state.client)
    with keyboard() as read_key, Live(
        render(snap, state), console=console, screen=True, auto_refresh=False
    ) as live:  # fmt: skip
        due = time.monotonic() + interval
        while True:
            for key in split_keys(read_key(due - time.monotonic())):
                if key in ("q", "Q"):
                    return
                if state.key(key, snap.clients):
                    snap = reader.snapshot(state.client)
            if time.monotonic() >= due:
                snap = reader.snapshot(state.client)
                due = time.monotonic() + interval
            live.update(render(snap, state), refresh=True)
