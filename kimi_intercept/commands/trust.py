"""The environment a client needs to go through the proxy and trust its CA, for ``run`` and
``env``.

Which variable each client reads (shared notes ``clients.md``): Python's ssl/httpx/openai SDK
``SSL_CERT_FILE``; requests ``REQUESTS_CA_BUNDLE``; curl ``CURL_CA_BUNDLE``; git
``GIT_SSL_CAINFO``; Node ``NODE_EXTRA_CA_CERTS`` (added to its built-in roots) and, for Node's
own ``fetch``/``https`` to honour ``HTTPS_PROXY``, ``NODE_USE_ENV_PROXY=1`` (Node >= 22.21/24;
older Node gets the preload in ``entry/node_proxy.cjs`` through ``NODE_OPTIONS``); Codex
``CODEX_CA_CERTIFICATE``. The variables that *replace* a trust store point at a bundle built
here: certifi's roots plus the mitmproxy CA, so other HTTPS keeps working.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

NO_PROXY = "localhost,127.0.0.1,::1"
SHELLS = ("sh", "fish", "powershell")
NODE_PRELOAD = Path(__file__).resolve().parent / "entry" / "node_proxy.cjs"


class TrustError(RuntimeError):
    """The mitmproxy CA is missing or unreadable; the message names the path and the fix."""


def build_bundle(ca_pem: Path, bundle: Path) -> Path:
    """Write ``bundle`` = certifi's CA roots + ``ca_pem`` (PEM text), atomically; return it."""
    import certifi

    try:
        ca = ca_pem.read_text(encoding="ascii")
    except OSError as e:
        raise TrustError(
            f"cannot read the proxy's CA {ca_pem}: {e.strerror or e}; start the proxy once "
            "(`kimi-intercept proxy`) so mitmproxy creates it"
        ) from e
    roots = Path(certifi.where()).read_text(encoding="ascii")
    text = roots.rstrip("\n") + "\n\n# kimi-intercept: mitmproxy CA\n" + ca.strip() + "\n"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    tmp = bundle.with_name(bundle.name + ".tmp")
    tmp.write_text(text, encoding="ascii")
    os.replace(tmp, bundle)
    return bundle


def client_env(
    proxy_url: str, ca_pem: Path, bundle: Path, node_options: str | None = None
) -> dict[str, str]:
    """The variables for one client process: proxy (upper and lower case, loopback excluded)
    and trust. ``node_options`` is the caller's current ``NODE_OPTIONS``, kept after the
    preload."""
    preload = (
        f'--require="{NODE_PRELOAD}"' if " " in str(NODE_PRELOAD) else f"--require={NODE_PRELOAD}"
    )
    if node_options and str(NODE_PRELOAD) in node_options:  # already there (env run twice)
        preload, node_options = node_options, None
    env = {
        "HTTPS_PROXY": proxy_url,
        "HTTP_PROXY": proxy_url,
        "NO_PROXY": NO_PROXY,
        "https_proxy": proxy_url,
        "http_proxy": proxy_url,
        "no_proxy": NO_PROXY,
        "NODE_EXTRA_CA_CERTS": str(ca_pem),
        "NODE_USE_ENV_PROXY": "1",
        "NODE_OPTIONS": f"{preload} {node_options}".strip() if node_options else preload,
        "SSL_CERT_FILE": str(bundle),
        "REQUESTS_CA_BUNDLE": str(bundle),
        "CURL_CA_BUNDLE": str(bundle),
        "GIT_SSL_CAINFO": str(bundle),
        "CODEX_CA_CERTIFICATE": str(bundle),
    }
    return env


def shell_lines(env: Mapping[str, str], shell: str) -> list[str]:
    """``env`` as lines for ``sh`` (bash, zsh), ``fish`` or ``powershell``, quoted for it."""
    if shell == "sh":
        return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    if shell == "fish":
        return [f"set -gx {k} {_fish_quote(v)}" for k, v in env.items()]
    if shell == "powershell":  # names are case-insensitive there: the upper-case ones only
        return [
            f"$env:{k} = '{v.replace(chr(39), chr(39) * 2)}'"
            for k, v in env.items()
            if not (k.islower() and k.upper() in env)
        ]
    raise ValueError(f"unknown shell {shell!r}; one of {', '.join(SHELLS)}")


def _fish_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def os_trust_commands(ca_pem: Path, platform: str | None = None) -> list[tuple[str, str, str]]:
    """How to add the CA to the OS trust store (for IDEs and apps that read only that), and how
    to remove it again: ``[(system, install command, removal command)]`` for this platform
    (``sys.platform`` unless ``platform`` is given; Linux: Debian/Ubuntu and/or Fedora)."""
    import sys

    platform = platform or sys.platform
    debian = (
        "Debian/Ubuntu",
        f"sudo cp '{ca_pem}' /usr/local/share/ca-certificates/kimi-intercept.crt"
        " && sudo update-ca-certificates",
        "sudo rm /usr/local/share/ca-certificates/kimi-intercept.crt"
        " && sudo update-ca-certificates --fresh",
    )
    fedora = (
        "Fedora/RHEL",
        f"sudo cp '{ca_pem}' /etc/pki/ca-trust/source/anchors/kimi-intercept.pem"
        " && sudo update-ca-trust",
        "sudo rm /etc/pki/ca-trust/source/anchors/kimi-intercept.pem && sudo update-ca-trust",
    )
    if platform == "darwin":
        return [
            (
                "macOS",
                "sudo security add-trusted-cert -d -r trustRoot "
                f"-k /Library/Keychains/System.keychain '{ca_pem}'",
                "sudo security delete-certificate -c mitmproxy /Library/Keychains/System.keychain",
            )
        ]
    if platform == "win32":
        return [
            (
                "Windows",
                f'certutil -addstore root "{ca_pem}"  (an administrator prompt)',
                "certutil -delstore root mitmproxy",
            )
        ]
    if Path("/etc/debian_version").exists():
        return [debian]
    if Path("/etc/fedora-release").exists() or Path("/etc/redhat-release").exists():
        return [fedora]
    return [debian, fedora]
