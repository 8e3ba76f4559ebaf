"""The mitmproxy addon — the only module that imports mitmproxy.

Hooks (order on a streamed flow: ``request → responseheaders → chunks → response``, shared
notes ``mitmproxy.md`` appendix):

- ``load``: registers the option ``kimi_config`` (path of ``config.toml``) and sets
  ``listen_host=127.0.0.1`` unless the user chose an interface, before any config is parsed.
- ``configure``: parses and checks the config once (:func:`.commands.checks.check_config`, the
  CLI's check too); sets ``allow_hosts`` (only LLM hosts are decrypted) and
  ``connection_strategy=lazy`` (required to reroute); logs one warning when no provider of the
  chain has its API key. A bad config (any table, any unknown key) is one line naming the fix:
  at start, logged as an error and mitmdump exits with 1 before it listens (mitmproxy would
  print a chained traceback, listen, then exit); once running (``:set kimi_config=…``), an
  ``OptionsError`` that keeps the previous config.
- ``running``: prunes rows past ``[storage] retention_days``, starts the SQLite writer and the
  relay on mitmproxy's loop. A database that cannot be opened does not stop the proxy: the
  writer says so in one warning line and spools rows (``[storage] spool``) until it can.
- ``request``: an intercepted LLM call (any dialect) is planned (:mod:`.routing`, in a worker
  thread: it parses and serializes bodies of up to megabytes), parked in the
  relay under a one-shot id, and the flow is pointed at the relay. Any bug of ours leaves the
  flow untouched, so the IDE's request still reaches its original host, and is logged.
- ``request`` also refuses a WebSocket upgrade on ``/v1/responses`` of an intercepted host at
  once (426, :mod:`.routing.websocket`): Codex then falls back to ``POST /v1/responses``.
- ``responseheaders``: relay answers are streamed (``flow.response.stream = True``), never
  buffered.
- ``done``: stops the relay and flushes the writer.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import Any

from mitmproxy import ctx, exceptions, http

from kimi_intercept.accounting import tokens
from kimi_intercept.commands.checks import check_config, unusable_chain_warning
from kimi_intercept.commands.status import status_file_for
from kimi_intercept.config.discovery import find_config
from kimi_intercept.config.settings import Config, ConfigError, allow_hosts_patterns
from kimi_intercept.relay.server import ROUTE_HEADER, Relay
from kimi_intercept.routing.conversations import ConversationTracker
from kimi_intercept.routing.plan import plan_route
from kimi_intercept.routing.websocket import REFUSAL_STATUS, is_responses_websocket, refusal_body
from kimi_intercept.sanitizer.prepare import Preparer
from kimi_intercept.storage import StoreWriter, prune_on_start, spool_path

log = logging.getLogger(__name__)

_METADATA_KEY = "kimi_intercept_route"


class KimiIntercept:
    def __init__(self) -> None:
        self.cfg: Config | None = None
        self.preparer: Preparer | None = None
        self.relay: Relay | None = None
        self.writer: StoreWriter | None = None
        self.is_running = False
        self.conversations: ConversationTracker | None = None

    def load(self, loader: Any) -> None:
        loader.add_option(
            "kimi_config",
            str,
            "",
            "Path of the kimi-intercept TOML configuration. Empty: $KIMI_INTERCEPT_CONFIG, then "
            "./config.toml, then the user config folder (built-in defaults if none exists).",
        )
        # Before the config is parsed: never listen on every interface, even briefly.
        if "listen_host" in ctx.options and not ctx.options.listen_host:
            ctx.options.update(listen_host="127.0.0.1")

    def configure(self, updated: set[str]) -> None:
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
            self.cfg, self.preparer = cfg, preparer
            self.conversations = ConversationTracker(cfg.routing.conversation_idle_s)
            if self.relay is not None:
                self.relay.cfg, self.relay.preparer = cfg, preparer
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

    async def running(self) -> None:
        assert self.cfg is not None
        self.is_running = True
        await asyncio.to_thread(prune_on_start, self.cfg)  # retention; never raises
        # Never raises: a database that cannot be opened is logged (with where rows spool).
        self.writer = StoreWriter(self.cfg.database, spool=spool_path(self.cfg))
        self.relay = Relay(
            self.cfg,
            self.writer.put,
            status_path=status_file_for(self.cfg.database),
            preparer=self.preparer,
        )
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
        if self.relay is not None:
            await self.relay.stop()
        if self.writer is not None:
            self.writer.close()

    async def request(self, flow: http.HTTPFlow) -> None:
        if self.relay is None or self.relay.port is None or self.cfg is None:
            return
        try:
            await self._route(flow)
        except Exception:
            log.exception(
                "kimi-intercept: could not route %s %s; it goes to its original host untouched",
                flow.request.method,
                flow.request.pretty_url,
            )

    async def _route(self, flow: http.HTTPFlow) -> None:
        assert self.relay is not None and self.cfg is not None
        req = flow.request
        if req.pretty_host not in self.cfg.hosts:
            return
        if is_responses_websocket(req.method, req.path, req.headers.items(multi=True)):
            log.info("kimi-intercept: refused a Responses WebSocket upgrade (%s)", req.pretty_url)
            flow.response = http.Response.make(
                REFUSAL_STATUS, refusal_body(), {"content-type": "application/json"}
            )
            return
        if req.content is None:
            return
        peer = flow.client_conn.peername
        # Planning parses, translates and serializes bodies of up to megabytes (~7-9 ms for
        # 0.5-1 MB): a worker thread, so other streams on mitmproxy's loop never wait for it.
        plan = await asyncio.to_thread(
            plan_route,
            self.cfg,
            method=req.method,
            url=req.pretty_url,
            host=req.pretty_host,
            path=req.path,
            headers=list(req.headers.items(multi=True)),
            body=req.content,
            client_host=peer[0] if peer else None,
            started=req.timestamp_start,
            tracker=self.conversations,
        )
        if plan is None:
            return
        route_id = self.relay.park(plan)
        flow.metadata[_METADATA_KEY] = route_id
        # The plan holds the body and any keys; the hop to the relay carries neither.
        for name in ("authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie"):
            req.headers.pop(name, None)
        req.content = b""
        # no query: Gemini clients may carry their key there (?key=…), and mitmdump logs URLs
        req.url = f"http://127.0.0.1:{self.relay.port}{req.path.partition('?')[0]}"
        req.headers[ROUTE_HEADER] = route_id

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if _METADATA_KEY in flow.metadata and flow.response is not None:
            flow.response.stream = True

    def error(self, flow: http.HTTPFlow) -> None:
        route_id = flow.metadata.get(_METADATA_KEY)
        if route_id and self.relay is not None:
            self.relay.discard(route_id)  # never reached the relay: drop the parked plan


def _warm_tokenizer() -> None:
    """Load the tokenizer once, off the event loop, so the first estimate is quick."""
    try:
        tokens.prepare_offline_cache()
        tokens.encoding()
    except Exception as e:  # estimates will report their own failure later
        log.warning("kimi-intercept: tokenizer unavailable, estimates will be missing: %s", e)
