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


def test_the_fork_server_is_released_after_the_last_batch_and_starts_again_when_needed(tmp_path):
    """run_batches stops the workers' fork server once its last batch is measured (its ~200 MB
    are not needed to quantify and draw the report); workers asked for later still come."""
    from multiprocessing import forkserver

    from lcmsquant.runs import run_batches

    folder = tmp_path / "batch"
    simulate_batch(folder, seed=12, options=SimulationOptions(n_unknowns=8))
    [outcome] = run_batches([folder], out=tmp_path / "results", jobs=2, report=False)
    assert outcome.ok
    server = forkserver._forkserver
    for _ in range(100):  # stopped in the background: it has to finish its own exit
        if server._forkserver_pid is None:
            break
        time.sleep(0.05)
    assert server._forkserver_pid is None
    again, _ = measure_batch(_load(folder), jobs=2)
    assert server._forkserver_pid is not None
    pd.testing.assert_frame_equal(again, measure_batch(_load(folder), jobs=1)[0])


SCRIPT = """
import os, sys
with open(sys.argv[2], "a") as log:  # outside the guard on purpose: runs wherever the script is imported
    log.write(f"{os.getpid()}\\n")
from pathlib import Path
from lcmsquant.batch import load_batch, resolve_method_path
from lcmsquant.measure import measure_batch
from lcmsquant.method import load_method

if __name__ == "__main__":
    folder = Path(sys.argv[1])
    batch = load_batch(folder, load_method(resolve_method_path(folder, None)))
    for _ in range(2):
        measure_batch(batch, jobs=2)
"""


def test_a_script_measuring_in_workers_is_imported_once_by_the_fork_server_not_by_every_worker(tmp_path):
    """multiprocessing re-runs the main script in each new worker unless its fork server has
    preloaded it, which CPython before 3.13.8 never did (python/cpython#126631): a script that
    imports lcmsquant.runs paid about 1 s per worker, per batch. Here: the script runs twice, in
    its own process and in the server, however many workers two batches start."""
    import subprocess
    import sys

    folder = tmp_path / "batch"
    simulate_batch(folder, seed=13, options=SimulationOptions(n_unknowns=8))
    script, log = tmp_path / "measure_twice.py", tmp_path / "imports.log"
    script.write_text(SCRIPT)
    subprocess.run([sys.executable, str(script), str(folder), str(log)], check=True, timeout=300)
    pids = log.read_text().split()
    assert len(pids) == 2, f"the script ran in {len(pids)} processes"


def _descendants() -> set[int]:
    """The fork server and workers of this process (not multiprocessing's resource tracker, which
    lives as long as this process does)."""
    from multiprocessing import resource_tracker

    tracker = resource_tracker._resource_tracker._pid
    return {p.pid for p in psutil.Process().children(recursive=True)
            if p.pid != tracker and p.status() != psutil.STATUS_ZOMBIE}


def test_workers_are_kept_from_one_batch_to_the_next_and_released_with_the_server(tmp_path):
    """Starting and stopping workers costs about 0.2 s a batch: the second batch of a run is
    measured by the same processes; release_server ends them."""
    from lcmsquant.workers import release_server

    folder = tmp_path / "batch"
    simulate_batch(folder, seed=14, options=SimulationOptions(n_unknowns=8))
    batch = _load(folder)
    first, _ = measure_batch(batch, jobs=2)
    processes = _descendants()
    second, _ = measure_batch(batch, jobs=2)
    assert _descendants() == processes  # the fork server and the same two workers
    pd.testing.assert_frame_equal(first, second)
    release_server()
    for _ in range(100):
        if not _descendants() & processes:
            break
        time.sleep(0.05)
    assert not _descendants() & processes


def test_a_kept_worker_that_died_while_idle_is_replaced_without_losing_an_injection(tmp_path, serial, slow_batch):
    """The out-of-memory killer may take an idle worker between two batches: the next batch
    finds its pool broken, starts a new one and loses nothing."""
    batch = _load(slow_batch)
    measure_batch(batch, jobs=2)
    server_children = [p for p in psutil.Process().children(recursive=True) if p.ppid() != os.getpid()]
    assert server_children, "no kept worker to kill"
    os.kill(server_children[0].pid, signal.SIGKILL)
    time.sleep(0.2)
    peaks, errors = measure_batch(batch, jobs=2)
    assert not errors
    pd.testing.assert_frame_equal(peaks, serial[0])
