"""The mitmproxy addon — the only module that imports mitmproxy.

Hooks (order on a streamed flow: ``request → responseheaders → chunks → response``, shared
notes ``mitmproxy.md`` appendix):

- ``load``: registers the option ``kimi_config`` (path of ``config.toml``).
- ``configure``: parses the config once; sets ``allow_hosts`` (only LLM hosts are decrypted),
  ``connection_strategy=lazy`` (required to reroute), and ``listen_host=127.0.0.1`` unless the
  user chose an interface. A bad config (any table: routing rules, ``[sanitizer]``, ``[prices]``
  …) raises ``OptionsError`` naming the fix.
- ``running``: prunes rows past ``[storage] retention_days``, starts the SQLite writer and the
  relay on mitmproxy's loop.
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
- ``done``: stops the relay and flushes the writer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from mitmproxy import ctx, exceptions, http

from kimi_intercept.accounting import tokens
from kimi_intercept.accounting.prices import price_book
from kimi_intercept.commands.importers import import_config
from kimi_intercept.commands.status import status_file_for
from kimi_intercept.config.settings import Config, ConfigError, allow_hosts_patterns, load_config
from kimi_intercept.relay.server import ROUTE_HEADER, Relay
from kimi_intercept.routing.body import BodyTooLarge, decoded_body
from kimi_intercept.routing.plan import Problem, RoutePlan, detect_dialect
from kimi_intercept.routing.unplanned import internal_problem, plan_or_reject, rejected_plan
from kimi_intercept.sanitizer.prepare import Preparer
from kimi_intercept.storage import StoreWriter, prune_on_start, retention_days

log = logging.getLogger(__name__)

_METADATA_KEY = "kimi_intercept_route"
_UNPLANNED_KEY = "kimi_intercept_unplanned"  # a rejected plan passed through (on_plan_error)
_JSON = {"content-type": "application/json"}
_LAST_RESORT = (
    b'{"error": {"message": "kimi-intercept failed on this request; see its log", '
    b'"type": "kimi_intercept_error", "param": null, "code": "internal_error"}}'
)


class KimiIntercept:
    def __init__(self) -> None:
        self.cfg: Config | None = None
        self.preparer: Preparer | None = None
        self.relay: Relay | None = None
        self.writer: StoreWriter | None = None

    def load(self, loader: Any) -> None:
        loader.add_option(
            "kimi_config",
            str,
            "config.toml",
            "Path of the kimi-intercept TOML configuration (a missing file means defaults).",
        )

    def configure(self, updated: set[str]) -> None:
        if "kimi_config" in updated:
            try:
                cfg = load_config(ctx.options.kimi_config)
                preparer = Preparer(cfg)  # validates [sanitizer] and [context]
                price_book(cfg)  # [prices]
                retention_days(cfg)  # [storage] retention_days
                import_config(cfg)  # [import]
            except ConfigError as e:
                raise exceptions.OptionsError(f"kimi_config: {e}") from e
            self.cfg, self.preparer = cfg, preparer
            if self.relay is not None:
                self.relay.cfg, self.relay.preparer = cfg, preparer
            changes: dict[str, Any] = {
                "allow_hosts": allow_hosts_patterns(cfg.hosts),
                "connection_strategy": "lazy",
            }
            if not ctx.options.listen_host:
                changes["listen_host"] = "127.0.0.1"
            ctx.options.update(**changes)
            for p in cfg.chain:
                if not p.api_key:
                    log.warning("kimi-intercept: %s; it will be skipped", p.missing_key_hint())

    async def running(self) -> None:
        assert self.cfg is not None
        await asyncio.to_thread(prune_on_start, self.cfg)  # retention; never raises
        self.writer = StoreWriter(self.cfg.database)
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
            " → ".join(p.name for p in self.cfg.chain),
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
        # 0.5-1 MB): a worker thread, so other streams on mitmproxy's loop never wait for it.
        plan = await asyncio.to_thread(
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
        )
        if plan is None:
            return
        if plan.kind == "rejected":
            return self._unplanned(flow, plan)
        route_id = self.relay.park(plan)
        flow.metadata[_METADATA_KEY] = route_id
        # The plan holds the body and any keys; the hop to the relay carries neither.
        for name in ("authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie"):
            req.headers.pop(name, None)
        req.headers.pop("content-encoding", None)  # the relay hop carries no body to decode
        req.content = b""
        # no query: Gemini clients may carry their key there (?key=…), and mitmdump logs URLs
        req.url = f"http://127.0.0.1:{self.relay.port}{req.path.partition('?')[0]}"
        req.headers[ROUTE_HEADER] = route_id

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        routed = _METADATA_KEY in flow.metadata or _UNPLANNED_KEY in flow.metadata
        if routed and flow.response is not None:
            flow.response.stream = True

    def response(self, flow: http.HTTPFlow) -> None:
        plan = flow.metadata.pop(_UNPLANNED_KEY, None)
        if plan is not None and self.relay is not None and flow.response is not None:
            self.relay.record_passed(plan, flow.response.status_code, None)

    def error(self, flow: http.HTTPFlow) -> None:
        route_id = flow.metadata.get(_METADATA_KEY)
        if route_id and self.relay is not None:
            self.relay.discard(route_id)  # never reached the relay: drop the parked plan
        plan = flow.metadata.pop(_UNPLANNED_KEY, None)
        if plan is not None and self.relay is not None:
            status = flow.response.status_code if flow.response is not None else None
            self.relay.record_passed(plan, status, flow.error.msg if flow.error else "error")


def _logged_url(flow: http.HTTPFlow) -> str:
    """The URL without its query: Gemini clients may carry their key there (``?key=…``)."""
    return flow.request.pretty_url.partition("?")[0]


def _warm_tokenizer() -> None:
    """Load the tokenizer once, off the event loop, so the first estimate is quick."""
    try:
        tokens.prepare_offline_cache()
        tokens.encoding()
    except Exception as e:  # estimates will report their own failure later
        log.warning("kimi-intercept: tokenizer unavailable, estimates will be missing: %s", e)
