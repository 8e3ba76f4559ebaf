"""The package's layout rules, checked from the source (run alone: ``pytest tests/test_layout.py``).

- every module lives in a subpackage by concern, except the few top-level ones named here
  (and in the README's "Where things live");
- no module over 450 lines;
- no import cycle among the package's modules, counting imports inside functions and under
  ``TYPE_CHECKING`` too;
- the subpackages depend on each other in one direction only (:data:`LAYERS`);
- only ``addon.py`` imports mitmproxy;
- every subpackage says in its ``__init__`` docstring what it owns.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kimi_intercept"
TOP_LEVEL = {"kimi_intercept", "kimi_intercept.addon"}
#: Lowest first: a subpackage may import only the ones before it (and itself).
LAYERS = [
    "config",
    "storage",
    "telemetry",
    "accounting",
    "dialects",
    "routing",
    "sanitizer",
    "relay",
    "reports",
    "commands",
]
MAX_LINES = 450


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (a ``from pkg import mod`` counts as ``pkg.mod``,
    and importing ``a.b.c`` also runs ``a.b``'s ``__init__``)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets.append(sub if sub in known else module)
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # parents' __init__ run first
                prefix = ".".join(parts[:i])
                if prefix in known and prefix != name and not name.startswith(prefix + "."):
                    out.add(prefix)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def concern(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_belongs_to_a_concern_or_is_a_named_top_level_one():
    stray = [m for m in modules() if m not in TOP_LEVEL and concern(m) is None]
    assert stray == []
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == set(LAYERS)


def test_no_module_over_450_lines():
    long = {
        m: n
        for m, p in modules().items()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_no_import_cycle_among_modules():
    g = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(g[m]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert cycles == []


def test_subpackages_depend_on_each_other_in_one_direction():
    upward = []
    for module, deps in graph().items():
        mine = concern(module)
        if mine is None:
            continue
        for dep in deps:
            theirs = concern(dep)
            if theirs is not None and LAYERS.index(theirs) > LAYERS.index(mine):
                upward.append(f"{module} -> {dep}")
    assert upward == []


def test_only_the_addon_imports_mitmproxy():
    importers = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            if any(n == "mitmproxy" or n.startswith("mitmproxy.") for n in names):
                importers.append(name)
    assert sorted(set(importers)) == ["kimi_intercept.addon"]


def test_every_subpackage_says_what_it_owns():
    undocumented = [
        layer
        for layer in LAYERS
        if len(ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text())) or "")
        < 80
    ]
    assert undocumented == []
