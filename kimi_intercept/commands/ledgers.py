"""Reading the ledgers of other tools into ``requests`` rows (pure: bytes in, rows out):
Cline's ``taskHistory.json`` (:func:`parse_cline`) and Continue's ``tokensGenerated.jsonl``
(:func:`parse_continue`), with the importers' errors. Which file may be read, and writing the
rows, is :mod:`.importers`.

Shapes: Cline's ``HistoryItem`` (``id, ts, tokensIn, tokensOut, cacheWrites, cacheReads,
totalCost, modelId``; src/shared/HistoryItem.ts in cline/cline) and Continue's dev-data event
``tokensGenerated`` (``timestamp, model, provider, promptTokens, generatedTokens``;
https://docs.continue.dev/customize/deep-dives/development-data).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


class LedgerError(ValueError):
    """The ledger cannot be imported; the message names the path and the fix."""


class RefusedPath(LedgerError):
    """Not the one regular file this importer may read."""


class MalformedLedger(LedgerError):
    """Not valid JSON, or not the shape the tool writes."""


def parse_cline(data: bytes, path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (without cost) from a Cline ``taskHistory.json``, and why items were skipped."""
    doc = _json(data, path)
    if not isinstance(doc, list):
        raise MalformedLedger(f"{path}: expected a JSON array of tasks, got {type(doc).__name__}")
    rows, skipped = [], []
    for n, item in enumerate(doc):
        where = f"item {n}"
        try:
            if not isinstance(item, dict):
                raise _Skip("not an object")
            task_id = item.get("id")
            if not isinstance(task_id, (str, int)) or isinstance(task_id, bool) or task_id == "":
                raise _Skip("no id")
            where = f"task {str(task_id)[:40]}"
            ts = _number(item, "ts", required=True)
            tokens_in = _number(item, "tokensIn") or 0
            tokens_out = _number(item, "tokensOut") or 0
            writes = _number(item, "cacheWrites") or 0
            reads = _number(item, "cacheReads") or 0
            total_cost = _number(item, "totalCost")
            model = item.get("modelId")
            model = model[:200] if isinstance(model, str) and model else None
        except _Skip as e:
            skipped.append(f"{where}: {e}")
            continue
        # Anthropic-style providers report input without cache reads/writes; OpenAI-style
        # (Kimi, DeepSeek, OpenRouter…) include the cached tokens in the input already.
        excludes_cache = reads + writes > tokens_in or (
            bool(model) and model.lower().startswith(("claude", "anthropic/"))
        )
        prompt = tokens_in + reads + writes if excludes_cache else tokens_in
        raw = {"tokensIn": tokens_in, "tokensOut": tokens_out, "cacheWrites": writes,
               "cacheReads": reads, "totalCost": total_cost}  # fmt: skip
        rows.append(
            _row(
                "cline",
                _stable_id("cline", str(task_id)),
                _iso(ts, where),
                model,
                int(prompt),
                int(tokens_out),
                int(min(reads, prompt)),
                cache_writes=int(min(writes, prompt - min(reads, prompt))),
                conversation=hashlib.sha256(f"import:cline:{task_id}".encode()).hexdigest(),
                details={k: v for k, v in raw.items() if v is not None},
                ledger_cost=total_cost,
            )
        )
    return rows, skipped


def parse_continue(data: bytes, path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (without cost) from a Continue ``tokensGenerated.jsonl``, and skipped lines."""
    text = _text(data, path)
    lines = text.split("\n")
    rows, skipped = [], []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = _loads(line, path, f"line {n}: ")
        except json.JSONDecodeError as e:
            if n == len(lines) and not text.endswith("\n"):  # being appended right now
                skipped.append(f"line {n}: incomplete last line")
                continue
            raise MalformedLedger(
                f"{path}: line {n}, column {e.colno}: not valid JSON ({e.msg}); fix or remove "
                "that line and import again"
            ) from None
        try:
            if not isinstance(item, dict):
                raise _Skip("not an object")
            if item.get("eventName", "tokensGenerated") != "tokensGenerated":
                continue
            when = item.get("timestamp")
            if isinstance(when, bool) or not isinstance(when, (str, int, float)):
                raise _Skip("no timestamp")
            prompt = _number(item, "promptTokens") or 0
            completion = _number(item, "generatedTokens") or 0
            model = item.get("model")
            model = model[:200] if isinstance(model, str) and model else None
            provider = item.get("provider")
            started = _iso(when, f"line {n}")
        except _Skip as e:
            skipped.append(f"line {n}: {e}")
            continue
        key = json.dumps([started, model, provider, prompt, completion])
        seen[key] = seen.get(key, 0) + 1
        digest = hashlib.sha256(f"{key}#{seen[key]}".encode()).hexdigest()[:32]
        details = {"provider": provider[:100]} if isinstance(provider, str) and provider else {}
        rows.append(
            _row("continue", f"import:continue:{digest}", started, model, int(prompt),
                 int(completion), None, details=details)
        )  # fmt: skip
    return rows, skipped


def _row(
    tool: str,
    row_id: str,
    started_at: str,
    model: str | None,
    prompt: int,
    completion: int,
    cached: int | None,
    *,
    cache_writes: int | None = None,
    conversation: str | None = None,
    details: Mapping[str, Any] | None = None,
    ledger_cost: float | None = None,
) -> dict[str, Any]:
    return {
        "id": row_id,
        "started_at": started_at,
        "client": tool,
        "client_model": model,
        "model": model,
        "outcome": "ok",
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": cached,
        "cache_write_tokens": cache_writes,
        "usage_source": "ledger",
        "route": f"import:{tool}",
        "conversation_id": conversation,
        "details": json.dumps(dict(details or {}), sort_keys=True),
        "_ledger_cost": ledger_cost,
    }


class _Skip(Exception):
    pass


def _number(item: Mapping[str, Any], key: str, required: bool = False) -> float | None:
    v = item.get(key)
    if v is None:
        if required:
            raise _Skip(f"no {key}")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != v:
        raise _Skip(f"{key} is not a number >= 0: {str(v)[:40]!r}")
    return v


def _iso(when: Any, where: str) -> str:
    """Epoch seconds/milliseconds or an ISO 8601 string → ``2026-11-21T23:54:42.123Z``."""
    try:
        if isinstance(when, (int, float)):
            seconds = when / 1000 if when > 1e11 else when
            dt = datetime.fromtimestamp(seconds, timezone.utc)
        else:
            dt = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
            dt = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt
    except (ValueError, OverflowError, OSError):
        raise _Skip(f"bad time {str(when)[:40]!r}") from None
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _stable_id(tool: str, key: str) -> str:
    if re.fullmatch(r"[0-9A-Za-z_.-]{1,100}", key):
        return f"import:{tool}:{key}"
    return f"import:{tool}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def _text(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise MalformedLedger(f"{path}: line {line}: not UTF-8 text") from None


def _loads(text: str, path: Path, where: str = "") -> Any:
    """``json.loads``, with nesting too deep for Python's parser (a RecursionError, about
    1,000 levels; no ledger nests more than a few) as :class:`MalformedLedger`."""
    try:
        return json.loads(text)
    except RecursionError:
        raise MalformedLedger(
            f"{path}: {where}JSON nested too deeply to be a ledger (arrays or objects inside "
            "each other about a thousand times); check that this is the right file"
        ) from None


def _json(data: bytes, path: Path) -> Any:
    try:
        return _loads(_text(data, path), path)
    except json.JSONDecodeError as e:
        raise MalformedLedger(
            f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})"
        ) from None
