"""The folders are the layers. `workers/`'s folders, bottom to top as
`workers.LAYERS` lists them: no module imports one of a higher layer, at module level,
inside a function or under TYPE_CHECKING; `workers` imports neither `sweeps` nor
`analysis`; `analysis` imports only `workers.core` and, when imported, neither torch
nor Ray; and no import loop anywhere in the repository."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from workers import LAYERS as FOLDERS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("workers", "sweeps", "analysis", "bench")


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
    return {name for name in found if name.split(".")[0] in PACKAGES}


def graph(packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    paths = {module_name(p): p for package in packages for p in (ROOT / package).rglob("*.py")}
    return {name: imported(path, set(paths)) - {name} for name, path in paths.items()}


def layer(module: str) -> int | None:
    """The layer of a module of `workers`: its folder's place in `workers.LAYERS`
    (the package itself is below all); None for a module outside every folder."""
    parts = module.split(".")
    if parts == ["workers"]:
        return -1
    return next((i for i, folders in enumerate(FOLDERS) if len(parts) > 1 and parts[1] in folders), None)


def test_every_module_of_workers_sits_in_a_layer_folder():
    outside = [module for module in graph(("workers",)) if layer(module) is None]
    assert outside == [], "put these in a folder of workers.LAYERS (and in the README's Layout)"
    assert {p.name for p in (ROOT / "workers").iterdir() if p.is_dir() and (p / "__init__.py").exists()} == \
        {folder for folders in FOLDERS for folder in folders}, "every folder of workers/ is a layer"


def test_no_import_runs_up_a_layer_or_out_of_workers():
    upward = [f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
              for source, targets in graph(("workers",)).items() for target in sorted(targets)
              if layer(target) is None or layer(target) > layer(source)]
    assert upward == []


def test_analysis_reads_with_the_core_of_workers_only():
    reached = sorted({target for targets in graph(("analysis", "workers")).items()
                      if targets[0].startswith("analysis") for target in targets[1]
                      if target.startswith("workers") and layer(target) not in (-1, 0)})
    assert reached == []


def test_no_import_loop_anywhere():
    edges, state = graph(), {}

    def visit(module: str, path: tuple[str, ...]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import loop: {' -> '.join((*path, module))}"
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            visit(target, (*path, module))
        state[module] = "done"

    for module in sorted(edges):
        visit(module, ())


def test_analysis_imports_neither_torch_nor_ray():
    code = "import sys, analysis, analysis.load, analysis.status, analysis.report; " \
           "print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_readme_layout_names_every_folder_in_its_layer():
    """The README's Layout section is drawn from the folders: each folder of `sweeps/`
    has its row, and the layer table lists `workers.LAYERS` in order."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("Where things live:")]
    folders = sorted(p.name for p in (ROOT / "sweeps").iterdir() if (p / "__init__.py").exists())
    assert [f for f in folders if f"| `sweeps/{f}/` |" not in layout] == []
    rows = [line.split("|")[1:3] for line in layout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [(int(number), [name.strip(" `/") for name in cell.split(", ")]) for number, cell in rows] == \
        [(i, list(names)) for i, names in enumerate(FOLDERS)]
