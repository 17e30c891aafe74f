"""From a loaded batch to quantified results: measure every injection (lcmsquant.measure), fit
the curves, judge the run and flag the samples. Pure functions over tidy tables; no file is
written here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lcmsquant import acceptance
from lcmsquant.acceptance import Rule
from lcmsquant.batch import CALIBRATORS, Batch, Injection, load_batch, resolve_method_path
from lcmsquant.calibration import CalibrationResult, calibrate
from lcmsquant.measure import measure_batch
from lcmsquant.method import Analyte, CalibratorSet, Method, load_method
from lcmsquant.reanalysis import COLUMNS as REANALYSIS_COLUMNS
from lcmsquant.reanalysis import reanalysis_list
from lcmsquant.results import CALIBRATION_COLUMNS, QUANTIFIER_FIELDS
from lcmsquant.vocabulary import BLOCKING_FLAGS, REVIEW_FLAGS, Flag, PeakStatus, QCLevel, SampleType
from lcmsquant.workers import WorkerPool


@dataclass(frozen=True)
class RunResult:
    """Everything a run produces, as tables; see results.write_outputs for the files."""

    results: pd.DataFrame = field(repr=False)  # one row per injection x analyte
    peaks: pd.DataFrame = field(repr=False)  # one row per injection x transition
    calibration: pd.DataFrame = field(repr=False)  # one row per analyte x calibrator set
    rules: tuple[Rule, ...] = ()
    verdicts: dict = field(default_factory=dict)  # (analyte, set) -> {"accepted": bool, "reasons": [...]}
    injection_errors: dict = field(default_factory=dict)  # injection order -> message
    reanalysis: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REANALYSIS_COLUMNS), repr=False)
    peaks_only: str = ""  # why the run has no calibration at all (see peaks_only_reason); "" when calibrated


def _at_analyte_rt(rows: pd.DataFrame, rt_tolerance: float) -> pd.DataFrame:
    """The rows as selectivity and carry-over judge them: in a blank or zero sample, a peak off
    the analyte's RT (beyond the identity tolerance) is no interference at the analyte's RT
    (ICH M10 3.2.1) and counts as no response; the results keep it, flagged RT_SHIFT."""
    blank_like = rows["sample_type"].isin([SampleType.BLANK, SampleType.ZERO])
    elsewhere = blank_like & ((rows["rt_min"] - rows["expected_rt_min"]).abs() > rt_tolerance)
    if not elsewhere.any():
        return rows
    return rows.assign(area=rows["area"].where(~elsewhere, 0.0))


# What the acceptance rules read of an analyte's rows (copying all ~60 columns for every rule's
# selection was a third of quantify's time).
JUDGED_COLUMNS = [
    "injection",
    "sample_id",
    "sample_type",
    "level",
    "nominal",
    "dilution_factor",
    "area",
    "is_area",
    "is_response_pct",
    "back_calculated",
    "concentration_found",
    "lloq",
    "uloq",
    "excluded",
]


def quantify(batch: Batch, peaks: pd.DataFrame, injection_errors: dict | None = None) -> RunResult:
    """Curves, back-calculated concentrations, acceptance rules and flags from the peak table.

    A chain of steps, each returning a new table: the analyte table (one row per injection x
    analyte), its calibrator sets, the IS response, then per analyte and set the curve and the
    ICH M10 verdict (quantify_analyte), then identity (ion ratio, RT), flags and what is
    reportable, and the reanalysis list.
    """
    method = batch.method
    table, calibrated_sets = with_calibrator_sets(analyte_table(batch, peaks), method)
    table = _add_is_response(table, method)
    exclusions = _manual_exclusions(batch)
    n_unknowns = int((batch.worklist["sample_type"] == SampleType.UNKNOWN).sum())
    outcomes = [
        quantify_analyte(table, analyte, cal_set, method, exclusions, n_unknowns)
        for cal_set in calibrated_sets
        for analyte in method.analytes
    ]
    for outcome in outcomes:
        table.loc[outcome.rows.index, outcome.rows.columns] = outcome.rows
    table = _add_ion_ratio_and_rt(table, method)
    table = _with_flags(_with_accuracy(table), method)
    reanalysis = reanalysis_list(table, method)
    reason_of = dict(zip(zip(reanalysis["injection"], reanalysis["analyte"]), reanalysis["reason"]))
    table["reanalysis"] = [reason_of.get(key, "") for key in zip(table["injection"], table["analyte"])]
    return RunResult(
        results=table,
        peaks=peaks,
        calibration=pd.DataFrame([o.calibration for o in outcomes], columns=list(CALIBRATION_COLUMNS)),
        rules=tuple(rule for o in outcomes for rule in o.rules),
        verdicts={(o.analyte, o.calibrator_set): {"accepted": o.accepted, "reasons": o.reasons} for o in outcomes},
        injection_errors=dict(injection_errors or {}),
        reanalysis=reanalysis,
        peaks_only=peaks_only_reason(batch),
    )


# What quantify_analyte gives each of its rows (the table starts with these empty).
QUANTIFIED_COLUMNS = {
    "back_calculated": np.nan,
    "concentration_found": np.nan,
    "lloq": np.nan,
    "uloq": np.nan,
    "qc_passed": pd.NA,
    "excluded": False,
    "exclusion_reason": "",
    "analyte_accepted": True,  # rows of no calibrated set are not judged, so never REJECTED
    "dilution_qc_failed": False,
}


def with_calibrator_sets(table: pd.DataFrame, method: Method) -> tuple[pd.DataFrame, list[CalibratorSet]]:
    """The table with each row's calibrator set, and the sets to calibrate: every set that serves
    a calibrator, QC or study sample of the batch (one without a calibrator injection then has no
    curve, and the analyte is rejected for it, ICH M10 3.2.4)."""
    table = table.assign(**{c: v for c, v in QUANTIFIED_COLUMNS.items() if c != "qc_passed"})
    table["qc_passed"] = pd.Series(pd.NA, index=table.index, dtype="boolean")
    calibrated_sets = []
    for cal_set in method.calibrator_sets:
        in_set = table["matrix"].isin(cal_set.matrices)
        if (in_set & table["sample_type"].isin([SampleType.CALIBRATOR, SampleType.QC, SampleType.UNKNOWN])).any():
            table.loc[in_set, "calibrator_set"] = cal_set.name
            calibrated_sets.append(cal_set)
    return table, calibrated_sets


@dataclass(frozen=True)
class AnalyteOutcome:
    """One analyte in one calibrator set: its rows' curve values and verdict, its calibration.csv
    row and its acceptance rules."""

    analyte: str
    calibrator_set: str
    rows: pd.DataFrame = field(repr=False)  # QUANTIFIED_COLUMNS of the analyte's rows in the set
    calibration: dict = field(repr=False)
    rules: tuple[Rule, ...] = ()
    accepted: bool = False
    reasons: tuple[str, ...] = ()


def quantify_analyte(
    table: pd.DataFrame,
    analyte: Analyte,
    cal_set: CalibratorSet,
    method: Method,
    exclusions: dict[tuple[int, str], str],
    n_unknowns: int,
) -> AnalyteOutcome:
    """Fit the analyte's curve in one calibrator set, back-calculate its rows and judge them by
    ICH M10 (acceptance.judge); `table` is left as it is."""
    in_set = table["calibrator_set"] == cal_set.name
    rows = in_set & (table["analyte"] == analyte.name)
    result = _calibrate_analyte(table, rows, analyte, method, exclusions)
    if not (in_set & (table["sample_type"] == SampleType.CALIBRATOR)).any():
        result = replace(result, problem=_no_calibrators(cal_set))
    mine = table.loc[rows, list(QUANTIFIED_COLUMNS)].copy()
    mine["lloq"] = result.lloq if result.lloq is not None else np.nan
    mine["uloq"] = result.uloq if result.uloq is not None else np.nan
    if result.curve is not None:
        found = result.curve.back_calculate(table.loc[rows, "area_ratio"])
        mine["back_calculated"] = found
        mine["concentration_found"] = found * table.loc[rows, "dilution_factor"]
    cal_rows = result.calibrators.set_index("row")
    mine.loc[cal_rows.index, "excluded"] = cal_rows["excluded"].astype(bool)
    mine.loc[cal_rows.index, "exclusion_reason"] = cal_rows["exclusion_reason"]
    judged = table.loc[rows].assign(
        **{c: mine[c] for c in ("back_calculated", "concentration_found", "lloq", "uloq", "excluded")}
    )
    samples = _at_analyte_rt(judged, method.identity.rt_tolerance)[JUDGED_COLUMNS]
    qcs = acceptance.qc_accuracy(samples[samples["sample_type"] == SampleType.QC], method.acceptance)
    mine.loc[qcs.index, "qc_passed"] = qcs["qc_passed"].astype("boolean")
    rules = acceptance.judge(
        analyte.name,
        cal_set.name,
        result,
        qcs,
        n_unknowns,
        method.acceptance,
        samples=samples,
        carryover_injections=acceptance.carryover_blanks(samples),
    )
    accepted, reasons = acceptance.verdict(rules)
    mine["analyte_accepted"] = accepted
    failed_factors = _failed_dilution_factors(qcs, method.acceptance.min_qc_level_fraction)
    mine.loc[table.loc[rows, "dilution_factor"].isin(failed_factors).to_numpy(), "dilution_qc_failed"] = True
    return AnalyteOutcome(
        analyte.name,
        cal_set.name,
        mine,
        _calibration_row(analyte.name, cal_set.name, result, accepted),
        tuple(rules),
        accepted,
        tuple(reasons),
    )


def peaks_only_reason(batch: Batch) -> str:
    """Why the batch's run is peaks only (method.PEAKS_ONLY), and what it reports instead ("" when
    the method, with the batch's calibrators.csv, has calibrator sets)."""
    method = batch.method
    if not method.peaks_only:
        return ""
    return (
        f"the method '{method.name}' ({Path(method.path).name or 'not from a file'}) has no "
        f"[calibrator_sets] and the batch folder no {CALIBRATORS}, so areas, area ratios, retention times and "
        f"flags are reported, with no curve, no concentration and no ICH M10 verdict; to quantify, add "
        f"[calibrator_sets] to the method or a {CALIBRATORS} to the batch folder"
    )


def _either(words) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _no_calibrators(cal_set: CalibratorSet) -> str:
    return (
        f"no calibrator injection of set '{cal_set.name}' in the batch (worklist rows with sample_type "
        f"calibrator and matrix {_either(cal_set.matrices)}): no curve, so nothing of this set is quantified"
    )


def _failed_dilution_factors(qcs: pd.DataFrame, min_fraction: float) -> list[float]:
    """Dilution factors whose dilution QCs fail (fewer than min_fraction, 50 %, within tolerance; 3.3.2)."""
    dqc = qcs[qcs["level"] == QCLevel.DQC]
    passing = dqc.groupby("dilution_factor")["qc_passed"].mean()
    return [float(f) for f, fraction in passing.items() if fraction < min_fraction - 1e-9]


def _manual_exclusions(batch: Batch) -> dict[tuple[int, str], str]:
    """(injection, analyte) -> reason, for calibrators an analyst excluded in overrides.csv."""
    by_file = {str(inj.file.relative_to(batch.folder)): inj.order for inj in batch.injections}
    return {
        (by_file[o.file], o.analyte): f"excluded by {o.analyst}: {o.reason}"
        for o in batch.overrides
        if o.action == "exclude"
    }


# The peak fields analyte_table takes from the IS ("is_" first); those of the quantifier are
# results.QUANTIFIER_FIELDS.
IS_FIELDS = ("rt_min", "expected_rt_min", "area")


def analyte_table(batch: Batch, peaks: pd.DataFrame) -> pd.DataFrame:
    """One row per injection x analyte: quantifier, IS and first qualifier side by side."""
    method = batch.method
    position = {key: i for i, key in enumerate(zip(peaks["injection"].tolist(), peaks["transition"].tolist()))}
    injections, analytes, internal_standards, nominals = [], [], [], []
    quant_at, is_at, quals_at = [], [], []  # peak rows of the quantifier, the IS, the qualifiers
    for inj in batch.injections:
        nominal_set = method.calibrator_set_for(inj.matrix)
        for analyte in method.analytes:
            injections.append(inj.order)
            analytes.append(analyte.name)
            internal_standards.append(analyte.internal_standard)
            quant_at.append(position[(inj.order, analyte.quantifier.name)])
            is_at.append(position[(inj.order, method.internal_standard(analyte.internal_standard).transition.name)])
            quals_at.append([position[(inj.order, q.name)] for q in analyte.qualifiers])
            nominal = np.nan
            if inj.sample_type in ("calibrator", "qc") and nominal_set is not None:
                value = nominal_set.nominal(inj.level, analyte.name)
                nominal = value if value is not None else np.nan
            nominals.append(nominal)
    quant, istd = np.array(quant_at, dtype=int), np.array(is_at, dtype=int)
    qual = np.array([rows[0] if rows else -1 for rows in quals_at], dtype=int)  # the first; -1: none
    has_qual = qual >= 0

    def column(name: str) -> np.ndarray:
        return peaks[name].to_numpy()

    def flag(name: str) -> np.ndarray:
        return column(name).astype(bool)

    manual, saturated = flag("manual"), flag("saturated")
    warned = (column("read_warnings") != "") if "read_warnings" in peaks else np.zeros(len(peaks), dtype=bool)
    table = pd.DataFrame(
        {
            "injection": injections,
            "analyte": analytes,
            "internal_standard": internal_standards,
            "quant_status": column("status")[quant],
            "is_status": column("status")[istd],
            **{name: column(name)[quant] for name in QUANTIFIER_FIELDS},
            "edge": flag("edge")[quant],
            "saturated": saturated[quant] | saturated[istd],
            "split": flag("split")[quant],
            "shoulder": flag("shoulder")[quant],
            "manual": manual[quant] | manual[istd] | np.array([manual[rows].any() for rows in quals_at], dtype=bool),
            "read_warning": warned[quant] | warned[istd],
            **{f"is_{name}": column(name)[istd] for name in IS_FIELDS},
            "qualifier_area": np.where(has_qual, column("area").astype(float)[qual], np.nan),
            "qualifier_status": np.where(has_qual, column("status")[qual], ""),
            "nominal": np.array(nominals, dtype=float),
        }
    )
    info = batch.worklist.drop(columns=["line"]).copy()
    info.insert(0, "injection", range(1, len(info) + 1))
    info["dilution_factor"] = [inj.dilution_factor for inj in batch.injections]
    table = info.merge(table, on="injection", how="right")
    with np.errstate(divide="ignore", invalid="ignore"):
        table["area_ratio"] = table["area"] / table["is_area"]
    table["calibrator_set"] = ""
    return table


def _calibrate_analyte(
    table: pd.DataFrame, rows: pd.Series, analyte: Analyte, method: Method, exclusions: Mapping[tuple[int, str], str]
) -> CalibrationResult:
    cals = table.loc[
        rows & (table["sample_type"] == SampleType.CALIBRATOR), ["injection", "level", "nominal", "area_ratio"]
    ]
    points = pd.DataFrame(
        {
            "row": cals.index,
            "injection": cals["injection"],
            "level": cals["level"],
            "nominal": cals["nominal"],
            "area_ratio": cals["area_ratio"],
            "manual_exclusion": [exclusions.get((inj, analyte.name), "") for inj in cals["injection"]],
        }
    )
    return calibrate(points, analyte.model, analyte.weighting, method.acceptance)


def _calibration_row(analyte: str, cal_set: str, result: CalibrationResult, accepted: bool) -> dict:
    curve = result.curve
    cals = result.calibrators
    return {
        "analyte": analyte,
        "calibrator_set": cal_set,
        "model": curve.model if curve else "",
        "weighting": curve.weighting if curve else "",
        "intercept": curve.intercept if curve else np.nan,
        "slope": curve.slope if curve else np.nan,
        "quadratic": curve.quadratic if curve else np.nan,
        "intercept_se": curve.std_errors[0] if curve else np.nan,
        "slope_se": curve.std_errors[1] if curve else np.nan,
        "quadratic_se": curve.std_errors[2] if curve and len(curve.std_errors) > 2 else np.nan,
        "r_squared": curve.r_squared if curve else np.nan,
        "n_calibrators": len(cals),
        "n_used": int((~cals["excluded"]).sum()),
        "levels_used": ";".join(result.levels_used),
        "levels_excluded": ";".join(result.levels_excluded),
        "lloq": result.lloq,
        "uloq": result.uloq,
        "accepted": accepted,
        "problem": result.problem,
    }


def _add_ion_ratio_and_rt(table: pd.DataFrame, method: Method) -> pd.DataFrame:
    """Ion ratio qualifier/quantifier against the mean of the batch's accepted calibrators (those
    kept in the curve); RT checks."""
    with np.errstate(divide="ignore", invalid="ignore"):
        table["ion_ratio"] = table["qualifier_area"] / table["area"]
    table["ion_ratio_reference"] = np.nan
    table["ion_ratio_flag"] = False
    for _, rows in table.groupby("analyte").groups.items():
        sub = table.loc[rows, ["sample_type", "excluded", "ion_ratio"]]
        reference = sub.loc[
            (sub["sample_type"] == SampleType.CALIBRATOR) & ~sub["excluded"].astype(bool), "ion_ratio"
        ].dropna()
        if reference.empty:
            continue
        ref = float(reference.mean())
        tolerance = method.identity.ion_ratio_tolerance_pct(ref)
        deviation = 100.0 * (sub["ion_ratio"] / ref - 1.0)
        table.loc[rows, "ion_ratio_reference"] = ref
        table.loc[rows, "ion_ratio_flag"] = deviation.abs() > tolerance
    identity = method.identity
    expected_rrt = {a.name: a.rt / method.internal_standard(a.internal_standard).rt for a in method.analytes}
    table["rrt"] = table["rt_min"] / table["is_rt_min"]
    table["rrt_expected"] = table["analyte"].map(expected_rrt)
    rrt_off = 100.0 * (table["rrt"] / table["rrt_expected"] - 1.0)
    table["rt_flag"] = (
        ((table["rt_min"] - table["expected_rt_min"]).abs() > identity.rt_tolerance)
        | ((table["is_rt_min"] - table["is_expected_rt_min"]).abs() > identity.rt_tolerance)
        | (rrt_off.abs() > identity.rrt_tolerance_pct)
    )
    return table


def _add_is_response(table: pd.DataFrame, method: Method) -> pd.DataFrame:
    """IS area as % of the mean IS area of the calibrators and QCs of the same calibrator set."""
    low, high = method.acceptance.is_response_band_pct
    table["is_response_pct"] = np.nan
    for (_, _), rows in table.groupby(["internal_standard", "calibrator_set"]).groups.items():
        sub = table.loc[rows, ["sample_type", "is_area", "injection"]]
        reference = sub.loc[sub["sample_type"].isin([SampleType.CALIBRATOR, SampleType.QC]), "is_area"].dropna()
        reference = reference.groupby(sub["injection"]).first()  # one IS area per injection
        if reference.empty:
            continue
        table.loc[rows, "is_response_pct"] = 100.0 * sub["is_area"] / float(reference.mean())
    expects_is = table["sample_type"] != SampleType.BLANK
    pct = table["is_response_pct"]
    table["is_flag"] = expects_is & pct.notna() & ((pct < low) | (pct > high))
    return table


FLAG_INPUTS = [
    "quant_status",
    "is_status",
    "qualifier_status",
    "sample_type",
    "sn",
    "is_flag",
    "ion_ratio_flag",
    "rt_flag",
    "edge",
    "saturated",
    "split",
    "shoulder",
    "read_warning",
    "manual",
    "excluded",
    "analyte_accepted",
]


def _with_accuracy(table: pd.DataFrame) -> pd.DataFrame:
    """The table with the accuracy (% of nominal) of every calibrator and QC."""
    calibrated = table["sample_type"].isin([SampleType.CALIBRATOR, SampleType.QC])
    return table.assign(
        accuracy_pct=np.where(calibrated, 100.0 * table["concentration_found"] / table["nominal"], np.nan)
    )


def _with_flags(table: pd.DataFrame, method: Method) -> pd.DataFrame:
    """The table with every row's flags, its concentration (empty where a flag blocks it) and
    whether a study sample is reportable."""
    table = table.copy()
    min_sn = method.integration.min_sn
    no_peak_as_blq = method.integration.no_peak_as_blq
    peaks_only = method.peaks_only  # no curve, so no range: a missing peak is not BLQ either
    bc = table["back_calculated"]
    below = bc.notna() & table["lloq"].notna() & (bc < table["lloq"] - 1e-12)
    above = bc.notna() & table["uloq"].notna() & (bc > table["uloq"] + 1e-12)

    # A response the fitted curve never reaches (a quadratic's vertex) has no concentration.
    off_curve = (
        (table["quant_status"] == PeakStatus.OK)
        & table["lloq"].notna()
        & bc.isna()
        & np.isfinite(table["area_ratio"])
        & (table["area_ratio"] > 0)
        & (table["sample_type"] != SampleType.BLANK)
    )
    qc_failed = table["qc_passed"].fillna(True).astype(bool).eq(False)
    dilution_failed = table["dilution_qc_failed"].astype(bool)
    below, above, off_curve = below.tolist(), above.tolist(), off_curve.tolist()
    qc_failed, dilution_failed = qc_failed.tolist(), dilution_failed.tolist()
    flags = []
    for i, row in enumerate(table[FLAG_INPUTS].to_dict("records")):
        f = []
        if row["quant_status"] == PeakStatus.NO_DATA or row["is_status"] == PeakStatus.NO_DATA:
            f.append(Flag.NO_DATA)
        elif row["quant_status"] == PeakStatus.NO_PEAK:
            f.append(Flag.NO_PEAK)
            if (
                no_peak_as_blq
                and not peaks_only
                and row["sample_type"] == SampleType.UNKNOWN
                and row["is_status"] == PeakStatus.OK
            ):
                f.append(Flag.BLQ)
        if row["sample_type"] != SampleType.BLANK and row["is_status"] == PeakStatus.NO_PEAK:
            f.append(Flag.NO_IS)
        if row["sample_type"] == SampleType.UNKNOWN and below[i] and row["quant_status"] == PeakStatus.OK:
            f.append(Flag.BLQ)
        if row["sample_type"] == SampleType.UNKNOWN and above[i]:
            f.append(Flag.ALQ)
        if off_curve[i]:
            f.append(Flag.OFF_CURVE)
        if row["is_flag"]:
            f.append(Flag.IS_RESPONSE)
        if row["ion_ratio_flag"]:
            f.append(Flag.ION_RATIO)
        if row["qualifier_status"] == PeakStatus.NO_DATA and row["quant_status"] == PeakStatus.OK:
            f.append(Flag.NO_QUALIFIER)
        if row["rt_flag"]:
            f.append(Flag.RT_SHIFT)
        if row["edge"]:
            f.append(Flag.EDGE)
        if row["saturated"]:
            f.append(Flag.SATURATED)
        if row["split"]:
            f.append(Flag.SPLIT)
        if row["shoulder"]:
            f.append(Flag.SHOULDER)
        if row["quant_status"] == PeakStatus.OK and row["sn"] < min_sn and row["sample_type"] != SampleType.BLANK:
            f.append(Flag.LOW_SN)
        if row["read_warning"]:
            f.append(Flag.READ_WARNING)
        if row["manual"]:
            f.append(Flag.MANUAL)
        if row["sample_type"] == SampleType.CALIBRATOR and row["excluded"]:
            f.append(Flag.EXCLUDED)
        if qc_failed[i]:
            f.append(Flag.QC_FAIL)
        if row["sample_type"] == SampleType.UNKNOWN and dilution_failed[i]:
            f.append(Flag.DILUTION_QC)
        if row["sample_type"] == SampleType.UNKNOWN and not row["analyte_accepted"]:
            f.append(Flag.REJECTED)
        flags.append(f)
    table["flags"] = [";".join(f) for f in flags]
    reportable_value = (
        table["sample_type"].isin([SampleType.UNKNOWN, SampleType.QC, SampleType.CALIBRATOR]) & bc.notna()
    )
    blocked = pd.Series([any(x in BLOCKING_FLAGS for x in f) for f in flags], index=table.index)
    review = pd.Series([any(x in REVIEW_FLAGS for x in f) for f in flags], index=table.index)
    unknown = table["sample_type"] == SampleType.UNKNOWN
    table["concentration"] = np.where(reportable_value & ~(unknown & blocked), table["concentration_found"], np.nan)
    table["reportable"] = unknown & reportable_value & ~blocked & ~review
    return table


def run_batch(
    folder: Path | str,
    method_path: Path | str | None = None,
    progress: Callable[[Injection], None] | None = None,
    jobs: int | None = 1,
    workers: WorkerPool | None = None,
) -> tuple[Batch, RunResult]:
    """Load, measure and quantify a batch folder: the whole `lcmsquant run` without writing files.

    Parameters
    ----------
    folder : path-like
        The batch folder.
    method_path : path-like, optional
        The method file; by default the folder's method.toml, else the shipped method.
    progress : callable, optional
        Called with each Injection once it is measured.
    jobs : int or None
        Processes measuring injections at once (1: this process; None: every core for large
        batches, see measure_batch).
    workers : WorkerPool, optional
        A pool to measure with, kept open for the caller's next batch.

    Returns
    -------
    (Batch, RunResult)
        The batch as read, and its peaks, curves, rules, verdicts, flagged results and
        reanalysis list (write them with write_outputs).
    """
    batch = load_batch(folder, load_method(resolve_method_path(folder, method_path)))
    peaks, errors = measure_batch(batch, progress, jobs, workers)
    return batch, quantify(batch, peaks, errors)
