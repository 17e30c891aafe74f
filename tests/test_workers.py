"""A worker process that dies (the out-of-memory killer, a crash in the C++ mzML reader) does not
take the batch down: what it held is measured once more in a process of its own, and only a file
that kills that process too is flagged NO_DATA, naming the signal; the rest equals a serial run.

The workers are really killed: a thread of the test watches this process's descendants and
SIGKILLs any that has a chosen mzML file open. That file is a real injection followed by 32 MB
of whitespace (gzipped), so that reading it takes long enough (~0.5 s) to be caught in the act.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from lcmsquant.batch import load_batch, resolve_method_path
from lcmsquant.measure import measure_batch
from lcmsquant.method import load_method
from lcmsquant.simulate import SimulationOptions, simulate_batch

pytestmark = pytest.mark.subprocess  # every test here starts worker processes

SLOW_INJECTION = 5  # early in the batch, so that most of the work is left when its worker dies


@pytest.fixture(scope="module")
def slow_batch(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("workers") / "batch"
    simulate_batch(folder, seed=11, options=SimulationOptions(n_unknowns=8))
    worklist = pd.read_csv(folder / "worklist.csv", dtype=str, keep_default_na=False)
    plain = folder / worklist.loc[SLOW_INJECTION - 1, "file"]
    with gzip.open(plain.with_name(plain.name + ".gz"), "wb") as packed:
        packed.write(plain.read_bytes() + b" " * (32 << 20) + b"\n")
    plain.unlink()
    worklist.loc[SLOW_INJECTION - 1, "file"] = plain.name + ".gz"
    worklist.to_csv(folder / "worklist.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def serial(slow_batch):
    return measure_batch(_load(slow_batch), jobs=1)


def _load(folder: Path):
    return load_batch(folder, load_method(resolve_method_path(folder, None)))


class Killer:
    """SIGKILLs, from a thread, every descendant of this process that has `path` open (at most
    `times` of them); records the pids it killed."""

    def __init__(self, path: Path, times: int):
        self.path, self.times, self.killed = str(path.resolve()), times, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set() and len(self.killed) < self.times:
            for child in me.children(recursive=True):
                try:
                    holding = any(f.path == self.path for f in child.open_files())
                except psutil.Error:  # ended meanwhile
                    continue
                if holding and child.pid not in self.killed:
                    os.kill(child.pid, signal.SIGKILL)
                    self.killed.append(child.pid)
            time.sleep(0.005)


def test_a_killed_worker_costs_nothing_its_injection_is_measured_again(slow_batch, serial):
    batch = _load(slow_batch)
    slow_file = batch.injections[SLOW_INJECTION - 1].file
    with Killer(slow_file, times=1) as killer:
        peaks, errors = measure_batch(batch, jobs=2)
    assert len(killer.killed) == 1  # a worker really died holding the file
    assert errors == {}
    pd.testing.assert_frame_equal(peaks, serial[0])


def test_a_file_that_kills_every_worker_reading_it_is_flagged_and_the_batch_finishes(slow_batch, serial):
    batch = _load(slow_batch)
    slow_file = batch.injections[SLOW_INJECTION - 1].file
    seen = []
    with Killer(slow_file, times=10) as killer:
        peaks, errors = measure_batch(batch, progress=seen.append, jobs=2)
    assert len(killer.killed) == 2  # the pool's worker, then the process it was given again to
    assert list(errors) == [SLOW_INJECTION]
    assert slow_file.name in errors[SLOW_INJECTION] and "SIGKILL" in errors[SLOW_INJECTION]
    assert sorted(inj.order for inj in seen) == [inj.order for inj in batch.injections]  # progress saw each once
    poisoned = peaks["injection"] == SLOW_INJECTION
    assert (peaks.loc[poisoned, "status"] == "NO_DATA").all()
    expected = serial[0][serial[0]["injection"] != SLOW_INJECTION]
    pd.testing.assert_frame_equal(peaks[~poisoned], expected)


def _workers() -> set[int]:
    """The worker processes of this process: the fork server's children (this process's
    grandchildren), alive."""
    me = os.getpid()
    return {
        p.pid
        for p in psutil.Process().children(recursive=True)
        if p.ppid() != me and p.status() != psutil.STATUS_ZOMBIE
    }


def test_run_batches_stops_its_workers_once_the_last_batch_is_measured(tmp_path, monkeypatch):
    """run_batches measures every batch with one pool and stops it before the last batch is
    quantified (its workers' memory is not needed to quantify and draw the report); nothing is
    left running for the caller to release, and workers asked for later still come."""
    import lcmsquant.pipeline
    from lcmsquant.runs import run_batches

    folder = tmp_path / "batch"
    simulate_batch(folder, seed=12, options=SimulationOptions(n_unknowns=8))
    other = Path(shutil.copytree(folder, tmp_path / "batch2"))
    quantify, seen = lcmsquant.pipeline.quantify, []

    def watched(*args, **kwargs):
        seen.append(_workers())
        return quantify(*args, **kwargs)

    monkeypatch.setattr(lcmsquant.pipeline, "quantify", watched)
    outcomes = run_batches([folder, other], out=tmp_path / "results", jobs=2, report=False)
    assert [o.ok for o in outcomes] == [True, True]
    assert seen[0] and seen[1] == set()  # kept after the first batch, stopped after the last
    assert _workers() == set()
    again, _ = measure_batch(_load(folder), jobs=2)
    pd.testing.assert_frame_equal(again, measure_batch(_load(folder), jobs=1)[0])


def test_measuring_with_workers_leaves_nothing_to_release(tmp_path):
    """measure_batch without a pool starts one for the batch and stops it before it returns: a
    notebook or script has no worker process to release."""
    folder = tmp_path / "batch"
    simulate_batch(folder, seed=13, options=SimulationOptions(n_unknowns=8))
    batch = _load(folder)
    for _ in range(2):
        measure_batch(batch, jobs=2)
        assert _workers() == set()


def test_a_pool_is_kept_from_one_batch_to_the_next_by_whoever_holds_it(tmp_path):
    """A WorkerPool's workers measure every batch given to it (starting them costs a little each
    time) and end with the `with` block."""
    from lcmsquant.workers import WorkerPool

    folder = tmp_path / "batch"
    simulate_batch(folder, seed=14, options=SimulationOptions(n_unknowns=8))
    batch = _load(folder)
    with WorkerPool(2) as pool:
        first, _ = measure_batch(batch, jobs=2, workers=pool)
        processes = _workers()
        second, _ = measure_batch(batch, jobs=2, workers=pool)
        assert len(processes) == 2 and _workers() == processes  # the same two workers
    pd.testing.assert_frame_equal(first, second)
    assert not _workers() & processes


def test_a_kept_worker_that_died_while_idle_is_replaced_without_losing_an_injection(tmp_path, serial, slow_batch):
    """The out-of-memory killer may take an idle worker between two batches: the next batch
    finds its pool broken, starts new workers and loses nothing."""
    from lcmsquant.workers import WorkerPool

    batch = _load(slow_batch)
    with WorkerPool(2) as pool:
        measure_batch(batch, jobs=2, workers=pool)
        idle = sorted(_workers())
        assert idle, "no kept worker to kill"
        os.kill(idle[0], signal.SIGKILL)
        time.sleep(0.2)
        peaks, errors = measure_batch(batch, jobs=2, workers=pool)
    assert not errors
    pd.testing.assert_frame_equal(peaks, serial[0])
