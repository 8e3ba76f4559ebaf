"""The counted totals: ``daily`` (per day × provider × model × client × route × usage source)
and ``daily_savings`` (per day × tool), and the triggers that keep them equal to the sums over
counted requests (``duplicate_of IS NULL``) on every insert and update — the insert trigger
also marks a replayed response's ``duplicate_of``.

Holds the rollups' keys and sums, the SQL of what one ``requests`` row adds to them
(:data:`COUNTED_SUMS_SQL`, :data:`DAILY_KEYS_SQL`; :data:`CALIB`, the rows that teach
calibration), the trigger SQL, :func:`create_daily` (migration m003's part: the tables, the
backfill of rows recorded before it and the triggers) and :func:`daily_from_requests`, the
recount the triggers must match. Everything here is importable from :mod:`.store`
too.
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

# m003 builds its tables, triggers and backfill from the definitions below. They are part of
# that migration: a later schema change adds a migration that alters the table and recreates
# the triggers, after copying what m003 needs under _M003_* names, so m003 stays as released.

#: Keys of a ``daily`` row; NULL is stored as "" so the key stays unique.
DAILY_KEYS = ("day", "provider", "model", "client", "route", "usage_source")
#: Sums kept per ``daily`` row, over counted requests (``duplicate_of IS NULL``).
DAILY_SUMS: dict[str, type] = {
    "requests": int,
    "ok": int,
    "errors": int,
    "incomplete": int,
    "client_abort": int,
    "fallbacks": int,
    "prompt_tokens": int,
    "completion_tokens": int,
    "cached_tokens": int,
    "reasoning_tokens": int,
    "cost_usd": float,  # of priced requests; NULL until one is priced
    "priced": int,  # requests with a cost
    "unpriced": int,  # requests with tokens but no price
    "estimated": int,  # requests with usage_source = 'estimate'
    # calibration inputs: rows with both the provider's usage and our estimate
    "calib_samples": int,
    "calib_prompt_tokens": int,
    "calib_prompt_estimate": int,
    "calib_completion_tokens": int,
    "calib_completion_estimate": int,
}
DAILY_SAVINGS_COLUMNS: dict[str, type] = {
    "day": str,
    "tool": str,
    "items": int,
    "tokens_before": int,
    "tokens_after": int,
}


def _keys_sql(x: str = "") -> list[str]:
    """``daily`` key expressions over a requests row (``x``: ``new``, ``old``, an alias)."""
    p = f"{x}." if x else ""
    return [f"coalesce(substr({p}started_at, 1, 10), '')"] + [
        f"coalesce({p}{k}, '')" for k in DAILY_KEYS[1:]
    ]


def _contributions_sql(x: str = "") -> dict[str, str]:
    """What one requests row adds to each ``daily`` sum (``x`` as in :func:`_keys_sql`)."""
    p = f"{x}." if x else ""
    pair = {
        side: f"({p}usage_source = 'provider' AND {p}{side}_tokens IS NOT NULL "
        f"AND {p}{side}_tokens_estimate > 0)"
        for side in ("prompt", "completion")
    }
    return {
        "requests": "1",
        "ok": f"coalesce({p}outcome = 'ok', 0)",
        "errors": f"coalesce({p}outcome = 'error', 0)",
        "incomplete": f"coalesce({p}outcome = 'incomplete', 0)",
        "client_abort": f"coalesce({p}outcome = 'client_abort', 0)",
        "fallbacks": f"coalesce({p}fallback_used, 0)",
        "prompt_tokens": f"coalesce({p}prompt_tokens, 0)",
        "completion_tokens": f"coalesce({p}completion_tokens, 0)",
        "cached_tokens": f"coalesce({p}cached_tokens, 0)",
        "reasoning_tokens": f"coalesce({p}reasoning_tokens, 0)",
        "cost_usd": f"{p}cost_usd",
        "priced": f"({p}cost_usd IS NOT NULL)",
        "unpriced": f"({p}cost_usd IS NULL AND (coalesce({p}prompt_tokens, 0) > 0 "
        f"OR coalesce({p}completion_tokens, 0) > 0))",
        "estimated": f"coalesce({p}usage_source = 'estimate', 0)",
        "calib_samples": f"coalesce({pair['prompt']} OR {pair['completion']}, 0)",
        "calib_prompt_tokens": f"CASE WHEN {pair['prompt']} THEN {p}prompt_tokens ELSE 0 END",
        "calib_prompt_estimate": f"CASE WHEN {pair['prompt']} "
        f"THEN {p}prompt_tokens_estimate ELSE 0 END",
        "calib_completion_tokens": f"CASE WHEN {pair['completion']} "
        f"THEN {p}completion_tokens ELSE 0 END",
        "calib_completion_estimate": f"CASE WHEN {pair['completion']} "
        f"THEN {p}completion_tokens_estimate ELSE 0 END",
    }


#: Rows that teach calibration: the provider's usage and our estimate are both there.
CALIB = (
    "usage_source = 'provider' AND (prompt_tokens_estimate > 0 OR completion_tokens_estimate > 0)"
)

#: Sums over counted ``requests`` rows, named like ``DAILY_SUMS``: ``daily`` as it would be
#: computed from the raw rows (the triggers keep it equal to this).
COUNTED_SUMS_SQL = ",\n".join(
    f"sum({e}) AS {n}" if n == "cost_usd" else f"coalesce(sum({e}), 0) AS {n}"
    for n, e in _contributions_sql().items()
)
#: ``daily`` keys over ``requests``.
DAILY_KEYS_SQL = ", ".join(f"{e} AS {k}" for k, e in zip(DAILY_KEYS, _keys_sql(), strict=True))


def _daily_upsert_sql(select: str) -> str:
    """``INSERT INTO daily … {select} ON CONFLICT … DO UPDATE`` adding the new sums."""
    add = ", ".join(
        f"{s} = CASE WHEN excluded.{s} IS NULL THEN {s} WHEN {s} IS NULL THEN excluded.{s} "
        f"ELSE {s} + excluded.{s} END"
        if s == "cost_usd"
        else f"{s} = {s} + excluded.{s}"
        for s in DAILY_SUMS
    )
    keys = ", ".join(DAILY_KEYS)
    return (
        f"INSERT INTO daily ({keys}, {', '.join(DAILY_SUMS)}) {select} "
        f"ON CONFLICT ({keys}) DO UPDATE SET {add}"
    )


def _row_select(x: str, sign: str = "") -> str:
    sums = ", ".join(f"{sign}({e})" if sign else e for e in _contributions_sql(x).values())
    return f"SELECT {', '.join(_keys_sql(x))}, {sums}"


# Same provider + response id as an earlier counted row: a duplicate.
_SAME_RESPONSE = """FROM requests o WHERE o.response_id = new.response_id
      AND o.provider IS new.provider AND o.rowid != new.rowid AND o.duplicate_of IS NULL"""

# Every insert: mark a replayed response, then add a counted row to its day's totals.
_INSERT_TRIGGER = f"""
CREATE TRIGGER requests_insert AFTER INSERT ON requests
BEGIN
  UPDATE requests SET duplicate_of = (
    SELECT o.id {_SAME_RESPONSE} ORDER BY o.started_at, o.id LIMIT 1)
  WHERE rowid = new.rowid AND new.response_id IS NOT NULL AND new.duplicate_of IS NULL
    AND EXISTS (SELECT 1 {_SAME_RESPONSE});
  {
    _daily_upsert_sql(
        _row_select("r") + " FROM requests r WHERE r.rowid = new.rowid AND r.duplicate_of IS NULL"
    )
};
END
"""

# A changed row (an importer updating a grown task): take the old numbers out, put the new in.
_UPDATE_TRIGGER = f"""
CREATE TRIGGER requests_update AFTER UPDATE OF started_at, provider, model, client, route,
  usage_source, outcome, fallback_used, prompt_tokens, completion_tokens, cached_tokens,
  reasoning_tokens, cost_usd, prompt_tokens_estimate, completion_tokens_estimate ON requests
BEGIN
  {_daily_upsert_sql(_row_select("old", "-") + " WHERE old.duplicate_of IS NULL")};
  {_daily_upsert_sql(_row_select("new") + " WHERE new.duplicate_of IS NULL")};
END
"""

_SAVINGS_UPSERT = """
INSERT INTO daily_savings (day, tool, items, tokens_before, tokens_after)
SELECT coalesce(substr(r.started_at, 1, 10), ''), coalesce({x}tool, ''),
  coalesce(sum({x}items), 0), coalesce(sum({x}tokens_before), 0), coalesce(sum({x}tokens_after), 0)
FROM {source}
WHERE {where}
GROUP BY 1, 2
ON CONFLICT (day, tool) DO UPDATE SET items = items + excluded.items,
  tokens_before = tokens_before + excluded.tokens_before,
  tokens_after = tokens_after + excluded.tokens_after
"""

_SAVINGS_TRIGGER = f"""
CREATE TRIGGER savings_insert AFTER INSERT ON savings
BEGIN
  {
    _SAVINGS_UPSERT.format(
        x="new.", source="requests r", where="r.id = new.request_id AND r.duplicate_of IS NULL"
    )
};
END
"""


def create_daily(db: sqlite_utils.Database) -> None:
    """Migration m003's totals: create ``daily`` and ``daily_savings``, mark the later copies of
    a response among the rows already recorded, total the counted ones, and create the triggers
    that keep the totals from then on."""
    db.table("daily").create(
        {**{k: str for k in DAILY_KEYS}, **DAILY_SUMS}, pk=DAILY_KEYS, not_null=DAILY_KEYS
    )
    db.table("daily_savings").create(
        DAILY_SAVINGS_COLUMNS, pk=("day", "tool"), not_null=("day", "tool")
    )
    # Rows recorded before this migration: mark the later copies of a response, total the rest.
    db.execute(
        """
        UPDATE requests SET duplicate_of = (
          SELECT o.id FROM requests o
          WHERE o.response_id = requests.response_id AND o.provider IS requests.provider
          ORDER BY o.started_at, o.id LIMIT 1)
        WHERE response_id IS NOT NULL
        """
    )
    db.execute("UPDATE requests SET duplicate_of = NULL WHERE duplicate_of = id")
    db.execute(
        _daily_upsert_sql(
            f"SELECT {DAILY_KEYS_SQL}, {COUNTED_SUMS_SQL} FROM requests "
            f"WHERE duplicate_of IS NULL GROUP BY {', '.join(DAILY_KEYS)}"
        )
    )
    db.execute(_INSERT_TRIGGER)
    db.execute(_UPDATE_TRIGGER)
    db.execute(_SAVINGS_TRIGGER)


def daily_from_requests(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """``daily`` recomputed from the raw rows (what the triggers must have kept it equal to,
    for days nothing was pruned from), ordered by its key."""
    keys = ", ".join(DAILY_KEYS)
    sql = (
        f"SELECT {DAILY_KEYS_SQL}, {COUNTED_SUMS_SQL} FROM requests "
        f"WHERE duplicate_of IS NULL GROUP BY {keys} ORDER BY {keys}"
    )
    return list(db.query(sql))
