"""Make the PNG figures of the documentation's science pages.

    PYTHONPATH=src python docs/figures/make_figures.py [--data DIR] [--out DIR]

Run from the repository root. The peak figures use two traces of the real SCIEX QTRAP file
`RawDataProcessor_mzML_1.mzML` (in `../shared/data/smartpeak-sciex-srm` beside the repository,
or `--data`); the calibration and QC figures come from a batch simulated with seed 1 (the same
batch as `lcmsquant simulate OUT --seed 1`) and processed in this process. The PNGs are written
to `docs/figures/` (or `--out`) and committed; rerun this script after changing the peak finder,
the calibration or the simulator.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lcmsquant.calibration import fit_curve  # noqa: E402
from lcmsquant.chromatograms import read_traces  # noqa: E402
from lcmsquant.peaks import PeakSearch, find_peak, smooth  # noqa: E402
from lcmsquant.pipeline import run_batch  # noqa: E402
from lcmsquant.simulate import SimulationOptions, simulate_batch  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = REPO.parent / "shared" / "data" / "smartpeak-sciex-srm"
REAL_FILE = "RawDataProcessor_mzML_1.mzML"
# (Q1, Q3, title): a clean baseline-resolved peak, and one cut at a valley before a neighbour.
REAL_TRACES = (
    (179.0, 136.0, "Clean peak (Q1 179 -> Q3 136)"),
    (258.0, 79.0, "Peak cut at a valley: SPLIT (Q1 258 -> Q3 79)"),
)
PNG = {"dpi": 110, "metadata": {"Software": None}}  # no version stamp: reruns give the same bytes


def peak_figures(data: Path, out: Path) -> None:
    traces = read_traces(data / REAL_FILE)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (q1, q3, title) in zip(axes, REAL_TRACES):
        trace = next(t for t in traces if abs(t.q1 - q1) < 1e-3 and abs(t.q3 - q3) < 1e-3)
        t, y = trace.time, trace.intensity
        apex = float(t[int(np.argmax(y))])
        peak = find_peak(t, y, PeakSearch(apex, 0.3))
        near = (t > peak.start - 0.35) & (t < peak.end + 0.35)
        ax.plot(t[near], y[near], ".", ms=3, color="0.45", label="raw points (cps)")
        ax.plot(t[near], smooth(y, t)[near], "-", lw=1, color="tab:blue", label="smoothed (~3 s)")
        inside = (t >= peak.start) & (t <= peak.end)
        base = np.interp(t[inside], [peak.start, peak.end], [peak.baseline_start, peak.baseline_end])
        ax.fill_between(t[inside], base, y[inside], color="tab:orange", alpha=0.35, label="integrated area")
        ax.plot(
            [peak.start, peak.end],
            [peak.baseline_start, peak.baseline_end],
            "-",
            color="tab:red",
            lw=1.5,
            label="baseline",
        )
        for x in (peak.start, peak.end):
            ax.axvline(x, color="tab:red", lw=0.8, ls="--")
        ax.set_title(f"{title}\nRT {peak.rt:.3f} min, S/N {peak.sn:.0f}, area {peak.area:.3g} counts", fontsize=10)
        ax.set_xlabel("retention time (min)")
        ax.set_ylabel("intensity (cps)")
        ax.tick_params(labelsize=9)
    axes[0].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "peak-integration.png", **PNG)
    plt.close(fig)


def calibration_figures(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "batch"
        simulate_batch(folder, seed=1, options=SimulationOptions(acquisition="instrument"))  # as the command
        _, run = run_batch(folder, jobs=1)
    results = run.results
    analyte = "flumatinib"
    rows = results[results["analyte"] == analyte]
    cal = rows[rows["sample_type"] == "calibrator"]
    x, y = cal["nominal"].to_numpy(float), cal["area_ratio"].to_numpy(float)
    lloq = float(x.min())

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    grid = np.geomspace(x.min(), x.max(), 200)
    for weighting, style in (("1/x^2", "-"), ("none", ":")):
        curve = fit_curve(x, y, "linear", weighting)
        re = 100 * (curve.back_calculate(y) - x) / x
        label = f"linear, {'1/x²' if weighting == '1/x^2' else 'unweighted'}"
        top.plot(grid, curve.response(grid), style, color="tab:blue" if weighting == "1/x^2" else "0.4", label=label)
        shown = np.clip(re, -38, 38)  # a point beyond the axis is drawn at its edge with its value
        bottom.plot(
            x,
            shown,
            "o" if weighting == "1/x^2" else "x",
            color="tab:blue" if weighting == "1/x^2" else "0.4",
            label=label,
        )
        for xi, r, s in zip(x, re, shown):
            if r != s:
                bottom.annotate(
                    f"{r:+.0f} %", (xi, s), textcoords="offset points", xytext=(6, -4), fontsize=8, color="0.3"
                )
    top.plot(x, y, "o", color="black", ms=4, label="calibrators")
    top.set_xscale("log")
    top.set_yscale("log")
    top.set_ylabel("area ratio (analyte / IS)")
    top.set_title(f"{analyte}, simulated batch (seed 1): calibration curve", fontsize=10)
    top.legend(fontsize=8)
    bottom.axhspan(-15, 15, color="tab:green", alpha=0.12)
    bottom.fill_between([lloq * 0.9, lloq * 1.1], -20, 20, color="tab:green", alpha=0.12)
    bottom.axhline(0, color="0.5", lw=0.8)
    bottom.set_ylim(-40, 40)
    bottom.set_xlabel("nominal concentration (ng/mL, log scale)")
    bottom.set_ylabel("%RE (back-calculated)")
    bottom.set_title("residuals: +-15 % band (+-20 % at the LLOQ)", fontsize=10)
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.tick_params(labelsize=9)
    fig.tight_layout()
    fig.savefig(out / "calibration.png", **PNG)
    plt.close(fig)

    qcs = rows[rows["sample_type"] == "qc"]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for level, marker in zip(("LLOQ", "LQC", "MQC", "HQC", "DQC"), "v^os*"):
        these = qcs[qcs["level"] == level]
        ax.plot(these["injection"], these["accuracy_pct"], marker, ms=6, ls="none", label=level)
    ax.axhspan(85, 115, color="tab:green", alpha=0.12, label="+-15 % (LLOQ QC: +-20 %)")
    ax.axhline(100, color="0.5", lw=0.8)
    ax.set_ylim(70, 130)
    ax.set_xlabel("injection")
    ax.set_ylabel("QC accuracy (%)")
    ax.set_title(f"{analyte}, simulated batch (seed 1): QCs in injection order", fontsize=10)
    ax.legend(fontsize=8, ncol=6, loc="upper center")
    ax.tick_params(labelsize=9)
    fig.tight_layout()
    fig.savefig(out / "qc-accuracy.png", **PNG)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding the SCIEX mzML files")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the PNG files")
    args = parser.parse_args()
    if not (args.data / "RawDataProcessor_mzML_1.mzML").is_file():
        parser.error(
            f"{args.data} holds no RawDataProcessor_mzML_1.mzML: clone the project beside shared/, or give --data"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    peak_figures(args.data, args.out)
    calibration_figures(args.out)
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
