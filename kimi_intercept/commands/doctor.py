"""``kimi-intercept doctor [python|node|curl] [--json]``: is this machine ready, and if not,
the exact fix for each problem.

Checks, in order (each ✓ ok, ✗ fail, – info or skipped):

1. the config: which file (and from where), and that every table the proxy checks is valid;
2. each provider of the default chain has its API key variable set (and at least one has);
3. the proxy's CA exists (``<confdir>/mitmproxy-ca-cert.pem``);
4. a proxy runs for this config and answers on its port;
5. a canary request to ``https://api.openai.com/v1/chat/completions`` made the way CLIENT
   makes it (Python's ``urllib`` + ``SSL_CERT_FILE``, Node's ``https`` + ``NODE_EXTRA_CA_CERTS``,
   ``curl`` + ``CURL_CA_BUNDLE``) with exactly the variables ``run`` sets, through a second
   proxy started from the same addon and CA whose providers are the local simulator: no API
   spend, nothing written to your database;
6. (info) whether ``HTTPS_PROXY`` in this shell points at the running proxy;
7. (info) the OS trust-store commands for IDEs, and how to remove the CA again.

Exit code 0 only when no check fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from kimi_intercept.commands import proxyrecord as records
from kimi_intercept.commands.trust import TrustError, build_bundle, client_env, os_trust_commands
from kimi_intercept.config.discovery import ConfigLocation, find_config
from kimi_intercept.config.settings import Config, ConfigError

CLIENTS = ("python", "node", "curl")
CANARY_URL = "https://api.openai.com/v1/chat/completions"
_CANARY_BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "ping"}]})
_PY = f"""\
import json, urllib.request
req = urllib.request.Request({CANARY_URL!r}, data={_CANARY_BODY!r}.encode(), method="POST",
    headers={{"content-type": "application/json", "authorization": "Bearer sk-doctor"}})
with urllib.request.urlopen(req, timeout=30) as r:
    print(json.load(r)["choices"][0]["message"]["content"])
"""
_JS = f"""\
const req = require('https').request({CANARY_URL!r}, {{method: 'POST', headers:
  {{'content-type': 'application/json', authorization: 'Bearer sk-doctor'}}}}, (res) => {{
  let d = ''; res.on('data', (c) => (d += c));
  res.on('end', () => console.log(JSON.parse(d).choices[0].message.content));
}});
req.on('error', (e) => {{ console.error(e.message); process.exit(1); }});
req.end({_CANARY_BODY!r});
"""
_STATUS = {"ok": "✓", "fail": "✗", "info": "–", "skip": "–"}


@dataclass(frozen=True)
class Check:
    """One line of the doctor's answer; ``fix`` is the command or edit that makes it pass."""

    name: str
    status: str  # "ok", "fail", "info" or "skip"
    detail: str
    fix: str = ""


def config_check(explicit: Path | None) -> tuple[Check, ConfigLocation | None, Config | None]:
    """Find and fully validate the config (:func:`.checks.check_config`: every table the proxy
    validates at start)."""
    from kimi_intercept.commands.checks import check_config

    try:
        where = find_config(explicit)
    except ConfigError as e:
        return Check("config", "fail", str(e), "kimi-intercept init"), None, None
    try:
        cfg = check_config(where.path).cfg
    except ConfigError as e:
        return Check("config", "fail", f"{where.path}: {e}", f"edit {where.path}"), where, None
    return Check("config", "ok", where.describe()), where, cfg


def check_keys(cfg: Config) -> list[Check]:
    out = []
    for p in cfg.chain:
        if p.api_key:
            out.append(Check(f"key for {p.name}", "ok", f"{p.api_key_ref or 'api_key'} is set"))
            continue
        var = p.api_key_ref.strip("${}") if p.api_key_ref.startswith("${") else None
        fix = f"export {var}=…" if var else f"set providers.{p.name}.api_key"
        role = "primary" if p.name == cfg.routing.primary else "fallback"
        fix += f" (or remove {p.name} from [routing] fallbacks)" if role == "fallback" else ""
        out.append(Check(f"key for {p.name}", "fail", f"{p.missing_key_hint()} ({role})", fix))
    if not any(p.api_key for p in cfg.chain):
        out.append(
            Check("usable provider", "fail", "no provider of the chain has a key: nothing would "
                  "be rerouted", "set one of the variables above")
        )  # fmt: skip
    return out


def check_ca(confdir: Path) -> Check:
    ca = confdir / records.CA_NAME
    try:
        ok = "BEGIN CERTIFICATE" in ca.read_text(encoding="ascii", errors="replace")
    except OSError as e:
        return Check(
            "CA", "fail", f"{ca}: {e.strerror or e}",
            "kimi-intercept proxy (its first start creates the CA), or kimi-intercept run COMMAND",
        )  # fmt: skip
    if not ok:
        return Check("CA", "fail", f"{ca} is not a PEM certificate", f"rm '{ca}' and restart")
    return Check("CA", "ok", str(ca))


def check_proxy(rec: records.ProxyRecord | None, config: Path) -> Check:
    if rec is None:
        return Check(
            "proxy", "fail", f"no proxy is running for {config}",
            "kimi-intercept proxy (in another terminal); `kimi-intercept run COMMAND` starts "
            "one for COMMAND by itself",
        )  # fmt: skip
    return Check("proxy", "ok", f"{rec.proxy_url} (pid {rec.pid}) answers")


def canary(client: str, confdir: Path) -> Check:
    """Check 5 (see the module docstring)."""
    from kimi_intercept.commands.demo import demo_config
    from kimi_intercept.commands.mitmdump import ProxyStartError, clean_env, start_proxy_process
    from kimi_intercept.commands.simulator import DEFAULT_ANSWER_DELTAS, FakeUpstream

    name = f"canary ({client})"
    argv = {
        "python": [sys.executable, "-c", _PY],
        "node": ["node", "-e", _JS],
        "curl": ["curl", "-sS", "--fail", "-H", "content-type: application/json",
                 "-H", "authorization: Bearer sk-doctor", "-d", _CANARY_BODY, CANARY_URL],
    }[client]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kimi-doctor-") as tmp, FakeUpstream() as sim:
        config = Path(tmp) / "config.toml"
        config.write_text(demo_config(Path(tmp) / "canary.db", sim.url, sim.url), "utf-8")
        keys = {"MOONSHOT_API_KEY": "sk-canary", "DEEPSEEK_API_KEY": "sk-canary"}
        try:
            proxy = start_proxy_process(config, confdir, env=clean_env(keys))
        except ProxyStartError as e:
            return Check(name, "fail", f"the canary proxy did not start: {e}".splitlines()[0])
        try:
            bundle = build_bundle(proxy.ca_path, Path(tmp) / "bundle.pem")
            env = {**os.environ, **client_env(proxy.proxy_url, proxy.ca_path, bundle)}
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            return Check(name, "fail", f"{argv[0]} is not installed", f"install {argv[0]}")
        except (TrustError, subprocess.TimeoutExpired) as e:
            return Check(name, "fail", str(e))
        finally:
            proxy.stop()
    answer = "".join(DEFAULT_ANSWER_DELTAS)
    if done.returncode == 0 and answer in done.stdout:
        return Check(
            name, "ok", f"{client} reached {CANARY_URL} through the proxy, trusting its CA"
        )
    said = (done.stderr or done.stdout).strip().splitlines()
    return Check(
        name, "fail", f"exit {done.returncode}: {said[-1] if said else 'no output'}",
        "kimi-intercept run COMMAND sets these variables; by hand: eval \"$(kimi-intercept env)\"",
    )  # fmt: skip


def check_shell(rec: records.ProxyRecord | None) -> Check:
    current = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if rec is not None and current == rec.proxy_url:
        return Check("this shell", "ok", f"HTTPS_PROXY={current}")
    detail = f"HTTPS_PROXY={current}" if current else "HTTPS_PROXY is not set"
    return Check(
        "this shell", "info", f"{detail} (not needed with `kimi-intercept run`)",
        'eval "$(kimi-intercept env)" to send this shell\'s programs through the proxy',
    )  # fmt: skip


def diagnose(explicit: Path | None, client: str) -> list[Check]:
    """Every check, in order."""
    checks = []
    first, where, cfg = config_check(explicit)
    checks.append(first)
    if cfg is not None:
        checks += check_keys(cfg)
    rec = records.read_record(where.path) if where is not None else None
    confdir = Path(rec.confdir) if rec is not None else records.default_confdir()
    ca = check_ca(confdir)
    checks.append(ca)
    if where is not None:
        checks.append(check_proxy(rec, where.path))
    if ca.status == "ok":
        checks.append(canary(client, confdir))
    else:
        checks.append(Check(f"canary ({client})", "skip", "not run: the CA is missing"))
    checks.append(check_shell(rec))
    for system, add, remove in os_trust_commands(confdir / records.CA_NAME):
        checks.append(Check(f"OS trust store ({system})", "info", f"for IDEs: {add}", remove))
    return checks


@click.command()
@click.argument("client", type=click.Choice(CLIENTS), default="python", required=False)
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Config file [default: $KIMI_INTERCEPT_CONFIG, ./config.toml, the user config folder]",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object (checks and ok) instead")
@click.pass_context
def doctor(ctx: click.Context, client: str, config_path: Path | None, as_json: bool) -> None:
    """Check the config, keys, CA, proxy and a canary request the way CLIENT (python, node,
    curl) makes it; each ✗ comes with its fix. Exit code 0 only when nothing fails."""
    checks = diagnose(config_path, client)
    ok = not any(c.status == "fail" for c in checks)
    if as_json:
        click.echo(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        for c in checks:
            click.echo(f"{_STATUS[c.status]} {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                label = "remove" if c.name.startswith("OS trust") else "fix"
                click.echo(f"    {label}: {c.fix}")
    ctx.exit(0 if ok else 1)
