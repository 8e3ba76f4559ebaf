"""A prompt cache for the fake upstream (:class:`~.simulator.FakeUpstream` with
``prefix_cache=True``): it reports ``cached_tokens`` as a provider's prefix cache would.

The prompt is read in the order providers cache it — model, tools, messages — as compact JSON;
a request's cached tokens are the longest prefix it shares with any earlier request (of the last
:data:`REMEMBERED`), at 4 characters a token, rounded down to whole blocks of
:data:`BLOCK_TOKENS` (as Moonshot and OpenAI cache in blocks). ``prompt_tokens`` is the whole
text's length / 4. So an edit anywhere drops the cached share to the prefix before the edit.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from typing import Any

REMEMBERED = 64
BLOCK_TOKENS = 16


class PrefixCache:
    """Thread-safe; one per fake upstream."""

    def __init__(self) -> None:
        self._texts: deque[str] = deque(maxlen=REMEMBERED)
        self._lock = threading.Lock()

    def usage(self, body: dict[str, Any], completion_tokens: int) -> dict[str, Any]:
        """The Moonshot-shaped ``usage`` of ``body`` (an OpenAI chat request) with its cache."""
        text = json.dumps(
            [body.get("model"), body.get("tools") or [], body.get("messages") or []],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        with self._lock:
            shared = max((len(os.path.commonprefix([t, text])) for t in self._texts), default=0)
            self._texts.append(text)
        prompt = len(text) // 4
        cached = min(shared // 4 // BLOCK_TOKENS * BLOCK_TOKENS, prompt)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
            "cached_tokens": cached,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
