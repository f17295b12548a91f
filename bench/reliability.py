"""The figures of the README's Reliability table, from the tests that prove each row.

    python bench/reliability.py [--quick]

Runs the fault tests (`TESTS`: real processes, real Ray, real files) with
`LANDSCAPE_FIGURES` naming a file, into which each test writes what it measured through
the `figures` fixture (`tests/conftest.py`): its row of the table, the text of the
figure and the values in it. Figures are recorded only from a run in which every test
passed, so a figure in the README is one a passing test saw (a row whose test was
skipped is missing, and `bench/readme.py` names it). The full run adds the
simulation's soak (`SOAK_SECONDS` of fresh random cases, `tests/test_simulation.py`),
whose figures land under the row `soak`; `--quick` runs the simulation's default cases
only. The tests need the checkout (this bench is not for an installed wheel).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ("test_reliability.py", "test_packing_job.py", "test_damage.py", "test_lens.py", "test_lineage.py",
         "test_checkpoint_damage.py", "test_divergence.py", "test_bitrot.py", "test_tables.py", "test_spec.py",
         "test_bad_input.py", "test_packaging.py", "test_data.py", "test_yang2021.py", "test_simulation.py")
SOAK_SECONDS = 720
SOAK_EXAMPLES = 10_000  # more than a soak of SOAK_SECONDS reaches: time ends it


def collect(lines: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each row's parts, in the order the tests ran: a row may be proved by several tests
    (both executors, solo and packed), each saying its own part. Parts with the same
    wording (the cases of a parametrized test) become one, their values summed."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for line in lines:
        entry = json.loads(line)
        parts = rows.setdefault(entry["row"], {})
        part = parts.get(entry["template"])
        if part is None:
            parts[entry["template"]] = {"tests": [entry["test"]], "values": entry["values"]}
            continue
        counts = all(isinstance(v, int | float) for v in [*part["values"].values(), *entry["values"].values()])
        if part["values"].keys() != entry["values"].keys() or not counts:
            raise ValueError(f"row {entry['row']}: {entry['test']} says {entry['template']!r} again, "
                             f"with values that are not the same counts")
        part["tests"].append(entry["test"])
        part["values"] = {k: v + entry["values"][k] for k, v in part["values"].items()}
    return {row: [{"text": template.format(**part["values"]), **part} for template, part in parts.items()]
            for row, parts in rows.items()}


def run(quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.jsonl"
        out.touch()
        env = {**os.environ, "LANDSCAPE_FIGURES": str(out), "RAY_AUTH_MODE": "disabled"}
        if not quick:
            env |= {"LANDSCAPE_SOAK_EXAMPLES": str(SOAK_EXAMPLES), "LANDSCAPE_SOAK_SECONDS": str(SOAK_SECONDS)}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *(f"tests/{name}" for name in TESTS)], cwd=ROOT, env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-30:])
            raise RuntimeError(f"the fault tests did not all pass (pytest exit {proc.returncode}); "
                               f"no figure recorded:\n{tail}")
        rows = collect(out.read_text().splitlines())
    summary = proc.stdout.strip().splitlines()[-1]  # "N passed, M skipped in S s"
    return {"rows": rows, "pytest": summary, "tests_s": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    from bench import main

    main(run, __doc__)
