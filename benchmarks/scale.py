"""Throughput and memory of `lcmsquant run` on a large batch, serial and with worker processes.

Simulates a plasma batch (fixed seed) of --injections injections (default 384, four plates),
then times, best of --repeat (time.perf_counter, warm file cache, OMP_NUM_THREADS=1, serial
and parallel runs taking turns):

  bare pyopenms load     MzMLFile().load() of every file in this process: the floor of any
                         mzML-based run, and the reference of the "x bare" column;
  bare load, subprocess  the same load in a fresh Python process (start-up and `import pyopenms`
                         included): the floor of any command, the fair reference of the CLI rows;
  in-process, warm       runs.process_batch(--jobs every core, no report) called again in a process
                         that has already run it once (imports done, fork server running): the
                         cost of one more batch. "pool held": given the same WorkerPool each time
                         (its workers measure every batch), as `run A B C ...` does; "pool per
                         call": without one, so each call starts and stops its own workers, as a
                         notebook calling process_batch does;
  lcmsquant run --jobs J `lcmsquant run` as a fresh process (start-up included), for J = 1
                         (in-process) and J = every core; its peak memory is the sum over the
                         process and all its children (the fork server and the workers) of PSS
                         (shared pages split between the processes sharing them: what the run
                         costs the machine; sampled every 0.5 s) and RSS (shared pages counted in
                         every process: an upper bound; every 50 ms);

and prints injections per second, the ratio to the bare load and peak memory, against the aims
of the issue (printed, never asserted): >= 50 injections/s, < 500 MB, within 2x of the bare load.
Then `lcmsquant run` of --batches copies of the batch in one command (imports paid once).
Then, for smaller batches (--sizes), the wall time with --jobs 1 and with every core, which is
where measure_batch's default (PARALLEL_MIN_INJECTIONS) comes from.

    cd /work/main && PYTHONPATH=src python benchmarks/scale.py [--injections 384] [--repeat 3]
        [--sizes 24,48,96,192] [--keep DIR]

Needs psutil for the memory columns (it comes with the dask extra). Run it on an idle machine:
with other processes on the cores, the parallel run cannot be faster than the serial one.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before pyopenms starts its OpenMP runtime

import pyopenms as oms

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(HERE))

from run_speed import BARE, simulate, subprocess_env, subprocess_run  # noqa: E402  (same batch design and seed)

from lcmsquant.measure import default_jobs  # noqa: E402

AIM_RATE, AIM_MB, AIM_RATIO = 50.0, 500.0, 2.0

try:
    import psutil
except ImportError:  # memory columns stay empty
    psutil = None


def bare_load(files: list[Path]) -> None:
    for path in files:
        oms.MzMLFile().load(str(path), oms.MSExperiment())


def bare_load_subprocess(files: list[Path]) -> float:
    start = time.perf_counter()
    subprocess_run(BARE, *map(str, files))
    return time.perf_counter() - start


WARM = """
import sys, time
from contextlib import nullcontext
from lcmsquant.runs import process_batch
from lcmsquant.workers import WorkerPool
folder, out, jobs, repeat, held = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "held"
times = []
with WorkerPool(jobs) if held else nullcontext() as pool:
    for _ in range(repeat + 1):  # the first call pays the imports, the fork server and numba's cache
        start = time.perf_counter()
        outcome = process_batch(folder, out_dir=out, jobs=jobs, report=False, workers=pool)
        times.append(time.perf_counter() - start)
        if outcome.error:
            sys.exit(outcome.error)
print(min(times[1:]))
"""


def in_process_warm(folder: Path, out: Path, jobs: int, repeat: int, held: bool) -> float:
    """Best seconds of one more runs.process_batch (no report) in a process that has run one
    already, with one WorkerPool for every call (held) or none. Run with `python -c`, as a
    notebook would: worker processes import the main module, and this script's imports would
    be charged to every batch."""
    return float(
        subprocess_run(WARM, str(folder), str(out), str(jobs), str(repeat), "held" if held else "").split()[-1]
    )


class PeakMemory:
    """Highest RSS (every 50 ms) and PSS (every 0.5 s: reading smaps costs ~7 ms per process)
    summed over a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.05, pss_every: int = 10):
        self.pid, self.every_s, self.pss_every, self.pss, self.rss = pid, every_s, pss_every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        if psutil is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        tick = 0
        while not self._stop.is_set():
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            with_pss = tick % self.pss_every == 0
            pss = rss = 0
            for proc in processes:
                try:
                    info = proc.memory_full_info() if with_pss else proc.memory_info()
                except psutil.Error:
                    continue
                rss += info.rss
                pss += getattr(info, "pss", 0)
            self.rss = max(self.rss, rss)
            if with_pss:
                self.pss = max(self.pss, pss)
            tick += 1
            self._stop.wait(self.every_s)


def cli_run(folder: Path | list[Path], out: Path, jobs: int, report: bool = False) -> tuple[float, int, int]:
    """Wall seconds, peak PSS and peak RSS (bytes) of `lcmsquant run FOLDER --jobs JOBS`
    (with --no-report unless `report`: the report is timed apart, see report_speed.py).

    Timed until the command's own process ends, as a shell waits for it: the fork server, which
    inherits its stderr, takes another ~0.5 s to end in the background."""
    with tempfile.TemporaryFile(mode="w+") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lcmsquant",
                "run",
                *map(str, folder if isinstance(folder, list) else [folder]),
                "--out",
                str(out),
                "--jobs",
                str(jobs),
                *([] if report else ["--no-report"]),
            ],
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
        with PeakMemory(proc.pid) as memory:
            proc.wait()
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            stderr.seek(0)
            sys.exit(f"lcmsquant run failed ({proc.returncode}):\n{stderr.read()}")
    return seconds, memory.pss, memory.rss


def interleaved(folder: Path, out: Path, jobs_values, repeat: int) -> dict[int, list[tuple[float, int, int]]]:
    """cli_run for each --jobs value in turn, `repeat` rounds: both see the same machine."""
    runs: dict[int, list] = {jobs: [] for jobs in jobs_values}
    for _ in range(repeat):
        for jobs in jobs_values:
            runs[jobs].append(cli_run(folder, out, jobs))
    return runs


def best(runs: list[tuple[float, int, int]]) -> tuple[float, int, int]:
    """Fastest time; highest memory seen in any run (memory is a ceiling, not a best case)."""
    return min(r[0] for r in runs), max(r[1] for r in runs), max(r[2] for r in runs)


def mb(n: int) -> str:
    return f"{n / 1e6:7.0f}" if n else "      -"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--injections", type=int, default=384, help="batch size (default 384)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--sizes", default="24,48,96,192", help="smaller batches for the serial/parallel crossover")
    parser.add_argument("--keep", type=Path, help="simulate into this folder and keep it")
    parser.add_argument("--batches", type=int, default=4, help="copies of the batch run by one command (default 4)")
    args = parser.parse_args()
    repeat = max(args.repeat, 1)
    cores = default_jobs()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    with tempfile.TemporaryDirectory(prefix="lcmsquant-scale-") as tmp:
        folder = args.keep if args.keep is not None else Path(tmp) / "batch"
        n = simulate(folder, args.injections)
        files = sorted(p for p in folder.iterdir() if p.name.endswith((".mzML", ".mzML.gz")))
        out = Path(tmp) / "results"
        bare_load(files)  # warm the file cache and pyopenms
        bare = min(_timed(lambda: bare_load(files)) for _ in range(repeat))
        bare_sub = min(bare_load_subprocess(files) for _ in range(repeat))
        warm = in_process_warm(folder, out, cores, repeat, held=True)
        per_call = in_process_warm(folder, out, cores, repeat, held=False)
        rows = [
            ("bare pyopenms load (in-process)", bare, 0, 0),
            ("bare load, subprocess (start-up + import)", bare_sub, 0, 0),
            (f"in-process, warm: one more batch, --jobs {cores}, pool held", warm, 0, 0),
            (f"in-process, warm: one more batch, --jobs {cores}, pool per call", per_call, 0, 0),
        ]
        for jobs, runs in interleaved(folder, out, sorted({1, cores}), repeat).items():
            rows.append((f"lcmsquant run --jobs {jobs} --no-report (CLI)", *best(runs)))
        with_report = best([cli_run(folder, out, cores, report=True) for _ in range(repeat)])
        copies = [folder]
        for k in range(1, max(args.batches, 1)):
            copy = Path(tmp) / f"batch-copy{k}"
            shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("results"))
            copies.append(copy)
        many = best([cli_run(copies, Path(tmp) / "many", cores) for _ in range(repeat)])

        crossover = []
        for size in sizes:
            small = Path(tmp) / f"batch{size}"
            m = simulate(small, size)
            runs = interleaved(small, Path(tmp) / "r", (1, cores), repeat)
            crossover.append((m, best(runs[1])[0], best(runs[cores])[0]))
            shutil.rmtree(small)

    print(
        f"machine: {os.cpu_count()} CPUs ({cores} usable), {platform.machine()}, load avg "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, Python {platform.python_version()}, pyopenms "
        f"{oms.__version__}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} | batch: {n} injections | best of {repeat}"
    )
    report_name = f"lcmsquant run --jobs {cores} (CLI, with report.html)"
    many_name = f"lcmsquant run of {len(copies)} batches, --jobs {cores} (CLI)"
    width = max(len(report_name), len(many_name), *(len(r[0]) for r in rows))
    print(f"{'stage':<{width}}  {'seconds':>8}  {'inj/s':>7}  {'x bare':>7}  {'PSS MB':>7}  {'RSS MB':>7}")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 7}  {'-' * 7}  {'-' * 7}  {'-' * 7}")
    for name, seconds, pss, rss in rows:
        print(f"{name:<{width}}  {seconds:8.2f}  {n / seconds:7.1f}  {seconds / bare:7.2f}  {mb(pss)}  {mb(rss)}")
    print(
        f"{report_name:<{width}}  {with_report[0]:8.2f}  "
        f"{n / with_report[0]:7.1f}  {with_report[0] / bare:7.2f}  {mb(with_report[1])}  {mb(with_report[2])}"
    )
    print(
        f"{many_name:<{width}}  {many[0]:8.2f}  {len(copies) * n / many[0]:7.1f}  "
        f"{many[0] / (len(copies) * bare):7.2f}  {mb(many[1])}  {mb(many[2])}"
    )

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    cli_rows = rows[4:]
    fastest = min(cli_rows, key=lambda r: r[1])
    rate, memory = n / fastest[1], max(r[2] for r in cli_rows)
    print(
        f"aims: {rate:.0f} injections/s ({fastest[0]}; >= {AIM_RATE:g}: {verdict(rate >= AIM_RATE)}), "
        f"peak PSS {memory / 1e6:.0f} MB (< {AIM_MB:g}: "
        f"{verdict(0 < memory < AIM_MB * 1e6) if memory else 'not measured'})"
    )
    print(
        f"      within {AIM_RATIO:g}x of the bare load: one more batch in-process {warm / bare:.2f}x "
        f"({verdict(warm / bare <= AIM_RATIO)}); the CLI against the bare load in a fresh process "
        f"{fastest[1] / bare_sub:.2f}x ({verdict(fastest[1] / bare_sub <= AIM_RATIO)}); "
        f"the CLI against the in-process load {fastest[1] / bare:.2f}x ({verdict(fastest[1] / bare <= AIM_RATIO)}); "
        f"{len(copies)} batches in one command {many[0] / (len(copies) * bare):.2f}x "
        f"({verdict(many[0] / (len(copies) * bare) <= AIM_RATIO)})"
    )
    if crossover:
        print(f"\n{'injections':>10}  {'--jobs 1 s':>10}  {f'--jobs {cores} s':>10}  faster")
        for m, serial, parallel in crossover:
            print(f"{m:>10}  {serial:10.2f}  {parallel:10.2f}  {'workers' if parallel < serial else 'in-process'}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
