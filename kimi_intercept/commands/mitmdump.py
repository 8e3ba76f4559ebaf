"""Run the real ``mitmdump`` with the kimi addon as a subprocess (demo, tests, benchmarks).

Method from the shared notes ``mitmproxy.md`` §4: ``--listen-port 0``, a private ``confdir``
(the CA is created there before the proxy listens), stdout+stderr drained by a thread so the
pipe never blocks, the port parsed from ``HTTP(S) proxy listening at 127.0.0.1:<port>``, the
addon's ``kimi-intercept: ready`` line awaited, stop with SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

MITMDUMP = Path(sys.executable).with_name("mitmdump")
READY_MARKER = "kimi-intercept: ready"
LISTENING = re.compile(r"HTTP\(S\) proxy listening at 127\.0\.0\.1:(\d+)")
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def mitmdump_command() -> list[str]:
    """``mitmdump`` of this Python environment; without its console script (dependencies
    installed another way), the same entry point through this interpreter."""
    if MITMDUMP.is_file():
        return [str(MITMDUMP)]
    return [sys.executable, "-c", "import sys; from mitmproxy.tools.main import mitmdump; "
            "sys.exit(mitmdump())"]  # fmt: skip


def addon_script() -> Path:
    """The mitmdump script shipped in the package (``kimi_intercept/commands/entry/kimi.py``),
    so an installed package runs without a checkout."""
    return Path(__file__).resolve().parent / "entry" / "kimi.py"


class ProxyStartError(RuntimeError):
    """mitmdump exited or did not become ready in time; the message carries its log."""


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any proxy variable (the proxy must not proxy itself),
    plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ProxyProcess:
    """A running ``mitmdump -s addons/kimi.py``; always ``stop()`` it."""

    def __init__(
        self,
        config_path: Path,
        confdir: Path,
        extra_args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.config_path = config_path
        self.confdir = confdir
        self.port = 0
        self._lines: list[str] = []
        self._cond = threading.Condition()
        cfg = tomllib.loads(config_path.read_text())
        db = cfg.get("storage", {}).get("database")
        # as the addon resolves it: relative to the config file's folder
        self.db_path: Path | None = config_path.parent / Path(db).expanduser() if db else None
        drain = cfg.get("proxy", {}).get("drain_s", 30)
        self.drain_s = float(drain) if isinstance(drain, (int, float)) else 30.0
        self.args = [
            *mitmdump_command(),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            "0",
            "--set",
            f"confdir={confdir}",
            "-s",
            str(addon_script()),
            "--set",
            f"kimi_config={config_path}",
            *extra_args,
        ]
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else clean_env(),
            cwd=cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        self._drain = threading.Thread(target=self._read, name="mitmdump-log", daemon=True)
        self._drain.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_ready(self, timeout: float = 30.0) -> ProxyProcess:
        """Wait for the listening line and the addon's ready line; raise with the log if not."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = "\n".join(self._lines)
                m = LISTENING.search(text)
                if m and READY_MARKER in text:
                    self.port = int(m.group(1))
                    return self
                if self.proc.poll() is not None and not self._drain.is_alive():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
        code = self.proc.poll()
        self.stop()
        why = f"exited with {code}" if code is not None else f"not ready after {timeout:.0f} s"
        raise ProxyStartError(
            f"mitmdump {why}.\ncommand: {' '.join(self.args)}\n--- log ---\n{self.log_text()}"
        )

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self._lines)

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> bool:
        """Wait until ``needle`` appears in the log; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while needle not in "\n".join(self._lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def relay_pids(self) -> list[int]:
        """The process ids mitmdump started (the relay process: one while it runs), from
        ``/proc/<pid>/task/<tid>/children`` (Linux)."""
        found: list[int] = []
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                found += map(
                    int, Path(f"/proc/{self.proc.pid}/task/{tid}/children").read_text().split()
                )
            except OSError:  # a thread that just ended
                continue
        return found

    def client_env(self) -> dict[str, str]:
        """The variables an unmodified client needs: the proxy, and trust in the mitm CA only."""
        return {
            "HTTPS_PROXY": self.proxy_url,
            "HTTP_PROXY": self.proxy_url,
            "SSL_CERT_FILE": str(self.ca_path),
            "NO_PROXY": "",
        }

    def stop(self) -> None:
        """SIGTERM, wait up to ``[proxy] drain_s`` + 10 s (answers in flight may finish), then
        SIGKILL. Safe to call more than once."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.drain_s + 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._drain.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_proxy_process(
    config_path: Path,
    confdir: Path,
    extra_args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
) -> ProxyProcess:
    """Start mitmdump with the addon and wait until it is ready (see :meth:`wait_ready`)."""
    return ProxyProcess(config_path, confdir, extra_args, env, cwd).wait_ready(timeout)
