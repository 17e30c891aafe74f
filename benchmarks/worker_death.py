"""What a worker's death costs a run: measure_batch with worker processes (one WorkerPool for
every run, as `lcmsquant run A B C` has) on a simulated batch, undisturbed and with one worker
SIGKILLed once a tenth of the injections are done (as the out-of-memory killer would), best of
--repeat; the killed run's peak table is checked against the undisturbed one.

    cd /work/main && PYTHONPATH=src python benchmarks/worker_death.py [--injections 96] [--jobs 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before pyopenms starts its OpenMP runtime

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

# lcmsquant and run_speed (pandas, pyopenms, statsmodels) are imported in the functions: each
# worker process runs this script's top level again as it starts (multiprocessing does so before
# Python 3.13.8), and those imports would be charged to every worker.


def workers() -> list[psutil.Process]:
    """The processes the fork server forked for us (grandchildren of this process)."""
    me = psutil.Process()
    return [p for p in me.children(recursive=True) if p.ppid() != me.pid]


def timed_run(batch, jobs: int, kill_after: int | None, pool=None):
    from lcmsquant.measure import measure_batch

    killed = []

    def progress(_injection) -> None:
        nonlocal done
        done += 1
        if kill_after is not None and done == kill_after and not killed:
            victims = workers()
            if victims:
                os.kill(victims[0].pid, signal.SIGKILL)
                killed.append(victims[0].pid)

    done = 0
    start = time.perf_counter()
    peaks, errors = measure_batch(batch, progress, jobs=jobs, workers=pool)
    return time.perf_counter() - start, peaks, errors, len(killed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--injections", type=int, default=96)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from run_speed import simulate  # same batch design and seed as run_speed.py

    from lcmsquant.batch import load_batch, resolve_method_path
    from lcmsquant.measure import measure_batch
    from lcmsquant.method import load_method
    from lcmsquant.workers import WorkerPool

    with tempfile.TemporaryDirectory() as tmp, WorkerPool(args.jobs) as pool:
        folder = Path(tmp) / "batch"
        n = simulate(folder, args.injections)
        batch = load_batch(folder, load_method(resolve_method_path(folder, None)))
        measure_batch(batch, jobs=args.jobs, workers=pool)  # warm the file cache, the fork server and the workers
        rows = {"undisturbed": [], "one worker killed": []}
        reference = None
        for _ in range(args.repeat):  # the two cases take turns, so both see the same machine
            for name, kill_after in (("undisturbed", None), ("one worker killed", max(1, n // 10))):
                seconds, peaks, errors, killed = timed_run(batch, args.jobs, kill_after, pool)
                if reference is None:
                    reference = peaks
                same = peaks.equals(reference) and not errors
                rows[name].append((seconds, killed, same))
    print(f"{n} injections, --jobs {args.jobs}, best of {args.repeat}")
    print("| case | seconds | ms per injection | workers killed | table as undisturbed |")
    print("|---|---|---|---|---|")
    for name, runs in rows.items():
        seconds = min(r[0] for r in runs)
        print(
            f"| {name} | {seconds:.2f} | {1000 * seconds / n:.1f} | {sum(r[1] for r in runs)}/{len(runs)} | "
            f"{'yes' if all(r[2] for r in runs) else 'NO'} |"
        )


if __name__ == "__main__":
    main()
