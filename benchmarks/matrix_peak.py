"""Does a baseline-resolved matrix peak after each analyte cost reportable results?

Simulates plasma batches with `SimulationOptions(matrix_peak=True)` (a plasma component 0.30-0.40
min after each analyte, in every sample, comparable to mid-range analyte peaks, never co-eluting;
see lcmsquant.simulate) and the same batches without it (same seeds: the same samples, noise and
peaks apart from the matrix peak), runs the pipeline on each (`run_batch`, as `lcmsquant run`
does), and prints, per analyte, the share of clean in-range study samples that come out
reportable: study samples whose true concentration lies between the LLOQ and the ULOQ of the
batch's curve and that hold no designed (co-eluting qualifier) interference. A result is
reportable when results.csv's `reportable` is true: a value, and no flag that blocks it (BLQ,
ALQ, NO_PEAK, REJECTED, ...) or sends it to review or reanalysis (SPLIT, SHOULDER, ION_RATIO,
RT_SHIFT, ...; lcmsquant.pipeline.BLOCKING_FLAGS and REVIEW_FLAGS). The flags of the samples
that are not reportable are counted, and each batch's run verdict per analyte is shown (a
rejected analyte makes all its study samples REJECTED).

Aim (issue 13): >= 98 % reportable with the matrix peak. Nothing is asserted.

    python benchmarks/matrix_peak.py [--batches 4] [--seed 1] [--unknowns 24] [--acquisition instrument]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lcmsquant.method import default_method_path, load_method  # noqa: E402
from lcmsquant.pipeline import run_batch  # noqa: E402
from lcmsquant.simulate import ACQUISITIONS, SimulationOptions, simulate_batch  # noqa: E402

AIM = 98.0


def clean_in_range(truth: pd.DataFrame, method) -> pd.DataFrame:
    """The truth rows of study samples inside the plasma curve's range, with no designed interference."""
    cal_set = method.calibrator_set_for("plasma")
    rows = []
    for a in method.analytes:
        levels = [v for v in (cal_set.nominal(lv, a.name) for lv in cal_set.levels if lv.startswith("CAL")) if v]
        lloq, uloq = min(levels), max(levels)
        t = truth[(truth["analyte"] == a.name) & (truth["sample_type"] == "unknown")]
        rows.append(
            t[
                (t["true_concentration"] >= lloq)
                & (t["true_concentration"] <= uloq)
                & (t["interference"].fillna("") == "")
            ]
        )
    return pd.concat(rows)


def one_batch(folder: Path, seed: int, options: SimulationOptions, method) -> tuple[pd.DataFrame, dict[str, bool]]:
    truth = pd.read_csv(simulate_batch(folder, seed=seed, options=options), dtype={"interference": str})
    _, result = run_batch(folder, jobs=1)
    clean = clean_in_range(truth, method)
    table = clean[["sample_id", "analyte"]].merge(
        result.results[["sample_id", "analyte", "reportable", "flags"]], on=["sample_id", "analyte"], how="left"
    )
    table["reportable"] = table["reportable"].fillna(False).astype(bool)
    table["flags"] = table["flags"].fillna("")
    verdict = result.results.groupby("analyte")["analyte_accepted"].first().to_dict()
    return table, verdict


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1, help="first seed (one batch per seed)")
    parser.add_argument("--unknowns", type=int, default=24, help="study samples per batch")
    parser.add_argument("--acquisition", choices=ACQUISITIONS, default="instrument")
    args = parser.parse_args(argv)
    method = load_method(default_method_path())
    began = time.perf_counter()
    tables: dict[str, list[pd.DataFrame]] = {"matrix peak": [], "no matrix peak": []}
    verdicts: dict[str, list[str]] = {"matrix peak": [], "no matrix peak": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seed, args.seed + args.batches):
            for label, matrix_peak in (("matrix peak", True), ("no matrix peak", False)):
                options = SimulationOptions(
                    n_unknowns=args.unknowns, matrix_peak=matrix_peak, acquisition=args.acquisition
                )
                table, verdict = one_batch(Path(tmp) / f"{seed}-{matrix_peak}" / "batch", seed, options, method)
                tables[label].append(table.assign(seed=seed))
                verdicts[label].append(" ".join(f"{a}:{'ok' if ok else 'REJECTED'}" for a, ok in verdict.items()))

    print(
        f"Clean in-range study samples reportable, {args.batches} simulated plasma batches (seeds "
        f"{args.seed}-{args.seed + args.batches - 1}, {args.unknowns} study samples each, acquisition "
        f"{args.acquisition}); aim with the matrix peak >= {AIM:g} %.\n"
    )
    rows = []
    for label, parts in tables.items():
        t = pd.concat(parts)
        for analyte in [a.name for a in method.analytes] + ["all"]:
            sel = t if analyte == "all" else t[t["analyte"] == analyte]
            n, ok = len(sel), int(sel["reportable"].sum())
            per_batch = sel.groupby("seed")["reportable"].mean() * 100
            flags = Counter(f for fl in sel.loc[~sel["reportable"], "flags"] for f in fl.split(";") if f)
            rows.append(
                {
                    "batches": label,
                    "analyte": analyte,
                    "reportable": f"{100 * ok / max(n, 1):.1f} % ({ok}/{n})",
                    "per batch %": " ".join(f"{v:.0f}" for v in per_batch),
                    "flags of the others": ", ".join(f"{k} {v}" for k, v in flags.most_common(5)) or "-",
                    "aim": ("PASS" if 100 * ok / max(n, 1) >= AIM else "MISS") if label == "matrix peak" else "",
                }
            )
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 80)
    print(pd.DataFrame(rows).to_string(index=False))
    print("\nRun verdict per batch (an analyte's rejected run makes its study samples REJECTED):")
    for label, lines in verdicts.items():
        for seed, line in zip(range(args.seed, args.seed + args.batches), lines):
            print(f"  {label:<15} seed {seed}: {line}")
    print(f"\n{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
