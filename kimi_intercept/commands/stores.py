"""Which store a reading command (``report``, ``stats``, ``export``) reads: the one ``--db`` file,
the config's database, several ``--db`` files merged (:mod:`kimi_intercept.storage.merge`,
each labelled with its file stem as a developer), or (``report --team``) the team store's rows
(:mod:`kimi_intercept.storage.team`) copied into a temporary store, so every page, table and
export is computed by the same code whatever the source."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from kimi_intercept.commands.options import config_option, no_database

F = TypeVar("F", bound=Callable[..., Any])


def stores_options(f: F) -> F:
    """``--config`` and ``--db`` (repeatable: several files are merged)."""
    f = click.option(
        "--db",
        "dbs",
        type=click.Path(dir_okay=False, path_type=Path),
        multiple=True,
        help="SQLite database; repeat to combine several (duplicates counted once, each file "
        "a developer named by its stem) [default: the one the config names]",
    )(f)
    return config_option(f)


@contextmanager
def one_store(dbs: Sequence[Path], default: Path) -> Iterator[Path]:
    """The path to read: ``default`` or the one file of ``dbs`` as it is, or a temporary store
    merging every file of ``dbs`` (removed afterwards).

    :raises click.ClickException: a missing file, one that is not a store, or a label given
        twice (two files with the same stem)
    """
    if len(dbs) <= 1:
        yield dbs[0] if dbs else default
        return
    from kimi_intercept.storage.merge import developer_label, merge_files

    labels: dict[str, Path] = {}
    for path in dbs:
        if not path.is_file():
            raise click.ClickException(no_database(path))
        label = developer_label(path)
        if label in labels and labels[label].resolve() != path.resolve():
            raise click.ClickException(
                f"{labels[label]} and {path} would both be developer {label!r}: rename one file"
            )
        labels[label] = path
    with tempfile.TemporaryDirectory(prefix="kimi-merge-") as tmp:
        merged = Path(tmp) / "merged.db"
        try:
            merge_files([(p, developer_label(p)) for p in dbs], merged)
        except sqlite3.DatabaseError as e:
            raise click.ClickException(f"Cannot merge {', '.join(map(str, dbs))}: {e}") from e
        yield merged
