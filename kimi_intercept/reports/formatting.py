"""How the report and the CLI show values: counts, dollars, milliseconds, percentages,
compact axis labels, plurals and timestamps (also the report's Jinja filters)."""

from __future__ import annotations


def fmt_num(value: float | None) -> str:
    """``12345`` → ``12,345``; ``None`` → ``–``."""
    return "–" if value is None else f"{value:,.0f}"


def fmt_usd(value: float | None) -> str:
    """Dollars to the cent; below a cent to 1/100 cent, below that to a millionth of a dollar
    (a single short request costs fractions of a cent); ``None`` → ``unpriced``."""
    if value is None:
        return "unpriced"
    if value != 0 and abs(value) < 0.0001:
        return f"${value:.6f}"
    if value != 0 and abs(value) < 0.01:
        return f"${value:.4f}"
    return f"${value:,.2f}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f} ms" if value < 10_000 else f"{value / 1000:,.1f} s"


def fmt_pct(part: float | None, whole: float | None) -> str:
    return "–" if not whole else f"{100 * (part or 0) / whole:.0f}%"


def fmt_ratio(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage: ``0.123`` → ``12.3%``; ``None`` → ``–``."""
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def fmt_compact(value: float) -> str:
    """Axis labels: ``2500`` → ``2.5k``, ``3000000`` → ``3M``."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def plural(n: int, word: str) -> str:
    """``plural(1, "request")`` → ``1 request``; ``plural(2, "request")`` → ``2 requests``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def fmt_time(iso: str | None) -> str:
    """``2026-11-21T23:54:42.123Z`` → ``2026-11-21 23:54:42``."""
    return "–" if not iso else iso[:19].replace("T", " ")


# Unicode bidirectional embedding/override (U+202A–U+202E) and isolate (U+2066–U+2069) controls
# reorder the text around them: a title or error carrying one can display as something other
# than what it says ("Trojan Source", CVE-2021-42574; Unicode UAX #9). Shown as visible marks.
_BIDI_CONTROLS = {cp: f"[U+{cp:04X}]" for cp in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def no_bidi(value: str) -> str:
    """``value`` with every bidi override/isolate control replaced by a visible ``[U+202E]``."""
    return value.translate(_BIDI_CONTROLS)


def finalize(value: object) -> object:
    """The report's Jinja ``finalize``: every string a template shows (titles, clients, models,
    errors…) goes through :func:`no_bidi` before it is escaped."""
    return no_bidi(value) if isinstance(value, str) else value
