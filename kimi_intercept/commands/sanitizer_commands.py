"""``kimi-intercept masked list|show`` (the sanitizer's stored originals) and
``kimi-intercept compress`` (what context compression would drop from a saved request)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kimi_intercept.commands.options import common_options, load, reading, resolve_db_path


@click.group()
def masked() -> None:
    """Tool outputs the sanitizer shortened (the masked table)."""


@masked.command()
@common_options
@click.argument("item_id")
def show(config_path: Path, db: Path | None, item_id: str) -> None:
    """Print the original of masked item ITEM_ID (the id in the marker
    "[kimi-intercept: … — id ITEM_ID]", or a unique start of it) exactly as it was."""
    db_path = resolve_db_path(config_path, db)
    with reading(db_path) as ro:
        found = ro.execute(
            "SELECT id FROM masked WHERE id >= ? AND id < ? ORDER BY id LIMIT 2",
            [item_id, item_id + "\U0010ffff"],
        ).fetchall()
        if not found or len(item_id) < 6:
            raise click.ClickException(
                f"No masked item {item_id!r} in {db_path} (give at least 6 characters of the id; "
                "originals are kept while [sanitizer] store_originals is on, for "
                "[storage] retention_days)"
            )
        if len(found) > 1:
            raise click.ClickException(f"{item_id!r} matches several items; give more of the id")
        from kimi_intercept.storage import read_masked

        original = read_masked(ro, found[0][0])
    if original is None:
        raise click.ClickException(
            f"Masked item {found[0][0]} was recorded without its original "
            "([sanitizer] store_originals = false)"
        )
    click.echo(original, nl=False)


@masked.command(name="list")
@common_options
@click.option("--limit", default=50, show_default=True, help="Newest first, at most this many")
def list_masked(config_path: Path, db: Path | None, limit: int) -> None:
    """The masked items: id, when, tool, kind, size and tokens before → after."""
    with reading(resolve_db_path(config_path, db)) as ro:
        found = ro.execute(
            "SELECT id, created_at, tool, kind, lines, bytes, tokens_before, tokens_after,"
            " original IS NOT NULL FROM masked ORDER BY created_at DESC, id LIMIT ?",
            [limit],
        ).fetchall()
    if not found:
        click.echo("Nothing masked yet.")
        return
    click.echo(f"{'id':<16}  {'created (UTC)':<19}  {'tool':<18} {'kind':<19} "
               f"{'lines':>7} {'bytes':>9} {'tokens before → after':>22}  original")  # fmt: skip
    for ident, at, tool, kind, lines, size, before, after, kept in found:
        click.echo(
            f"{ident:<16}  {(at or '')[:19].replace('T', ' '):<19}  {(tool or '–')[:18]:<18} "
            f"{(kind or '–')[:19]:<19} {lines or 0:>7,} {size or 0:>9,} "
            f"{f'{before or 0:,} → {after or 0:,}':>22}  {'kept' if kept else 'not kept'}"
        )


@click.command()
@common_options
@click.argument("request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dialect", type=click.Choice(["openai", "anthropic", "gemini"]),
              help="The request's dialect [default: guessed from its shape]")  # fmt: skip
@click.option(
    "--window",
    "window",
    type=int,
    help="Context window in tokens [default: the request model's, from the config]",
)
@click.option("--target", "target", type=float,
              help="Share of the window to compress down to [default: compress_at - 0.10; "
                   "0 lists everything that could go]")  # fmt: skip
def compress(
    config_path: Path,
    db: Path | None,
    request_file: Path,
    dialect: str | None,
    window: int | None,
    target: float | None,
) -> None:
    """Show what context compression would remove from a saved request body (JSON), and in
    which order — the request is not changed or sent."""
    import json

    from kimi_intercept.sanitizer.compress import ContextSettings, explain

    cfg = load(config_path)
    try:
        body = json.loads(request_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise click.ClickException(f"{request_file}: not a JSON request body ({e})") from e
    if not isinstance(body, dict):
        raise click.ClickException(f"{request_file}: a request body is a JSON object")
    dialect = dialect or _guess_dialect(body)
    if window is None:
        info = cfg.model_info(body.get("model") if isinstance(body.get("model"), str) else None)
        window = info.context_window if info else None
        if window is None:
            info = cfg.model_info(cfg.providers[cfg.routing.primary].model)
            window = info.context_window if info else None
    if not window:
        raise click.ClickException("Unknown context window: pass --window TOKENS")
    try:
        settings = ContextSettings.from_table(cfg.raw.get("context", {}) or {})
        lines = explain(dialect, body, context_window=window, settings=settings,
                        target_share=target)  # fmt: skip
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{request_file} ({dialect}), context window {window:,} tokens:")
    for line in lines:
        click.echo(f"  {line}")


def _guess_dialect(body: dict[str, Any]) -> str:
    """Gemini has ``contents``; Anthropic a top-level ``system`` or content blocks of its own
    kinds (``tool_use``, ``tool_result``, ``thinking``); else OpenAI."""
    if "contents" in body:
        return "gemini"
    if "system" in body:
        return "anthropic"
    for m in body.get("messages") or []:
        blocks = m.get("content") if isinstance(m, dict) else None
        if isinstance(blocks, list) and any(
            isinstance(b, dict) and b.get("type") in ("tool_use", "tool_result", "thinking")
            for b in blocks
        ):
            return "anthropic"
    return "openai"
