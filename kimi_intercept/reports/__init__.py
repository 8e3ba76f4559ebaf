"""Reports: static, self-contained HTML pages (Jinja2 templates in ``templates/``, inline SVG
charts, no script, no network) and the shadow-mode comparison.

Modules: :mod:`.pages` (:func:`build_report`, :func:`write_report`), :mod:`.data` (a range's
totals from the ``daily`` rollups), :mod:`.tables` (latency, providers, models, errors),
:mod:`.conversations`, :mod:`.developers` (per developer, merged stores only),
:mod:`.charts`, :mod:`.formatting`, :mod:`.compare` (shadow pairs). Reads
the store read-only; depends on config, accounting and storage.
"""

from __future__ import annotations

from kimi_intercept.reports.pages import build_report, write_report

__all__ = [
    "build_report",
    "write_report",
]
