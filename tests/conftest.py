"""Shared fixtures: the real SCIEX files of ../shared/data and simulated batches with known truth."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import Result

from lcmsquant.pipeline import run_batch
from lcmsquant.simulate import simulate_batch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "smartpeak-sciex-srm"


def run_cli(*args, cwd=None, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`lcmsquant ARGS...` in a process of its own, as a user runs it (its output piped, wide)."""
    return subprocess.run(
        [sys.executable, "-m", "lcmsquant", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "400", **(env or {})},
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def cli():
    """run_cli, for tests of the command as a user runs it: such tests are marked `subprocess`."""
    return run_cli


@pytest.fixture(scope="session")
def invoke():
    """`lcmsquant ARGS...` in this process (typer's CliRunner), for tests of what a command says
    and writes rather than of the process: no interpreter start-up, so not marked `subprocess`.
    COLUMNS is wide as for run_cli (click's help); cli.console keeps the width it chose at import.
    The result has exit_code, stdout and stderr; an uncaught exception is raised, not caught, so
    a traceback fails the test as it would have shown on a user's terminal."""
    from typer.testing import CliRunner

    from lcmsquant.cli import app

    def invoke(*args) -> Result:
        return CliRunner(env={"COLUMNS": "400"}).invoke(app, [str(arg) for arg in args], catch_exceptions=False)

    return invoke


# Markers that a quick run leaves out (`pytest -m quick`, see pyproject.toml); CI runs everything.
FIXTURE_MARKERS = {"cli": "subprocess", "chromium": "browser"}


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(items):
    """Mark each test by what it starts: a process (the `cli` fixture), a browser (`chromium`)."""
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
        if not any(item.get_closest_marker(name) for name in ("subprocess", "browser", "dask")):
            item.add_marker("quick")


@pytest.fixture(scope="session")
def sciex_dir() -> Path:
    """The real QTRAP files; CI always has them beside the checkout, so there they must exist."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} is missing: CI clones the project beside shared/")
        pytest.skip(f"{SHARED_DATA} not found (clone the project beside shared/)")
    return SHARED_DATA


def _simulated(tmp_path_factory, name: str, seed: int, matrix: str):
    folder = tmp_path_factory.mktemp(name) / "batch"
    truth_path = simulate_batch(folder, seed=seed, matrix=matrix)
    batch, result = run_batch(folder)
    return folder, pd.read_csv(truth_path), batch, result


# Seeds 2026 and 4711 were not used while the integrator and calibration were developed.
@pytest.fixture(scope="session")
def plasma_run(tmp_path_factory):
    return _simulated(tmp_path_factory, "plasma", 2026, "plasma")


@pytest.fixture(scope="session")
def csf_run(tmp_path_factory):
    return _simulated(tmp_path_factory, "csf", 4711, "csf")


@pytest.fixture
def plasma_batch(tmp_path) -> Path:
    """A fresh small simulated plasma batch a test may modify."""
    folder = tmp_path / "batch"
    simulate_batch(folder, seed=7, matrix="plasma")
    return folder


@pytest.fixture(scope="session")
def processed_study(tmp_path_factory):
    """A simulated study (plasma/marrow, CSF and reanalysis runs, known truth), each run processed
    as `lcmsquant run` does; returns the SimulatedStudy and the runs' results folders."""
    from lcmsquant.results import write_outputs
    from lcmsquant.simulate import simulate_study

    study = simulate_study(tmp_path_factory.mktemp("study"), seed=8128, n_subjects=6)
    results = []
    for folder in study.runs:
        batch, result = run_batch(folder)
        write_outputs(batch, result, folder / "results", command=["lcmsquant", "run", str(folder)])
        results.append(folder / "results")
    return study, tuple(results)


@pytest.fixture(scope="module")
def cohort(processed_study, tmp_path_factory):
    """The study's three runs added to a fresh cohort database (library call, as the CLI does);
    one per test module, which may add to it."""
    from lcmsquant.cohort import add_runs

    _, results = processed_study
    db = tmp_path_factory.mktemp("cohort") / "study.sqlite"
    add_runs(db, results)
    return db


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium for the report tests; .ci/run installs it, so in CI it must exist."""
    from lcmsquant.browser import BrowserError, find_browser

    try:
        return find_browser()
    except BrowserError as err:
        if os.environ.get("CI"):
            pytest.fail(f"{err} (.ci/run installs it)")
        pytest.skip(str(err))
