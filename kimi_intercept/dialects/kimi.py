"""Make an OpenAI chat-completions request body acceptable to Kimi (Moonshot).

Pure: a body in, a new body plus one line per change out (:class:`Normalized`); no I/O, no
logging. The input is never mutated: a container is copied only when something in it changes.

Exceptions: ``ValueError`` └── ``KimiRequestError`` (cannot go to Kimi at all; names the fix).

Rules, in order. Sources as in shared notes/providers.md: [doc] Moonshot's pages, [cap] recorded
real response, [2nd] third-party page, ⚠ unverified.

1. tools: more than ``max_tools`` (128; [doc] openapi, MoonshotAI/Kimi-K2#90) → "drop" keeps the
   first ones, the tool pinned by ``tool_choice`` taking the last slot; "reject" raises. A
   function name not matching ``^[a-zA-Z_][a-zA-Z0-9-_]{2,63}$`` [doc] is renamed (bad chars →
   ``_``, ``_`` prefix, pad to 3 / cut to 64, ``_2``… on a clash: Kimi 400s "function name ... is
   duplicated" [doc Kimi Code errors]) in tools, assistant ``tool_calls``, ``role:tool``
   ``name`` and ``tool_choice``; ``Normalized.renamed`` maps new → old. ``builtin_function``
   tools (``$web_search``) are left alone.
2. ``max_tokens`` → ``max_completion_tokens`` ([doc] "deprecated", not honoured: Moonshot's
   chat API reference, docs.anyfast.ai kimi-k2-6); dropped when both are set. No cap at all →
   ``default_max_completion_tokens`` (:func:`.kimi_sampling.output_cap`).
3. messages: ``role:tool`` with missing/null ``content`` → ``""`` (claude-code-router#245: 400).
   Parts other than ``text``/``image_url``/``video_url`` → a text part when they carry text
   (``text``, ``refusal``, text ``source.data``, string ``content``), else dropped
   (Kimi-K2.5#27 ``document``, Kimi-K2#118 ``tool_reference``). Assistant ``content: null``
   beside ``tool_calls`` is fine and left.
4. thinking: k2.7-code with ``thinking.type == "disabled"`` → ``thinking`` removed (400 "invalid
   thinking: only type=enabled is allowed for this model" [doc; cap vercel/ai fixture]). With
   thinking on, each assistant message lacking ``reasoning_content`` gets ``""`` (400 "thinking
   is enabled but reasoning_content is missing" [doc Kimi Code errors]; ⚠ kosong accepts "",
   the server unverified); a ``partial: true`` prefill is skipped ⚠. Which models think:
   :func:`.kimi_types.thinking_on`.
   With ``missing_reasoning="disable_thinking"`` ([kimi] switch; Moonshot does not say whether
   "" is accepted) an assistant tool-call turn without ``reasoning_content`` instead turns
   thinking off for the request (``thinking: {type: disabled}``) where the model allows it;
   an always-thinking model is still backfilled.
5. sampling (:mod:`.kimi_sampling`): temperature clamped to [0, 1], ``n`` 1 at temperature ≈ 0;
   fields a model fixes (:data:`FIXED_SAMPLING`) set to the documented value for the thinking
   mode, or removed (``fixed_sampling``): 400 "invalid temperature: only X is allowed".
6. ``n`` > 5 → 5; ``stop`` entries over 32 UTF-8 bytes dropped, then the first 5 kept [doc].
7. tool-call ids in the history → ``functions.<name>:<idx>`` and back in the answer
   (:mod:`.kimi_ids`, ``rewrite_ids``).
Never touched: system/user/assistant text, tool descriptions and schemas.
"""

from __future__ import annotations

import re
from typing import Any

from kimi_intercept.dialects.kimi_anthropic import (  # noqa: F401 (re-exported)
    ANTHROPIC_BLOCKS,
    normalize_anthropic_for_kimi,
)
from kimi_intercept.dialects.kimi_ids import restore_answer, rewrite_tool_call_ids  # noqa: F401
from kimi_intercept.dialects.kimi_sampling import (  # noqa: F401 (FIXED_SAMPLING re-exported)
    FIXED_SAMPLING,
    output_cap,
    sampling,
)
from kimi_intercept.dialects.kimi_types import (
    THINKING_ALWAYS,
    KimiRequestError,
    Normalized,
    thinking_on,
)

NAME_PATTERN = re.compile(r"^[a-zA-Z_][a-zA-Z0-9-_]{2,63}$")
PART_TYPES = frozenset({"text", "image_url", "video_url"})
MAX_N, MAX_STOP, MAX_STOP_BYTES = 5, 5, 32


def is_kimi_model(model: str | None) -> bool:
    """True for Moonshot-hosted names (``kimi-…``, ``moonshot-v1-…``); a ``vendor/…`` name is
    another provider's hosting (Groq, NVIDIA) and gets none of the Kimi facts."""
    m = (model or "").strip().lower()
    return "/" not in m and m.startswith(("kimi-", "moonshot-v1-"))


def normalize_for_kimi(
    body: dict,
    *,
    model: str,
    max_tools: int = 128,
    on_too_many_tools: str = "drop",
    fixed_sampling: str = "set",
    default_max_completion_tokens: int = 0,
    rewrite_ids: bool = False,
    missing_reasoning: str = "backfill",
) -> Normalized:
    """Apply the module's rules for ``model`` (the Kimi model the request will be sent as).

    The keyword arguments are the ``[kimi]`` switches (:class:`~kimi_intercept.config.kimi.
    KimiSettings`); the routing passes the configured ones. ``default_max_completion_tokens`` is
    in tokens (0: no default cap)."""
    if on_too_many_tools not in ("drop", "reject"):
        raise ValueError(f'on_too_many_tools must be "drop" or "reject", not {on_too_many_tools!r}')
    m = model.strip().lower()
    out, changes = dict(body), []
    msgs = list(body["messages"]) if isinstance(body.get("messages"), list) else []
    if isinstance(body.get("messages"), list):
        out["messages"] = msgs
    renamed = _tools(out, msgs, max_tools, on_too_many_tools, changes)
    if "max_tokens" in out:
        value = out.pop("max_tokens")
        if out.get("max_completion_tokens") is None:
            out["max_completion_tokens"] = value
            changes.append(f"moved max_tokens={value} to max_completion_tokens (deprecated)")
        else:
            changes.append(f"dropped max_tokens={value}: max_completion_tokens is already set")
    changes += output_cap(out, m, default_max_completion_tokens)
    _messages(msgs, changes)
    thinking = _thinking(out, msgs, m, changes, missing_reasoning)
    changes += sampling(out, m, model, thinking, fixed_sampling)
    _caps(out, changes)
    ids: dict[str, str] = {}
    if rewrite_ids and msgs:
        out["messages"], ids = rewrite_tool_call_ids(msgs)
        if ids:
            changes.append(
                f"rewrote {len(ids)} tool-call ids in the history to Kimi's "
                "functions.<name>:<index> form (given back as the client's in the answer)"
            )
    return Normalized(body=out, changes=tuple(changes), renamed=renamed, ids=ids)


def _name(tool: Any) -> str | None:
    if isinstance(tool, dict) and tool.get("type", "function") == "function":
        fn = tool.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return fn["name"]
    return None


def _valid_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-zA-Z0-9_-]", "_", name)
    base = (base if re.match(r"[a-zA-Z_]", base) else "_" + base)[:64].ljust(3, "_")
    new, i = base, 1
    while new in taken:
        i += 1
        new = base[: 64 - len(f"_{i}")] + f"_{i}"
    return new


def _tools(out: dict, msgs: list, limit: int, policy: str, changes: list[str]) -> dict[str, str]:
    tools, choice = out.get("tools"), out.get("tool_choice")
    if not isinstance(tools, list):
        return {}
    pinned = _name(choice) if isinstance(choice, dict) else None
    if len(tools) > limit:
        if policy == "reject":
            raise KimiRequestError(
                f"Kimi accepts at most {limit} tools; this request has {len(tools)}. Set [kimi] "
                'on_too_many_tools = "drop" or send fewer tools.'
            )
        keep = list(range(limit))
        at = next((i for i, t in enumerate(tools) if pinned and _name(t) == pinned), None)
        if at is not None and at >= limit:
            keep = keep[:-1] + [at]
        dropped = [str(_name(t)) for i, t in enumerate(tools) if i not in keep]
        tools = [tools[i] for i in keep]
        changes.append(
            f"dropped {len(dropped)} tools beyond Kimi's {limit}-tool limit: {', '.join(dropped)}"
        )
    names = [n for n in map(_name, tools) if n is not None]
    taken, old_to_new = {n for n in names if NAME_PATTERN.match(n)}, {}
    for n in names:
        if not NAME_PATTERN.match(n) and n not in old_to_new:
            old_to_new[n] = _valid_name(n, taken)
            taken.add(old_to_new[n])

    def ren(d: dict) -> dict:  # a copy of a {"function": {"name": …}} holder with the new name
        return {**d, "function": {**d["function"], "name": old_to_new[d["function"]["name"]]}}

    out["tools"] = [ren(t) if _name(t) in old_to_new else t for t in tools]
    if not old_to_new:
        return {}
    if pinned in old_to_new:
        out["tool_choice"] = ren(choice)
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict):
            continue
        calls = msg.get("tool_calls")
        if msg.get("role") == "assistant" and isinstance(calls, list):
            if any(_name(c) in old_to_new for c in calls):
                msgs[i] = {
                    **msg,
                    "tool_calls": [ren(c) if _name(c) in old_to_new else c for c in calls],
                }
        elif msg.get("role") == "tool" and msg.get("name") in old_to_new:
            msgs[i] = {**msg, "name": old_to_new[msg["name"]]}
    pairs = ", ".join(f"{old!r} → {new!r}" for old, new in old_to_new.items())
    changes.append(
        f"renamed {len(old_to_new)} tool names to fit Kimi's {NAME_PATTERN.pattern}: {pairs}"
        " (also in tool_calls, tool messages and tool_choice)"
    )
    return {new: old for old, new in old_to_new.items()}


def _part_text(part: dict) -> str | None:
    src = part.get("source")
    if isinstance(src, dict) and src.get("type") == "text" and isinstance(src.get("data"), str):
        return src["data"]
    texts = [part.get(k) for k in ("text", "refusal", "content")]
    return next((t for t in texts if isinstance(t, str)), None)


def _messages(msgs: list, changes: list[str]) -> None:
    filled, parts_done = 0, []
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict):
            continue
        if msg.get("role") == "tool" and msg.get("content") is None:
            msgs[i] = msg = {**msg, "content": ""}
            filled += 1
        if not isinstance(content := msg.get("content"), list):
            continue
        new, done = [], []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            kind = kind if isinstance(kind, str) else None  # a list or object is no part type
            if not isinstance(part, dict) or kind in PART_TYPES:
                new.append(part)
            elif (text := _part_text(part)) is not None:
                new.append({"type": "text", "text": text})
                done.append(f"message {i} {kind} → text")
            else:
                done.append(f"message {i} {kind} dropped")
        if done:
            msgs[i] = {**msg, "content": new or ""}
            parts_done += done
    if filled:
        changes.append(f'set content "" on {filled} role:tool messages that had none')
    if parts_done:
        changes.append(f"content parts Kimi rejects: {'; '.join(parts_done)}")


def _thinking(out: dict, msgs: list, m: str, changes: list[str], missing: str) -> bool:
    """Rule 4; returns whether thinking is on for the request as sent."""
    kind = out["thinking"].get("type") if isinstance(out.get("thinking"), dict) else None
    if m.startswith("kimi-k2.7-code") and kind == "disabled":
        del out["thinking"]
        kind = None
        changes.append(
            "removed thinking={type: disabled}: kimi-k2.7-code always thinks and 400s "
            '"invalid thinking: only type=enabled is allowed for this model"'
        )
    always, on = m.startswith(THINKING_ALWAYS), thinking_on(m, kind)
    if on and not always and missing == "disable_thinking" and _tool_turn_without_reasoning(msgs):
        out["thinking"] = {"type": "disabled"}
        changes.append(
            "turned thinking off: an assistant tool-call turn has no reasoning_content "
            '([kimi] missing_reasoning = "disable_thinking")'
        )
        return False
    added = 0
    for i, msg in enumerate(msgs if on else ()):
        if isinstance(msg, dict) and msg.get("role") == "assistant" and not msg.get("partial"):
            if msg.get("reasoning_content") is None:
                msgs[i] = {**msg, "reasoning_content": ""}
                added += 1
    if added:
        changes.append(
            f'added reasoning_content "" to {added} assistant messages: thinking is on and Kimi '
            '400s "thinking is enabled but reasoning_content is missing" (⚠ empty accepted by '
            "kosong; server-side unverified)"
        )
    return on


def _tool_turn_without_reasoning(msgs: list) -> bool:
    return any(
        isinstance(m, dict) and m.get("role") == "assistant" and m.get("tool_calls")
        and m.get("reasoning_content") is None and not m.get("partial")
        for m in msgs
    )  # fmt: skip


def _caps(out: dict, changes: list[str]) -> None:
    n = out.get("n")
    if isinstance(n, int) and n > MAX_N:
        out["n"] = MAX_N
        changes.append(f"capped n={n} to Kimi's maximum {MAX_N}")
    stop = out.get("stop")
    entries = [stop] if isinstance(stop, str) else stop
    if not isinstance(entries, list):
        return
    ok = [
        s
        for s in entries
        if not isinstance(s, str) or len(s.encode("utf-8", "surrogatepass")) <= MAX_STOP_BYTES
    ]
    kept, why = ok[:MAX_STOP], []
    if len(ok) < len(entries):
        why.append(f"{len(entries) - len(ok)} over {MAX_STOP_BYTES} bytes")
    if len(kept) < len(ok):
        why.append(f"{len(ok) - len(kept)} beyond the first {MAX_STOP}")
    if why:
        if kept:
            out["stop"] = stop if isinstance(stop, str) else kept
        else:
            del out["stop"]
        changes.append(f"stop: dropped {' and '.join(why)}; kept {kept!r}")
