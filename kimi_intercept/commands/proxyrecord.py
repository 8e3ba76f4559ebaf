"""Which proxy runs for which config: a small JSON record per config file in the user state
folder, and starting mitmdump in the background for ``kimi-intercept run``.

A record (``<state dir>/proxy-<hash of the config path>.json``) holds the mitmdump's pid, the
port it listens on (127.0.0.1), its ``confdir`` (where the CA is), the config path, the log
file, ``keep`` (``False``: started by ``run`` for its commands, stopped when the last of them
ends) and the pids of the ``run`` commands using it. A record whose pid is gone or whose port
does not answer is stale and removed. Changes happen under an ``flock`` on
``<record>.lock`` (POSIX; elsewhere unlocked), so two ``run`` commands never start two proxies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kimi_intercept.commands.mitmdump import (
    LISTENING,
    READY_MARKER,
    ProxyStartError,
    addon_script,
    mitmdump_command,
)
from kimi_intercept.config.dirs import user_data_dir, user_state_dir

CA_NAME = "mitmproxy-ca-cert.pem"


def default_confdir() -> Path:
    """mitmproxy's ``confdir`` for kimi-intercept (its CA lives there):
    ``<user data dir>/mitmproxy``."""
    return user_data_dir() / "mitmproxy"


@dataclass(frozen=True)
class ProxyRecord:
    """A running (or once running) mitmdump with the addon."""

    pid: int
    port: int
    confdir: str
    config: str
    log: str
    keep: bool = True
    users: tuple[int, ...] = field(default=())

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        return Path(self.confdir) / CA_NAME


def record_path(config: Path) -> Path:
    digest = hashlib.sha256(str(config.absolute()).encode()).hexdigest()[:12]
    return user_state_dir() / f"proxy-{digest}.json"


@contextlib.contextmanager
def locked(config: Path) -> Iterator[None]:
    """Hold the record's lock (blocking) for the ``with`` body."""
    path = record_path(config).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # Windows: unlocked
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def pid_alive(pid: Any) -> bool:
    """True when ``pid`` is a live process (ours or another user's)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def port_open(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def read_record(config: Path) -> ProxyRecord | None:
    """The live proxy recorded for ``config``, or ``None`` (a stale record is removed)."""
    path = record_path(config)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rec = ProxyRecord(**{**data, "users": tuple(data.get("users", ()))})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        path.unlink(missing_ok=True)  # unreadable: treated as stale
        return None
    if pid_alive(rec.pid) and port_open(rec.port):
        return rec
    path.unlink(missing_ok=True)
    return None


def write_record(config: Path, rec: ProxyRecord) -> None:
    path = record_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(rec)), encoding="utf-8")
    os.replace(tmp, path)


def remove_record(config: Path, pid: int) -> None:
    """Remove the record if it is still the one of process ``pid``."""
    path = record_path(config)
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def with_users(rec: ProxyRecord, add: Iterable[int] = (), drop: Iterable[int] = ()) -> ProxyRecord:
    """``rec`` with live user pids only, ``add`` added and ``drop`` removed."""
    gone = set(drop)
    users = [u for u in (*rec.users, *add) if u not in gone and pid_alive(u)]
    return replace(rec, users=tuple(dict.fromkeys(users)))


def mitmdump_args(config: Path, confdir: Path, extra: Iterable[str] = ()) -> list[str]:
    """The mitmdump command line for the addon with ``config``; ``extra`` (mitmproxy's own
    options) comes last, so it wins over the defaults here."""
    # a config that does not exist (the user config folder's, before `init`) means defaults:
    # not named, since the addon refuses a named file that is missing
    named = ["--set", f"kimi_config={config}"] if config.is_file() else []
    return [*mitmdump_command(), "--set", f"confdir={confdir}", "-s", str(addon_script()),
            *named, *extra]  # fmt: skip


def spawn(
    config: Path, confdir: Path, env: Mapping[str, str], timeout: float = 60.0
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Start mitmdump in the background on a free loopback port, its output in a log file in the
    state folder; wait for the addon's ready line. Returns (process, port, log path).

    :raises ProxyStartError: it exited or was not ready in time (the message quotes its log)
    """
    log = record_path(config).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    args = mitmdump_args(config, confdir, ["--listen-host", "127.0.0.1", "--listen-port", "0"])
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=dict(env), start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(encoding="utf-8", errors="replace")
        m = LISTENING.search(text)
        if m and READY_MARKER in text:
            return proc, int(m.group(1)), log
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc.pid)
            why = f"exited with {proc.returncode}" if proc.returncode is not None else "not ready"
            raise ProxyStartError(f"the proxy {why} (log {log}):\n{_tail(text)}")
        time.sleep(0.1)


def stop(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` s for it to end, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])
