"""Shadow mode: mirror a share of requests to a second provider, in the background, and compare.

``[routing.shadow] provider = "deepseek"``, ``share = 10`` (percent; off when the table is
absent). It spends money: every mirrored request is billed by the shadow provider too. The
mirror starts with the client's request, on its own task: it never delays or changes the
client's answer. Its answer is read whole (streamed when the client's was), metered like any
answer, and compared with the answer the client got by a cheap similarity (word-set Jaccard).
One ``shadow`` row per mirrored request: latency, time to first byte, tokens, cost, outcome,
similarity. The design's migration tester, run on live traffic.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from typing import Any

import aiohttp

from kimi_intercept.accounting import pricing
from kimi_intercept.config.rules import ChainEntry
from kimi_intercept.config.settings import Config, Routing
from kimi_intercept.dialects.bridge import Bridge
from kimi_intercept.relay.failures import classify_response, redact
from kimi_intercept.relay.upstream import Upstream
from kimi_intercept.routing.plan import RoutePlan, iso_utc
from kimi_intercept.routing.targets import reroute_targets

_WORD = re.compile(r"\w+", re.UNICODE)


def similarity(a: str, b: str) -> float | None:
    """Word-set Jaccard similarity in [0, 1] (1: the same words); ``None`` if both are empty."""
    wa, wb = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    if not wa and not wb:
        return None
    return round(len(wa & wb) / len(wa | wb), 4)


def wanted(rc: Routing, plan: RoutePlan, rng: random.Random) -> bool:
    return (
        rc.shadow_provider is not None
        and plan.kind == "reroute"
        and plan.dialect != "responses"
        and rng.random() * 100 < rc.shadow_share
    )


async def mirror(cfg: Config, sender: Upstream, plan: RoutePlan) -> dict[str, Any]:
    """Send the request to the shadow provider and read the whole answer; the ``shadow`` row
    (without ``request_id`` and ``similarity``, which the caller adds). Never raises."""
    name = cfg.routing.shadow_provider or ""
    started = time.time()
    row: dict[str, Any] = {
        "id": uuid.uuid4().hex, "started_at": iso_utc(started), "shadow_provider": name,
        "outcome": "error",
    }  # fmt: skip
    try:
        [target] = reroute_targets(
            cfg, client_dialect=plan.dialect, native=plan.native, hub=plan.request_json or None,
            hub_error=None, client_model=plan.client_model, stream=plan.stream,
            headers=[], chain=[ChainEntry(name)],
        )  # fmt: skip
        row["shadow_model"] = target.model
        if target.skip_reason:
            row["error"] = target.skip_reason
            return row
        assert sender.session is not None
        timeout = aiohttp.ClientTimeout(total=600, sock_connect=cfg.routing.connect_timeout_s)
        async with sender.session.post(
            target.url, data=target.body, headers=target.headers, timeout=timeout
        ) as resp:
            sse = resp.headers.get("content-type", "").startswith("text/event-stream")
            meter = Bridge(plan.dialect, target.dialect, target.model).meter(sse)
            ttft = None
            async for chunk in resp.content.iter_any():
                ttft = ttft if ttft is not None else (time.time() - started) * 1000
                meter.feed(chunk)
            meter.finish()
            row["status_code"] = resp.status
            if resp.status >= 400:
                failure = classify_response(resp.status, resp.headers, meter.body_bytes())
                row["error"] = f"{failure.kind}: {failure.message}" if failure else None
            else:
                row["outcome"] = "ok"
        usage = meter.usage
        row.update(
            ttft_ms=round(ttft, 2) if ttft is not None else None,
            duration_ms=round((time.time() - started) * 1000, 2),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            cached_tokens=usage.cached_tokens if usage else None,
            cost_usd=pricing.cost_usd(target.model_info, usage) if usage else None,
            _text=meter.answer_text if hasattr(meter, "answer_text") else meter.completion_text,
        )
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as e:
        row["error"] = redact(f"{type(e).__name__}: {e}")
        row["duration_ms"] = round((time.time() - started) * 1000, 2)
    return row


def finish_row(row: dict[str, Any], request_row: dict[str, Any], answer: str) -> dict[str, Any]:
    """The ``shadow`` row, tied to the client's request and compared with its answer."""
    text = row.pop("_text", None)
    row.update(
        request_id=request_row["id"],
        primary_provider=request_row.get("provider"),
        primary_model=request_row.get("model"),
        primary_outcome=request_row.get("outcome"),
        primary_ttft_ms=request_row.get("ttft_ms"),
        primary_duration_ms=request_row.get("duration_ms"),
        primary_cost_usd=request_row.get("cost_usd"),
        similarity=similarity(answer, text) if text is not None else None,
    )
    return row
