"""Read-only importers of other tools' local usage ledgers, into the same ``requests`` table.

- **Cline** ``taskHistory.json``: a JSON array of tasks (``id, ts, tokensIn, tokensOut,
  cacheWrites, cacheReads, totalCost, modelId``); one row per task, updated when the task grew.
- **Continue** ``tokensGenerated.jsonl``: one JSON object per line (``timestamp, model,
  provider, promptTokens, generatedTokens``); one row per line.

Safety: exactly one file per source is read — the one named in ``[import]`` (``cline = "…"``,
``continue = "…"``), or else the path given on the command line, which must then carry the
ledger's own file name, or else the tool's default location. A symlink, a directory, a device
or any other path is refused; the file is opened with ``O_NOFOLLOW`` and never written. Only
numbers, the model name and the time are stored — never a task's or prompt's text.

Rows get stable ids (``import:cline:<task id>``; for Continue a hash of the line's numbers and
its occurrence), so importing twice never duplicates; they are marked ``route =
'import:cline'`` / ``'import:continue'``, ``usage_source = 'ledger'``, ``client`` = the tool.
Cost: our price table at the row's day (:func:`~.pricing.cost_usd_at`); for a model
it does not know, Cline's own ``totalCost`` (``cost_source = 'ledger'``); else unpriced.

Errors::

    ValueError
     └── LedgerError          the file cannot be imported (message names the path and the fix)
          ├── RefusedPath     a symlink, a directory, another path than the allowed one
          └── MalformedLedger not JSON (with the line and column), or not the expected shape
    ConfigError               a malformed ``[import]`` table
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kimi_intercept.accounting.pricing import cost_usd_at
from kimi_intercept.accounting.usage import Usage
from kimi_intercept.config.settings import Config, ConfigError
from kimi_intercept.storage import open_db

MAX_BYTES = 512 * 1024 * 1024


class LedgerError(ValueError):
    """The ledger cannot be imported; the message names the path and the fix."""


class RefusedPath(LedgerError):
    """Not the one regular file this importer may read."""


class MalformedLedger(LedgerError):
    """Not valid JSON, or not the shape the tool writes."""


@dataclass(frozen=True)
class Source:
    name: str
    label: str
    file_name: str
    defaults: tuple[str, ...]


_VSCODE_STATE = "User/globalStorage/saoudrizwan.claude-dev/state/taskHistory.json"
SOURCES: dict[str, Source] = {
    "cline": Source(
        "cline",
        "Cline",
        "taskHistory.json",
        tuple(
            f"{base}/{app}/{_VSCODE_STATE}"
            for base in ("~/.config", "~/Library/Application Support", "$APPDATA")
            for app in ("Code", "Code - Insiders", "VSCodium", "Cursor")
        )
        + ("~/.cline/data/state/taskHistory.json",),
    ),
    "continue": Source(
        "continue",
        "Continue",
        "tokensGenerated.jsonl",
        ("~/.continue/dev_data/0.2.0/tokensGenerated.jsonl",),
    ),
}


@dataclass
class ImportResult:
    source: str
    path: Path
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        line = (
            f"Imported {SOURCES[self.source].label} ledger {self.path}: {self.added:,} new, "
            f"{self.updated:,} updated, {self.unchanged:,} unchanged"
        )
        if self.skipped:
            shown = "; ".join(self.skipped[:3])
            more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            line += f"; {len(self.skipped):,} skipped ({shown}{more})"
        return line + "."


def import_config(cfg: Config) -> dict[str, Path]:
    """The ``[import]`` table: ``{source: path}``.

    :raises ConfigError: for an unknown key or a value that is not a path
    """
    table = cfg.raw.get("import", {})
    if not isinstance(table, Mapping):
        raise ConfigError('[import] must be a table: cline = "PATH", continue = "PATH"')
    out = {}
    for key, value in table.items():
        if key not in SOURCES:
            raise ConfigError(f"import.{key} is not a known ledger; the keys are {sorted(SOURCES)}")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"import.{key} must be the path of {SOURCES[key].label}'s "
                f"{SOURCES[key].file_name}, got {value!r}"
            )
        out[key] = Path(os.path.expandvars(value)).expanduser()
    return out


def resolve_path(source: str, cfg: Config, given: Path | None) -> Path:
    """The one file ``source`` may be read from (see the module docstring).

    :raises RefusedPath: if ``given`` is not that file, or no file was found
    """
    spec = SOURCES[source]
    configured = import_config(cfg).get(source)
    if configured is not None:
        if given is not None and _abs(given) != _abs(configured):
            raise RefusedPath(
                f"{given}: only the file named in [import] {source} may be imported "
                f"({configured}); change that setting to import another file"
            )
        return configured
    if given is not None:
        if given.name != spec.file_name:
            raise RefusedPath(
                f"{given}: {spec.label}'s ledger is a file named {spec.file_name}; refusing "
                f"to read anything else (name the file in [import] {source} to be explicit)"
            )
        return given
    for candidate in spec.defaults:
        path = Path(os.path.expandvars(candidate)).expanduser()
        if "$" not in str(path) and os.path.lexists(path):
            return path
    raise RefusedPath(
        f"No {spec.label} {spec.file_name} found in the usual places; pass its path "
        f"(kimi-intercept import {source} PATH) or set [import] {source} in the config"
    )


def read_ledger(path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file (not a symlink), read-only.

    :raises RefusedPath: for a symlink, a directory, a device, a missing or too large file
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise RefusedPath(f"{path}: no such file") from None
    if stat.S_ISLNK(st.st_mode):
        raise RefusedPath(
            f"{path} is a symbolic link; refusing to follow it - give the path of the file itself"
        )
    if stat.S_ISDIR(st.st_mode):
        raise RefusedPath(f"{path} is a directory; give the path of the ledger file in it")
    if not stat.S_ISREG(st.st_mode):
        raise RefusedPath(f"{path} is not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise RefusedPath(f"{path}: cannot open it read-only: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        now = os.fstat(f.fileno())
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
            raise RefusedPath(f"{path} changed while it was opened; try again")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RefusedPath(f"{path} is larger than {max_bytes // 2**20} MiB; refusing to read it")
    return data


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
            item = json.loads(line)
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


_PARSERS = {"cline": parse_cline, "continue": parse_continue}
_UPDATABLE = ("started_at", "client_model", "model", "prompt_tokens", "completion_tokens",
              "cached_tokens", "cache_write_tokens", "cost_usd", "cost_source",
              "details")  # fmt: skip


def import_ledger(
    source: str, db_path: Path, cfg: Config, given: Path | None = None
) -> ImportResult:
    """Import ``source`` ("cline" or "continue") into the database at ``db_path``.

    :raises LedgerError: if the file is refused or malformed (nothing is written)
    :raises ConfigError: for a malformed ``[import]`` or ``[prices]`` table
    :raises sqlite3.Error: if the database cannot be written
    """
    if source not in SOURCES:
        raise LedgerError(f"unknown ledger {source!r}; known: {', '.join(SOURCES)}")
    path = resolve_path(source, cfg, given)
    rows, skipped = _PARSERS[source](read_ledger(path), path)
    for row in rows:
        _price(row, cfg)
    result = ImportResult(source, path, skipped=skipped)
    db = open_db(db_path)
    try:
        with db.atomic():
            existing = _existing(db, [r["id"] for r in rows])
            changed = []
            for row in rows:
                old = existing.get(row["id"])
                if old is None:
                    result.added += 1
                    changed.append(row)
                elif any(old[k] != row[k] for k in _UPDATABLE):
                    result.updated += 1
                    changed.append(row)
                else:
                    result.unchanged += 1
            if changed:
                db.table("requests").upsert_all(changed, pk="id")
    finally:
        db.close()
    return result


def _existing(db: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ", ".join("?" for _ in chunk)
        sql = f"SELECT id, {', '.join(_UPDATABLE)} FROM requests WHERE id IN ({marks})"
        out.update({r["id"]: r for r in db.query(sql, chunk)})
    return out


def _price(row: dict[str, Any], cfg: Config) -> None:
    ledger_cost = row.pop("_ledger_cost", None)
    usage = Usage(
        row["prompt_tokens"],
        row["completion_tokens"],
        row["cached_tokens"],
        cache_write_tokens=row.get("cache_write_tokens"),
    )
    cost = cost_usd_at(row["model"], usage, row["started_at"], cfg)
    if cost is None and ledger_cost is not None:
        row["cost_usd"], row["cost_source"] = round(float(ledger_cost), 9), "ledger"
    else:
        row["cost_usd"], row["cost_source"] = cost, None


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


def _json(data: bytes, path: Path) -> Any:
    try:
        return json.loads(_text(data, path))
    except json.JSONDecodeError as e:
        raise MalformedLedger(
            f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})"
        ) from None


def _abs(path: Path) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))
