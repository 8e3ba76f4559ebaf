"""The mitmproxy addon — the only module that imports mitmproxy.

Hooks (order on a streamed flow: ``request → responseheaders → chunks → response``, shared
notes ``mitmproxy.md`` appendix):

- ``load``: registers the options ``kimi_config`` (path of ``config.toml``) and
  ``kimi_verbose`` (also print mitmproxy's own flow lines for intercepted calls), and sets
  ``listen_host=127.0.0.1`` unless the user chose an interface, before any config is parsed.
- ``configure``: parses and checks the config once (:func:`.commands.checks.check_config`, the
  CLI's check too); sets ``allow_hosts`` (only LLM hosts are decrypted) and
  ``connection_strategy=lazy`` (required to reroute); logs one warning when no provider of the
  chain has its API key; unless ``kimi_verbose``, adds ``!~marker kimi-intercept`` to
  ``dumper_filter`` so mitmdump prints no flow line for an intercepted call, and hides
  mitmproxy's per-connection info lines (``client connect`` …; warnings stay). A bad config
  (any table, any unknown key) is one line naming the fix: at start, logged as an error and
  mitmdump exits with 1 before it listens (mitmproxy would print a chained traceback, listen,
  then exit); once running (``:set kimi_config=…``), an ``OptionsError`` that keeps the
  previous config.
- ``running``: prunes rows past ``[storage] retention_days``, reads the spend so far for
  ``[budget]``, starts the SQLite writer and the relay on mitmproxy's loop. A database that
  cannot be opened does not stop the proxy: the writer says so in one warning line and spools
  rows (``[storage] spool``) until it can.
- ``request``: an intercepted LLM call (any dialect) is planned (:mod:`.routing`, in a worker
  thread: it parses and serializes bodies of up to megabytes), parked in the
  relay under a one-shot id, and the flow is pointed at the relay. A call that cannot be
  planned — a body over ``[proxy] max_body_mb`` (before or after its ``Content-Encoding`` is
  undone, :mod:`.routing.body`), one that does not decode, not JSON, untranslatable, or a bug
  of ours — is never sent silently to its original host: it is answered with an error in the
  client's dialect (:mod:`.relay.refusal`) and recorded, or with ``[routing] on_plan_error =
  "passthrough"`` left to go there unchanged and recorded when its answer ends (``response`` /
  ``error``).
- ``responseheaders``: relay answers (and passed-through unplanned calls) are streamed
  (``flow.response.stream = True``), never buffered.
- every finished call: one console line (:func:`.relay.console.console_line`) in mitmproxy's
  log, as its row goes to the store writer.
- ``request`` also answers a WebSocket upgrade on ``/v1/responses`` of an intercepted host
  itself, at once (426, :mod:`.routing.websocket`): Codex then falls back to HTTPS.
- ``done`` (mitmproxy awaits it on SIGTERM/SIGINT, while its loop still serves connections):
  graceful shutdown — new LLM calls get a 503 in their dialect (row outcome ``shutdown``),
  answers in flight get ``[proxy] drain_s`` seconds, the rest are cut (outcome ``shutdown``,
  no provider penalty; a second signal cuts at once), then the relay stops, the writer
  flushes every row, and the OpenTelemetry export (``[otel]``) and the team store's shipper
  (``[team]``: it ships the local outbox in its own thread) flush too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
import threading
from typing import Any

from mitmproxy import ctx, exceptions, http

from kimi_intercept.accounting import tokens
from kimi_intercept.commands.checks import check_config, unusable_chain_warning
from kimi_intercept.commands.status import status_file_for
from kimi_intercept.config.budget import budget_settings
from kimi_intercept.config.cache import cache_settings
from kimi_intercept.config.discovery import find_config
from kimi_intercept.config.settings import Config, ConfigError, allow_hosts_patterns
from kimi_intercept.config.team import otel_settings, team_settings
from kimi_intercept.relay import offload
from kimi_intercept.relay.console import console_line
from kimi_intercept.relay.server import ROUTE_HEADER, Relay
from kimi_intercept.routing.body import BodyTooLarge, decoded_body
from kimi_intercept.routing.conversations import ConversationTracker
from kimi_intercept.routing.plan import Problem, RoutePlan, detect_dialect
from kimi_intercept.routing.unplanned import internal_problem, plan_or_reject, rejected_plan
from kimi_intercept.routing.websocket import REFUSAL_STATUS, is_responses_websocket, refusal_body
from kimi_intercept.sanitizer.prepare import Preparer
from kimi_intercept.storage import StoreWriter, prune_on_start, spool_path
from kimi_intercept.telemetry import Telemetry

log = logging.getLogger(__name__)

_METADATA_KEY = "kimi_intercept_route"
# Intercepted flows carry this marker; dumper_filter hides them unless kimi_verbose is set.
MARKER = "kimi-intercept"
_QUIET_FILTER = f"!~marker {MARKER}"


class _ConnectionNoise(logging.Filter):
    """Drops mitmproxy's per-connection info lines unless ``kimi_verbose`` is set."""

    verbose = False

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or record.levelno >= logging.WARNING


_CONNECTION_LOGGER = logging.getLogger("mitmproxy.proxy.server")
_UNPLANNED_KEY = "kimi_intercept_unplanned"  # a rejected plan passed through (on_plan_error)
_JSON = {"content-type": "application/json"}
_NOT_TO_RELAY = frozenset(
    {b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key", b"cookie",
     b"content-encoding"}
)  # fmt: skip
_LAST_RESORT = (
    b'{"error": {"message": "kimi-intercept failed on this request; see its log", '
    b'"type": "kimi_intercept_error", "param": null, "code": "internal_error"}}'
)


class KimiIntercept:
    def __init__(self) -> None:
        self.noise = _ConnectionNoise()
        self.cfg: Config | None = None
        self.preparer: Preparer | None = None
        self.relay: Relay | None = None
        self.writer: StoreWriter | None = None
        self.is_running = False
        self.conversations: ConversationTracker | None = None
        self.telemetry: Telemetry | None = None  # [otel]
        self.team: Any = None  # storage.team.TeamShipper when [team] url is set

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
            "Also print mitmproxy's own flow lines for intercepted LLM calls (by default each "
            "call shows only kimi-intercept's one-line summary).",
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
            cfg, preparer = checked.cfg, checked.preparer
            budget = budget_settings(cfg)  # checked already: [budget]
            self.cfg, self.preparer = cfg, preparer
            self.conversations = ConversationTracker(cfg.routing.conversation_idle_s)
            if self.relay is not None:
                self.relay.cfg, self.relay.preparer = cfg, preparer
                self.relay.budget.budget = budget
                self.relay.breaks.settings = cache_settings(cfg)
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

    def _record(self, row: dict[str, Any], attempts: list[dict[str, Any]], *extra: Any) -> None:
        """The relay's recorder: the row's line to the console, the row to the store writer."""
        assert self.writer is not None
        try:
            breaks = extra[0].get("cache_breaks", ()) if extra else ()
            self._console(console_line(row, attempts, breaks))
        except Exception:  # a formatting bug must not cost the row
            log.exception("kimi-intercept: could not format the console line of %s", row.get("id"))
        # after the line: printing it releases the GIL, which a woken writer thread would take
        self.writer.put(row, attempts, *extra)
        if self.telemetry is not None:
            self.telemetry.record(row, attempts)  # a queue put: exported by its own threads

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

    async def running(self) -> None:
        assert self.cfg is not None
        self.is_running = True
        await asyncio.to_thread(prune_on_start, self.cfg)  # retention; never raises
        # Never raises: a database that cannot be opened is logged (with where rows spool).
        self.writer = StoreWriter(self.cfg.database, spool=spool_path(self.cfg))
        team = team_settings(self.cfg)  # checked already, as [otel]
        if (otel := otel_settings(self.cfg)).enabled:
            self.telemetry = await asyncio.to_thread(
                Telemetry, self.cfg, otel.capture_content, team.developer
            )
        if team.enabled:  # ships the local outbox in a thread
            from kimi_intercept.storage.team import TeamShipper

            self.team = TeamShipper(self.cfg.database, team.url, team.developer,
                                    team.sync_interval_s)  # fmt: skip
        self.relay = Relay(
            self.cfg,
            self._record,
            status_path=status_file_for(self.cfg.database),
            preparer=self.preparer,
        )
        # spend so far today / this month, from the store (the budget counts on from there)
        await asyncio.to_thread(self.relay.budget.reconcile, self.cfg.database)
        port = await self.relay.start()
        threading.Thread(target=_warm_tokenizer, name="kimi-tokenizer", daemon=True).start()
        log.info(
            "kimi-intercept: ready — relay on 127.0.0.1:%d, %d LLM hosts intercepted, "
            "route %s (share %g%%), database %s",
            port,
            len(self.cfg.hosts),
            " → ".join(p.name for p in self.cfg.chain)
            + (" (no provider has an API key)" if unusable_chain_warning(self.cfg) else ""),
            self.cfg.routing.share,
            self.cfg.database,
        )

    async def done(self) -> None:
        _CONNECTION_LOGGER.removeFilter(self.noise)
        if self.relay is not None:
            _on_second_signal(self.relay.inflight.cut_all)
            await self.relay.drain(self.cfg.drain_s if self.cfg is not None else 0.0)
            await self.relay.stop()
        if self.writer is not None:
            self.writer.close()
        if self.telemetry is not None:
            await asyncio.to_thread(self.telemetry.close)
        if self.team is not None:
            await asyncio.to_thread(self.team.close)  # one last shipment, bounded

    async def request(self, flow: http.HTTPFlow) -> None:
        if self.relay is None or self.relay.port is None or self.cfg is None:
            return
        self.relay.arriving += 1  # a shutdown waits for it (drain)
        try:
            await self._route(flow)
        except Exception as e:  # a bug of ours after planning: never fail open silently
            log.exception("kimi-intercept: could not route %s %s", flow.request.method,
                          _logged_url(flow))  # fmt: skip
            if flow.response is None and _METADATA_KEY not in flow.metadata:
                try:
                    self._unplanned(flow, self._rejected(flow, internal_problem(e)))
                except Exception:  # not even a row: still no silent fail-open
                    log.exception("kimi-intercept: could not answer or record the failure")
                    if self.cfg.routing.on_plan_error == "error":
                        flow.response = http.Response.make(500, _LAST_RESORT, _JSON)
        finally:
            self.relay.arriving -= 1

    def _rejected(self, flow: http.HTTPFlow, problem: Problem) -> RoutePlan:
        req, peer = flow.request, flow.client_conn.peername
        return rejected_plan(
            problem, method=req.method, host=req.pretty_host, path=req.path,
            headers=list(req.headers.items(multi=True)), client_host=peer[0] if peer else None,
            started=req.timestamp_start,
        )  # fmt: skip

    def _unplanned(self, flow: http.HTTPFlow, plan: RoutePlan) -> None:
        """Answer a ``rejected`` plan in the client's dialect and record it, or (``[routing]
        on_plan_error = "passthrough"``) leave the flow to its original host, recorded when
        its answer ends."""
        assert self.relay is not None and self.cfg is not None
        flow.marked = MARKER  # its console line is the summary; no mitmproxy flow line
        problem = plan.problem
        reason = problem.message if problem else "?"
        if self.cfg.routing.on_plan_error == "passthrough":
            log.warning("kimi-intercept: %s %s cannot be planned (%s); passed through unchanged "
                        "(on_plan_error = passthrough)", flow.request.method,
                        _logged_url(flow), reason)  # fmt: skip
            flow.metadata[_UNPLANNED_KEY] = plan
            return
        status, headers, body = self.relay.reject(plan)
        log.warning("kimi-intercept: %s %s answered %d: %s", flow.request.method,
                    _logged_url(flow), status, reason)  # fmt: skip
        flow.response = http.Response.make(status, body, headers)

    async def _route(self, flow: http.HTTPFlow) -> None:
        assert self.relay is not None and self.cfg is not None
        req = flow.request
        if req.raw_content is None or req.pretty_host not in self.cfg.hosts:
            return
        if is_responses_websocket(req.method, req.path, req.headers.items(multi=True)):
            log.info("kimi-intercept: refused a Responses WebSocket upgrade (%s)", req.pretty_url)
            flow.response = http.Response.make(REFUSAL_STATUS, refusal_body(), _JSON)
            return  # Codex then sends the turn as POST /v1/responses at once
        if detect_dialect(req.method, req.path) is None:
            return  # not an LLM call: mitmproxy's
        limit = int(self.cfg.max_body_mb * 1024 * 1024)
        too_large = Problem(413, "request_too_large",
                            f"the request body is over [proxy] max_body_mb = "
                            f"{self.cfg.max_body_mb:g} MB")  # fmt: skip
        if len(req.raw_content) > limit:
            return self._unplanned(flow, self._rejected(flow, too_large))
        encoding = req.headers.get("content-encoding", "")
        try:  # gzip, deflate, br, zstd undone, stopping at the limit (no zip bomb)
            body = decoded_body(req.raw_content, encoding, limit)
        except BodyTooLarge:
            return self._unplanned(flow, self._rejected(flow, too_large))
        except ValueError as e:
            why = f"cannot decode the request body (Content-Encoding: {encoding}): {e}"
            bad = Problem(400, "invalid_request", why)
            return self._unplanned(flow, self._rejected(flow, bad))
        peer = flow.client_conn.peername
        # Planning parses, translates and serializes bodies of up to megabytes (~7-9 ms for
        # 0.5-1 MB): a worker thread for big ones, so other streams on mitmproxy's loop never
        # wait for it; small ones inline (a thread hop costs more than planning them).
        plan = await offload.sized(
            len(body),
            functools.partial(
                plan_or_reject,
                self.cfg,
                method=req.method,
                url=req.pretty_url,
                host=req.pretty_host,
                path=req.path,
                headers=list(req.headers.items(multi=True)),
                body=body,
                client_host=peer[0] if peer else None,
                started=req.timestamp_start,
                tracker=self.conversations,
            ),
        )
        if plan is None:
            return
        if plan.kind == "rejected":
            return self._unplanned(flow, plan)
        route_id = self.relay.park(plan)
        flow.metadata[_METADATA_KEY] = route_id
        flow.marked = MARKER
        # The plan holds the body and any keys; the hop to the relay carries neither (nor a
        # Content-Encoding: there is no body to decode). One pass over the header fields.
        req.headers = http.Headers(
            [(k, v) for k, v in req.headers.fields if k.lower() not in _NOT_TO_RELAY]
            + [(ROUTE_HEADER.encode(), route_id.encode())]
        )
        req.content = b""
        # no query: Gemini clients may carry their key there (?key=…), and mitmdump logs URLs.
        # The fields one by one: setting ``url`` parses and validates it again.
        req.scheme, req.port = "http", self.relay.port
        req.host = "127.0.0.1"
        req.path = req.path.partition("?")[0]

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        routed = _METADATA_KEY in flow.metadata or _UNPLANNED_KEY in flow.metadata
        if routed and flow.response is not None:
            flow.response.stream = True

    def response(self, flow: http.HTTPFlow) -> None:
        if (route_id := flow.metadata.get(_METADATA_KEY)) and self.relay is not None:
            self.relay.answered(route_id)  # the client has it all: its row may be built now
        plan = flow.metadata.pop(_UNPLANNED_KEY, None)
        if plan is not None and self.relay is not None and flow.response is not None:
            self.relay.record_passed(plan, flow.response.status_code, None)

    def error(self, flow: http.HTTPFlow) -> None:
        route_id = flow.metadata.get(_METADATA_KEY)
        if route_id and self.relay is not None:
            self.relay.discard(route_id)  # never reached the relay: drop the parked plan
            self.relay.answered(route_id)
        plan = flow.metadata.pop(_UNPLANNED_KEY, None)
        if plan is not None and self.relay is not None:
            status = flow.response.status_code if flow.response is not None else None
            self.relay.record_passed(plan, status, flow.error.msg if flow.error else "error")


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


def _warm_tokenizer() -> None:
    """Load the tokenizer once, off the event loop, so the first estimate is quick."""
    try:
        tokens.prepare_offline_cache()
        tokens.encoding()
    except Exception as e:  # estimates will report their own failure later
        log.warning("kimi-intercept: tokenizer unavailable, estimates will be missing: %s", e)
