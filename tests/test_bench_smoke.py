"""The benchmark report at smoke sizes: every script runs beside its anchor, and the report,
the plots and the README block are written into a temporary directory."""

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from bench.common import ROOT
from bench.run_all import BENCHMARKS, DATA, PLOTS, README_MARKS, RESULTS_MARKS

SMOKE_TIMEOUT_S = 480  # about 75 s on a quiet 2-core machine; 5 min when it is overloaded
pytestmark = pytest.mark.timeout(SMOKE_TIMEOUT_S + 60)  # the run, and run_all's clean-up after it


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory a smoke run of `bench.run_all --out` wrote."""
    out = tmp_path_factory.mktemp("bench-report")
    argv = [sys.executable, "-m", "bench.run_all", "--smoke", "--out", str(out)]
    log = out / "run_all.log"
    with log.open("wb") as output:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
        try:
            process.wait(timeout=SMOKE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)  # run_all then stops the running script's servers
            process.wait()
    assert process.returncode == 0, log.read_text()
    return out


def _outcomes(report: Path) -> list[dict[str, Any]]:
    outcomes: list[dict[str, Any]] = json.loads((report / "plots" / DATA).read_text())
    return outcomes


def _block(text: str, marks: tuple[str, str]) -> str:
    return text.split(marks[0], 1)[1].split(marks[1], 1)[0]


def test_every_benchmark_measures_kiln_beside_its_anchor(report: Path) -> None:
    outcomes = _outcomes(report)
    assert [outcome["script"] for outcome in outcomes] == list(BENCHMARKS)
    for outcome in outcomes:
        assert outcome["summaries"], f"bench.{outcome['script']} did not run: {outcome['not_run']}"
        for summary in outcome["summaries"]:
            assert summary["kiln"] > 0, summary["name"]
            assert summary["anchor"] > 0, summary["name"]
            assert summary["ratio"] > 0, summary["name"]
            assert isinstance(summary["met"], bool)
            assert summary["command"].startswith(f"uv run python -m bench.{outcome['script']}")
            assert "--json" not in summary["command"]
            assert summary["table"].startswith("|")
    names = {summary["name"] for outcome in outcomes for summary in outcome["summaries"]}
    assert {"submit", "memory", "e2e", "drain", "round_trip", "appbuild"} <= names
    assert any(name.startswith("stream_") for name in names)


def test_plots_are_images(report: Path) -> None:
    for name in PLOTS:
        height, width, _channels = matplotlib.image.imread(report / "plots" / name).shape
        assert min(height, width) > 100, name


def test_readme_shows_the_table_and_the_plots(report: Path) -> None:
    readme = (report / "README.md").read_text()
    assert readme.index("## Performance") < readme.index(README_MARKS[0])
    assert readme.index(README_MARKS[1]) < readme.index("## Development")
    block = _block(readme, README_MARKS)
    assert "Smoke run (tiny sizes)" in block
    assert "| benchmark | Kiln | anchor | unit | Kiln / anchor | goal | met |" in block
    for outcome in _outcomes(report):
        for summary in outcome["summaries"]:
            assert f"| {summary['title']} |" in block
    for name in PLOTS:
        assert f"(plots/{name})" in block


def test_results_keep_the_hand_written_sections(report: Path) -> None:
    results = (report / "RESULTS.md").read_text()
    block = _block(results, RESULTS_MARKS)
    assert "Machine: nproc" in block
    for outcome in _outcomes(report):
        if outcome["summaries"]:
            assert outcome["summaries"][0]["table"] in block
    assert results.count(RESULTS_MARKS[0]) == 1
    assert "## How to run" in results.split(RESULTS_MARKS[1], 1)[1]
    assert "## Method" in results
