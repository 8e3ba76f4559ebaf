"""The relay process driven as the addon drives it (:class:`~kimi_intercept.commands.
relay_process.RelayProcess`), without mitmproxy: a real child process, real HTTP on loopback,
a real SQLite file, a FakeUpstream as the original host.

It says its port, serves only calls with the run's token, sends each finished call's console
line and its log records back, takes a new config while running, writes every row before it
exits on ``drain``, and exits by itself with an error line on a config it cannot use.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
from proxyproc import rows

from kimi_intercept.commands import relay_process
from kimi_intercept.commands.relay_process import RelayProcess, RelayStartError
from kimi_intercept.commands.simulator import FakeUpstream, Reply
from kimi_intercept.relay.intake import HOST_HEADER, TOKEN_HEADER, URL_HEADER


def config(db: Path, on_plan_error: str) -> str:
    return f"""\
[intercept]
hosts = ["localhost"]

[routing]
on_plan_error = "{on_plan_error}"

[storage]
database = "{db}"
"""


def test_the_relay_process_serves_reloads_and_drains(tmp_path):
    db = tmp_path / "kimi.db"
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text(config(db, "error"))
    second.write_text(config(db, "passthrough"))
    lines: list[str] = []
    records: list[tuple[int, str, str]] = []

    with FakeUpstream() as original:
        original.enqueue(Reply(status=200, chunks=[b"from the original"]))
        url = original.url.replace("127.0.0.1", "localhost") + "/v1/chat/completions"

        async def run() -> list[tuple[int, bytes]]:
            relay = RelayProcess(lines.append, lambda *r: records.append(r))
            port = await relay.start(first)
            got = []
            try:
                async with aiohttp.ClientSession() as session:

                    async def post(token: str) -> tuple[int, bytes]:
                        headers = {TOKEN_HEADER: token, URL_HEADER: url, HOST_HEADER: "localhost"}
                        async with session.post(
                            f"http://127.0.0.1:{port}/v1/chat/completions",
                            headers=headers,
                            data=b"{not json",
                        ) as r:
                            return r.status, await r.read()

                    got.append(await post("guessed"))
                    got.append(await post(relay.token))  # on_plan_error = "error": a 400
                    relay.reconfigure(second)
                    await asyncio.sleep(1.0)  # the child reads and checks it
                    got.append(await post(relay.token))  # now passed through
            finally:
                await relay.stop(5)
            assert relay.port is None
            return got

        answers = asyncio.run(run())
        assert len(original.received) == 1
    assert answers[0][0] == 404
    assert answers[1][0] == 400 and b"not JSON" in answers[1][1]
    assert answers[2] == (200, b"from the original")
    # both rows written before the process exited
    assert [(r["route"], r["status_code"]) for r in rows(db)] == [
        ("rejected", 400),
        ("passthrough", 200),
    ]
    assert len(lines) == 2 and lines[1].endswith("passthrough")  # a line per finished call
    warnings = [m for level, _, m in records if level == logging.WARNING]
    assert any("answered 400" in m for m in warnings), records
    assert any("passed through unchanged" in m for m in warnings), records


def test_a_config_the_relay_cannot_use_stops_it_with_the_reason(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[routing]\nshare = 400\n")
    records: list[tuple[int, str, str]] = []

    async def run() -> str:
        relay = RelayProcess(lambda line: None, lambda *r: records.append(r))
        try:
            await relay.start(bad)
        except RelayStartError as e:
            return str(e)
        await relay.stop(0)
        return "started"

    why = asyncio.run(run())
    # (the exit code is 2; a test process whose other tests reaped children may see 255)
    assert why.startswith("the relay process did not start (it exited; exit "), why
    assert any("routing.share must be a number" in m for level, _, m in records), records


def test_a_relay_that_cannot_start_again_is_tried_until_it_can(tmp_path, monkeypatch):
    # the delays shortened; the schedule itself is relay_process.RESTART_DELAYS_S
    monkeypatch.setattr(relay_process, "RESTART_DELAYS_S", (0.2, 0.5, 1.0))
    db, path = tmp_path / "kimi.db", tmp_path / "config.toml"
    path.write_text(config(db, "error"))
    records: list[tuple[int, str, str]] = []

    def said(text: str) -> list[str]:
        return [m for _, _, m in records if text in m]

    async def wait_for(text: str, n: int = 1, timeout: float = 60) -> None:
        for _ in range(int(timeout / 0.1)):
            if len(said(text)) >= n:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"no {text!r} in {records}")

    async def run() -> tuple[int, int | None]:
        relay = RelayProcess(lambda line: None, lambda *r: records.append(r))
        first = await relay.start(path)
        try:
            path.write_text("[routing]\nshare = 400\n")  # the next start fails on this
            assert relay._proc is not None
            relay._proc.kill()  # the relay dies
            await wait_for("trying again in 0.5 s")
            await wait_for("trying again in 1 s")  # still failing: the delay grows
            assert relay.port is None
            path.write_text(config(db, "error"))  # the user fixes the config
            await wait_for("the relay process is back")
            return first, relay.port
        finally:
            await relay.stop(5)

    first, port = asyncio.run(run())
    assert port is not None and port != first
    assert said("exited (-9); LLM calls get a 503 until it is back, starting it again in 0.2 s")
    assert said("routing.share must be a number")  # the reason, from the failed child


def test_stopping_while_a_restart_is_awaited_does_not_wait_for_it(tmp_path, monkeypatch):
    monkeypatch.setattr(relay_process, "RESTART_DELAYS_S", (30.0,))
    path = tmp_path / "config.toml"
    path.write_text(config(tmp_path / "kimi.db", "error"))
    records: list[tuple[int, str, str]] = []

    async def run() -> float:
        relay = RelayProcess(lambda line: None, lambda *r: records.append(r))
        await relay.start(path)
        assert relay._proc is not None
        relay._proc.kill()
        for _ in range(100):
            if any("starting it again in 30 s" in m for _, _, m in records):
                break
            await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await relay.stop(5)
        return loop.time() - began

    took = asyncio.run(run())
    assert any("starting it again in 30 s" in m for _, _, m in records), records
    assert took < 5  # not the 30 s wait, nor the 5 s the pump would get


def test_calls_beyond_the_kept_ones_are_counted_in_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(relay_process, "MISSED_MAX", 2)
    db, path = tmp_path / "kimi.db", tmp_path / "config.toml"
    path.write_text(config(db, "error"))
    records: list[tuple[int, str, str]] = []
    call = {"method": "POST", "host": "localhost", "path": "/v1/chat/completions",
            "user_agent": "test/1", "client_host": "127.0.0.1", "started": 1.0,
            "message": "relay is not running"}  # fmt: skip

    async def run() -> None:
        relay = RelayProcess(lambda line: None, lambda *r: records.append(r))
        for _ in range(5):  # answered 503 before any relay ran
            relay.unavailable(dict(call))
        await relay.start(path)
        await relay.stop(5)

    asyncio.run(run())
    assert [r["outcome"] for r in rows(db)] == ["error", "error"]  # the two kept
    assert any("3 more call(s) answered 503" in m for _, _, m in records), records
