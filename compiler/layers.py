"""The import graph of sparsemac's packages, and the order it must keep.

The packages stand in layers, ground first: ``core`` (the IR, the arithmetic's constants,
errors), ``hw`` (gateware), ``boards`` (board table, FPGA families, the board link), ``sim``
(cocotb benches), ``compiler`` (passes, build, CLI). A module may import its own package and
the layers below it, never one above: ``python -m compiler.layers`` prints every arrow and
exits non-zero when one points up (tests/test_layers.py runs it). The graph is read from the
source (``ast``), so nothing is imported to draw it.

Imports sit at the top of a module. The one exception is the command line: the CLI modules in
:data:`DEFERRED` import a command's module when that command runs, so that ``--help`` or a
mistyped argument answers without loading torch; no other function-local import of our
packages is allowed (none may dodge a cycle).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

__all__ = ["LAYERS", "DEFERRED", "imports", "graph", "upward", "deferred", "main"]

#: Ground first.
LAYERS = ("core", "hw", "boards", "sim", "compiler")

#: The modules that may import inside a function: a command's module when it runs.
DEFERRED = ("compiler/cli.py", "compiler/prune/cli.py")

_ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every import of one of our packages
    in the file at ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []

    def visit(node, local):
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, local) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[:len(package) - child.level + 1]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module or ""
                found.append((name, child.lineno, local))
            visit(child, inner)

    visit(tree, False)
    return [(name, line, local) for name, line, local in found
            if name.split(".")[0] in LAYERS]


def graph() -> dict[tuple[str, str], list[str]]:
    """``(from package, to package)`` -> the ``file:line`` of each import between two of our
    packages."""
    arrows = defaultdict(list)
    for top in LAYERS:
        for path in sorted((_ROOT / top).rglob("*.py")):
            for name, line, local in imports(path):
                target = name.split(".")[0]
                if target != top:
                    where = f"{path.relative_to(_ROOT)}:{line}" + (" (in a function)"
                                                                     if local else "")
                    arrows[(top, target)].append(where)
    return dict(arrows)


def upward(arrows=None) -> list[str]:
    """Every import that points up the layers, as ``file:line: a -> b``."""
    arrows = graph() if arrows is None else arrows
    rank = {name: i for i, name in enumerate(LAYERS)}
    return [f"{where}: {a} -> {b}" for (a, b), wheres in sorted(arrows.items())
            if rank[b] > rank[a] for where in wheres]


def deferred() -> list[str]:
    """Function-local imports of our packages outside :data:`DEFERRED`, as ``file:line``."""
    out = []
    for top in LAYERS:
        for path in sorted((_ROOT / top).rglob("*.py")):
            where = str(path.relative_to(_ROOT))
            if where not in DEFERRED:
                out.extend(f"{where}:{line}: {name}" for name, line, local in imports(path)
                           if local)
    return out


def main() -> int:
    arrows = graph()
    print("layers, ground first: " + " < ".join(LAYERS))
    for a in reversed(LAYERS):
        targets = sorted({b for (x, b) in arrows if x == a}, key=LAYERS.index, reverse=True)
        for b in targets:
            print(f"  {a:8} -> {b:8} {len(arrows[(a, b)]):3} imports")
    bad = upward(arrows)
    for line in bad:
        print(f"upward: {line}")
    print("every arrow points down" if not bad else f"{len(bad)} imports point up")
    local = deferred()
    for line in local:
        print(f"import inside a function: {line}")
    return 1 if bad or local else 0


if __name__ == "__main__":
    sys.exit(main())
