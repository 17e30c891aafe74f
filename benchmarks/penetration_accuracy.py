"""Penetration ratios against the truth of simulated studies (run by hand; prints a table).

    python benchmarks/penetration_accuracy.py [--seeds 3] [--subjects 8]

For each seed: simulate a study (plasma/marrow, CSF and reanalysis runs), process every run as
`lcmsquant run` does, add the runs to a fresh cohort and pair them. Reports, per ratio, how many
pairs were quantifiable on both sides, the median and largest |error| of those ratios against
the true ratio, and how many true-BLQ CSF values came back censored; plus the time of each step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lcmsquant.cohort import add_runs, cohort_tables, penetration
from lcmsquant.pipeline import run_batch
from lcmsquant.results import write_outputs
from lcmsquant.simulate import simulate_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=8)
    args = parser.parse_args()
    errors = {"csf": [], "marrow": []}
    blq_total = blq_censored = 0
    timing = {"simulate": 0.0, "run": 0.0, "cohort add": 0.0, "pair": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            t = time.perf_counter()
            study = simulate_study(Path(tmp) / f"s{seed}", seed=seed, n_subjects=args.subjects)
            timing["simulate"] += time.perf_counter() - t
            t = time.perf_counter()
            results = []
            for folder in study.runs:
                batch, result = run_batch(folder)
                write_outputs(batch, result, folder / "results", command=[])
                results.append(folder / "results")
            timing["run"] += time.perf_counter() - t
            t = time.perf_counter()
            db = Path(tmp) / f"s{seed}.sqlite"
            add_runs(db, results)
            timing["cohort add"] += time.perf_counter() - t
            t = time.perf_counter()
            method, _, reported = cohort_tables(db)
            pairs = penetration(reported, method.settings, method.analytes)
            timing["pair"] += time.perf_counter() - t
            truth = (
                pd.read_csv(study.truth)
                .drop(columns="reference_matrix")
                .rename(columns={"csf_lloq": "nominal_csf_lloq"})
            )
            table = pairs.merge(truth, on=["subject_id", "visit", "timepoint", "analyte"])
            for target in errors:
                both = table[(table["reference_status"] == "value") & (table[f"{target}_status"] == "value")]
                errors[target].extend(100 * (both[f"{target}_serum_ratio"] / both[f"true_{target}_ratio"] - 1))
            below = table[table["true_csf"] < table["nominal_csf_lloq"]]
            blq_total += len(below)
            blq_censored += int(below["csf_censored"].sum())
    print(f"{args.seeds} simulated studies x {args.subjects} subjects")
    print("| ratio | quantifiable pairs | median abs error % | max abs error % |")
    print("|---|---|---|---|")
    for target, values in errors.items():
        v = np.abs(values)
        print(f"| {target}:serum | {len(v)} | {np.median(v):.2f} | {v.max():.2f} |")
    print(f"true-BLQ CSF values reported censored: {blq_censored}/{blq_total}")
    print("| step | seconds (all seeds) |")
    print("|---|---|")
    for step, seconds in timing.items():
        print(f"| {step} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
