"""The relay in its own process: everything kimi-intercept does to a call, on its own core.

mitmproxy runs its whole proxy on one event loop, on one core. With the relay on that loop,
kimi-intercept's own work per call (planning, preparing, metering, the row: ~2 ms of CPU) took
turns with mitmproxy's forwarding, and 50 streaming clients got ~75 % of the calls per second
plain mitmproxy serves (docs/performance.md). So the addon only intercepts and forwards; this
process plans, relays, meters and records.

Child (``python -m kimi_intercept.commands.relay_process CONFIG [--certs DIR] [--upstream-ca PEM]
[--upstream-insecure]``, :func:`main`): reads this run's token as its first stdin line, checks
the config (:func:`.checks.check_config`), prunes old rows, starts the store writer,
OpenTelemetry and the team shipper (``[otel]``, ``[team]``), reads the spend so far
(``[budget]``), starts :class:`~kimi_intercept.relay.Relay` on ``127.0.0.1`` (with the
addon's ``--certs``, its TLS listener too: :mod:`kimi_intercept.relay.direct`) and says its
ports. ``--upstream-ca`` / ``--upstream-insecure``: mitmproxy's ``ssl_verify_upstream_trusted_ca``
/ ``ssl_insecure``, for its own upstream calls. Then it takes commands, one JSON object per
stdin line: ``{"config": PATH}`` (reload), ``{"drain": SECONDS}`` (graceful shutdown, then exit
0), ``{"cut": true}`` (cut the answers still draining), ``{"unavailable": CALL}`` (the row of a
call the proxy answered with a 503 while no relay process ran). End of stdin — the proxy is
gone, even killed — drains with ``[proxy] drain_s`` and exits; so does SIGTERM (a second one
cuts).
SIGINT is ignored: a terminal's Ctrl-C reaches the whole process group, and the proxy decides.

Its stdout carries one JSON object per line to the proxy: ``{"port": N, "tls_port": M}``
(``M`` null without ``--certs``) once, then
``{"console": LINE}`` per finished call and ``{"level": N, "logger": NAME, "message": TEXT}``
per log record (tracebacks in ``message``); its stderr is the proxy's.

Parent (:class:`RelayProcess`, used by the addon): starts the child, re-emits its lines through
callbacks, sends the commands, and starts it again if it exits on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import secrets
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Seconds the child may take to say its port (importing, pruning, opening the store).
START_TIMEOUT_S = 120.0
#: A child that exits on its own is started again after the first of these delays (seconds);
#: when that fails, or the new child exits within :data:`STABLE_S`, after the next one (the
#: last one repeats: a relay that cannot start keeps being tried, every 30 s).
RESTART_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
#: A child that served this long (seconds) before exiting starts the delays over.
STABLE_S = 60.0
#: Calls answered 503 while no child ran that are kept for their rows (the ones beyond are
#: counted, and the count is logged).
MISSED_MAX = 10_000
_LINE_LIMIT = 64 * 1024 * 1024  # a log record with a long traceback is still one line


class RelayStartError(RuntimeError):
    """The relay process exited or did not say its port in time; the message says why."""


class RelayProcess:
    """The relay process, seen from the proxy. Call every method on the proxy's event loop.

    ``console(line)`` gets each finished call's console line, ``log_record(level, logger,
    message)`` each log record of the child; :attr:`port` and :attr:`tls_port` are ``None``
    while no child serves (``tls_port`` also without a certificate folder).
    """

    def __init__(
        self,
        console: Callable[[str], None],
        log_record: Callable[[int, str, str], None],
    ) -> None:
        self.console = console
        self.log_record = log_record
        self.token = secrets.token_urlsafe(24)
        self.port: int | None = None
        self.tls_port: int | None = None
        self.certs_dir: Path | None = None  # the TLS listener's certificates (the addon's)
        self.upstream: tuple[str | None, bool] = (None, False)  # trusted CA, insecure
        self.config_path: Path | None = None  # None: the built-in defaults
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._stopping = False
        self._missed: list[dict[str, Any]] = []  # calls answered 503 while no child ran
        self._unkept = 0  # such calls beyond MISSED_MAX: no row, only this count
        self._failures = 0  # restarts in a row that failed, or whose child exited soon
        self._started_at = 0.0  # loop time when the child said its port

    async def start(
        self,
        config_path: Path | None,
        certs_dir: Path | None = None,
        upstream: tuple[str | None, bool] | None = None,
    ) -> int:
        """Start the child with ``config_path`` (``None``: the built-in defaults) and return
        its port; with ``certs_dir`` it also listens with TLS (:attr:`tls_port`); ``upstream``:
        ``(trusted CA PEM or None, insecure)`` for its upstream calls. Both are kept for
        restarts.

        :raises RelayStartError: it exited before saying its port, or took longer than
            :data:`START_TIMEOUT_S`
        """
        self.config_path = config_path
        self.certs_dir = certs_dir or self.certs_dir
        self.upstream = upstream or self.upstream
        args = ["--certs", str(self.certs_dir)] if self.certs_dir is not None else []
        ca, insecure = self.upstream
        args += ["--upstream-ca", str(ca)] if ca else []
        args += ["--upstream-insecure"] if insecure else []
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, str(config_path or ""), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=_LINE_LIMIT,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        proc.stdin.write(self.token.encode() + b"\n")
        try:
            port, tls_port = await asyncio.wait_for(self._read_port(proc.stdout), START_TIMEOUT_S)
        except (asyncio.TimeoutError, RelayStartError) as e:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = await proc.wait()
            why = str(e) or f"no port after {START_TIMEOUT_S:g} s"
            raise RelayStartError(f"the relay process did not start ({why}; exit {code})") from None
        except asyncio.CancelledError:  # the proxy stops meanwhile
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        self.port, self.tls_port = port, tls_port
        self._started_at = asyncio.get_running_loop().time()
        self._pump = asyncio.ensure_future(self._read_lines(proc))
        for call in self._missed:  # their rows, by the new child
            self._send({"unavailable": call})
        self._missed.clear()
        self._log_unkept()
        return port

    async def _read_port(self, stdout: asyncio.StreamReader) -> tuple[int, int | None]:
        while line := await stdout.readline():
            said = self._said(line)
            if "port" in said:
                tls_port = said.get("tls_port")
                return int(said["port"]), int(tls_port) if tls_port else None
        raise RelayStartError("it exited")

    def _said(self, line: bytes) -> dict[str, Any]:
        """One stdout line of the child: re-emitted, and returned."""
        try:
            said = json.loads(line)
        except ValueError:  # not ours (a library printing): pass it on as it is
            said = {
                "level": logging.INFO,
                "logger": __name__,
                "message": line.decode(errors="replace").rstrip(),
            }
        if "console" in said:
            self.console(said["console"])
        elif "message" in said:
            self.log_record(said.get("level", logging.INFO), said.get("logger", ""),
                            said["message"])  # fmt: skip
        return said

    async def _read_lines(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self._said(line)
        code = await proc.wait()
        self.port = self.tls_port = None
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._started_at >= STABLE_S:
            self._failures = 0
        delay = self._delay()
        self.log_record(
            logging.ERROR, __name__,
            f"kimi-intercept: the relay process exited ({code}); LLM calls get a 503 until it "
            f"is back, starting it again in {delay:g} s",
        )  # fmt: skip
        while True:
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                port = await self.start(self.config_path)
            except RelayStartError as e:
                delay = self._delay()
                self.log_record(logging.ERROR, __name__,
                                f"kimi-intercept: {e}; trying again in {delay:g} s")  # fmt: skip
                continue
            back = f"kimi-intercept: the relay process is back on 127.0.0.1:{port}"
            self.log_record(logging.WARNING, __name__, back)
            return

    def _delay(self) -> float:
        """The wait before the next restart (:data:`RESTART_DELAYS_S`), counting this one."""
        delay = RESTART_DELAYS_S[min(self._failures, len(RESTART_DELAYS_S) - 1)]
        self._failures += 1
        return delay

    def _send(self, command: dict[str, Any]) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._proc.stdin.write(json.dumps(command).encode() + b"\n")

    def reconfigure(self, config_path: Path | None) -> None:
        """Use ``config_path`` (already checked; ``None``: the defaults) from the next call on."""
        self.config_path = config_path
        self._send({"config": str(config_path or "")})

    def unavailable(self, call: dict[str, Any]) -> None:
        """A call answered with a 503 while no child ran (``call``: see
        :meth:`~kimi_intercept.relay.Relay.record_unavailable`): recorded by the next child."""
        if len(self._missed) < MISSED_MAX:
            self._missed.append(call)
        else:
            self._unkept += 1

    def _log_unkept(self) -> None:
        if self._unkept:
            self.log_record(logging.WARNING, __name__,
                            f"kimi-intercept: {self._unkept} more call(s) answered 503 while the "
                            f"relay process was down have no row (only the first "
                            f"{MISSED_MAX:,} are kept for rows)")  # fmt: skip
            self._unkept = 0

    def cut(self) -> None:
        """Cut the answers still draining (a second signal)."""
        self._send({"cut": True})

    async def stop(self, drain_s: float) -> None:
        """Graceful shutdown: the child drains (``drain_s`` seconds for answers in flight),
        hands every row to the store and exits; killed if it is still there long after."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is not None and self._pump is not None:
            self._pump.cancel()  # no child: it waits to start one again, or is starting one
            await asyncio.wait([self._pump], timeout=5)
            proc = self._proc  # one may have started meanwhile
        self._send({"drain": drain_s})
        try:
            await asyncio.wait_for(proc.wait(), drain_s + 30)
        except asyncio.TimeoutError:
            self.log_record(logging.ERROR, __name__,
                            "kimi-intercept: the relay process did not stop; killed")  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._pump is not None:
            await asyncio.wait([self._pump], timeout=5)
        self.port = self.tls_port = None
        if self._missed:
            self.log_record(logging.WARNING, __name__,
                            f"kimi-intercept: {len(self._missed)} call(s) answered 503 while the "
                            f"relay process was down have no row")  # fmt: skip
        self._log_unkept()


# --- the child -------------------------------------------------------------------------------

_out_lock = threading.Lock()
_KEPT: set[asyncio.Task[None]] = set()


def _emit(said: dict[str, Any]) -> None:
    """One line to the proxy (any thread)."""
    line = json.dumps(said, ensure_ascii=False) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


class _ToProxy(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            _emit({"level": record.levelno, "logger": record.name, "message": message})
        except Exception:
            self.handleError(record)


async def _serve(config_path: Path | None, token: str, args: Any) -> int:
    from kimi_intercept.commands.checks import check_config
    from kimi_intercept.commands.status import status_file_for
    from kimi_intercept.config.settings import ConfigError
    from kimi_intercept.config.team import otel_settings, team_settings
    from kimi_intercept.relay import Relay
    from kimi_intercept.relay.console import console_line
    from kimi_intercept.storage import StoreWriter, prune_on_start, spool_path

    try:
        checked = check_config(config_path)
    except ConfigError as e:
        log.error("kimi-intercept: %s", e)
        return 2
    cfg = checked.cfg
    await asyncio.to_thread(prune_on_start, cfg)  # retention; never raises
    # Never raises: a database that cannot be opened is logged (with where rows spool).
    writer = StoreWriter(cfg.database, spool=spool_path(cfg))
    team = team_settings(cfg)
    telemetry = None
    if (otel := otel_settings(cfg)).enabled:
        from kimi_intercept.telemetry import Telemetry

        telemetry = await asyncio.to_thread(Telemetry, cfg, otel.capture_content, team.developer)
    shipper = None
    if team.enabled:  # ships the local outbox in a thread
        from kimi_intercept.storage.team import TeamShipper

        shipper = TeamShipper(cfg.database, team.url, team.developer, team.sync_interval_s)

    def record(row: dict[str, Any], attempts: list[dict[str, Any]], *extra: Any) -> None:
        """The relay's recorder: the row's line to the proxy's console, the row to the store."""
        try:
            breaks = extra[0].get("cache_breaks", ()) if extra else ()
            _emit({"console": console_line(row, attempts, breaks)})
        except Exception:  # a formatting bug must not cost the row
            log.exception("kimi-intercept: could not format the console line of %s", row.get("id"))
        writer.put(row, attempts, *extra)
        if telemetry is not None:
            telemetry.record(row, attempts)  # a queue put: exported by its own threads

    relay = Relay(cfg, record, status_path=status_file_for(cfg.database),
                  preparer=checked.preparer, token=token, certs_dir=args.certs)  # fmt: skip
    relay.upstream.extra_ca, relay.upstream.insecure = args.upstream_ca, args.upstream_insecure
    # spend so far today / this month, from the store (the budget counts on from there)
    await asyncio.to_thread(relay.budget.reconcile, cfg.database)
    port = await relay.start()
    threading.Thread(target=_warm_tokenizer, name="kimi-tokenizer", daemon=True).start()
    _emit({"port": port, "tls_port": relay.tls_port})
    await relay.drain(await _commands(relay))
    await relay.stop()
    writer.close()
    if telemetry is not None:
        await asyncio.to_thread(telemetry.close)
    if shipper is not None:
        await asyncio.to_thread(shipper.close)  # one last shipment, bounded
    return 0


async def _commands(relay: Any) -> float:
    """Apply the proxy's commands until it asks to drain (or is gone, or SIGTERM); returns the
    seconds the answers in flight get."""
    from kimi_intercept.commands.checks import check_config
    from kimi_intercept.config.settings import ConfigError

    loop = asyncio.get_running_loop()
    stop: asyncio.Future[float] = loop.create_future()

    def on_term() -> None:
        if not stop.done():
            stop.set_result(relay.cfg.drain_s)
        else:
            relay.inflight.cut_all()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def read() -> None:
        while line := await reader.readline():
            try:
                command = json.loads(line)
            except ValueError:
                log.warning("kimi-intercept: the relay process ignored %r", line[:80])
                continue
            if "drain" in command and not stop.done():
                stop.set_result(float(command["drain"]))
            elif "cut" in command:
                relay.inflight.cut_all()
            elif "unavailable" in command:
                relay.record_unavailable(command["unavailable"])
            elif "config" in command:
                try:
                    checked = await asyncio.to_thread(check_config, command["config"] or None)
                except ConfigError as e:  # the proxy checked it: only a file changed since
                    log.error("kimi-intercept: kimi_config %s: %s", command["config"], e)
                    continue
                relay.reconfigure(checked.cfg, checked.preparer)
        if not stop.done():  # stdin closed: the proxy is gone
            stop.set_result(relay.cfg.drain_s)

    reading = asyncio.ensure_future(read())  # a "cut" may still come while draining
    drain_s = await stop
    _KEPT.add(reading)  # referenced until the process ends
    return drain_s


def _warm_tokenizer() -> None:
    """Load the tokenizer once, off the event loop, so the first estimate is quick."""
    from kimi_intercept.accounting import tokens

    try:
        tokens.prepare_offline_cache()
        tokens.encoding()
    except Exception as e:  # estimates will report their own failure later
        log.warning("kimi-intercept: tokenizer unavailable, estimates will be missing: %s", e)
    # What is loaded now (modules, the config, the tokenizer) lives as long as the process:
    # out of the cyclic collector's way. Its full passes over it took 23-40 ms in one
    # big_prompt.py run; a frozen heap is not traversed (docs/performance.md).
    gc.freeze()


def _first_line() -> str:
    """The first stdin line, read from the descriptor itself: a buffered read could take the
    commands that follow it away from the event loop's reader."""
    got = bytearray()
    while not got.endswith(b"\n") and (byte := os.read(0, 1)):
        got += byte
    return got.decode(errors="replace")


def main(argv: list[str] | None = None) -> int:
    """The child's entry point: ``argv`` is ``[CONFIG (empty: the built-in defaults), options]``
    (module docstring); returns the exit code."""
    import argparse

    parser = argparse.ArgumentParser(prog="relay_process", add_help=False)
    parser.add_argument("config")
    parser.add_argument("--certs", type=Path)
    parser.add_argument("--upstream-ca")
    parser.add_argument("--upstream-insecure", action="store_true")
    parsed, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the proxy decides (module docstring)
    root = logging.getLogger()
    root.handlers[:] = [_ToProxy()]
    root.setLevel(logging.INFO)
    token = _first_line().strip()
    if unknown or not token:
        print("usage: started by the kimi-intercept addon only", file=sys.stderr)
        return 2
    return asyncio.run(_serve(Path(parsed.config) if parsed.config else None, token, parsed))


if __name__ == "__main__":
    sys.exit(main())
