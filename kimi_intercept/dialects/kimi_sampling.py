"""Kimi's sampling parameters and output cap (rules 5–7 of :mod:`.kimi`).

- Range: ``temperature`` is in [0, 1] on Kimi (OpenAI allows [0, 2]); a value outside is
  clamped (https://platform.kimi.ai/docs/guide/migrating-from-openai-to-kimi, "Temperature and N
  Value"). With ``temperature`` close to 0 (< 0.01 here ⚠ "e.g. 0.001") ``n`` must be 1, else
  ``invalid_request_error`` (same page; https://platform.kimi.ai/docs/api/models-overview).
- Fixed values: k2.5 / k2.6 fix ``temperature`` ("Cannot be modified"), ``top_p`` 0.95, ``n``
  1, ``presence_penalty`` / ``frequency_penalty`` 0 (models-overview); the temperature is 1.0 in
  thinking mode and 0.6 without (migrating-from-openai-to-kimi, "Migration Recommendation").
  k3 400s "only 1 is allowed" for another temperature (vercel/ai capture). For the rest — k3's
  top_p and penalties, every field of k2.7 and kimi-for-coding — no Moonshot page gives the
  value (the Kimi-Vendor-Verifier README recommends temp 1.0 / top_p 0.95 for K2.7 and K3, and
  "only 0.6" is reported for k2.7-code-highspeed: they disagree), so such a field is always
  removed, never guessed. Where the value is known, which is safest is ambiguous — a value we
  set that the server does not expect 400s, a removed one takes the server's default — hence
  ``[kimi] fixed_sampling``: ``"set"`` (default) sends the documented value in place of the
  client's, ``"remove"`` drops the field. A field the client did not send stays unsent.
- Output cap: without ``max_completion_tokens`` (or ``max_tokens``) Kimi's default cap is low
  and long answers stop with ``finish_reason: length``; a ``kimi-…`` model gets
  ``[kimi] default_max_completion_tokens`` (32768 = ``max_tokens=1024*32`` in Moonshot's own
  k2.5/k2.6 example, models-overview; hermes-agent sends 32,000 "matching Kimi CLI"). 0 sends
  none. ``moonshot-v1-*`` never gets one (an 8K window cannot hold it).
"""

from __future__ import annotations

from typing import Any

# model prefix → the fields it fixes
_ALL = ("temperature", "top_p", "n", "presence_penalty", "frequency_penalty")
_NO_N = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
FIXED_SAMPLING: dict[str, tuple[str, ...]] = {
    "kimi-k2.6": _ALL,  # [doc] models-overview: every field "Cannot be modified"
    "kimi-k2.5": _ALL,  # [doc] the same table on the k2.5-era page (test-platform.kimi.ai)
    # ⚠ "shares the same thinking mechanism as kimi-k2.6" [doc thinking guide]
    "kimi-k2.7": _ALL,
    # [cap] vercel/ai moonshotai-kimi-k3-temperature-rejection.json: "only 1 is allowed"
    "kimi-k3": _NO_N,
    "kimi-for-coding": _NO_N,  # ⚠ [2nd] "only 0.6 is allowed" reports on api.kimi.com/coding
}
# family → the fields whose fixed value a Moonshot page (or a captured 400) gives
DOCUMENTED = {"kimi-k2.6": _ALL, "kimi-k2.5": _ALL, "kimi-k3": ("temperature",)}
_VALUES = {"top_p": 0.95, "n": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0}
MAX_TEMPERATURE, NEAR_ZERO = 1.0, 0.01


def fixed_value(family: str, name: str, thinking: bool) -> float | int | None:
    """The documented value of fixed field ``name`` for a model of ``family`` (``None``:
    not documented, the field is removed)."""
    if name not in DOCUMENTED.get(family, ()):
        return None
    if name != "temperature":
        return _VALUES[name]
    if family == "kimi-k3":
        return 1.0
    return 1.0 if thinking else 0.6


def sampling(out: dict[str, Any], m: str, model: str, thinking: bool, policy: str) -> list[str]:
    """Apply the range and fixed-value rules to ``out`` (changed in place) for lower-cased
    model ``m``; one line per change."""
    changes = []
    family = max((k for k in FIXED_SAMPLING if m.startswith(k)), key=len, default="")
    fixed = FIXED_SAMPLING.get(family, ())
    present = [k for k in fixed if k in out]
    unknown = [k for k in present if policy == "remove" or fixed_value(family, k, thinking) is None]
    if unknown:
        dropped = ", ".join(f"{k}={out.pop(k)!r}" for k in unknown)
        changes.append(f"removed {dropped}: fixed by {model} (Moonshot 400s otherwise)")
        present = [k for k in present if k not in unknown]
    if present:
        mode = "thinking" if thinking else "non-thinking"
        done = []
        for k in present:
            value = fixed_value(family, k, thinking)
            if value is not None and out[k] != value:
                done.append(f"{k}={out[k]!r} → {value!r}")
                out[k] = value
        if done:
            changes.append(
                f"set {', '.join(done)}: fixed by {model} in {mode} mode (Moonshot 400s otherwise)"
            )
    t = out.get("temperature")
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        if not 0 <= t <= MAX_TEMPERATURE:
            out["temperature"] = min(max(t, 0), MAX_TEMPERATURE)
            changes.append(f"clamped temperature={t!r} to Kimi's range [0, 1]")
        n = out.get("n")
        if out["temperature"] < NEAR_ZERO and isinstance(n, int) and n > 1:
            out["n"] = 1
            changes.append(f"set n={n} → 1: Kimi returns one choice at temperature ≈ 0")
    return changes


def output_cap(out: dict[str, Any], m: str, default: int) -> list[str]:
    """Set ``max_completion_tokens`` to ``default`` when the request has no cap."""
    if default <= 0 or not m.startswith("kimi-"):
        return []
    if out.get("max_completion_tokens") is not None or out.get("max_tokens") is not None:
        return []
    out["max_completion_tokens"] = default
    return [f"set max_completion_tokens={default}: the client sent no cap ([kimi] default)"]
