"""The figures of the README and docs/cluster.md are rendered from bench/results.json
(bench/readme.py), so a figure typed by hand, or a bench rerun without
`python bench/readme.py`, fails here. No bench runs: this renders the files from the
recorded results and compares."""

from __future__ import annotations

import json

import pytest

from bench import load_results, readme
from bench.readme import README, RENDERED, render


@pytest.mark.parametrize("path", RENDERED, ids=lambda path: path.name)
def test_readme_figures_are_those_in_results_json(path):
    current = path.read_text()
    assert render(current, load_results()) == current, f"{path.name} differs from bench/results.json: run python bench/readme.py"


def test_every_rendered_part_of_the_docs_has_a_renderer_and_is_there():
    names = [m["name"] for path in RENDERED for m in readme.BLOCK.finditer(path.read_text())]
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


def test_a_reliability_cell_is_what_its_tests_said_in_the_newest_run_that_has_its_row():
    def said(text: str) -> list[dict]:
        return [{"text": text, "tests": ["t"], "values": {}}]

    results = {"full": {"reliability": {"date": "2026-01-02 00:00", "pytest": "3 passed",
                                        "rows": {"soak": said("soak"), "two-drivers": said("refused")}}},
               "reliability": {"date": "2026-01-03 00:00", "pytest": "2 passed",
                               "rows": {"two-drivers": said("refused again")}}}
    assert readme.BLOCKS["reliability-two-drivers"](results) == "refused again"
    assert readme.BLOCKS["reliability-soak"](results) == "soak"  # only the full run has it
    with pytest.raises(KeyError, match="no test said the Reliability row 'bad-input'"):
        readme.BLOCKS["reliability-bad-input"](results)


def test_the_cases_of_a_parametrized_test_are_one_part_with_their_counts_summed():
    from bench.reliability import collect

    def line(test: str, template: str, **values) -> str:
        return json.dumps({"row": "r", "test": test, "template": template, "text": "", "values": values})

    rows = collect([line("a[1]", "{cases} refused", cases=1), line("b", "in {s} s", s=0.5),
                    line("a[2]", "{cases} refused", cases=1)])
    assert [part["text"] for part in rows["r"]] == ["2 refused", "in 0.5 s"]
    assert rows["r"][0]["tests"] == ["a[1]", "a[2]"]
    with pytest.raises(ValueError, match="not the same counts"):
        collect([line("a", "exit {code} by {signal}", code=130, signal="SIGINT"),
                 line("b", "exit {code} by {signal}", code=143, signal="SIGTERM")])
