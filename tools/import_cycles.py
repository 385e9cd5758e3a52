"""Find import cycles among the project's own modules: `python tools/import_cycles.py`.

Builds the module import graph with `ast` (every `import` and `from ... import`, at any depth of the
module, so imports inside functions count too: they are cycles that merely wait for their first call)
and prints each strongly connected component of more than one module (a module importing itself, as a
package's `__init__` may, is no cycle). Exit code 1 when there is one. Roots: `src/sdcpu` (the package,
as `sdcpu.*`), and `tools`, `bench` and `tests` (their scripts, by file name). Imports under
`if TYPE_CHECKING:` count too: a cycle that only type checkers follow still ties two modules into one.
The parent package that importing a submodule runs first does not (every module has that edge; a
package's `__init__` re-exporting its submodules is not a cycle).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src"
SCRIPT_FOLDERS = ("tools", "bench", "tests")


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package (dotted names) and of the script folders (their file stems)."""
    modules: dict[str, Path] = {}
    for path in sorted((root / "src").rglob("*.py")):
        parts = path.relative_to(root / "src").with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    for folder in SCRIPT_FOLDERS:
        for path in sorted((root / folder).glob("*.py")):
            modules.setdefault(f"{folder}:{path.stem}", path)
    return modules


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` (at `path`) imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    folder = name.split(":")[0] if ":" in name else None
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                package = _package_of(name, path).split(".")
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # `from package import module` depends on that module; `from module import name`, on the module.
            targets = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t if t in modules else base for t in targets]
        for target in targets:
            found |= set(_resolve(target, folder, modules))
    found.discard(name)  # `from . import x` inside a package's own __init__ names itself only as a base
    return found


def _resolve(target: str, folder: str | None, modules: dict[str, Path]) -> Iterable[str]:
    # The longest project module that `target` names (a module, or a name inside one); scripts import
    # each other by bare file name.
    if folder is not None and f"{folder}:{target.split('.')[0]}" in modules:
        yield f"{folder}:{target.split('.')[0]}"
        return
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            yield candidate
            return


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imported(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def main() -> int:
    graph = import_graph()
    found = cycles(graph)
    for component in found:
        print("import cycle: " + " <-> ".join(component))
    print(f"{len(graph)} modules, {sum(len(v) for v in graph.values())} imports, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
