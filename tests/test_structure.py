"""The code's shape, checked: no import cycles (tools/import_cycles.py, which CI also runs), and the
runtime free of benchmark and evaluation harnesses and of torch."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "tools" / "import_cycles.py")
assert spec is not None and spec.loader is not None
import_cycles = importlib.util.module_from_spec(spec)
sys.modules["import_cycles"] = import_cycles
spec.loader.exec_module(import_cycles)


def test_the_package_tools_and_scripts_have_no_import_cycle():
    graph = import_cycles.import_graph(ROOT)
    assert "sdcpu.runtime.pipelines.base" in graph and "tools:train_demo" in graph
    assert import_cycles.cycles(graph) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_check_finds_cycles_through_functions_and_type_only_imports(tmp_path):
    root = _write(
        tmp_path,
        {
            "src/pkg/__init__.py": "from pkg.a import A\n",
            "src/pkg/a.py": "A = 1\ndef f():\n    from pkg import b\n",
            "src/pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n",
            "src/pkg/c.py": "from pkg.a import A\n",  # imports a, which nothing here imports back
            "tools/one.py": "import two\n",
            "tools/two.py": "from one import x\n",
        },
    )
    found = import_cycles.cycles(import_cycles.import_graph(root))
    assert found == [["pkg.a", "pkg.b"], ["tools:one", "tools:two"]]


# The package's layers, lowest first: a module imports its own layer or lower ones, never a higher one.
LAYERS = (
    ("sdcpu.errors", "sdcpu.version", "sdcpu.cache", "sdcpu.format", "sdcpu.models"),
    ("sdcpu.runtime",),
    ("sdcpu.export", "sdcpu.demo", "sdcpu.bench"),
    ("sdcpu.cli", "sdcpu.serve", "sdcpu.batch", "sdcpu.__main__"),
)


def _layer(module: str) -> int:
    if module == "sdcpu":  # the public API, `from sdcpu import Pipeline`
        return len(LAYERS)
    return next(
        i for i, names in enumerate(LAYERS) for name in names if module == name or module.startswith(name + ".")
    )


def test_no_module_imports_a_higher_layer():
    graph = import_cycles.import_graph(ROOT)
    upward = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.startswith("sdcpu")
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_the_runtime_holds_no_harness_and_imports_no_torch():
    runtime = ROOT / "src" / "sdcpu" / "runtime"
    for path in runtime.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        heavy = {n for n in names if n.split(".")[0] in ("torch", "diffusers", "transformers")}
        harness = {n for n in names if n.startswith(("sdcpu.bench", "sdcpu.demo.oracle", "sdcpu.export"))}
        assert not heavy and not harness, f"{path.relative_to(ROOT)} imports {sorted(heavy | harness)}"


def test_the_public_api_is_importable_from_the_package():
    from sdcpu import LoadOptions, Pipeline, PipelineResult, SdcpuError
    from sdcpu.runtime.options import LoadOptions as Options
    from sdcpu.runtime.pipelines import Pipeline as Base

    assert LoadOptions is Options and Pipeline is Base and PipelineResult and SdcpuError
