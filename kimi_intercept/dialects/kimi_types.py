"""What the Kimi request rules (:mod:`.kimi`, :mod:`.kimi_anthropic`) share: the result type,
their one exception (``ValueError`` └── :class:`KimiRequestError`), and which models think.

Thinking is on, by model-name prefix: always for ``kimi-k2.7-code``, ``kimi-k2-thinking``
[doc thinking guide]; unless disabled for ``kimi-k2.5``, ``kimi-k2.6``, ``kimi-k2.7``,
``kimi-k3`` ([doc] "on by default"; k3 ⚠ live captures always reason); only when
``type == "enabled"`` for ``kimi-for-coding`` ⚠.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Normalized:
    body: dict  # a new dict; the input is never mutated
    changes: tuple[str, ...] = ()  # one human-readable line per change made
    renamed: dict[str, str] = field(default_factory=dict)  # new tool name → the client's name
    ids: dict[str, str] = field(default_factory=dict)  # tool-call id Kimi sees → the client's


THINKING_ALWAYS = ("kimi-k2.7-code", "kimi-k2-thinking")
THINKING_DEFAULT = ("kimi-k2.5", "kimi-k2.6", "kimi-k2.7", "kimi-k3")
THINKING_OPT_IN = ("kimi-for-coding",)


def thinking_on(model: str, kind: str | None) -> bool:
    """Whether lower-cased ``model`` thinks when the request's ``thinking.type`` is ``kind``."""
    return (
        model.startswith(THINKING_ALWAYS)
        or (model.startswith(THINKING_DEFAULT) and kind != "disabled")
        or (model.startswith(THINKING_OPT_IN) and kind == "enabled")
    )


class KimiRequestError(ValueError):
    """The request cannot be sent to Kimi at all; the message names why and the fix."""
