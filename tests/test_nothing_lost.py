"""No result is lost or silently changed: outputs are replaced as one set, a killed run leaves
the previous results whole, and reruns, serial or parallel, give the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lcmsquant.files import _HOST, atomic_write, atomic_write_all, remove_stale_temporaries
from lcmsquant.pipeline import run_batch
from lcmsquant.results import LOCK_FILE, write_outputs
from lcmsquant.simulate import SimulationOptions, simulate_batch

DETERMINISTIC = ("results.csv", "peaks.csv", "calibration.csv", "audit.csv", "reanalysis.csv", "run.json")


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nothing-lost") / "batch"
    simulate_batch(folder, seed=11, options=SimulationOptions(n_unknowns=8))
    return folder


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_write_leaves_every_previous_file_and_no_temporary(tmp_path):
    old = {"results.csv": b"old results\n", "run.json": b"{}\n"}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    new = {
        tmp_path / "results.csv": "new results\n",
        tmp_path / "run.json": "{}\n",
        tmp_path / ("x" * 300 + ".csv"): "a name no file system accepts\n",
    }
    with pytest.raises(OSError):
        atomic_write_all(new)
    assert _contents(tmp_path) == old  # nothing replaced, nothing left behind


def test_a_set_is_written_under_temporary_names_then_renamed(tmp_path):
    (tmp_path / "a.csv").write_text("old a\n")
    written = atomic_write_all({tmp_path / "a.csv": "new a\n", tmp_path / "b.csv": b"new b\n"})
    assert written == [tmp_path / "a.csv", tmp_path / "b.csv"]
    assert _contents(tmp_path) == {"a.csv": b"new a\n", "b.csv": b"new b\n"}
    assert oct((tmp_path / "b.csv").stat().st_mode & 0o777) == "0o644"


@pytest.mark.subprocess
def test_temporary_files_of_a_killed_writer_are_removed_and_others_kept(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    atomic_write(tmp_path / "results.csv", "kept\n")
    dead = tmp_path / f".results.csv.{_HOST}~{dead_pid}.k2j4_x.tmp"
    alive = tmp_path / f".peaks.csv.{_HOST}~{os.getpid()}.a8b7c6.tmp"
    old_elsewhere = tmp_path / ".run.json.otherhost~12.zzzz.tmp"
    mine = tmp_path / ".notes.tmp"  # not an lcmsquant temporary: never touched
    for path in (dead, alive, old_elsewhere, mine):
        path.write_text("partial")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old_elsewhere, (day_ago, day_ago))
    assert sorted(p.name for p in remove_stale_temporaries(tmp_path)) == sorted([dead.name, old_elsewhere.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".notes.tmp", alive.name, "results.csv"])


def test_run_json_names_the_tables_it_belongs_with(batch, tmp_path):
    loaded, result = run_batch(batch)
    write_outputs(loaded, result, tmp_path)
    outputs = json.loads((tmp_path / "run.json").read_text())["outputs"]
    assert set(outputs) == {"results.csv", "peaks.csv", "calibration.csv", "audit.csv", "reanalysis.csv"}
    for name, digest in outputs.items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest


@pytest.mark.subprocess
def test_workers_give_the_same_bytes_as_one_process(batch, tmp_path):
    for jobs in (1, 2):
        loaded, result = run_batch(batch, jobs=jobs)
        write_outputs(loaded, result, tmp_path / f"jobs{jobs}")
    for name in DETERMINISTIC:
        assert (tmp_path / "jobs1" / name).read_bytes() == (tmp_path / "jobs2" / name).read_bytes(), name


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "jobs, stop",
    [(1, signal.SIGKILL), (2, signal.SIGKILL), (2, signal.SIGINT)],
    ids=["killed-serial", "killed-with-workers", "ctrl-c-with-workers"],
)
def test_a_run_stopped_midway_leaves_the_previous_results_whole(jobs, stop, batch, tmp_path):
    """SIGKILL: no chance to clean up; SIGINT (Ctrl-C): one message, no traceback, exit 130."""
    folder = Path(shutil.copytree(batch, tmp_path / "batch"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.run(
        [sys.executable, "-m", "lcmsquant", "run", folder, "--jobs", "1"], capture_output=True, env=env, timeout=600
    )
    assert first.returncode == 0, first.stderr
    out = folder / "results"
    before = _contents(out)
    # New inputs, so that a finished second run would change every table.
    worklist = folder / "worklist.csv"
    lines = worklist.read_text().splitlines()
    worklist.write_text("\n".join([lines[0] + ",tray"] + [f"{line},P{i}" for i, line in enumerate(lines[1:])]) + "\n")

    run = subprocess.Popen(
        [sys.executable, "-m", "lcmsquant", "run", str(folder), "--jobs", str(jobs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = run.stdout.readline()  # "<folder>: N injections": loaded, now measuring
        assert "injections" in line, line + run.stderr.read()
        time.sleep(0.3)
        helpers = _descendants(run.pid)  # the fork server and the workers, with --jobs 2
        run.send_signal(stop)
        run.wait(timeout=60)
        stderr = run.stderr.read()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    if stop == signal.SIGKILL:
        assert run.returncode == -signal.SIGKILL  # it was stopped before it finished
    else:
        assert run.returncode == 130, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr
    assert (len(helpers) >= 2) == (jobs > 1)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in helpers), "workers outlived the killed run"
    after = _contents(out)
    visible = {name: data for name, data in after.items() if not name.startswith(".")}
    assert visible == before
    # Left behind: temporaries, and the lock file of a killed run (the kernel released its lock).
    assert all(name.endswith(".tmp") or name == LOCK_FILE for name in after if name.startswith("."))

    rerun = subprocess.run(
        [sys.executable, "-m", "lcmsquant", "run", folder, "--jobs", "1"], capture_output=True, env=env, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # stray temporaries cleaned
    assert b"tray" in (out / "results.csv").read_bytes()


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its parent has not collected it
