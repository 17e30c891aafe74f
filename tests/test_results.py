"""One results folder, one writer at a time: a second run into a folder another process is
writing stops at once and names that process; a lock left by a killed run never blocks; readers
(results.read_results: `report`, `cohort add`, `validate`, `isr`) get the old set of files or
the new one, never a mix."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from lcmsquant.audit_trail import TRAIL
from lcmsquant.cohort import read_cohort_run
from lcmsquant.files import atomic_write_all
from lcmsquant.pipeline import run_batch
from lcmsquant.results import LOCK_FILE, ResultsFolderBusy, read_results, results_lock, write_outputs
from lcmsquant.runs import process_batch
from lcmsquant.simulate import SimulationOptions, simulate_batch

OUTPUTS = ("results.csv", "peaks.csv", "calibration.csv", "audit.csv", "reanalysis.csv", "run.json", "session.json")
HOLD = """
import sys, time
from lcmsquant.results import results_lock
with results_lock(sys.argv[1], ["lcmsquant", "run", "the-other-batch"]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> list[Path]:
    """Two small simulated batches of different samples, never modified (copy them to change them)."""
    root = tmp_path_factory.mktemp("results")
    folders = []
    for name, seed in (("plate-a", 31), ("plate-b", 32)):
        simulate_batch(root / name, seed=seed, options=SimulationOptions(n_unknowns=6))
        folders.append(root / name)
    return folders


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s lock, as a run in another terminal would."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.subprocess
def test_a_run_into_a_held_folder_stops_at_once_naming_the_holder_and_the_other_batches_run(batches, tmp_path):
    plate_a, plate_b = (Path(shutil.copytree(b, tmp_path / b.name)) for b in batches)
    assert process_batch(plate_a).ok
    before = _files(plate_a / "results")
    holder = _holder(plate_a / "results")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lcmsquant", "run", plate_a, plate_b, "--jobs", "1", "--no-report"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2
    message = " ".join(done.stderr.split())  # rich wraps long lines
    assert f"{plate_a / 'results'}: 1 problem(s) in the results folder" in message
    assert f"PID {holder.pid} on {platform.node()}, started " in message and "lcmsquant run the-other-batch" in message
    assert "Traceback" not in done.stderr
    assert "1 of 2 batches processed" in done.stdout
    assert (plate_b / "results" / "results.csv").is_file()
    after = _files(plate_a / "results")
    assert {k: v for k, v in after.items() if k != LOCK_FILE} == before  # the held folder was not touched


def test_a_lock_left_by_a_killed_run_does_not_block_and_leaves_nothing_behind(batches, tmp_path):
    plate = Path(shutil.copytree(batches[0], tmp_path / "plate"))
    holder = _holder(plate / "results")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (plate / "results" / LOCK_FILE).is_file()  # the killed holder's details are still there
    outcome = process_batch(plate, report=False)
    assert outcome.ok, outcome.error
    on_disk = sorted(p.name for p in (plate / "results").iterdir())
    assert on_disk == sorted([*OUTPUTS, TRAIL])  # no lock file among the outputs
    recorded = json.loads((plate / "results" / "run.json").read_text())["outputs"]
    assert sorted(recorded) == sorted(OUTPUTS[:5])


def test_a_lock_held_in_this_process_refuses_a_second_writer_too(batches, tmp_path):
    out = tmp_path / "results"
    with results_lock(out, ["lcmsquant", "report", str(out)]) as held:
        details = json.loads((out / LOCK_FILE).read_text())
        assert details["pid"] == os.getpid() and details["command"] == ["lcmsquant", "report", str(out)]
        with pytest.raises(ResultsFolderBusy, match=f"PID {os.getpid()} on "):
            with results_lock(held):
                pass
        outcome = process_batch(batches[0], out_dir=out, jobs=1)
        assert outcome.bad_input and f"PID {os.getpid()}" in outcome.error
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing measured, nothing written
    assert not out.exists()  # the lock made the folder; released with nothing in it, it is removed


def test_report_refuses_to_rewrite_a_folder_a_run_is_writing(batches, tmp_path):
    """`lcmsquant report` writes report.html: done while a run writes, it could replace the
    run's new report with one of the old results."""
    from typer.testing import CliRunner

    from lcmsquant.cli import app

    out = tmp_path / "results"
    assert process_batch(batches[0], out_dir=out, jobs=1, report=False).ok
    with results_lock(out, ["lcmsquant", "run", str(batches[0])]):
        done = CliRunner().invoke(app, ["report", str(out)])
    assert done.exit_code == 2 and f"PID {os.getpid()}" in " ".join(done.output.split())
    assert not (out / "report.html").exists() and "Traceback" not in done.output


def test_readers_racing_a_writer_get_one_whole_set(batches, tmp_path):
    """A writer keeps replacing the folder's set with that of one run, then the other (as two
    reruns would); every read by read_results and by cohort add must belong to one of them."""
    sets = []
    for folder in batches:
        batch, result = run_batch(folder)
        write_outputs(batch, result, tmp_path / folder.name)
        sets.append({name: (tmp_path / folder.name / name).read_bytes() for name in OUTPUTS})
    expected = [read_results(tmp_path / folder.name) for folder in batches]
    expected_cohort = [read_cohort_run(tmp_path / folder.name) for folder in batches]
    out = tmp_path / "racing" / "results"
    out.mkdir(parents=True)
    atomic_write_all({out / name: data for name, data in sets[0].items()})
    stop = threading.Event()

    def write() -> None:
        turn = 0
        while not stop.wait(0.02):  # a rerun every 20 ms: a set is replaced within each read's retries
            turn += 1
            atomic_write_all({out / name: data for name, data in sets[turn % 2].items()})

    writer = threading.Thread(target=write)
    writer.start()
    seen = set()
    try:
        for _ in range(25):
            files = read_results(out)
            which = 0 if files.summary["batch"] == "plate-a" else 1
            seen.add(which)
            assert files.sha256 == expected[which].sha256 and files.session == expected[which].session
            pd.testing.assert_frame_equal(files.results, expected[which].results)
            pd.testing.assert_frame_equal(files.calibration, expected[which].calibration)
            record = read_cohort_run(out)
            which = 0 if record.batch == "plate-a" else 1
            assert record.results_sha256 == expected_cohort[which].results_sha256
            pd.testing.assert_frame_equal(record.verdicts, expected_cohort[which].verdicts)
    finally:
        stop.set()
        writer.join()
    assert seen == {0, 1}  # both sets were read while being replaced
