"""How long does writing the run's report take for a full plate, and how big is it?

Simulates a plasma batch (fixed seed) of about --injections injections, runs it (run_batch +
write_outputs, not timed), then times, best of --repeat (time.perf_counter, warm file cache):

  read results folder   read_run_files: the CSV and JSON files back into tables
  verdict ... provenance  each section of the report on its own (calibration, QC and IS
                        sections hold the matplotlib plots; chromatograms read every mzML
                        file and draw the SVG thumbnails)
  write_report          the whole job as `lcmsquant run` does it: all of the above, the
                        template, and the atomic write of report.html
  CLI `lcmsquant report`  the same in a fresh Python process, start-up and imports included
  Chromium: first screen  headless Chromium loading report.html and taking a screenshot of the
                        first screen, beside the same for an empty page (the browser's own
                        start-up): the difference stands in for "quick to open"
  Chromium: print PDF   write_pdf, every chromatogram opened for print

and prints seconds and the size of report.html and report.pdf, with the aim (a printed target,
never an assertion): write_report under 10 s for 96 injections on a 2-core machine.

    cd /work/main && PYTHONPATH=src python3 benchmarks/report_speed.py [--injections 96] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before pyopenms starts its OpenMP runtime

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from lcmsquant import report  # noqa: E402
from lcmsquant.pipeline import run_batch  # noqa: E402
from lcmsquant.results import write_outputs  # noqa: E402
from lcmsquant.simulate import MIN_UNKNOWNS, SimulationOptions, simulate_batch  # noqa: E402

SEED = 20240601
AIM_S = 10.0
DESIGN_OVERHEAD = 25  # blanks, zero, calibrators and QCs of the simulated design


def best(repeat: int, job) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        job()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--injections", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the batch here and leave it")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium rows")
    args = parser.parse_args()

    tmp = None
    if args.keep:
        folder = args.keep
    else:
        tmp = tempfile.mkdtemp(prefix="lcmsquant-report-bench-")
        folder = Path(tmp) / "batch"
    try:
        n_unknowns = max(args.injections - DESIGN_OVERHEAD, MIN_UNKNOWNS)
        simulate_batch(folder, seed=SEED, matrix="plasma", options=SimulationOptions(n_unknowns=n_unknowns))
        batch, result = run_batch(folder)
        out = folder / "results"
        write_outputs(batch, result, out, command=["lcmsquant", "run", str(folder)])
        n_injections = len(batch.injections)
        n_transitions = len(batch.method.transitions())

        files = report.read_run_files(out)
        reanalysis = report.reanalysis_list(files)
        rows = [("read results folder", best(args.repeat, lambda: report.read_run_files(out)))]
        sections = {
            "1 verdict": lambda: report.verdict_section(files, reanalysis),
            "2 calibration (plots)": lambda: report.calibration_section(files),
            "3 QCs (plot)": lambda: report.qc_section(files),
            "4 carry-over, blanks, IS (plots)": lambda: report.checks_section(files),
            "5 samples": lambda: report.samples_section(files, reanalysis),
            "6 chromatograms (mzML + SVG)": lambda: report.chromatogram_section(files),
            "7 audit and provenance": lambda: report.provenance_section(files),
        }
        rows += [(name, best(args.repeat, job)) for name, job in sections.items()]
        total = best(args.repeat, lambda: report.write_report(out))
        rows.append(("write_report (all of it)", total))
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        cli = best(
            1,
            lambda: subprocess.run(
                [sys.executable, "-m", "lcmsquant", "report", str(out)], check=True, capture_output=True, env=env
            ),
        )
        rows.append(("CLI `lcmsquant report` (fresh process)", cli))
        html_size = (out / report.REPORT_HTML).stat().st_size
        pdf_size = None
        if not args.no_browser:
            from lcmsquant import browser

            empty = out / "empty.html"
            empty.write_text("<!DOCTYPE html><title>empty</title>")
            shot = out / "first-screen.png"
            rows.append(("Chromium: first screen, empty page", best(2, lambda: browser.screenshot(empty, shot))))
            rows.append(
                (
                    "Chromium: first screen, report.html",
                    best(2, lambda: browser.screenshot(out / report.REPORT_HTML, shot)),
                )
            )
            empty.unlink()
            shot.unlink()
            rows.append(("Chromium: print PDF", best(1, lambda: report.write_pdf(out))))
            pdf_size = (out / report.REPORT_PDF).stat().st_size

        print(
            f"\nreport of a {n_injections}-injection batch ({n_transitions} transitions each, "
            f"{n_injections * n_transitions} chromatograms); best of {args.repeat}; "
            f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.1f}\n"
        )
        print(f"| {'stage':<40} | {'seconds':>8} |")
        print(f"|{'-' * 42}|{'-' * 10}|")
        for name, seconds in rows:
            print(f"| {name:<40} | {seconds:>8.2f} |")
        print(f"\nreport.html {html_size / 1e6:.2f} MB" + (f", report.pdf {pdf_size / 1e6:.2f} MB" if pdf_size else ""))
        verdict = "meets" if total < AIM_S else "MISSES"
        print(f"aim: write_report under {AIM_S:g} s for 96 injections: {total:.2f} s, {verdict} the aim")
        if args.keep:
            print(f"batch and results kept in {folder}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
