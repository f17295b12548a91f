"""The README's figures are rendered from bench/results.json (bench/readme.py), so a figure
typed by hand, or a bench rerun without `python bench/readme.py`, fails here. No bench
runs: this renders the README from the recorded results and compares."""

from __future__ import annotations

import json

import pytest

from bench import load_results, readme
from bench.readme import README, render


def test_readme_figures_are_those_in_results_json():
    current = README.read_text()
    assert render(current, load_results()) == current, "README.md differs from bench/results.json: run python bench/readme.py"


def test_every_rendered_part_of_the_readme_has_a_renderer_and_is_there():
    names = [m["name"] for m in readme.BLOCK.finditer(README.read_text())]
    assert sorted(names) == sorted(readme.BLOCKS), names


def test_every_entry_says_when_and_where_it_was_measured():
    results = load_results()
    entries = {name: e for name, e in results.items() if name not in ("full", "earlier")}
    entries |= {f"full.{name}": e for name, e in results["full"].items()}
    for name, entry in entries.items():
        assert {"date", "machine"} <= entry.keys(), name
    for name, entry in results["earlier"].items():
        assert entry.get("source"), name


def test_a_changed_figure_changes_the_readme():
    results = load_results()
    changed = json.loads(json.dumps(results))
    changed["hessian"]["a.trace.hvps_pyhessian"] = 99.0
    current = README.read_text()
    assert f"{readme.num(results['hessian']['a.trace.hvps_ours'])} vs 99)" in render(current, changed)
    assert render(current, changed) != current


def test_an_unknown_part_is_named():
    with pytest.raises(KeyError, match="no renderer for <!-- results: nope -->"):
        render("<!-- results: nope -->x<!-- /results -->", load_results())
