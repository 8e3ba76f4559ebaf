"""Masking ahead: the long tool outputs of a request that no earlier request carried, masked
on several threads at once before the walk that builds the body to send.

The first turn of a long conversation this proxy has not seen yet (after a restart, or a
resumed session) carries dozens of long tool outputs at once. Masking one means counting its
tokens (the marker states them, and the saving is counted from them): about 7 MB of text a
second on one core, ~75 ms for the 550 KB of tool output in ``benchmarks/big_prompt.py``'s
first turn. tiktoken releases the GIL while it encodes, so :func:`mask_ahead` splits those
outputs into :data:`~kimi_intercept.accounting.tokens.WORKERS` shares of about equal length:
worker threads mask all shares but one, the calling thread masks that one. The results land in
the :class:`~.mask.MaskCache`, where the walk (:func:`~.sanitize.sanitize_request`) finds
them. The body sent is the same as without it: each output's mask depends on that output and
the settings only.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from kimi_intercept.accounting import tokens
from kimi_intercept.sanitizer.mask import MaskCache, SanitizeSettings, _mask

#: Outputs to mask of at least this many characters in all go to the threads; below it the
#: walk masks them one by one (a hand-off costs more than it saves).
AHEAD_MIN_CHARS = 64 * 1024

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def mask_ahead(texts: list[str], settings: SanitizeSettings, cache: MaskCache) -> bool:
    """Mask ``texts`` (distinct, none of them in ``cache`` yet) into ``cache``, on
    :data:`~kimi_intercept.accounting.tokens.WORKERS` threads at once. Returns ``False``, doing
    nothing, for fewer than two texts, under :data:`AHEAD_MIN_CHARS` characters in all, or a
    single worker. An exception of a share propagates (after every share has ended)."""
    workers = tokens.WORKERS
    if workers < 2 or len(texts) < 2 or sum(map(len, texts)) < AHEAD_MIN_CHARS:
        return False
    shares: list[list[str]] = [[] for _ in range(min(workers, len(texts)))]
    sizes = [0] * len(shares)
    for text in sorted(texts, key=len, reverse=True):  # longest first, to the lightest share
        i = sizes.index(min(sizes))
        shares[i].append(text)
        sizes[i] += len(text)
    futures = [_workers().submit(_mask_all, share, settings, cache) for share in shares[1:]]
    try:
        _mask_all(shares[0], settings, cache)
    finally:
        for f in futures:
            f.result()
    return True


def _mask_all(texts: list[str], settings: SanitizeSettings, cache: MaskCache) -> None:
    for text in texts:
        _mask(text, settings, cache)


def _workers() -> ThreadPoolExecutor:
    """The masking threads (their own pool: a mask may count a long text on the counting
    threads of :mod:`~kimi_intercept.accounting.tokens`, which must not wait behind it)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max(1, tokens.WORKERS - 1), thread_name_prefix="kimi-mask-ahead"
            )
        return _pool
