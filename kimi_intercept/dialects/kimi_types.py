"""The result type of the Kimi request rules (:mod:`.kimi`, :mod:`.kimi_anthropic`) and their
one exception. ``ValueError`` └── :class:`KimiRequestError`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Normalized:
    body: dict  # a new dict; the input is never mutated
    changes: tuple[str, ...] = ()  # one human-readable line per change made
    renamed: dict[str, str] = field(default_factory=dict)  # new tool name → the client's name
    ids: dict[str, str] = field(default_factory=dict)  # tool-call id Kimi sees → the client's


class KimiRequestError(ValueError):
    """The request cannot be sent to Kimi at all; the message names why and the fix."""
