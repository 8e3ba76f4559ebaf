"""The launcher: ``kimi-intercept proxy``, ``init``, ``run`` and ``env``.

- ``proxy [MITMPROXY OPTIONS…]`` runs ``mitmdump -s <packaged addon script>`` in the foreground
  with the discovered config and the CA in ``<user data dir>/mitmproxy`` (mitmproxy's own
  options pass through and win: ``--listen-port 8081``, ``--set confdir=…``), and records it
  (:mod:`.proxyrecord`) so ``run`` and ``env`` find it.
- ``init [--force]`` writes the commented default config into the user config folder.
- ``run [--keep] [--] COMMAND…`` uses the proxy running for the config, or starts one in the
  background (stopped when the last ``run`` using it ends, unless ``--keep``), runs COMMAND with
  the proxy and trust variables of :mod:`.trust`, and exits with COMMAND's exit code.
- ``env [--shell sh|fish|powershell]`` prints those variables for the running proxy.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType

import click

from kimi_intercept.commands import proxyrecord as records
from kimi_intercept.commands.mitmdump import READY_MARKER, ProxyStartError, clean_env
from kimi_intercept.commands.options import config_option, load
from kimi_intercept.commands.trust import SHELLS, TrustError, build_bundle, client_env, shell_lines
from kimi_intercept.config.dirs import CONFIG_NAME, user_config_dir

_PASS_THROUGH = {"ignore_unknown_options": True, "allow_interspersed_args": False}
BUNDLE_NAME = "kimi-intercept-ca-bundle.pem"
# any listen host (127.0.0.1, * for --listen-host 0.0.0.0, an address); the port is recorded
_LISTENING = re.compile(r"HTTP\(S\) proxy listening at \S*:(\d+)")


def _confdir_of(args: Sequence[str]) -> Path:
    """The ``confdir`` a ``--set confdir=…`` among mitmproxy's options names, else ours."""
    confdir = records.default_confdir()
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--set" and i + 1 < len(args) else arg
        if value.startswith("confdir="):
            confdir = Path(value.partition("=")[2]).expanduser().absolute()
    return confdir


def _forward_signals(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGTERM/SIGHUP to this process go on to ``proc`` (Ctrl-C reaches it through the
    terminal's process group)."""

    def forward(signum: int, frame: FrameType | None) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, forward)


def _wait(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> int:
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # the child got the same Ctrl-C; let it finish
            continue


def _exit_code(returncode: int) -> int:
    """A child killed by signal N exits like a shell reports it: 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


@click.command(context_settings=_PASS_THROUGH)
@config_option
@click.argument("mitmproxy_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def proxy(ctx: click.Context, config_path: Path, mitmproxy_args: tuple[str, ...]) -> None:
    """Run the proxy in the foreground (mitmdump with the addon; Ctrl-C stops it).

    Options after the command are mitmproxy's own, e.g. `kimi-intercept proxy --listen-port
    8081` or `--set confdir=~/.mitmproxy`. It listens on 127.0.0.1:8080 by default; the CA is in
    the user data folder. Point a shell at it with `eval "$(kimi-intercept env)"`.
    """
    load(config_path)  # a bad config stops here with one line
    running = records.read_record(config_path)
    if running is not None:
        raise click.ClickException(
            f"a proxy for {config_path} already runs (pid {running.pid}, {running.proxy_url}); "
            "use it (`kimi-intercept env`, `kimi-intercept run COMMAND`) or stop it first"
        )
    confdir = _confdir_of(mitmproxy_args)
    args = records.mitmdump_args(config_path, confdir, mitmproxy_args)
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=clean_env(), text=True, encoding="utf-8", errors="replace", bufsize=1,
    )  # fmt: skip
    _forward_signals(proc)
    port = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _LISTENING.search(line)
            if m:
                port = int(m.group(1))
            if port is not None and READY_MARKER in line:
                rec = records.ProxyRecord(
                    proc.pid, port, str(confdir), str(config_path), log="", keep=True
                )
                with records.locked(config_path):
                    records.write_record(config_path, rec)
            click.echo(line, nl=False)  # after the record: "ready" means `env` finds it
    except KeyboardInterrupt:
        pass
    finally:
        code = _wait(proc)
        records.remove_record(config_path, proc.pid)
    ctx.exit(_exit_code(code))


@click.command()
@click.option("--force", is_flag=True, help="Overwrite an existing config")
def init(force: bool) -> None:
    """Write a commented config (every key with its default) into the user config folder."""
    from kimi_intercept.config.settings import default_config_text

    target = user_config_dir() / CONFIG_NAME
    if target.exists() and not force:
        raise click.ClickException(
            f"{target} already exists; edit it, or pass --force to replace it with the defaults"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(default_config_text(), encoding="utf-8")
    except OSError as e:
        raise click.ClickException(f"cannot write {target}: {e.strerror or e}") from e
    click.echo(f"Wrote {target}")
    click.echo(
        "Set your provider keys (MOONSHOT_API_KEY, DEEPSEEK_API_KEY, …) in the environment, "
        "then: kimi-intercept run claude"
    )


def _bundle(rec: records.ProxyRecord) -> Path:
    try:
        return build_bundle(rec.ca_path, Path(rec.confdir) / BUNDLE_NAME)
    except (TrustError, OSError) as e:
        raise click.ClickException(str(e)) from e


def _acquire(
    config_path: Path, keep: bool, me: int, say: Callable[[str], None]
) -> tuple[records.ProxyRecord, bool]:
    """The proxy ``run`` uses, registering ``me`` as one of its users: (record, started)."""
    with records.locked(config_path):
        rec = records.read_record(config_path)
        if rec is not None:
            rec = records.with_users(rec, add=[me])
            rec = replace(rec, keep=rec.keep or keep)
            records.write_record(config_path, rec)
            say(f"kimi-intercept: using the proxy at {rec.proxy_url} (pid {rec.pid})")
            return rec, False
        confdir = records.default_confdir()
        try:
            proc, port, log = records.spawn(config_path, confdir, clean_env())
        except ProxyStartError as e:
            raise click.ClickException(str(e)) from e
        rec = records.ProxyRecord(
            proc.pid, port, str(confdir), str(config_path), str(log), keep=keep, users=(me,)
        )
        records.write_record(config_path, rec)
        say(f"kimi-intercept: proxy started at {rec.proxy_url} (pid {rec.pid}, log {log})")
        return rec, True


def _release(config_path: Path, pid: int, me: int) -> None:
    """Drop ``me`` from the proxy's users; stop it if it was started by ``run`` without
    ``--keep`` and nobody uses it any more."""
    with records.locked(config_path):
        rec = records.read_record(config_path)
        if rec is None or rec.pid != pid:
            return
        rec = records.with_users(rec, drop=[me])
        if rec.keep or rec.users:
            records.write_record(config_path, rec)
            return
        records.stop(rec.pid)
        records.remove_record(config_path, rec.pid)


@click.command(context_settings=_PASS_THROUGH, short_help="Run COMMAND through the proxy.")
@config_option
@click.option("--keep", is_flag=True, help="Leave a proxy this command starts running")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, config_path: Path, keep: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND through the proxy, e.g. `kimi-intercept run claude` or `kimi-intercept run
    -- python app.py`.

    Uses the proxy running for this config or starts one in the background (stopped when
    COMMAND ends, unless --keep). COMMAND gets HTTPS_PROXY/HTTP_PROXY, NO_PROXY for loopback,
    and trust in the proxy's CA for Python, Node, curl, git and Codex; nothing else changes.
    Exits with COMMAND's exit code.
    """
    load(config_path)
    me = os.getpid()
    say = lambda text: click.echo(text, err=True)  # noqa: E731
    rec, _ = _acquire(config_path, keep, me, say)
    code = 1
    try:
        bundle = _bundle(rec)
        env = dict(os.environ)
        env.update(client_env(rec.proxy_url, rec.ca_path, bundle, env.get("NODE_OPTIONS")))
        try:
            child = subprocess.Popen(list(command), env=env)
        except FileNotFoundError:
            say(f"kimi-intercept: command not found: {command[0]}")
            code = 127
        except PermissionError:
            say(f"kimi-intercept: not executable: {command[0]}")
            code = 126
        else:
            _forward_signals(child)
            code = _exit_code(_wait(child))
    finally:
        _release(config_path, rec.pid, me)
    ctx.exit(code)


def _default_shell() -> str:
    if sys.platform == "win32":
        return "powershell"
    return "fish" if Path(os.environ.get("SHELL", "")).name == "fish" else "sh"


@click.command()
@config_option
@click.option(
    "--shell", type=click.Choice(SHELLS), default=None,
    help="Syntax of the lines [default: fish if $SHELL is fish, powershell on Windows, else sh]",
)  # fmt: skip
def env(config_path: Path, shell: str | None) -> None:
    """Print the variables that send a shell's programs through the running proxy:
    `eval "$(kimi-intercept env)"` (sh, bash, zsh), `kimi-intercept env --shell fish | source`,
    `kimi-intercept env --shell powershell | Invoke-Expression`."""
    rec = records.read_record(config_path)
    if rec is None:
        raise click.ClickException(
            f"no kimi-intercept proxy is running for {config_path}; start one with "
            "`kimi-intercept proxy` (in another terminal), or use `kimi-intercept run COMMAND`"
        )
    variables = client_env(rec.proxy_url, rec.ca_path, _bundle(rec), os.environ.get("NODE_OPTIONS"))
    click.echo(f"# kimi-intercept proxy {rec.proxy_url} (pid {rec.pid}), config {config_path}")
    for line in shell_lines(variables, shell or _default_shell()):
        click.echo(line)
