"""ICH M10 run acceptance, analyte by analyte.

Each rule is one function returning a `Rule`: what was measured, against which limit, and the
outcome, so that run.json shows the arithmetic a reviewer would otherwise redo by hand.
Section numbers refer to ICH M10 (2022), chapter 3 (chromatography).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from lcmsquant.calibration import CalibrationResult
from lcmsquant.method import Acceptance
from lcmsquant.vocabulary import CORE_QC_LEVELS, QCLevel, RuleId, SampleType

EPSILON = 1e-9  # "at least 2/3" must accept exactly 4 of 6


@dataclass(frozen=True)
class Rule:
    """One acceptance rule evaluated for one analyte and calibrator set.

    `id` names the rule for good (vocabulary.RuleId); `rule` (its title), `section` (ICH M10)
    and `category` (the report's section) come with the id.
    """

    analyte: str
    calibrator_set: str
    rule: str
    section: str
    measured: str
    limit: str
    passed: bool
    critical: bool = True  # a failing critical rule rejects the analyte in this run
    detail: str = ""
    category: str = ""  # calibration, qc, carryover, selectivity or is_response
    id: str = ""  # vocabulary.RuleId

    @classmethod
    def of(cls, rule_id: RuleId, analyte: str, cal_set: str, measured: str, limit: str, passed: bool, **more) -> Rule:
        """The rule `rule_id` with its outcome for one analyte and calibrator set."""
        return cls(
            analyte,
            cal_set,
            rule_id.label,
            rule_id.section,
            measured,
            limit,
            bool(passed),
            category=str(rule_id.category),
            id=str(rule_id),
            **more,
        )

    def as_dict(self) -> dict:
        """The rule as run.json records it."""
        return asdict(self)


def _fraction(passed: int, total: int) -> str:
    return f"{passed}/{total} ({100.0 * passed / total:.0f} %)" if total else "0/0"


def curve_fitted(analyte: str, cal_set: str, calibration: CalibrationResult) -> Rule:
    """A calibration curve could be fitted at all (ICH M10 3.2.4)."""
    return Rule.of(
        RuleId.CURVE_FITTED,
        analyte,
        cal_set,
        "yes" if calibration.curve is not None else "no",
        "a curve",
        calibration.curve is not None,
        detail=calibration.problem,
    )


def calibrators_passing(analyte: str, cal_set: str, calibration: CalibrationResult, acc: Acceptance) -> Rule:
    """At least 75 % of calibrators within +-15 % (+-20 % at the LLOQ) (ICH M10 3.2.4, 3.3.2)."""
    table = calibration.calibrators
    n, ok = len(table), int(table["passed"].sum())
    passed = n > 0 and ok / n >= acc.min_calibrator_fraction - EPSILON
    return Rule.of(
        RuleId.CALIBRATORS_PASSING,
        analyte,
        cal_set,
        _fraction(ok, n),
        f">= {100 * acc.min_calibrator_fraction:.0f} %",
        passed,
    )


def calibrator_levels(analyte: str, cal_set: str, calibration: CalibrationResult, acc: Acceptance) -> Rule:
    """At least 6 calibrator levels pass, a level passing when >= 50 % of its replicates do (3.2.4)."""
    n = len(calibration.levels_used)
    return Rule.of(
        RuleId.CALIBRATOR_LEVELS,
        analyte,
        cal_set,
        str(n),
        f">= {acc.min_calibrator_levels}",
        n >= acc.min_calibrator_levels,
        detail=("levels failing: " + ", ".join(calibration.levels_excluded)) if calibration.levels_excluded else "",
    )


def range_covers_qcs(analyte: str, cal_set: str, calibration: CalibrationResult, qcs: pd.DataFrame) -> Rule:
    """A range narrowed by failing end calibrators must still hold the low, mid and high QCs (3.3.3)."""
    core = qcs[qcs["level"].isin(CORE_QC_LEVELS)]
    lloq, uloq = calibration.lloq, calibration.uloq
    if lloq is None or uloq is None:
        return Rule.of(RuleId.RANGE_COVERS_QCS, analyte, cal_set, "no range", "LQC..HQC inside", False)
    nominals = core.groupby("level")["nominal"].first()
    outside = [lvl for lvl, nom in nominals.items() if not (lloq - EPSILON <= nom <= uloq + EPSILON)]
    return Rule.of(
        RuleId.RANGE_COVERS_QCS,
        analyte,
        cal_set,
        f"range {lloq:g}-{uloq:g}",
        "LQC, MQC, HQC inside the range",
        not outside,
        detail=("outside: " + ", ".join(outside)) if outside else "",
    )


def qc_passing(analyte: str, cal_set: str, qcs: pd.DataFrame, acc: Acceptance) -> Rule:
    """At least 2/3 of all QCs within +-15 % (+-20 % for an LLOQ QC) (ICH M10 3.3.2).

    Dilution QCs judge only the diluted samples and are left out here.
    """
    judged = qcs[qcs["level"] != QCLevel.DQC]
    n, ok = len(judged), int(judged["qc_passed"].sum())
    passed = n > 0 and ok / n >= acc.min_qc_fraction - EPSILON
    return Rule.of(
        RuleId.QCS_PASSING,
        analyte,
        cal_set,
        _fraction(ok, n),
        f">= {100 * acc.min_qc_fraction:.1f} %",
        passed,
        detail="" if n else "no QC injected",
    )


def qc_levels_passing(analyte: str, cal_set: str, qcs: pd.DataFrame, acc: Acceptance) -> list[Rule]:
    """At least 50 % of the QCs at each level within tolerance (ICH M10 3.3.2)."""
    rules = []
    judged = qcs[qcs["level"] != QCLevel.DQC]
    for level, rows in judged.groupby("level", sort=False):
        n, ok = len(rows), int(rows["qc_passed"].sum())
        rules.append(
            Rule.of(
                RuleId.for_qc_level(level),
                analyte,
                cal_set,
                _fraction(ok, n),
                f">= {100 * acc.min_qc_level_fraction:.0f} %",
                ok / n >= acc.min_qc_level_fraction - EPSILON,
            )
        )
    return rules


def qc_count(analyte: str, cal_set: str, qcs: pd.DataFrame, n_unknowns: int) -> Rule:
    """Low, mid and high QCs at least in duplicate, or 5 % of the study samples (ICH M10 3.3.1)."""
    counts = {lvl: int((qcs["level"] == lvl).sum()) for lvl in CORE_QC_LEVELS}
    needed_total = max(6, math.ceil(0.05 * n_unknowns))
    total = sum(counts.values())
    ok = all(c >= 2 for c in counts.values()) and total >= needed_total
    measured = ", ".join(f"{k} {v}" for k, v in counts.items())
    return Rule.of(
        RuleId.QC_COUNT,
        analyte,
        cal_set,
        measured,
        f">= 2 per level and >= {needed_total} in all ({n_unknowns} study samples)",
        ok,
        critical=False,
    )


def dilution_qcs(analyte: str, cal_set: str, qcs: pd.DataFrame, acc: Acceptance) -> Rule | None:
    """Dilution QCs (>= 50 % within tolerance) judge the diluted study samples only (3.2.7, 3.3.2)."""
    dqc = qcs[qcs["level"] == QCLevel.DQC]
    if dqc.empty:
        return None
    n, ok = len(dqc), int(dqc["qc_passed"].sum())
    return Rule.of(
        RuleId.DILUTION_QCS_PASSING,
        analyte,
        cal_set,
        _fraction(ok, n),
        f">= {100 * acc.min_qc_level_fraction:.0f} %",
        ok / n >= acc.min_qc_level_fraction - EPSILON,
        critical=False,
        detail="judges only samples diluted like the DQCs",
    )


def qc_levels_in_study_range(analyte: str, cal_set: str, qcs: pd.DataFrame, samples: pd.DataFrame) -> Rule | None:
    """At least 2 QC levels should lie within the range of the study samples' concentrations (3.3.1).

    The study samples' range is that of their curve values (before dilution) inside the
    calibrated range; with no quantified study sample there is nothing to compare.
    """
    unknowns = samples[(samples["sample_type"] == SampleType.UNKNOWN) & samples["back_calculated"].notna()]
    inside = unknowns["back_calculated"]
    inside = inside[(inside >= unknowns["lloq"]) & (inside <= unknowns["uloq"])]
    if inside.empty:
        return None
    low, high = float(inside.min()), float(inside.max())
    levels = qcs[qcs["level"] != QCLevel.DQC].groupby("level", sort=False)["nominal"].first()
    within = [lvl for lvl, nom in levels.items() if low - EPSILON <= nom <= high + EPSILON]
    return Rule.of(
        RuleId.QCS_IN_STUDY_RANGE,
        analyte,
        cal_set,
        f"{len(within)} ({', '.join(within) or 'none'}) in {low:.3g}-{high:.3g}",
        ">= 2 QC levels",
        len(within) >= 2,
        critical=False,
        detail="if the study samples cluster, add QCs at their concentrations" if len(within) < 2 else "",
    )


def _response_rule(
    rule_id: RuleId,
    analyte: str,
    cal_set: str,
    rows: pd.DataFrame,
    response: pd.Series,
    reference: float,
    limit: float,
    of: str,
) -> Rule:
    """The worst response of `rows` as % of `reference` against `limit` (carry-over, selectivity);
    failed when there is no reference (the LLOQ calibrator or the IS has no peak)."""
    if not np.isfinite(reference) or reference <= 0:
        return Rule.of(
            rule_id,
            analyte,
            cal_set,
            "no reference response",
            f"<= {limit:g} %",
            False,
            detail="the LLOQ calibrator or the IS has no peak",
        )
    worst, where = _worst(rows, _response_pct(response, reference))
    return Rule.of(
        rule_id, analyte, cal_set, f"{worst:.1f} % {of} ({where})", f"<= {limit:g} %", worst <= limit + EPSILON
    )


def carryover_blanks(samples: pd.DataFrame) -> tuple[int, ...]:
    """Injection numbers of blanks injected right after a ULOQ (highest level) calibrator."""
    cals = samples[samples["sample_type"] == SampleType.CALIBRATOR]
    if cals.empty or cals["nominal"].isna().all():
        return ()
    uloq_injections = set(cals.loc[np.isclose(cals["nominal"], cals["nominal"].max()), "injection"])
    blanks = samples.loc[samples["sample_type"] == SampleType.BLANK, "injection"]
    return tuple(int(b) for b in sorted(set(blanks)) if b - 1 in uloq_injections)


def lloq_response(samples: pd.DataFrame, lloq: float | None) -> float:
    """Mean analyte peak area of the calibrators at the run's LLOQ (the reference of 3.2.6, 3.2.1)."""
    if lloq is None:
        return np.nan
    cals = samples[(samples["sample_type"] == SampleType.CALIBRATOR) & np.isclose(samples["nominal"], lloq)]
    if "excluded" in cals:
        cals = cals[~cals["excluded"].astype(bool)]
    return float(cals["area"].mean()) if cals["area"].notna().any() else np.nan


def mean_is_response(samples: pd.DataFrame) -> float:
    """Mean IS peak area of the calibrators and QCs, one value per injection (the IS reference)."""
    ref = samples[samples["sample_type"].isin([SampleType.CALIBRATOR, SampleType.QC])]
    areas = ref.groupby("injection")["is_area"].first().dropna()
    return float(areas.mean()) if len(areas) else np.nan


def _response_pct(area: pd.Series, reference: float) -> pd.Series:
    """Peak area as % of a reference response; an injection with no peak counts as 0 %."""
    return 100.0 * area.fillna(0.0) / reference


def _worst(rows: pd.DataFrame, pct: pd.Series) -> tuple[float, str]:
    i = pct.idxmax()
    return float(pct[i]), str(rows.loc[i, "sample_id"])


def carryover(
    analyte: str, cal_set: str, samples: pd.DataFrame, carryover_injections, lloq: float | None, acc: Acceptance
) -> list[Rule]:
    """Blank after the ULOQ calibrator: analyte <= 20 % of the LLOQ response, IS <= 5 % (ICH M10 3.2.6).

    `carryover_injections` are the injection numbers of blanks injected right after the ULOQ
    calibrator; a blank without a detectable peak counts as 0 %. Without such a blank, carry-over
    was not assessed: a warning, not a rejection.
    """
    blanks = samples[samples["injection"].isin(list(carryover_injections))]
    if blanks.empty:
        return [
            Rule.of(
                RuleId.CARRYOVER_ANALYTE,
                analyte,
                cal_set,
                "no blank after the ULOQ calibrator",
                "a blank injected after the ULOQ",
                False,
                critical=False,
                detail="carry-over not assessed in this run",
            )
        ]
    reference = lloq_response(samples, lloq)
    is_reference = mean_is_response(samples)
    rules = []
    for rule_id, area, ref, limit, of in (
        (RuleId.CARRYOVER_ANALYTE, blanks["area"], reference, acc.carryover_pct_of_lloq, "of the LLOQ response"),
        (RuleId.CARRYOVER_IS, blanks["is_area"], is_reference, acc.carryover_is_pct, "of the mean IS response"),
    ):
        rules.append(_response_rule(rule_id, analyte, cal_set, blanks, area, ref, limit, of))
    return rules


def selectivity(
    analyte: str, cal_set: str, samples: pd.DataFrame, carryover_injections, lloq: float | None, acc: Acceptance
) -> list[Rule]:
    """Blanks: analyte <= 20 % of the LLOQ response and IS <= 5 %; zero samples: analyte <= 20 % (3.2.1).

    Blanks that judge carry-over are left out here; a blank or zero sample without a detectable
    peak counts as 0 %.
    """
    reference = lloq_response(samples, lloq)
    is_reference = mean_is_response(samples)
    blanks = samples[
        (samples["sample_type"] == SampleType.BLANK) & ~samples["injection"].isin(list(carryover_injections))
    ]
    zeros = samples[samples["sample_type"] == SampleType.ZERO]
    checks = (
        (
            RuleId.BLANK_SELECTIVITY_ANALYTE,
            blanks,
            "area",
            reference,
            acc.selectivity_pct_of_lloq,
            "of the LLOQ response",
        ),
        (
            RuleId.BLANK_SELECTIVITY_IS,
            blanks,
            "is_area",
            is_reference,
            acc.selectivity_is_pct,
            "of the mean IS response",
        ),
        (
            RuleId.ZERO_SELECTIVITY_ANALYTE,
            zeros,
            "area",
            reference,
            acc.selectivity_pct_of_lloq,
            "of the LLOQ response",
        ),
    )
    rules = []
    for rule_id, rows, column, ref, limit, of in checks:
        if rows.empty:
            kind = "zero sample" if rule_id is RuleId.ZERO_SELECTIVITY_ANALYTE else "blank"
            rules.append(
                Rule.of(
                    rule_id,
                    analyte,
                    cal_set,
                    f"no {kind} injected",
                    f"<= {limit:g} %",
                    False,
                    critical=False,
                    detail="selectivity not checked in this run",
                )
            )
            continue
        rules.append(_response_rule(rule_id, analyte, cal_set, rows, rows[column], ref, limit, of))
    return rules


def is_trend(samples: pd.DataFrame) -> tuple[float, float]:
    """Robust (Theil-Sen) change of the IS response over the run, in % points, and its span.

    Computed over every injection that should hold IS (not blanks), in injection order.
    """
    rows = samples[(samples["sample_type"] != SampleType.BLANK) & samples["is_response_pct"].notna()]
    rows = rows.groupby("injection")["is_response_pct"].first()
    if len(rows) < 3:
        return np.nan, np.nan
    order = rows.index.to_numpy(float)
    slope = stats.theilslopes(rows.to_numpy(float), order).slope
    span = order.max() - order.min()
    return float(slope * span), float(span)


def is_response(analyte: str, cal_set: str, samples: pd.DataFrame, acc: Acceptance) -> list[Rule]:
    """IS response monitoring (ICH M10 3.3, lab SOP limits): outliers, drift and offset of study samples.

    Warnings, not rejections: the samples concerned are flagged IS_RESPONSE and listed for
    reanalysis.
    """
    low, high = acc.is_response_band_pct
    rows = samples[samples["sample_type"] != SampleType.BLANK].groupby("injection").first()
    pct = rows["is_response_pct"]
    outside = rows[pct.isna() | (pct < low) | (pct > high)]
    rules = [
        Rule.of(
            RuleId.IS_RESPONSE_BAND,
            analyte,
            cal_set,
            f"{len(outside)} of {len(rows)} injections outside",
            f"{low:g}-{high:g} % of the calibrator/QC mean",
            outside.empty,
            critical=False,
            detail=", ".join(map(str, outside["sample_id"])),
        )
    ]
    change, span = is_trend(samples)
    if np.isfinite(change):
        rules.append(
            Rule.of(
                RuleId.IS_RESPONSE_DRIFT,
                analyte,
                cal_set,
                f"{change:+.1f} % over {span:.0f} injections",
                f"within +-{acc.is_drift_pct:g} %",
                abs(change) <= acc.is_drift_pct + EPSILON,
                critical=False,
            )
        )
    unknown = pct[rows["sample_type"] == SampleType.UNKNOWN].dropna()
    if len(unknown):
        offset = float(unknown.median()) - 100.0
        rules.append(
            Rule.of(
                RuleId.IS_RESPONSE_STUDY_SAMPLES,
                analyte,
                cal_set,
                f"median {offset + 100:.1f} % of the calibrator/QC mean",
                f"within +-{acc.is_drift_pct:g} % of it",
                abs(offset) <= acc.is_drift_pct + EPSILON,
                critical=False,
                detail="a consistent offset hints at a matrix effect the calibrators do not share"
                if abs(offset) > acc.is_drift_pct
                else "",
            )
        )
    return rules


def qc_accuracy(qcs: pd.DataFrame, acc: Acceptance) -> pd.DataFrame:
    """Accuracy and pass/fail of each QC injection: +-15 %, +-20 % for the LLOQ QC (3.3.2)."""
    qcs = qcs.copy()
    qcs["accuracy_pct"] = 100.0 * qcs["concentration_found"] / qcs["nominal"]
    limit = np.where(qcs["level"] == QCLevel.LLOQ, acc.lloq_qc_tolerance_pct, acc.qc_tolerance_pct)
    qcs["qc_passed"] = (qcs["accuracy_pct"] - 100.0).abs() <= limit + EPSILON
    return qcs


def judge(
    analyte: str,
    cal_set: str,
    calibration: CalibrationResult,
    qcs: pd.DataFrame,
    n_unknowns: int,
    acc: Acceptance,
    samples: pd.DataFrame | None = None,
    carryover_injections=(),
) -> list[Rule]:
    """Every rule for one analyte and calibrator set, in the order a reviewer checks them.

    `qcs` has columns level, nominal, concentration_found and qc_passed (see qc_accuracy).
    `samples` (this analyte's rows of the results table in this calibrator set) adds the
    carry-over, selectivity and IS response rules.
    """
    rules = [curve_fitted(analyte, cal_set, calibration)]
    if calibration.curve is None:
        return rules
    rules += [
        calibrators_passing(analyte, cal_set, calibration, acc),
        calibrator_levels(analyte, cal_set, calibration, acc),
        range_covers_qcs(analyte, cal_set, calibration, qcs),
        qc_passing(analyte, cal_set, qcs, acc),
        *qc_levels_passing(analyte, cal_set, qcs, acc),
        qc_count(analyte, cal_set, qcs, n_unknowns),
    ]
    dqc = dilution_qcs(analyte, cal_set, qcs, acc)
    if dqc is not None:
        rules.append(dqc)
    if samples is not None:
        in_range = qc_levels_in_study_range(analyte, cal_set, qcs, samples)
        if in_range is not None:
            rules.append(in_range)
        rules += carryover(analyte, cal_set, samples, carryover_injections, calibration.lloq, acc)
        rules += selectivity(analyte, cal_set, samples, carryover_injections, calibration.lloq, acc)
        rules += is_response(analyte, cal_set, samples, acc)
    return rules


def verdict(rules: list[Rule]) -> tuple[bool, list[str]]:
    """Accepted when every critical rule passes; the reasons name each failing rule."""
    failing = [r for r in rules if r.critical and not r.passed]
    return not failing, [f"{r.rule}: {r.measured} (limit {r.limit})" for r in failing]
