"""``kimi-intercept top`` driven in a real terminal (tmux, 80×24) while calls flow through a
real mitmdump with the addon: the screen shows the call in flight, then the new call and the
spend; the keys switch views, filter by client and quit."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from proxyproc import render_config, wait_rows

from kimi_intercept.commands.simulator import Reply

TMUX = shutil.which("tmux")
CLI = Path(sys.executable).with_name("kimi-intercept")
WIRE = Path(__file__).parents[1] / "wire" / "documented"
MOONSHOT_STREAM = (WIRE / "moonshot_stream.sse").read_bytes()
MESSAGES = [{"role": "user", "content": "Say OK."}]

pytestmark = pytest.mark.skipif(TMUX is None, reason="needs tmux (apt-get install tmux)")


class Terminal:
    """A detached tmux session on a private server socket, 80×24."""

    def __init__(self, tmp_path: Path, command: list[str]) -> None:
        self.socket = f"kimi-top-{tmp_path.name}"
        self.tmux(
            "new-session", "-d", "-x", "80", "-y", "24", "-s", "top",
            f"cd {shlex.quote(str(tmp_path))} && TERM=xterm-256color {shlex.join(command)}",
        )  # fmt: skip

    def tmux(self, *args: str) -> str:
        assert TMUX is not None
        done = subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True,
                              timeout=10)  # fmt: skip
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top")

    def wait_for(self, *needles: str, absent: str = "\0", timeout: float = 15.0) -> str:
        """The screen once every needle is on it and ``absent`` is not."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            done = all(n in screen for n in needles) and absent not in screen
            if done or time.monotonic() > deadline:
                assert done, f"{needles} not on screen, or {absent!r} is:\n{screen}"
                return screen
            time.sleep(0.2)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "top", *keys)

    def alive(self) -> bool:
        return "top" in self.tmux("list-sessions", "-F", "#{session_name}")

    def kill(self) -> None:
        self.tmux("kill-server")


@pytest.fixture
def terminal(tmp_path):
    opened: list[Terminal] = []

    def open_(command: list[str]) -> Terminal:
        t = Terminal(tmp_path, command)
        opened.append(t)
        return t

    yield open_
    for t in opened:
        t.kill()


def test_top_follows_calls_through_the_proxy(
    tmp_path, fake_upstream, start_proxy, openai_client, terminal
):
    # kimi's default answer streams its events 0.6 s apart, with a fresh response id each time
    kimi, deepseek = fake_upstream(default_gap_s=0.6), fake_upstream()
    db = tmp_path / "kimi.db"
    proxy = start_proxy(render_config(db, kimi.url, deepseek.url))
    client = openai_client(proxy)
    kimi.enqueue(Reply.sse_file(MOONSHOT_STREAM))
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    wait_rows(db, 1)

    term = terminal([str(CLI), "top", "--db", str(db)])
    screen = term.wait_for("Spend today $", "Latest calls", "kimi/kimi-k2.6")
    assert "(1 call)" in screen and "0 in flight" in screen
    assert "Providers: kimi available" in screen

    # A slow stream: the call shows in flight while it streams.
    slow = threading.Thread(
        target=lambda: list(
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Take your time."}],
                stream=True,
            )
        )
    )  # fmt: skip
    slow.start()
    try:
        screen = term.wait_for("1 in flight", "In flight", "Take your time.")
        [row] = [line for line in screen.splitlines() if "Take your time." in line]
        assert "OpenAI/Python" in row and "kimi/kimi-k2.6" in row
    finally:
        slow.join(30)
    wait_rows(db, 2)
    screen = term.wait_for("(2 calls)", "0 in flight")
    latest = screen[screen.index("Latest calls") :].splitlines()[2:4]
    assert all("kimi/kimi-k2.6" in line and "ok" in line for line in latest), screen
    assert all(len(line) <= 80 for line in screen.splitlines())
    assert len(screen.rstrip("\n").splitlines()) <= 24

    term.keys("3")
    term.wait_for("Conversations (last hour)", "Say OK.", "Take your time.", absent="Latest")
    term.keys("Tab")
    term.wait_for("Last hour", absent="Conversations")  # tab wraps to the overview
    term.keys("2")
    term.wait_for("Latest calls", absent="Last hour")
    term.keys("c")
    term.wait_for("client: OpenAI/Python")
    term.keys("q")
    deadline = time.monotonic() + 10
    while term.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not term.alive()
