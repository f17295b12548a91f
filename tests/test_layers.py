"""`workers/` reads bottom to top: no module imports one of a higher layer, at module
level, inside a function or under TYPE_CHECKING; `workers` imports neither `sweeps` nor
`analysis`; and `analysis` imports neither torch nor Ray when it is imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each module of workers/ and its layer; a module may import its own layer or lower ones.
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("workers", "workers.errors", "workers.registry", "workers.safe_pickle", "workers.seal", "workers.storage"),
    1: ("workers.config",),
    2: ("workers.data", "workers.models", "workers.records", "workers.tables", "workers.lineage", "workers.checkpoints",
        "workers.augment", "workers.fast_path", "workers.mc", "workers.live", "workers.footprint"),
    3: ("workers.train",),
    4: ("workers.alig", "workers.optim", "workers.late_phase", "workers.swa", "workers.pairwise",
        "workers.metrics", "workers.metrics.common", "workers.metrics.hessian", "workers.metrics.interpolation",
        "workers.metrics.surface", "workers.pair_metrics", "workers.pair_metrics.similarity",
        "workers.pair_metrics.bezier", "workers.packing", "workers.packing.modules", "workers.packing.optim",
        "workers.packing.train"),
    5: ("workers.catalog",),
    6: ("workers.runtime", "workers.trial", "workers.pair_trial", "workers.packing.plan", "workers.packing.job",
        "workers.tune_entry"),
}
LAYER = {module: layer for layer, modules in LAYERS.items() for module in modules}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, modules: set[str]) -> set[str]:
    """Every project module `path` imports anywhere in its body (`from a import b` is
    module a.b when that is a module, else a)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {name for name in found if name.split(".")[0] in ("workers", "sweeps", "analysis")}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in (ROOT / "workers").rglob("*.py")}
    return {name: imported(path, set(paths)) - {name} for name, path in paths.items()}


def test_every_module_of_workers_has_a_layer():
    assert sorted(set(graph()) - set(LAYER)) == [], "add new modules to LAYERS (and to the README's Layout)"
    assert sorted(set(LAYER) - set(graph())) == []


def test_no_import_runs_up_a_layer_or_out_of_workers():
    upward = [f"{source} (layer {LAYER[source]}) imports {target}"
              + (f" (layer {LAYER[target]})" if target in LAYER else "")
              for source, targets in graph().items() for target in sorted(targets)
              if target not in LAYER or LAYER[target] > LAYER[source]]
    assert upward == []


def test_the_imports_of_workers_form_no_loop():
    edges, state = graph(), {}

    def visit(module: str, path: tuple[str, ...]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import loop: {' -> '.join((*path, module))}"
        state[module] = "open"
        for target in sorted(edges[module]):
            visit(target, (*path, module))
        state[module] = "done"

    for module in sorted(edges):
        visit(module, ())


def test_analysis_imports_neither_torch_nor_ray():
    code = "import sys, analysis, analysis.load, analysis.status, analysis.report; " \
           "print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
