"""Every package ships: the wheel pip builds from this checkout holds every module of the
project's packages, and every module imports from the unpacked wheel alone, with the
checkout neither on sys.path nor behind an editable install (`pip install .` on a
cluster node, or a wheel copied there, gets only what the wheel holds)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sweeps", "workers", "analysis", "bench")

# Run in a fresh interpreter whose working directory is outside the checkout: import each
# module named on the command line; print one line per module that fails to import or
# comes from anywhere but the unpacked wheel (argv[1]).
IMPORT_EACH = """
import importlib, sys
from pathlib import Path

site = Path(sys.argv[1]).resolve()
# `pip install -e .` adds a finder that answers imports from the checkout: take it out,
# so that a module the wheel lacks fails here instead of being found there.
editable = lambda f: getattr(f, "__module__", "").startswith("__editable__")
sys.meta_path[:] = [f for f in sys.meta_path if not editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not editable(h)]
sys.path_importer_cache.clear()
for name in sys.argv[2:]:
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        print(f"{name}: {type(exc).__name__}: {exc}")
        continue
    if not Path(module.__file__).resolve().is_relative_to(site):
        print(f"{name}: imported from {module.__file__}, not from the wheel")
"""


def checkout_files() -> list[str]:
    """The checkout as git sees it: tracked and new files, not ignored ones (no .venv, no
    results), which is what a clone with the work in progress holds."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (ROOT / name).is_file()})


def package_modules(files: list[str]) -> dict[str, str]:
    """Module name -> file, for every .py file of the project's packages."""
    modules = {}
    for name in files:
        parts = Path(name).with_suffix("").parts
        if name.endswith(".py") and parts[0] in PACKAGES:
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = name
    return modules


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, set[str], dict[str, str]]:
    """(unpacked wheel, the wheel's file names, the checkout's modules). The wheel is built
    from a copy of the checkout, so the build's build/ and egg-info stay out of it."""
    tmp = tmp_path_factory.mktemp("packaging")
    files = checkout_files()
    for name in files:
        (tmp / "source" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp / "source" / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp / "dist"), str(tmp / "source")],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    (path,) = (tmp / "dist").glob("*.whl")
    with zipfile.ZipFile(path) as archive:
        archive.extractall(tmp / "site")
        names = set(archive.namelist())
    return tmp / "site", names, package_modules(files)


def test_the_wheel_holds_every_module_of_the_packages_and_no_tests(wheel):
    _, names, modules = wheel
    assert len(modules) > 50  # the four packages were found in the checkout
    assert sorted(f for f in modules.values() if f not in names) == []
    assert sorted(n for n in names if n.startswith("tests/")) == []


def test_every_module_imports_from_the_wheel_alone(wheel, tmp_path, figures):
    site, _, modules = wheel
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    ran = subprocess.run([sys.executable, "-c", IMPORT_EACH, str(site), *sorted(modules)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.splitlines() == []
    figures("packaging", "each of the {modules} modules of the {packages} packages imported from the wheel alone",
            modules=len(modules), packages=len({name.split(".")[0] for name in modules}))
