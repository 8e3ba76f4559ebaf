"""The per-developer breakdown of a merged store (several ``--db`` files, or the team store's
rows): one row per developer label of the ``developers`` table
(:mod:`kimi_intercept.storage.merge`) with counted requests, tokens, cost, cache-hit rate,
sanitizer savings and the clients used. A store without labels has no developers page."""

from __future__ import annotations

from typing import Any

import sqlite_utils

from kimi_intercept.reports.data import range_where

_SQL = """
SELECT d.developer AS developer, count(*) AS requests,
  sum(r.outcome = 'ok') AS ok,
  coalesce(sum(r.prompt_tokens), 0) AS prompt_tokens,
  coalesce(sum(r.completion_tokens), 0) AS completion_tokens,
  coalesce(sum(r.cached_tokens), 0) AS cached_tokens,
  sum(r.cost_usd) AS cost_usd,
  sum(r.cost_usd IS NULL AND coalesce(r.prompt_tokens, 0) + coalesce(r.completion_tokens, 0) > 0)
    AS unpriced,
  sum(CASE WHEN r.usage_source = 'provider' THEN r.cached_tokens END) AS provider_cached,
  sum(CASE WHEN r.usage_source = 'provider' THEN r.prompt_tokens END) AS provider_prompt,
  coalesce(sum((SELECT sum(s.tokens_before - s.tokens_after) FROM savings s
                WHERE s.request_id = r.id)), 0) AS saved_tokens,
  group_concat(DISTINCT r.client) AS clients
FROM requests r JOIN developers d ON d.request_id = r.id
{where}
GROUP BY d.developer ORDER BY cost_usd DESC, requests DESC, developer
"""


def developer_rows(
    db: sqlite_utils.Database, since: str | None = None, until: str | None = None
) -> list[dict[str, Any]]:
    """Per developer over the range (counted rows, ``duplicate_of IS NULL``): ``requests``,
    ``ok``, token sums, ``cost_usd`` (USD, ``None`` if nothing priced), ``unpriced``,
    ``cache_hit_rate`` (cached / prompt tokens of rows with provider usage, 0–1 or ``None``),
    ``saved_tokens`` (the sanitizer's) and ``clients`` (sorted names). ``[]`` without labels."""
    if not db.table("developers").exists():
        return []
    where, params = range_where(since, until, "r.duplicate_of IS NULL", column="r.started_at")
    out = []
    for row in db.query(_SQL.format(where=where), params):
        prompt = row.pop("provider_prompt")
        cached = row.pop("provider_cached")
        row["cache_hit_rate"] = (cached or 0) / prompt if prompt else None
        row["clients"] = sorted(set((row["clients"] or "").split(",")) - {""})
        out.append(row)
    return out
