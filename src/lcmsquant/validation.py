"""Across runs: accuracy and precision of a validation, incurred sample reanalysis (ISR), and the
one-time choice of calibration model and weighting (ICH M10 3.2.4, 3.2.5, 5).

Pure functions over tidy DataFrames; `read_validation_run` / `read_runs` read the results folders that
`lcmsquant run` writes, and `write_*` write the tables atomically.

Definitions used for accuracy and precision (per analyte, calibrator set and QC level, with
x_ij the j-th of n_i replicates in run i, k runs, N = sum n_i, grand mean m = mean of all x_ij):
- mean accuracy = 100 m / nominal (between-run accuracy);
- per run (within-run, ICH M10 3.2.5.2): accuracy 100 mean_i / nominal and CV = SD_i / mean_i
  (SD with n_i - 1 degrees of freedom);
- one-way ANOVA over runs: MS_within = sum (x_ij - mean_i)^2 / (N - k),
  MS_between = sum n_i (mean_i - m)^2 / (k - 1), n0 = (N - sum n_i^2 / N) / (k - 1) (= n when
  balanced), s_w^2 = MS_within, s_b^2 = max(0, (MS_between - MS_within) / n0);
- within-run CV (repeatability) = 100 s_w / m; between-run CV (intermediate precision) =
  100 sqrt(s_w^2 + s_b^2) / m.
A level passes when the mean accuracy, every run's accuracy, every run's CV, the within-run CV
and the between-run CV are inside the limit (15 %, 20 % at the LLOQ).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lcmsquant.calibration import calibrate, fit_curve
from lcmsquant.files import InputError, atomic_write, csv_text
from lcmsquant.method import MODELS, WEIGHTINGS, Acceptance
from lcmsquant.results import read_results, results_dir_of
from lcmsquant.vocabulary import QCLevel, RuleId, SampleType

RESULTS_CSV = "results.csv"
DAY_COLUMN = "run_date"  # optional worklist column carried into results.csv: the day of the run
# The rules that judge the curve itself (ICH M10 3.2.4).
CALIBRATION_RULES = (RuleId.CURVE_FITTED, RuleId.CALIBRATORS_PASSING, RuleId.CALIBRATOR_LEVELS)

MIN_REPLICATES = 5  # per QC level per run (ICH M10 3.2.5.2)
MIN_RUNS = 3
MIN_DAYS = 2
ISR_LIMIT_PCT = 20.0
ISR_MIN_FRACTION = 2.0 / 3.0
EPSILON = 1e-9  # "at least 2/3" accepts exactly 2 of 3; a limit accepts a value exactly on it


class ResultsError(InputError):
    """A results folder that cannot be used for an across-runs evaluation."""

    kind = "results"


# ---------------------------------------------------------------------------------------------
# Reading results folders


@dataclass(frozen=True)
class ValidationRun:
    """One run as `lcmsquant run` wrote it: results.csv, run.json and calibration.csv."""

    label: str  # the batch name (from run.json), or the folder when two runs share a name
    folder: Path
    results: pd.DataFrame = field(repr=False)
    summary: dict = field(repr=False)  # run.json
    calibration: pd.DataFrame = field(repr=False)

    @property
    def method(self) -> dict:
        """The method the run was made with: name, version, file and SHA-256."""
        return self.summary.get("provenance", {}).get("method", {})

    def calibration_accepted(self, analyte: str, calibrator_set: str) -> bool:
        """The run's curve for this analyte met ICH M10 3.2.4 (fitted, >= 75 % and >= 6 levels passing)."""
        rules = [
            r
            for r in self.summary.get("rules", [])
            if r.get("analyte") == analyte
            and r.get("calibrator_set") == calibrator_set
            and RuleId.of_record(r) in CALIBRATION_RULES
        ]
        return bool(rules) and all(r.get("passed") for r in rules)

    @property
    def days(self) -> tuple[str, ...]:
        """The distinct run_date values of the run ((): not recorded)."""
        if DAY_COLUMN not in self.results.columns:
            return ()
        return tuple(sorted({d for d in self.results[DAY_COLUMN] if d}))


def results_folder(path: Path | str) -> Path:
    """The results folder meant by `path` (results.results_dir_of), which must hold a results.csv."""
    folder = results_dir_of(path)
    if (folder / RESULTS_CSV).is_file():
        return folder
    path = Path(path)
    raise ResultsError(
        path, [f"{path}: no {RESULTS_CSV} here nor in {path / 'results'}: give a folder written by `lcmsquant run`"]
    )


def read_validation_run(path: Path | str, label: str | None = None) -> ValidationRun:
    """Read one results folder (or a batch folder holding results/), as results.read_results checks it."""
    outputs = read_results(results_folder(path), error=ResultsError)
    return ValidationRun(
        label or str(outputs.summary.get("batch") or outputs.folder),
        outputs.folder,
        outputs.results,
        outputs.summary,
        outputs.calibration,
    )


def read_runs(paths: Iterable[Path | str]) -> tuple[ValidationRun, ...]:
    """Read several runs; refuse runs made with different methods (compared by the method's SHA-256)."""
    runs = [read_validation_run(p) for p in paths]
    if not runs:
        raise ResultsError(Path("."), ["no results folder given"])
    folders = [r.folder.resolve() for r in runs]
    duplicated = sorted({str(f) for f in folders if folders.count(f) > 1})
    if duplicated:
        raise ResultsError(runs[0].folder, [f"{f} is given more than once" for f in duplicated])
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):  # same batch name in two places: label by folder instead
        runs = [ValidationRun(str(r.folder), r.folder, r.results, r.summary, r.calibration) for r in runs]
    _check_one_method(runs, "runs evaluated together must use one method file; evaluate them separately")
    return tuple(runs)


def _check_one_method(runs, why: str) -> None:
    """Refuse runs made with different method files (SHA-256 in run.json), naming both."""
    first = runs[0]
    for run in runs[1:]:
        if run.method.get("sha256") != first.method.get("sha256"):
            raise ResultsError(
                run.folder,
                [f"made with method {_method_name(run)}, but {first.folder} with method {_method_name(first)}: {why}"],
            )


def _method_name(run: ValidationRun) -> str:
    m = run.method
    return f"{m.get('file', '?')} ({m.get('name', '?')} version {m.get('version', '?')}, sha256 {str(m.get('sha256', ''))[:12]})"


# ---------------------------------------------------------------------------------------------
# One-way ANOVA and accuracy & precision (ICH M10 3.2.5)


@dataclass(frozen=True)
class OneWayAnova:
    """One-way ANOVA of replicate results grouped by run, with the variance components of precision."""

    k: int  # runs
    n_total: int  # N, all replicates
    n0: float  # effective replicates per run: (N - sum n_i^2 / N) / (k - 1)
    grand_mean: float  # mean of all replicates
    ss_between: float
    ss_within: float
    ms_between: float  # NaN with one run
    ms_within: float  # NaN when no run has two replicates
    s_within: float  # sqrt(MS_within)
    s_between: float  # sqrt(max(0, (MS_between - MS_within) / n0))

    @property
    def df_between(self) -> int:
        """Degrees of freedom between runs."""
        return self.k - 1

    @property
    def df_within(self) -> int:
        """Degrees of freedom within runs."""
        return self.n_total - self.k

    @property
    def within_run_cv_pct(self) -> float:
        """Repeatability: 100 s_w / grand mean."""
        return 100.0 * self.s_within / self.grand_mean

    @property
    def between_run_cv_pct(self) -> float:
        """Intermediate precision: 100 sqrt(s_w^2 + s_b^2) / grand mean."""
        return 100.0 * math.hypot(self.s_within, self.s_between) / self.grand_mean


def one_way_anova(runs: Sequence[Sequence[float]]) -> OneWayAnova:
    """One-way ANOVA over runs, balanced or not (n0 for unequal replicate numbers; ICH M10 3.2.5.2).

    The between-run variance component is clipped at 0 when MS_between < MS_within.
    """
    groups = [np.asarray(g, dtype=float) for g in runs]
    groups = [g[np.isfinite(g)] for g in groups]
    groups = [g for g in groups if len(g)]
    if not groups:
        raise ValueError("one_way_anova needs at least one value")
    k = len(groups)
    sizes = np.array([len(g) for g in groups], dtype=float)
    n_total = int(sizes.sum())
    values = np.concatenate(groups)
    grand = float(values.mean())
    means = np.array([g.mean() for g in groups])
    ss_between = float(np.sum(sizes * (means - grand) ** 2))
    ss_within = float(sum(np.sum((g - g.mean()) ** 2) for g in groups))
    ms_between = ss_between / (k - 1) if k > 1 else math.nan
    ms_within = ss_within / (n_total - k) if n_total > k else math.nan
    n0 = (n_total - float(np.sum(sizes**2)) / n_total) / (k - 1) if k > 1 else math.nan
    s_between = math.sqrt(max(0.0, (ms_between - ms_within) / n0)) if k > 1 and math.isfinite(ms_within) else math.nan
    return OneWayAnova(
        k,
        n_total,
        n0,
        grand,
        ss_between,
        ss_within,
        ms_between,
        ms_within,
        math.sqrt(ms_within),
        s_between,
    )


def accuracy_limit_pct(level: str, acceptance: Acceptance = Acceptance()) -> float:
    """+-20 % (accuracy) and 20 % (CV) at the LLOQ, 15 % at the other levels (ICH M10 3.2.5.2)."""
    return acceptance.lloq_qc_tolerance_pct if level == QCLevel.LLOQ else acceptance.qc_tolerance_pct


def within_limit(accuracy_pct: float, limit_pct: float) -> bool:
    """|accuracy - 100| <= limit; a value exactly on the limit passes."""
    return bool(np.isfinite(accuracy_pct) and abs(accuracy_pct - 100.0) <= limit_pct + EPSILON)


def run_accuracy_and_precision(qcs: pd.DataFrame, acceptance: Acceptance = Acceptance()) -> pd.DataFrame:
    """Within-run accuracy and precision: per run, analyte, calibrator set and QC level (ICH M10 3.2.5.2).

    `qcs` has columns run, analyte, calibrator_set, level, nominal, concentration (NaN: no value).
    """
    rows = []
    for (analyte, cal_set, level, run), sub in qcs.groupby(["analyte", "calibrator_set", "level", "run"], sort=False):
        values = sub["concentration"].dropna().to_numpy(float)
        nominal = float(sub["nominal"].iloc[0])
        mean = float(values.mean()) if len(values) else math.nan
        cv = 100.0 * float(values.std(ddof=1)) / mean if len(values) > 1 else math.nan
        limit = accuracy_limit_pct(level, acceptance)
        accuracy = 100.0 * mean / nominal
        rows.append(
            {
                "analyte": analyte,
                "calibrator_set": cal_set,
                "level": level,
                "run": run,
                "nominal": nominal,
                "n": len(values),
                "n_missing": int(len(sub) - len(values)),
                "mean_concentration": mean,
                "accuracy_pct": accuracy,
                "cv_pct": cv,
                "limit_pct": limit,
                "passed": within_limit(accuracy, limit) and bool(np.isfinite(cv) and cv <= limit + EPSILON),
            }
        )
    return _level_order(pd.DataFrame(rows, columns=RUN_COLUMNS))


RUN_COLUMNS = (
    "analyte",
    "calibrator_set",
    "level",
    "run",
    "nominal",
    "n",
    "n_missing",
    "mean_concentration",
    "accuracy_pct",
    "cv_pct",
    "limit_pct",
    "passed",
)
LEVEL_COLUMNS = (
    "analyte",
    "calibrator_set",
    "level",
    "nominal",
    "n_runs",
    "n_replicates",
    "min_replicates_per_run",
    "mean_concentration",
    "mean_accuracy_pct",
    "worst_run_accuracy_pct",
    "max_run_cv_pct",
    "within_run_cv_pct",
    "between_run_cv_pct",
    "ms_within",
    "ms_between",
    "n0",
    "limit_pct",
    "passed",
    "failing",
)
LEVEL_ORDER = {"LLOQ": 0, "LQC": 1, "MQC": 2, "HQC": 3, "DQC": 4}


def accuracy_and_precision(qcs: pd.DataFrame, acceptance: Acceptance = Acceptance()) -> pd.DataFrame:
    """The validation's accuracy and precision table: one row per analyte, calibrator set and QC level.

    Mean accuracy, the worst run's accuracy and CV, the within-run CV (repeatability) and the
    between-run CV (intermediate precision) from a one-way ANOVA over runs, and pass/fail against
    +-15 % / 15 % (+-20 % / 20 % at the LLOQ) (ICH M10 3.2.5.2). `failing` names what failed.
    """
    per_run = run_accuracy_and_precision(qcs, acceptance)
    rows = []
    for (analyte, cal_set, level), sub in qcs.groupby(["analyte", "calibrator_set", "level"], sort=False):
        runs = per_run[
            (per_run["analyte"] == analyte) & (per_run["calibrator_set"] == cal_set) & (per_run["level"] == level)
        ]
        nominal = float(sub["nominal"].iloc[0])
        limit = accuracy_limit_pct(level, acceptance)
        groups = [g["concentration"].dropna().to_numpy(float) for _, g in sub.groupby("run", sort=False)]
        anova = one_way_anova(groups) if any(len(g) for g in groups) else None
        mean_accuracy = 100.0 * anova.grand_mean / nominal if anova else math.nan
        within = anova.within_run_cv_pct if anova else math.nan
        between = anova.between_run_cv_pct if anova and anova.k > 1 else math.nan
        off = (runs["accuracy_pct"] - 100.0).abs()
        worst_accuracy = float(runs.loc[off.idxmax(), "accuracy_pct"]) if off.notna().any() else math.nan
        max_cv = float(runs["cv_pct"].max()) if runs["cv_pct"].notna().any() else math.nan
        failing = []
        if not within_limit(mean_accuracy, limit):
            failing.append(f"mean accuracy {mean_accuracy:.1f} %")
        failing += [
            f"run {r.run} accuracy {r.accuracy_pct:.1f} %"
            for r in runs.itertuples()
            if not within_limit(r.accuracy_pct, limit)
        ]
        failing += [
            f"run {r.run} CV {r.cv_pct:.1f} %"
            for r in runs.itertuples()
            if np.isfinite(r.cv_pct) and r.cv_pct > limit + EPSILON
        ]
        failing += [f"run {r.run} has fewer than 2 values" for r in runs.itertuples() if r.n < 2]
        if not (np.isfinite(within) and within <= limit + EPSILON):
            failing.append(f"within-run CV {within:.1f} %" if np.isfinite(within) else "within-run CV not estimable")
        if not (np.isfinite(between) and between <= limit + EPSILON):
            failing.append(f"between-run CV {between:.1f} %" if np.isfinite(between) else "between-run CV needs 2 runs")
        rows.append(
            {
                "analyte": analyte,
                "calibrator_set": cal_set,
                "level": level,
                "nominal": nominal,
                "n_runs": int(len(runs)),
                "n_replicates": int(runs["n"].sum()),
                "min_replicates_per_run": int(runs["n"].min()),
                "mean_concentration": anova.grand_mean if anova else math.nan,
                "mean_accuracy_pct": mean_accuracy,
                "worst_run_accuracy_pct": worst_accuracy,
                "max_run_cv_pct": max_cv,
                "within_run_cv_pct": within,
                "between_run_cv_pct": between,
                "ms_within": anova.ms_within if anova else math.nan,
                "ms_between": anova.ms_between if anova else math.nan,
                "n0": anova.n0 if anova else math.nan,
                "limit_pct": limit,
                "passed": not failing,
                "failing": "; ".join(failing),
            }
        )
    return _level_order(pd.DataFrame(rows, columns=LEVEL_COLUMNS))


def _level_order(table: pd.DataFrame) -> pd.DataFrame:
    """Analytes as they first appear (the method's order), then LLOQ, LQC, MQC, HQC, DQC."""
    analytes = {a: i for i, a in enumerate(dict.fromkeys(table["analyte"]))}
    keys = table.assign(_a=table["analyte"].map(analytes), _l=table["level"].map(lambda lv: LEVEL_ORDER.get(lv, 9)))
    return (
        keys.sort_values(["_a", "calibrator_set", "_l"], kind="stable")
        .drop(columns=["_a", "_l"])
        .reset_index(drop=True)
    )


@dataclass(frozen=True)
class Validation:
    """An accuracy and precision evaluation over runs, with what could not be checked or fell short."""

    levels: pd.DataFrame = field(repr=False)  # accuracy_and_precision
    runs: pd.DataFrame = field(repr=False)  # run_accuracy_and_precision
    warnings: tuple[str, ...]
    run_labels: tuple[str, ...]
    days: tuple[str, ...]  # distinct run dates; () when not recorded

    @property
    def passed(self) -> bool:
        """Whether every analyte and QC level met the accuracy and precision limits."""
        return bool(len(self.levels)) and bool(self.levels["passed"].all())


def pooled_qcs(runs: Sequence[ValidationRun]) -> tuple[pd.DataFrame, list[str]]:
    """The QC replicates of every run (run, analyte, calibrator_set, level, nominal, concentration).

    A run whose curve for an analyte failed ICH M10 3.2.4 is left out for that analyte; QCs
    without a concentration stay in as missing. Both are reported in the returned warnings.
    """
    frames, warnings = [], []
    for run in runs:
        qcs = run.results[run.results["sample_type"] == SampleType.QC]
        for (analyte, cal_set), sub in qcs.groupby(["analyte", "calibrator_set"], sort=False):
            if not run.calibration_accepted(analyte, cal_set):
                warnings.append(
                    f"run {run.label}: the {analyte} curve ({cal_set}) failed ICH M10 3.2.4: its QCs are left out"
                )
                continue
            missing = sub[sub["concentration"].isna()]
            for r in missing.itertuples():
                warnings.append(
                    f"run {run.label}: {r.sample_id} {analyte} has no concentration ({r.flags or 'no value'}): left out"
                )
            frames.append(
                pd.DataFrame(
                    {
                        "run": run.label,
                        "analyte": analyte,
                        "calibrator_set": cal_set,
                        "level": sub["level"],
                        "sample_id": sub["sample_id"],
                        "nominal": sub["nominal"],
                        "concentration": sub["concentration"],
                    }
                )
            )
    table = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(
            columns=["run", "analyte", "calibrator_set", "level", "sample_id", "nominal", "concentration"]
        )
    )
    problems = []
    for (analyte, cal_set, level), sub in table.groupby(["analyte", "calibrator_set", "level"], sort=False):
        by_run = sub.groupby("run", sort=False)["nominal"].agg(lambda v: tuple(sorted(set(v))))
        if by_run.map(len).max() > 1 or len(set(by_run)) > 1:
            seen = ", ".join(f"{'/'.join(f'{x:g}' for x in v)} in {run}" for run, v in by_run.items())
            problems.append(f"{analyte} {level} QCs ({cal_set}) have different nominal concentrations: {seen}")
    if problems:
        raise ResultsError(runs[0].folder, problems)
    return table, warnings


def validate_runs(runs: Sequence[ValidationRun], acceptance: Acceptance = Acceptance()) -> Validation:
    """Accuracy and precision over validation runs, with the design checks of ICH M10 3.2.5.2 as warnings.

    Warned, not failed: fewer than 5 replicates of a level in a run, fewer than 3 runs, fewer
    than 2 days (days come from a `run_date` worklist column; without it they cannot be checked).
    """
    qcs, warnings = pooled_qcs(runs)
    levels = accuracy_and_precision(qcs, acceptance)
    per_run = run_accuracy_and_precision(qcs, acceptance)
    if qcs.empty:
        warnings.append("no QC with a usable curve in these runs: nothing to evaluate")
    for r in per_run[per_run["n"] < MIN_REPLICATES].itertuples():
        warnings.append(
            f"run {r.run}: {r.n} {r.level} replicate(s) of {r.analyte}, ICH M10 3.2.5.2 asks for at least {MIN_REPLICATES}"
        )
    labels = tuple(r.label for r in runs)
    if len(runs) < MIN_RUNS:
        warnings.append(f"{len(runs)} run(s): ICH M10 3.2.5.2 asks for at least {MIN_RUNS} runs")
    days = tuple(sorted({d for r in runs for d in r.days}))
    undated = [r.label for r in runs if not r.days]
    if undated:
        warnings.append(
            f"the days of the runs could not be checked ({DAY_COLUMN} not recorded for {', '.join(undated)}): "
            f"ICH M10 3.2.5.2 asks for at least {MIN_DAYS} days; add a {DAY_COLUMN} column to the worklist"
        )
        days = ()
    elif len(days) < MIN_DAYS:
        warnings.append(
            f"all runs on {len(days)} day(s) ({', '.join(days)}): ICH M10 3.2.5.2 asks for at least {MIN_DAYS}"
        )
    return Validation(levels, per_run, tuple(warnings), labels, days)


# ---------------------------------------------------------------------------------------------
# Incurred sample reanalysis (ICH M10 5)


def isr_samples_needed(n_study_samples: int) -> int:
    """10 % of the first 1000 study samples and 5 % of the rest, rounded up (ICH M10 5)."""
    return math.ceil(0.10 * min(n_study_samples, 1000) + 0.05 * max(n_study_samples - 1000, 0) - EPSILON)


def isr_difference_pct(original: float, repeat: float) -> float:
    """(repeat - original) / mean(original, repeat) x 100 (ICH M10 5)."""
    return 100.0 * (repeat - original) / ((repeat + original) / 2.0)


ISR_COLUMNS = ("sample_id", "analyte", "original", "repeat", "mean", "difference_pct", "within_limit", "status")
ISR_SUMMARY_COLUMNS = ("analyte", "n_evaluated", "n_within", "fraction_within", "limit_pct", "passed")


@dataclass(frozen=True)
class Isr:
    """Incurred sample reanalysis: every repeat paired with its original, and the verdict per analyte."""

    pairs: pd.DataFrame = field(repr=False)  # ISR_COLUMNS
    summary: pd.DataFrame = field(repr=False)  # ISR_SUMMARY_COLUMNS
    n_study_samples: int
    needed: int
    done: int  # study samples with at least one analyte evaluated
    warnings: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """Whether every analyte passed ISR (at least 2/3 of its pairs within +-20 %)."""
        return bool(len(self.summary)) and bool(self.summary["passed"].all())


def incurred_sample_reanalysis(
    original: pd.DataFrame,
    repeat: pd.DataFrame,
    n_study_samples: int | None = None,
    limit_pct: float = ISR_LIMIT_PCT,
    min_fraction: float = ISR_MIN_FRACTION,
) -> Isr:
    """Pair study samples by sample_id and analyte, both reportable, and judge each analyte (ICH M10 5).

    A pair is within the limit when |(repeat - original) / mean| x 100 <= 20; an analyte passes
    when at least 2/3 of its pairs are. `original` and `repeat` are results.csv tables;
    `n_study_samples` (default: the study samples in `original`) sets how many repeats are needed.
    """
    orig = original[original["sample_type"] == SampleType.UNKNOWN].drop_duplicates(
        ["sample_id", "analyte"], keep="last"
    )
    rep = repeat[repeat["sample_type"] == SampleType.UNKNOWN].drop_duplicates(["sample_id", "analyte"], keep="last")
    by_key = orig.set_index(["sample_id", "analyte"])
    rows = []
    for r in rep.itertuples():
        key = (r.sample_id, r.analyte)
        row = {
            "sample_id": r.sample_id,
            "analyte": r.analyte,
            "original": math.nan,
            "repeat": r.concentration,
            "mean": math.nan,
            "difference_pct": math.nan,
            "within_limit": pd.NA,
        }
        if key not in by_key.index:
            row["status"] = "not in the original results"
        else:
            o = by_key.loc[key]
            row["original"] = o["concentration"]
            if not o["reportable"]:
                row["status"] = f"original not reportable ({o['flags'] or 'no value'})"
            elif not r.reportable:
                row["status"] = f"repeat not reportable ({r.flags or 'no value'})"
            else:
                diff = isr_difference_pct(float(o["concentration"]), float(r.concentration))
                row.update(
                    mean=(o["concentration"] + r.concentration) / 2.0,
                    difference_pct=diff,
                    within_limit=bool(abs(diff) <= limit_pct + EPSILON),
                    status="evaluated",
                )
        rows.append(row)
    pairs = pd.DataFrame(rows, columns=ISR_COLUMNS)
    evaluated = pairs[pairs["status"] == "evaluated"]
    summary_rows = []
    for analyte, sub in evaluated.groupby("analyte", sort=False):
        n, ok = len(sub), int(sub["within_limit"].astype(bool).sum())
        summary_rows.append(
            {
                "analyte": analyte,
                "n_evaluated": n,
                "n_within": ok,
                "fraction_within": ok / n,
                "limit_pct": limit_pct,
                "passed": ok / n >= min_fraction - EPSILON,
            }
        )
    summary = pd.DataFrame(summary_rows, columns=ISR_SUMMARY_COLUMNS)
    if n_study_samples is None:
        n_study_samples = int(orig["sample_id"].nunique())
    needed = isr_samples_needed(n_study_samples)
    done = int(evaluated["sample_id"].nunique())
    warnings = []
    if done < needed:
        warnings.append(
            f"{done} study sample(s) reanalysed and evaluable, ICH M10 5 asks for {needed} "
            f"(10 % of the first 1000 and 5 % of the rest of {n_study_samples})"
        )
    unmatched = sorted(pairs.loc[pairs["status"] == "not in the original results", "sample_id"].unique())
    if unmatched:
        warnings.append(f"not in the original results: {', '.join(unmatched)}")
    not_evaluable = pairs[~pairs["status"].isin(["evaluated", "not in the original results"])]
    for r in not_evaluable.itertuples():
        warnings.append(f"{r.sample_id} {r.analyte}: {r.status}")
    if evaluated.empty:
        warnings.append("no pair of reportable results: nothing to evaluate")
    return Isr(pairs, summary, n_study_samples, needed, done, tuple(warnings))


def isr_runs(
    original: Sequence[ValidationRun], repeat: Sequence[ValidationRun], n_study_samples: int | None = None
) -> Isr:
    """ISR of results folders; both sides must come from the same method (see read_runs)."""
    _check_one_method([*original, *repeat], "an incurred sample reanalysis repeats the samples with the same method")
    _check_new_analysis(original, repeat)
    orig = pd.concat([r.results for r in original], ignore_index=True)
    rep = pd.concat([r.results for r in repeat], ignore_index=True)
    return incurred_sample_reanalysis(orig, rep, n_study_samples)


def _check_new_analysis(original: Sequence[ValidationRun], repeat: Sequence[ValidationRun]) -> None:
    """Refuse a repeat that is an original again (the same folder, or the same injection files):
    it would agree with itself and pass ISR at 100 %."""
    problems = []
    for r in repeat:
        for o in original:
            if r.folder.resolve() == o.folder.resolve():
                problems.append(
                    f"{r.folder} is given as both original and repeat: give the results of the reanalysis run as REPEAT"
                )
                continue
            mine = _injection_hashes(r)
            shared = sorted(mine[h] for h in set(mine) & set(_injection_hashes(o)))
            if shared:
                files = ", ".join(shared[:3]) + (" ..." if len(shared) > 3 else "")
                problems.append(
                    f"{r.folder} measured {len(shared)} injection file(s) of the original {o.folder} ({files}): "
                    "an ISR repeat is a new analysis of the samples; give the results of the reanalysis run"
                )
    if problems:
        raise ResultsError(repeat[0].folder if repeat else Path("."), problems)


def _injection_hashes(run: ValidationRun) -> dict[str, str]:
    """SHA-256 -> file name of the study-sample mzML files a run measured (run.json's provenance);
    blanks may well be byte-identical from run to run, a study sample's injection never is."""
    samples = set(run.results.loc[run.results["sample_type"] == SampleType.UNKNOWN, "file"])
    inputs = run.summary.get("provenance", {}).get("inputs", [])
    return {i["sha256"]: i["file"] for i in inputs if i.get("file") in samples}


# ---------------------------------------------------------------------------------------------
# Calibration model and weighting (ICH M10 3.2.4)


COMPARE_COLUMNS = (
    "analyte",
    "calibrator_set",
    "rank",
    "model",
    "weighting",
    "current",
    "n_runs",
    "n_calibrators",
    "sum_abs_re_pct",
    "max_abs_re_pct",
    "n_within",
    "n_passing",
    "runs_accepted",
    "note",
)


def pooled_calibrators(runs: Sequence[ValidationRun]) -> pd.DataFrame:
    """Calibrator injections of every run: run, analyte, calibrator_set, level, nominal, area_ratio."""
    frames = []
    for run in runs:
        cals = run.results[run.results["sample_type"] == SampleType.CALIBRATOR]
        frames.append(
            pd.DataFrame(
                {
                    "run": run.label,
                    "analyte": cals["analyte"],
                    "calibrator_set": cals["calibrator_set"],
                    "level": cals["level"],
                    "nominal": cals["nominal"],
                    "area_ratio": cals["area_ratio"],
                }
            )
        )
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["run", "analyte", "calibrator_set", "level", "nominal", "area_ratio"])
    )


def current_choice(runs: Sequence[ValidationRun]) -> dict[tuple[str, str], tuple[str, str]]:
    """(analyte, calibrator set) -> (model, weighting) the runs were quantified with (calibration.csv)."""
    choice = {}
    for run in runs:
        for r in run.calibration.itertuples():
            if r.model and (r.analyte, r.calibrator_set) not in choice:
                choice[(r.analyte, r.calibrator_set)] = (r.model, r.weighting)
    return choice


def compare_curves(
    calibrators: pd.DataFrame,
    current: Mapping[tuple[str, str], tuple[str, str]] | None = None,
    acceptance: Acceptance = Acceptance(),
    models: Sequence[str] = MODELS,
    weightings: Sequence[str] = WEIGHTINGS,
) -> pd.DataFrame:
    """Every model x weighting fitted to each run's calibrators, ranked by the sum of |%RE| (ICH M10 3.2.4).

    Per run, the curve is fitted by weighted least squares to all calibrators with a response;
    sum_abs_re_pct adds |back-calculated - nominal| / nominal x 100 over all of them and all
    runs, n_within counts those inside +-15 % (+-20 % at the lowest level). n_passing and
    runs_accepted are what the run would report after ICH M10 exclusion and refit (`calibrate`):
    calibrators passing, and runs keeping >= 75 % of calibrators and >= 6 levels. Rank 1 has the
    smallest sum; a combination that leaves a calibrator without a value on the curve ranks last.
    """
    current = dict(current or {})
    usable = calibrators[np.isfinite(calibrators["area_ratio"]) & (calibrators["area_ratio"] > 0)]
    rows = []
    for (analyte, cal_set), sub in usable.groupby(["analyte", "calibrator_set"], sort=False):
        for model in models:
            for weighting in weightings:
                rows.append(
                    {
                        "analyte": analyte,
                        "calibrator_set": cal_set,
                        "model": model,
                        "weighting": weighting,
                        "current": current.get((analyte, cal_set)) == (model, weighting),
                        **_score(sub, model, weighting, acceptance),
                    }
                )
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    table["_order"] = range(len(table))
    table = table.sort_values(
        ["analyte", "calibrator_set", "sum_abs_re_pct", "_order"], na_position="last", kind="stable"
    )
    table["rank"] = table.groupby(["analyte", "calibrator_set"], sort=False).cumcount() + 1
    table["_analyte"] = table["analyte"].map({a: i for i, a in enumerate(dict.fromkeys(calibrators["analyte"]))})
    table = table.sort_values(["_analyte", "calibrator_set", "rank"], kind="stable")
    return table[list(COMPARE_COLUMNS)].reset_index(drop=True)


def _score(calibrators: pd.DataFrame, model: str, weighting: str, acceptance: Acceptance) -> dict:
    total, worst, n, within, passing, accepted, lost = 0.0, 0.0, 0, 0, 0, 0, 0
    runs = list(calibrators.groupby("run", sort=False))
    for _, cals in runs:
        x, y = cals["nominal"].to_numpy(float), cals["area_ratio"].to_numpy(float)
        n += len(x)
        tolerance = np.where(np.isclose(x, x.min()), acceptance.lloq_tolerance_pct, acceptance.calibrator_tolerance_pct)
        try:
            curve = fit_curve(x, y, model, weighting)
        except ValueError:
            lost += len(x)
            continue
        re = 100.0 * (curve.back_calculate(y) - x) / x
        lost += int(np.isnan(re).sum())
        total += float(np.nansum(np.abs(re)))
        worst = max(worst, float(np.nanmax(np.abs(re)))) if np.isfinite(re).any() else worst
        within += int((np.abs(re) <= tolerance + EPSILON).sum())
        result = calibrate(
            cals[["level", "nominal", "area_ratio"]].assign(injection=range(len(cals))), model, weighting, acceptance
        )
        ok = result.calibrators["passed"]
        passing += int(ok.sum())
        levels = (
            result.calibrators.groupby("level")["passed"].mean() >= acceptance.min_level_replicate_fraction - EPSILON
        )
        if (
            result.curve is not None
            and ok.mean() >= acceptance.min_calibrator_fraction - EPSILON
            and levels.sum() >= acceptance.min_calibrator_levels
        ):
            accepted += 1
    return {
        "n_runs": len(runs),
        "n_calibrators": n,
        "sum_abs_re_pct": math.nan if lost else total,
        "max_abs_re_pct": math.nan if lost else worst,
        "n_within": within,
        "n_passing": passing,
        "runs_accepted": accepted,
        "note": f"{lost} calibrator(s) without a value on the curve" if lost else "",
    }


# ---------------------------------------------------------------------------------------------
# Writing


def write_validation_table(table: pd.DataFrame, path: Path) -> Path:
    """A table as CSV, numbers to 6 significant digits for stable, readable files, written atomically."""
    return atomic_write(path, csv_text(table, float_format="%.6g"))


def write_validation(validation: Validation, runs: Sequence[ValidationRun], out_dir: Path) -> list[Path]:
    """validation.csv (per level), validation_runs.csv (per run and level), validation.json (inputs, warnings)."""
    out_dir = Path(out_dir)
    summary = {
        "passed": validation.passed,
        "runs": [{"run": r.label, "folder": str(r.folder), "days": list(r.days), "method": r.method} for r in runs],
        "days": list(validation.days),
        "warnings": list(validation.warnings),
    }
    return [
        write_validation_table(validation.levels, out_dir / "validation.csv"),
        write_validation_table(validation.runs, out_dir / "validation_runs.csv"),
        atomic_write(out_dir / "validation.json", json.dumps(summary, indent=2) + "\n"),
    ]


def write_isr(
    isr: Isr, original: Sequence[ValidationRun], repeat: Sequence[ValidationRun], out_dir: Path
) -> list[Path]:
    """isr.csv (every repeat and its original) and isr.json (verdict per analyte, needed vs done, warnings)."""
    out_dir = Path(out_dir)
    summary = {
        "passed": isr.passed,
        "study_samples": isr.n_study_samples,
        "needed": isr.needed,
        "done": isr.done,
        "analytes": json.loads(isr.summary.to_json(orient="records")),
        "original": [str(r.folder) for r in original],
        "repeat": [str(r.folder) for r in repeat],
        "method": original[0].method if original else {},
        "warnings": list(isr.warnings),
    }
    return [
        write_validation_table(isr.pairs, out_dir / "isr.csv"),
        atomic_write(out_dir / "isr.json", json.dumps(summary, indent=2) + "\n"),
    ]
