"""Calibrated estimates: how far our tokenizer's count is from each provider's real usage.

When a provider sends no usage, the proxy counts the tokens itself (``usage_source =
'estimate'``, tiktoken ``o200k``); Kimi's tokenizer is not OpenAI's, so the count is off by a
fairly steady factor per model. Rows where both are known — provider usage plus our estimate in
``prompt_tokens_estimate`` / ``completion_tokens_estimate`` — teach that factor::

    ratio = sum(provider tokens) / sum(our estimate)        per provider + model, per side

learned from every counted row with both numbers: the ``daily`` table keeps their sums (the
``calib_*`` columns, pruned days included), so the stored sums are the stored ratio. The report
multiplies estimate-only rows by it ("calibrated estimate") once a model has
:data:`MIN_SAMPLES` samples, and shows the error of the estimate on a held-out sample — every
:data:`HOLDOUT_EVERY`-th row (by rowid) of the latest :data:`RECENT` samples among the latest
:data:`SCAN` rows, predicted with a ratio learned from all the other samples — before and after
calibration::

    error = sum(|estimate - provider|) / sum(provider)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from kimi_intercept.config.settings import ModelInfo
from kimi_intercept.storage.rollup import CALIB

MIN_SAMPLES = 5
HOLDOUT_EVERY = 5
RECENT = 50_000  # the held-out rows are taken from this many latest samples
# ... found among this many latest rows at most (read along idx_requests_started_at: almost every
# answered row is a sample, but a database of mostly imported or estimated rows is not read whole)
SCAN = 4 * RECENT


@dataclass(frozen=True)
class Calibration:
    """What was learned for one provider + model. Errors are fractions (0.12 = 12 %) on the
    held-out rows; ``None`` when there were none."""

    provider: str
    model: str
    samples: int
    prompt_ratio: float | None = None
    completion_ratio: float | None = None
    holdout: int = 0
    prompt_error_raw: float | None = None
    prompt_error_calibrated: float | None = None
    completion_error_raw: float | None = None
    completion_error_calibrated: float | None = None

    @property
    def usable(self) -> bool:
        return self.samples >= MIN_SAMPLES and (
            self.prompt_ratio is not None or self.completion_ratio is not None
        )

    def apply(self, prompt: int | None, completion: int | None) -> tuple[int | None, int | None]:
        """Estimated ``prompt``/``completion`` tokens, calibrated (unchanged when unusable)."""
        if not self.usable:
            return prompt, completion
        return _scale(prompt, self.prompt_ratio), _scale(completion, self.completion_ratio)

    def cost_factor(self, prompt: int, completion: int, info: ModelInfo | None) -> float:
        """How much the cost of an estimated row changes when its tokens are calibrated: the
        calibrated over the raw cost at ``info``'s input/output prices (token-weighted when
        unknown)."""
        if not self.usable:
            return 1.0
        a = (info.input_per_mtok if info else None) or 1.0
        b = (info.output_per_mtok if info else None) or 1.0
        raw = prompt * a + completion * b
        cal = (
            prompt * (self.prompt_ratio or 1.0) * a
            + completion * (self.completion_ratio or 1.0) * b
        )
        return cal / raw if raw else 1.0


_TOTALS_SQL = """
SELECT provider, model, sum(calib_samples) AS samples,
  sum(calib_prompt_tokens) AS prompt_tokens, sum(calib_prompt_estimate) AS prompt_estimate,
  sum(calib_completion_tokens) AS completion_tokens,
  sum(calib_completion_estimate) AS completion_estimate
FROM daily WHERE calib_samples > 0 GROUP BY provider, model
"""

# The held-out rows: every HOLDOUT_EVERY-th (by rowid) of the latest RECENT calibration rows
# among the latest SCAN rows (read newest first along idx_requests_started_at), with their pairs
# as the store counts them.
_HELD_OUT = f"""
WITH recent AS (
  SELECT rowid AS rid, coalesce(provider, '') AS provider, coalesce(model, '') AS model,
    CASE WHEN prompt_tokens IS NOT NULL AND prompt_tokens_estimate > 0 THEN prompt_tokens END
      AS pa,
    CASE WHEN prompt_tokens IS NOT NULL AND prompt_tokens_estimate > 0
      THEN prompt_tokens_estimate END AS pe,
    CASE WHEN completion_tokens IS NOT NULL AND completion_tokens_estimate > 0
      THEN completion_tokens END AS ca,
    CASE WHEN completion_tokens IS NOT NULL AND completion_tokens_estimate > 0
      THEN completion_tokens_estimate END AS ce
  FROM requests INDEXED BY idx_requests_started_at
  WHERE {CALIB} AND duplicate_of IS NULL AND started_at >= coalesce((
    SELECT started_at FROM requests INDEXED BY idx_requests_started_at
    ORDER BY started_at DESC LIMIT 1 OFFSET {{scan}}), '')
  ORDER BY started_at DESC
  LIMIT {{recent}}
), held AS (SELECT * FROM recent WHERE rid % {{every}} = 0)
"""

_HELD_SUMS_SQL = (
    _HELD_OUT
    + """
SELECT provider, model, count(*) AS samples,
  coalesce(sum(pa), 0) AS prompt_tokens, coalesce(sum(pe), 0) AS prompt_estimate,
  coalesce(sum(ca), 0) AS completion_tokens, coalesce(sum(ce), 0) AS completion_estimate
FROM held GROUP BY provider, model
"""
)

# |estimate - actual| on the held-out rows, before and after the ratio learned without them.
_ERROR_SQL = (
    _HELD_OUT
    + """
, train(provider, model, pr, cr) AS (VALUES {values})
SELECT h.provider, h.model, count(*) AS n,
  sum(h.pa) AS p_actual, sum(abs(h.pe - h.pa)) AS p_raw, sum(abs(h.pe * t.pr - h.pa)) AS p_cal,
  sum(h.ca) AS c_actual, sum(abs(h.ce - h.ca)) AS c_raw, sum(abs(h.ce * t.cr - h.ca)) AS c_cal
FROM held h JOIN train t ON t.provider = h.provider AND t.model = h.model
GROUP BY h.provider, h.model
"""
)


def learn(db: sqlite_utils.Database) -> dict[tuple[str, str], Calibration]:
    """Ratios per ``(provider, model)`` ("" for NULL) from the ``daily`` totals of every
    counted row (pruned days included), with the error on held-out rows. Read-only; an empty
    dict for a database without samples."""
    if not db.table("daily").exists():
        return {}
    sums = _merge(db.query(_TOTALS_SQL))
    if not sums:
        return {}
    held_sql = _HELD_SUMS_SQL.format(recent=RECENT, every=HOLDOUT_EVERY, scan=SCAN - 1)
    held = _merge(db.query(held_sql))
    train = {}
    for key, s in sums.items():
        h = held.get(key, {})
        train[key] = _ratios({k: v - h.get(k, 0) for k, v in s.items() if k in _FIELDS})
    errors = _holdout_errors(db, train)
    out = {}
    for key, s in sums.items():
        pr, cr = _ratios(s)
        e = errors.get(key, {})
        out[key] = Calibration(
            provider=key[0],
            model=key[1],
            samples=s["samples"],
            prompt_ratio=pr,
            completion_ratio=cr,
            holdout=e.get("n", 0),
            prompt_error_raw=_div(e.get("p_raw"), e.get("p_actual")),
            prompt_error_calibrated=_div(e.get("p_cal"), e.get("p_actual")),
            completion_error_raw=_div(e.get("c_raw"), e.get("c_actual")),
            completion_error_calibrated=_div(e.get("c_cal"), e.get("c_actual")),
        )
    return out


def _holdout_errors(
    db: sqlite_utils.Database, ratios: Mapping[tuple[str, str], tuple[float | None, ...]]
) -> dict[tuple[str, str], dict[str, Any]]:
    if not ratios:
        return {}
    values = ", ".join("(?, ?, ?, ?)" for _ in ratios)
    params: list[Any] = []
    for (provider, model), (pr, cr) in ratios.items():
        params += [provider, model, pr if pr is not None else 1.0, cr if cr is not None else 1.0]
    sql = _ERROR_SQL.format(values=values, recent=RECENT, every=HOLDOUT_EVERY, scan=SCAN - 1)
    return {(r["provider"], r["model"]): r for r in db.query(sql, params)}


_FIELDS = (
    "samples",
    *(f"{s}_{k}" for s in ("prompt", "completion") for k in ("tokens", "estimate")),
)


def _merge(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["provider"] or "", r["model"] or "")
        acc = out.setdefault(key, {"provider": key[0], "model": key[1], "samples": 0})
        for name in _FIELDS:
            acc[name] = acc.get(name, 0) + (r[name] or 0)
    return out


def _ratios(s: Mapping[str, Any]) -> tuple[float | None, float | None]:
    return (
        _div(s["prompt_tokens"], s["prompt_estimate"]),
        _div(s["completion_tokens"], s["completion_estimate"]),
    )


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _scale(value: int | None, ratio: float | None) -> int | None:
    return value if value is None or ratio is None else round(value * ratio)
