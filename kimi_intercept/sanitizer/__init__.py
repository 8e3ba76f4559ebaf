"""The sanitizer and the context: what the model sees of a request.

Modules: :mod:`.mask` (masking one text to a head + tail preview, deterministically),
:mod:`.walk` (finding tool outputs and injected blocks in every dialect's request),
:mod:`.sanitize` (masking a whole request, prefix-stable across turns), :mod:`.settings`
(``[sanitizer]``), :mod:`.compress` (dropping older tool outputs, then the middle, near the
context window), :mod:`.prepare` (all of it for one planned request, in a worker thread, with the
rows it leaves: masked originals and the savings ledger). Depends on config, accounting and
routing.
"""

from __future__ import annotations

from kimi_intercept.sanitizer.compress import ContextSettings, compress_request, explain
from kimi_intercept.sanitizer.prepare import Prepared, Preparer, ledger_rows, row_fields
from kimi_intercept.sanitizer.sanitize import count_prompt_tokens, sanitize_request
from kimi_intercept.sanitizer.settings import MaskedItem, SanitizeResult, SanitizeSettings

__all__ = [
    "ContextSettings",
    "MaskedItem",
    "Prepared",
    "Preparer",
    "SanitizeResult",
    "SanitizeSettings",
    "compress_request",
    "count_prompt_tokens",
    "explain",
    "ledger_rows",
    "row_fields",
    "sanitize_request",
]
