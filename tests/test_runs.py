"""Many batches in one command: each gets its own results, a bad one does not stop the others,
and a Dask cluster gives the same files as a local run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lcmsquant.runs import RunRequestError, output_folders, process_batch, run_batches
from lcmsquant.simulate import SimulationOptions, simulate_batch

DETERMINISTIC = ("results.csv", "peaks.csv", "calibration.csv", "audit.csv", "reanalysis.csv", "run.json")


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> list[Path]:
    """Two small simulated batches, plasma and CSF, never modified (copy them to change them)."""
    root = tmp_path_factory.mktemp("runs")
    folders = []
    for name, seed, matrix in (("plasma-run", 21, "plasma"), ("csf-run", 22, "csf")):
        simulate_batch(root / name, seed=seed, matrix=matrix, options=SimulationOptions(n_unknowns=6))
        folders.append(root / name)
    return folders


def _copies(batches, tmp_path) -> list[Path]:
    return [Path(shutil.copytree(b, tmp_path / b.name)) for b in batches]


def test_each_batch_gets_its_own_results_and_a_bad_one_does_not_stop_the_others(batches, tmp_path, cli):
    plasma, csf = _copies(batches, tmp_path)
    broken = tmp_path / "broken-run"
    shutil.copytree(plasma, broken)
    (broken / "worklist.csv").write_text("file,sample_id\n")
    done = cli("run", plasma, broken, csf, "--jobs", "1")
    assert done.returncode == 2  # one batch had unusable input
    assert "broken-run" in done.stderr and "missing column(s)" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "2 of 3 batches processed" in done.stdout
    for folder in (plasma, csf):
        assert (folder / "results" / "results.csv").is_file()
        assert f"Run summary: {folder}" in done.stdout.replace("\n", "")
    assert not (broken / "results").exists()


def test_several_batches_with_out_write_one_folder_each(batches, tmp_path):
    outcomes = run_batches(batches, out=tmp_path / "all", jobs=1)
    assert [o.ok for o in outcomes] == [True, True]
    assert [o.out_dir for o in outcomes] == [tmp_path / "all" / "plasma-run", tmp_path / "all" / "csf-run"]
    assert {row["calibrator_set"] for row in outcomes[1].summary} == {"csf"}
    assert all(row["accepted"] for o in outcomes for row in o.summary)


def test_two_batches_of_the_same_name_cannot_share_an_out_folder(tmp_path):
    with pytest.raises(RunRequestError, match="would both write to"):
        output_folders([tmp_path / "a" / "run1", tmp_path / "b" / "run1"], tmp_path / "out")
    assert output_folders([tmp_path / "a" / "run1"], tmp_path / "out") == [tmp_path / "out"]
    assert output_folders([tmp_path / "x", tmp_path / "y"], None) == [None, None]


def test_a_batch_that_cannot_be_read_is_an_outcome_not_an_exception(tmp_path):
    outcome = process_batch(tmp_path / "nowhere")
    assert not outcome.ok and outcome.bad_input and "is not a folder" in outcome.error
    assert outcome.out_dir is None


@pytest.mark.dask
def test_a_dask_cluster_gives_the_same_files_as_a_local_run(batches, tmp_path, cli):
    distributed = pytest.importorskip("distributed")
    local = _copies(batches, tmp_path / "local")
    remote = _copies(batches, tmp_path / "remote")
    assert cli("run", *local, "--jobs", "1").returncode == 0
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None
    ) as cluster:
        done = cli("run", *remote, "--scheduler", cluster.scheduler_address)
    assert done.returncode == 0, done.stderr
    for here, there in zip(local, remote):
        for name in DETERMINISTIC:
            assert (here / "results" / name).read_bytes() == (there / "results" / name).read_bytes(), (here.name, name)
    assert "2 of 2 batches processed" in done.stdout


@pytest.mark.dask
def test_an_unreachable_scheduler_is_one_clear_message(batches, tmp_path, cli):
    pytest.importorskip("distributed")
    env = dict(os.environ, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="2s")
    done = cli("run", *batches, "--scheduler", "tcp://127.0.0.1:9", env=env)
    assert done.returncode == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr
    assert not any((b / "results").exists() for b in batches)
