"""The mitmproxy addon — the only module that imports mitmproxy.

Hooks (order on a streamed flow: ``request → responseheaders → chunks → response``, shared
notes ``mitmproxy.md`` appendix):

- ``load``: registers the options ``kimi_config`` (path of ``config.toml``) and
  ``kimi_verbose`` (also print mitmproxy's own flow lines for intercepted calls), and sets
  ``listen_host=127.0.0.1`` unless the user chose an interface, before any config is parsed.
- ``configure``: parses and checks the config (:func:`.commands.checks.check_config`, the CLI's
  check too; a running relay process reloads it); sets ``allow_hosts`` (only LLM hosts are
  decrypted) and ``connection_strategy=lazy`` (required to reroute); logs one warning when no
  provider of the chain has its API key; unless ``kimi_verbose``, adds ``!~marker
  kimi-intercept`` to ``dumper_filter`` so mitmdump prints no flow line for an intercepted call,
  and hides mitmproxy's per-connection info lines (``client connect`` …; warnings stay). A bad
  config (any table, any unknown key) is one line naming the fix: at start, logged as an error
  and mitmdump exits with 1 before it listens (mitmproxy would print a chained traceback,
  listen, then exit); once running (``:set kimi_config=…``), an ``OptionsError`` that keeps the
  previous config.
- ``running``: starts the relay process (:mod:`.commands.relay_process`): planning, the relay,
  metering, rows, the store writer, the status file, OpenTelemetry and the team shipper all run
  there, on another core than mitmproxy's one event loop (docs/performance.md). It prunes old
  rows, reads the spend so far, and says its port; then the ``ready`` line. If it exits on its
  own it is started again.
- ``tls_clienthello``: with ``[proxy] relay_tls`` (the default), a client on this machine opening
  TLS to an intercepted host has it passed through, unread, to the relay process's TLS listener,
  which decrypts it with a certificate from the same CA (written by ``running`` into a private
  folder: :func:`.relay.direct.write_cert`); every request on that connection is then the
  relay's (:mod:`.relay.direct`), and the hooks below never see it.
- ``request``: an intercepted LLM call (any dialect) that mitmproxy decrypted (``relay_tls =
  false``, a client on another machine, no relay running yet) goes to the relay process as the
  client sent it — every header, the body still in its ``Content-Encoding`` — with the
  :mod:`.relay.intake` headers added (the run's token, the original URL and host, the client's
  address, when the request arrived) and no query on the hop. The relay plans it; a call it
  cannot plan is answered there in the client's dialect and recorded (or, with ``[routing]
  on_plan_error = "passthrough"``, sent on unchanged and recorded). While no relay process
  runs, the call gets a 503 in its dialect — never sent to its original host — recorded by the
  next relay process. A WebSocket upgrade on ``/v1/responses`` of an intercepted host is
  answered here at once (426, :mod:`.routing.websocket`): Codex then falls back to HTTPS.
- ``responseheaders``: relay answers are streamed (``flow.response.stream = True``), never
  buffered.
- every finished call: one console line (:func:`.relay.console.console_line`), built by the
  relay process and printed in mitmproxy's log with the relay's own log records.
- ``done`` (mitmproxy awaits it on SIGTERM/SIGINT, while its loop still serves connections):
  graceful shutdown, by the relay process — new LLM calls get a 503 in their dialect (row
  outcome ``shutdown``), answers in flight get ``[proxy] drain_s`` seconds, the rest are cut
  (outcome ``shutdown``, no provider penalty; a second signal cuts at once), then the writer
  flushes every row, and the OpenTelemetry export (``[otel]``) and the team store's shipper
  (``[team]``) flush too; the addon waits for it to exit.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http, tls
from mitmproxy.proxy.mode_specs import RegularMode

from kimi_intercept.commands.checks import check_config, unusable_chain_warning
from kimi_intercept.commands.relay_process import RelayProcess, RelayStartError
from kimi_intercept.config.discovery import find_config
from kimi_intercept.config.settings import Config, ConfigError, allow_hosts_patterns
from kimi_intercept.dialects import json_bytes
from kimi_intercept.dialects.bridge import error_json
from kimi_intercept.relay.direct import write_cert
from kimi_intercept.relay.intake import (
    CLIENT_HEADER,
    HOST_HEADER,
    STARTED_HEADER,
    TOKEN_HEADER,
    URL_HEADER,
)
from kimi_intercept.routing.plan import detect_dialect
from kimi_intercept.routing.websocket import REFUSAL_STATUS, is_responses_websocket, refusal_body

log = logging.getLogger(__name__)

_METADATA_KEY = "kimi_intercept_relayed"
# Intercepted flows carry this marker; dumper_filter hides them unless kimi_verbose is set.
MARKER = "kimi-intercept"
_QUIET_FILTER = f"!~marker {MARKER}"


class _ConnectionNoise(logging.Filter):
    """Drops mitmproxy's per-connection info lines unless ``kimi_verbose`` is set."""

    verbose = False

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or record.levelno >= logging.WARNING


_CONNECTION_LOGGER = logging.getLogger("mitmproxy.proxy.server")
_JSON = {"content-type": "application/json"}
_OURS = b"x-kimi-intercept-"  # a client's own headers of this name never reach the relay
_UNAVAILABLE = "kimi-intercept's relay is not running (starting, restarting or shutting down)"


class KimiIntercept:
    def __init__(self) -> None:
        self.noise = _ConnectionNoise()
        self.cfg: Config | None = None
        self.config_path: Path | None = None
        # Made at once, started by ``running``: a call before then gets the 503 (and its row)
        self.relay = RelayProcess(self._console, self._child_record)
        self.is_running = False
        self.certs_dir: Path | None = None  # the relay's TLS certificates, made by ``running``
        self.tls_hosts: frozenset[str] = frozenset()  # passed through to the relay's TLS

    def load(self, loader: Any) -> None:
        _CONNECTION_LOGGER.addFilter(self.noise)
        loader.add_option(
            "kimi_config",
            str,
            "",
            "Path of the kimi-intercept TOML configuration. Empty: $KIMI_INTERCEPT_CONFIG, then "
            "./config.toml, then the user config folder (built-in defaults if none exists).",
        )
        loader.add_option(
            "kimi_verbose",
            bool,
            False,
            "Also print mitmproxy's own flow lines for intercepted LLM calls it decrypts itself "
            "(by default each call shows only kimi-intercept's one-line summary; with [proxy] "
            "relay_tls a local client's calls are decrypted by kimi-intercept's relay instead).",
        )
        # Before the config is parsed: never listen on every interface, even briefly.
        if "listen_host" in ctx.options and not ctx.options.listen_host:
            ctx.options.update(listen_host="127.0.0.1")

    def configure(self, updated: set[str]) -> None:
        if "kimi_verbose" in updated:
            self.noise.verbose = ctx.options.kimi_verbose
        if updated & {"kimi_verbose", "dumper_filter"} and "dumper_filter" in ctx.options:
            self._quiet_flow_lines()
        if "kimi_config" in updated:
            try:
                where = find_config(ctx.options.kimi_config or None, flag="kimi_config")
                checked = check_config(where.path)
            except ConfigError as e:
                message = f"kimi_config {ctx.options.kimi_config}: {e}"
                errorcheck = ctx.master.addons.get("errorcheck")
                if self.is_running or errorcheck is None:
                    raise exceptions.OptionsError(message) from None  # the old config stays
                # Starting: mitmproxy would log a chained traceback, listen, and only then exit
                # on the logged error. One line instead, and mitmdump/mitmweb exit before
                # listening; the console UI repeats the line on stderr as it exits.
                log.error("kimi-intercept: %s", message)
                if not errorcheck.repeat_errors_on_stderr:
                    sys.exit(1)
                return
            self.cfg, self.config_path = checked.cfg, where.path
            self.relay.reconfigure(where.path)
            self._tls_hosts()
            cfg = self.cfg
            changes: dict[str, Any] = {
                "allow_hosts": allow_hosts_patterns(cfg.hosts),
                "connection_strategy": "lazy",
            }
            if not ctx.options.listen_host:
                changes["listen_host"] = "127.0.0.1"
            ctx.options.update(**changes)
            if warning := unusable_chain_warning(cfg):
                log.warning("%s", warning)
            else:
                for p in cfg.chain:
                    if not p.api_key:
                        log.warning("kimi-intercept: %s; it will be skipped", p.missing_key_hint())

    def _quiet_flow_lines(self) -> None:
        """Keep the user's own ``dumper_filter``; add or drop the clause hiding our flows."""
        current = ctx.options.dumper_filter or ""
        user = current
        if current == _QUIET_FILTER:
            user = ""
        elif current.endswith(f") & {_QUIET_FILTER}") and current.startswith("("):
            user = current[1 : -len(f") & {_QUIET_FILTER}")]
        if ctx.options.kimi_verbose:
            wanted = user
        else:
            wanted = f"({user}) & {_QUIET_FILTER}" if user else _QUIET_FILTER
        if wanted != current:
            ctx.options.update(dumper_filter=wanted or None)

    def _console(self, line: str) -> None:
        """One line in mitmdump's output. Straight to its terminal handler when there is one:
        a log record also fires mitmproxy's deprecated ``add_log`` event through every addon
        (a cross-thread wake-up and a hook dispatch per call)."""
        termlog = ctx.master.addons.get("termlog") if self.is_running else None
        handler = getattr(termlog, "logger", None)
        if not isinstance(handler, logging.Handler):
            log.info("%s", line)  # mitmweb, the console UI: their own log views
        elif log.isEnabledFor(logging.INFO):
            handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "%s", (line,), None))

    def _child_record(self, level: int, logger: str, message: str) -> None:
        """A log record of the relay process, in mitmproxy's log."""
        logging.getLogger(logger or __name__).log(level, "%s", message)

    async def running(self) -> None:
        assert self.cfg is not None
        self.is_running = True
        try:
            self.certs_dir = Path(tempfile.mkdtemp(prefix="kimi-intercept-certs-"))
        except OSError as e:  # mitmproxy decrypts every call, as with relay_tls = false
            log.warning("kimi-intercept: no folder for the relay's certificates (%s); "
                        "mitmproxy decrypts every call", e)  # fmt: skip
        self._tls_hosts()
        try:
            upstream = (ctx.options.ssl_verify_upstream_trusted_ca, ctx.options.ssl_insecure)
            port = await self.relay.start(self.config_path, self.certs_dir, upstream)
        except RelayStartError as e:
            log.error("kimi-intercept: %s", e)
            ctx.master.shutdown()
            return
        # mitmproxy's and our startup heap lives as long as the process: out of the cyclic
        # collector's way (its full collections took up to 70 ms under big prompts)
        gc.freeze()
        log.info(
            "kimi-intercept: ready — relay on 127.0.0.1:%d%s, %d LLM hosts intercepted, "
            "route %s (share %g%%), database %s",
            port,
            f" (TLS :{self.relay.tls_port})" if self.tls_hosts and self.relay.tls_port else "",
            len(self.cfg.hosts),
            " → ".join(p.name for p in self.cfg.chain)
            + (" (no provider has an API key)" if unusable_chain_warning(self.cfg) else ""),
            self.cfg.routing.share,
            self.cfg.database,
        )

    async def done(self) -> None:
        _CONNECTION_LOGGER.removeFilter(self.noise)
        _on_second_signal(self.relay.cut)
        await self.relay.stop(self.cfg.drain_s if self.cfg is not None else 0.0)
        self.tls_hosts = frozenset()
        if self.certs_dir is not None:
            shutil.rmtree(self.certs_dir, ignore_errors=True)

    def _tls_hosts(self) -> None:
        """With ``[proxy] relay_tls``, write a certificate (mitmproxy's CA) for each intercepted
        host that has none yet, and pass those hosts' TLS through to the relay from now on."""
        cfg, folder = self.cfg, self.certs_dir
        if cfg is None or folder is None or not cfg.relay_tls:
            self.tls_hosts = frozenset()
            return
        store = getattr(ctx.master.addons.get("tlsconfig"), "certstore", None)
        if store is None:  # mitmproxy without its TLS addon (a test harness): it decrypts all
            self.tls_hosts = frozenset()
            return
        ca_pem, ca_key = store.default_ca.to_pem(), store.default_privatekey
        chain = b"".join(c.to_pem() for c in store.default_chain_certs)  # as mitmproxy serves
        ready = set()
        for host in cfg.hosts:  # an IP address or a pattern gets none: mitmproxy decrypts it
            try:
                if write_cert(folder, host, ca_pem, ca_key, chain) is not None:
                    ready.add(host.lower())
            except (OSError, ValueError, TypeError) as e:  # a full disk, a CA key it cannot use
                log.warning("kimi-intercept: no relay certificate for %s (%s); mitmproxy "
                            "decrypts its calls", host, e)  # fmt: skip
        self.tls_hosts = frozenset(ready)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """A client on this machine opening TLS to an intercepted host, through the proxy as
        ``HTTPS_PROXY``: its TLS is passed through, unread, to the relay's TLS listener, which
        decrypts it with the same CA (:mod:`.relay.direct`). Anything else mitmproxy decrypts
        (the ``request`` hook): an intercepted host without a certificate (an IP address, a
        pattern), a client elsewhere (its address goes with the call), a connection already
        open, another proxy mode, no relay running. Hosts not intercepted never get here
        (``allow_hosts``)."""
        port, sni = self.relay.tls_port, (data.client_hello.sni or "").lower()
        client, server = data.context.client, data.context.server
        if port is None or sni not in self.tls_hosts or server.connected:
            return
        if not isinstance(client.proxy_mode, RegularMode) or not _local(client.peername):
            return
        if server.address is None or server.address[0].lower() != sni:
            return  # CONNECT named another host than the TLS does
        data.ignore_connection = True
        server.address = ("127.0.0.1", port)

    def request(self, flow: http.HTTPFlow) -> None:
        """An intercepted LLM call goes to the relay process as the client sent it (the
        :mod:`.relay.intake` headers added); the relay plans, answers and records it."""
        cfg, relay, req = self.cfg, self.relay, flow.request
        if cfg is None or req.raw_content is None:
            return
        if req.pretty_host not in cfg.hosts:
            return
        if is_responses_websocket(req.method, req.path, req.headers.items(multi=True)):
            log.info("kimi-intercept: refused a Responses WebSocket upgrade (%s)",
                     _logged_url(flow))  # fmt: skip
            flow.response = http.Response.make(REFUSAL_STATUS, refusal_body(), _JSON)
            return  # Codex then sends the turn as POST /v1/responses at once
        found = detect_dialect(req.method, req.path)
        if found is None:
            return  # not an LLM call: mitmproxy's
        flow.marked = MARKER  # its console line is the summary; no mitmproxy flow line
        if relay.port is None:  # never sent elsewhere: a 503 in the client's dialect
            dialect = "anthropic" if found[0] == "anthropic_count" else found[0]
            body = json_bytes(error_json(dialect, 503, _UNAVAILABLE, "proxy_unavailable"))
            log.warning("kimi-intercept: %s %s answered 503: %s", req.method,
                        _logged_url(flow), _UNAVAILABLE)  # fmt: skip
            flow.response = http.Response.make(503, body, {**_JSON, "retry-after": "5"})
            peer = flow.client_conn.peername
            relay.unavailable(
                {"method": req.method, "host": req.pretty_host,
                 "path": req.path.partition("?")[0], "user_agent": req.headers.get("user-agent"),
                 "client_host": peer[0] if peer else None, "started": req.timestamp_start,
                 "message": _UNAVAILABLE}
            )  # fmt: skip
            return
        flow.metadata[_METADATA_KEY] = True
        peer = flow.client_conn.peername
        fields = [(k, v) for k, v in req.headers.fields if not k.lower().startswith(_OURS)]
        if not any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in fields):
            fields.append((b"content-length", str(len(req.raw_content)).encode()))
        meta = (
            (TOKEN_HEADER, relay.token),
            (URL_HEADER, req.pretty_url),
            (HOST_HEADER, req.pretty_host),
            (CLIENT_HEADER, peer[0] if peer else ""),
            (STARTED_HEADER, repr(req.timestamp_start)),
        )
        fields += [(k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in meta]
        req.headers = http.Headers(fields)
        # no query on the hop: Gemini clients may carry their key there (?key=…), and mitmdump
        # logs URLs (the relay has the whole URL). The fields one by one: setting ``url``
        # parses and validates it again.
        req.scheme, req.port = "http", relay.port
        req.host = "127.0.0.1"
        req.path = req.path.partition("?")[0]

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if _METADATA_KEY in flow.metadata and flow.response is not None:
            flow.response.stream = True  # the relay's answer streams, never buffered


def _local(peer: Any) -> bool:
    """Whether a client's address is this machine's (loopback, IPv4 or IPv6)."""
    try:
        ip = ipaddress.ip_address(peer[0])
    except (TypeError, ValueError, IndexError):
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _logged_url(flow: http.HTTPFlow) -> str:
    """The URL without its query: Gemini clients may carry their key there (``?key=…``)."""
    return flow.request.pretty_url.partition("?")[0]


def _on_second_signal(callback: Any) -> None:
    """While draining, SIGINT/SIGTERM again calls ``callback`` (mitmproxy's own handlers only
    ask for the shutdown that is already under way)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, callback)
        except (NotImplementedError, RuntimeError, ValueError):  # no such handlers here
            pass
