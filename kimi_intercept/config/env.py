"""``${VAR}`` references in the config: :func:`expand` replaces them by the environment
variable ``VAR`` (unset: empty), :func:`env_refs` lists them, :func:`redact` writes expanded
values back as ``${VAR}`` so an error message never shows a secret."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MIN_SECRET_CHARS = 4  # shorter expanded values are not replaced in messages (they would garble)


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with each value of ``secrets`` (``{VAR: value}``) replaced by ``${VAR}``;
    values shorter than 4 characters are left alone."""
    for name, value in sorted(secrets.items(), key=lambda kv: -len(kv[1])):
        if len(value) >= _MIN_SECRET_CHARS:
            text = text.replace(value, "${" + name + "}")
    return text


def env_refs(value: Any) -> set[str]:
    """Names of the ``${VAR}`` references in a TOML tree."""
    if isinstance(value, str):
        return set(ENV_REF.findall(value))
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return set().union(*(env_refs(v) for v in items))


def expand(value: Any, env: Mapping[str, str]) -> Any:
    """A copy of the TOML tree ``value`` with every ``${VAR}`` in its strings expanded."""
    if isinstance(value, str):
        return ENV_REF.sub(lambda m: env.get(m.group(1), ""), value)
    if isinstance(value, list):
        return [expand(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, env) for k, v in value.items()}
    return value
