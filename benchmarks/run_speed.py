"""How fast is `lcmsquant run`, compared with merely reading the batch's mzML files?

Simulates a plasma batch (fixed seed) with the requested number of injections, then times, best
of --repeat runs each (time.perf_counter, warm file cache):

  bare pyopenms load  MzMLFile().load() of every mzML of the batch into an MSExperiment, nothing
                      else: the floor any mzML-based run pays;
  load_batch, measure_batch, quantify, write_outputs
                      the in-process stages of `lcmsquant run` (run_batch + write_outputs);
  CLI subprocess      `lcmsquant run` as a fresh Python process, interpreter start-up included;
  bare load, subprocess  the bare load in a fresh Python process (start-up + import pyopenms):
                      the floor the CLI can never beat, shown so its ratio can be read fairly.

and prints seconds, ms per injection and the ratio to the bare load, with the aim (a printed
target, never an assertion): the whole run within 3x of the bare pyopenms load.

    cd /work/main && PYTHONPATH=src python3 benchmarks/run_speed.py [--injections 96] [--repeat 3] [--keep DIR]

--keep DIR writes the batch (and its results/) to DIR and leaves it there; otherwise a temporary
folder is used and removed.

OMP_NUM_THREADS defaults to 1 (set it to override): pyopenms' OpenMP threads gain nothing on these
small files and make a load up to 10x slower while another process holds a CPU. The bare load is
timed in the same rounds as the in-process run, so both see the same machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before pyopenms starts its OpenMP runtime

import pandas as pd
import pyopenms as oms

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from lcmsquant.batch import load_batch, resolve_method_path
from lcmsquant.measure import measure_batch
from lcmsquant.method import load_method
from lcmsquant.pipeline import quantify
from lcmsquant.results import write_outputs
from lcmsquant.simulate import MIN_UNKNOWNS, SimulationOptions, simulate_batch

SEED = 20240601
AIM = 3.0


def simulate(folder: Path, injections: int) -> int:
    """Simulate a batch as close as possible to `injections` long; return its real length."""
    n_unknowns = max(injections - 25, MIN_UNKNOWNS)
    for _ in range(2):  # the non-unknown part of the design is fixed: one correction is enough
        simulate_batch(folder, seed=SEED, matrix="plasma", options=SimulationOptions(n_unknowns=n_unknowns))
        n = len(pd.read_csv(folder / "worklist.csv"))
        wanted = max(n_unknowns + injections - n, MIN_UNKNOWNS)
        if wanted == n_unknowns:
            break
        n_unknowns = wanted
    return n


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bare_load(files: list[Path]) -> None:
    for path in files:
        oms.MzMLFile().load(str(path), oms.MSExperiment())


def in_process(folder: Path, files: list[Path], out: Path, repeat: int) -> dict[str, float]:
    """Best time of the bare load and of each stage, and the best whole run (best per-round sum);
    each round times the bare load just before the run, so both see the same machine."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        bare_load(files)
        t0 = time.perf_counter()
        batch = load_batch(folder, load_method(resolve_method_path(folder, None)))
        t1 = time.perf_counter()
        peaks, errors = measure_batch(batch)
        t2 = time.perf_counter()
        result = quantify(batch, peaks, errors)
        t3 = time.perf_counter()
        write_outputs(batch, result, out)
        t4 = time.perf_counter()
        runs.append(
            {
                "bare pyopenms load": t0 - start,
                "load_batch": t1 - t0,
                "measure_batch": t2 - t1,
                "quantify": t3 - t2,
                "write_outputs": t4 - t3,
                "whole run (in-process)": t4 - t0,
            }
        )
    return {stage: min(r[stage] for r in runs) for stage in runs[0]}


def subprocess_env() -> dict:
    """This process's environment with this checkout's src/ first on PYTHONPATH."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))


def subprocess_run(code: str, *args: str) -> str:
    """`python -c code args...` in a fresh process; its standard output (exits if it fails)."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=subprocess_env(), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"subprocess failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


CLI = "from lcmsquant.cli import command_line; command_line()"
BARE = "import sys, pyopenms as oms\nfor p in sys.argv[1:]: oms.MzMLFile().load(p, oms.MSExperiment())"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--injections", type=int, default=96, help="batch size (default 96)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--keep", type=Path, help="simulate into this folder and keep it")
    args = parser.parse_args()
    repeat = max(args.repeat, 1)

    with tempfile.TemporaryDirectory(prefix="lcmsquant-bench-") as tmp:
        folder = args.keep if args.keep is not None else Path(tmp) / "batch"
        n = simulate(folder, args.injections)
        files = sorted(p for p in folder.iterdir() if p.name.endswith((".mzML", ".mzML.gz")))
        out = folder / "results"
        bare_load(files)  # warm the file cache and pyopenms before timing anything
        stages = in_process(folder, files, out, repeat)
        bare = stages["bare pyopenms load"]
        cli_args = ("run", str(folder), "--out", str(out))
        stages["lcmsquant run (CLI subprocess)"] = best(lambda: subprocess_run(CLI, *cli_args), repeat)
        stages["bare load, subprocess (floor of CLI)"] = best(lambda: subprocess_run(BARE, *map(str, files)), repeat)

    print(
        f"machine: {os.cpu_count()} CPUs, {platform.machine()}, load avg {os.getloadavg()[0]:.2f}, "
        f"Python {platform.python_version()}, pyopenms {oms.__version__}, OMP_NUM_THREADS="
        f"{os.environ['OMP_NUM_THREADS']} | batch: {n} injections, {len(files)} mzML files | best of {repeat}"
    )
    rows = list(stages.items())
    width = max(len(name) for name, _ in rows)
    print(f"{'stage':<{width}}  {'seconds':>8}  {'ms/inj':>8}  {'x bare':>7}")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 8}  {'-' * 7}")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:8.3f}  {1000 * seconds / n:8.1f}  {seconds / bare:7.2f}")
    whole, full = stages["whole run (in-process)"] / bare, stages["lcmsquant run (CLI subprocess)"] / bare
    print(
        f"aim: whole run within {AIM:g}x of the bare pyopenms load: in-process {whole:.1f}x "
        f"{'PASS' if whole <= AIM else 'MISS'}, CLI {full:.1f}x {'PASS' if full <= AIM else 'MISS'}"
    )


if __name__ == "__main__":
    main()
