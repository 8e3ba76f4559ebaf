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

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kimi_intercept.accounting.pricing import cost_usd_at
from kimi_intercept.accounting.usage import Usage
from kimi_intercept.commands.ledgers import (  # noqa: F401 (re-exported)
    LedgerError,
    MalformedLedger,
    RefusedPath,
    parse_cline,
    parse_continue,
)
from kimi_intercept.config.keys import unknown_key_message
from kimi_intercept.config.settings import Config, ConfigError
from kimi_intercept.storage import open_db

MAX_BYTES = 512 * 1024 * 1024


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
    if message := unknown_key_message(table, SOURCES, "[import]"):
        raise ConfigError(message)
    out = {}
    for key, value in table.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"import.{key} must be the path of {SOURCES[key].label}'s "
                f"{SOURCES[key].file_name}, got {value!r}"
            )
        out[key] = cfg.resolve_path(os.path.expandvars(value))
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


def _abs(path: Path) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))
