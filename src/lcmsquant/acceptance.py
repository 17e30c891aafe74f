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

from lcmsquant.calibration import CalibrationResult
from lcmsquant.method import Acceptance

CORE_QC_LEVELS = ("LQC", "MQC", "HQC")
EPSILON = 1e-9  # "at least 2/3" must accept exactly 4 of 6


@dataclass(frozen=True)
class Rule:
    """One acceptance rule evaluated for one analyte and calibrator set."""

    analyte: str
    calibrator_set: str
    rule: str
    section: str
    measured: str
    limit: str
    passed: bool
    critical: bool = True  # a failing critical rule rejects the analyte in this run
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _fraction(passed: int, total: int) -> str:
    return f"{passed}/{total} ({100.0 * passed / total:.0f} %)" if total else "0/0"


def curve_fitted(analyte: str, cal_set: str, calibration: CalibrationResult) -> Rule:
    """A calibration curve could be fitted at all (ICH M10 3.2.4)."""
    return Rule(
        analyte, cal_set, "calibration curve fitted", "3.2.4",
        "yes" if calibration.curve is not None else "no", "a curve", calibration.curve is not None,
        detail=calibration.problem,
    )


def calibrators_passing(analyte: str, cal_set: str, calibration: CalibrationResult, acc: Acceptance) -> Rule:
    """At least 75 % of calibrators within +-15 % (+-20 % at the LLOQ) (ICH M10 3.2.4, 3.3.2)."""
    table = calibration.calibrators
    n, ok = len(table), int(table["passed"].sum())
    passed = n > 0 and ok / n >= acc.min_calibrator_fraction - EPSILON
    return Rule(
        analyte, cal_set, "calibrators within tolerance", "3.2.4",
        _fraction(ok, n), f">= {100 * acc.min_calibrator_fraction:.0f} %", passed,
    )


def calibrator_levels(analyte: str, cal_set: str, calibration: CalibrationResult, acc: Acceptance) -> Rule:
    """At least 6 calibrator levels pass, a level passing when >= 50 % of its replicates do (3.2.4)."""
    n = len(calibration.levels_used)
    return Rule(
        analyte, cal_set, "calibrator levels passing", "3.2.4",
        str(n), f">= {acc.min_calibrator_levels}", n >= acc.min_calibrator_levels,
        detail=("levels failing: " + ", ".join(calibration.levels_excluded)) if calibration.levels_excluded else "",
    )


def range_covers_qcs(analyte: str, cal_set: str, calibration: CalibrationResult, qcs: pd.DataFrame) -> Rule:
    """A range narrowed by failing end calibrators must still hold the low, mid and high QCs (3.3.3)."""
    core = qcs[qcs["level"].isin(CORE_QC_LEVELS)]
    lloq, uloq = calibration.lloq, calibration.uloq
    if lloq is None or uloq is None:
        return Rule(analyte, cal_set, "range covers QCs", "3.3.3", "no range", "LQC..HQC inside", False)
    nominals = core.groupby("level")["nominal"].first()
    outside = [lvl for lvl, nom in nominals.items() if not (lloq - EPSILON <= nom <= uloq + EPSILON)]
    return Rule(
        analyte, cal_set, "range covers QCs", "3.3.3",
        f"range {lloq:g}-{uloq:g}", "LQC, MQC, HQC inside the range", not outside,
        detail=("outside: " + ", ".join(outside)) if outside else "",
    )


def qc_passing(analyte: str, cal_set: str, qcs: pd.DataFrame, acc: Acceptance) -> Rule:
    """At least 2/3 of all QCs within +-15 % (+-20 % for an LLOQ QC) (ICH M10 3.3.2).

    Dilution QCs judge only the diluted samples and are left out here.
    """
    judged = qcs[qcs["level"] != "DQC"]
    n, ok = len(judged), int(judged["qc_passed"].sum())
    passed = n > 0 and ok / n >= acc.min_qc_fraction - EPSILON
    return Rule(
        analyte, cal_set, "QCs within tolerance", "3.3.2",
        _fraction(ok, n), f">= {100 * acc.min_qc_fraction:.1f} %", passed,
        detail="" if n else "no QC injected",
    )


def qc_levels_passing(analyte: str, cal_set: str, qcs: pd.DataFrame, acc: Acceptance) -> list[Rule]:
    """At least 50 % of the QCs at each level within tolerance (ICH M10 3.3.2)."""
    rules = []
    judged = qcs[qcs["level"] != "DQC"]
    for level, rows in judged.groupby("level", sort=False):
        n, ok = len(rows), int(rows["qc_passed"].sum())
        rules.append(Rule(
            analyte, cal_set, f"{level} QCs within tolerance", "3.3.2",
            _fraction(ok, n), f">= {100 * acc.min_qc_level_fraction:.0f} %",
            ok / n >= acc.min_qc_level_fraction - EPSILON,
        ))
    return rules


def qc_count(analyte: str, cal_set: str, qcs: pd.DataFrame, n_unknowns: int) -> Rule:
    """Low, mid and high QCs at least in duplicate, or 5 % of the study samples (ICH M10 3.3.1)."""
    counts = {lvl: int((qcs["level"] == lvl).sum()) for lvl in CORE_QC_LEVELS}
    needed_total = max(6, math.ceil(0.05 * n_unknowns))
    total = sum(counts.values())
    ok = all(c >= 2 for c in counts.values()) and total >= needed_total
    measured = ", ".join(f"{k} {v}" for k, v in counts.items())
    return Rule(
        analyte, cal_set, "QC count", "3.3.1", measured,
        f">= 2 per level and >= {needed_total} in all ({n_unknowns} study samples)", ok, critical=False,
    )


def dilution_qcs(analyte: str, cal_set: str, qcs: pd.DataFrame, acc: Acceptance) -> Rule | None:
    """Dilution QCs (>= 50 % within tolerance) judge the diluted study samples only (3.2.7, 3.3.2)."""
    dqc = qcs[qcs["level"] == "DQC"]
    if dqc.empty:
        return None
    n, ok = len(dqc), int(dqc["qc_passed"].sum())
    return Rule(
        analyte, cal_set, "dilution QCs within tolerance", "3.3.2",
        _fraction(ok, n), f">= {100 * acc.min_qc_level_fraction:.0f} %",
        ok / n >= acc.min_qc_level_fraction - EPSILON, critical=False,
        detail="judges only samples diluted like the DQCs",
    )


def qc_accuracy(qcs: pd.DataFrame, acc: Acceptance) -> pd.DataFrame:
    """Accuracy and pass/fail of each QC injection: +-15 %, +-20 % for the LLOQ QC (3.3.2)."""
    qcs = qcs.copy()
    qcs["accuracy_pct"] = 100.0 * qcs["concentration_found"] / qcs["nominal"]
    limit = np.where(qcs["level"] == "LLOQ", acc.lloq_qc_tolerance_pct, acc.qc_tolerance_pct)
    qcs["qc_passed"] = (qcs["accuracy_pct"] - 100.0).abs() <= limit + EPSILON
    return qcs


def judge(
    analyte: str,
    cal_set: str,
    calibration: CalibrationResult,
    qcs: pd.DataFrame,
    n_unknowns: int,
    acc: Acceptance,
) -> list[Rule]:
    """Every rule for one analyte and calibrator set, in the order a reviewer checks them.

    `qcs` has columns level, nominal, concentration_found and qc_passed (see qc_accuracy).
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
    return rules


def verdict(rules: list[Rule]) -> tuple[bool, list[str]]:
    """Accepted when every critical rule passes; the reasons name each failing rule."""
    failing = [r for r in rules if r.critical and not r.passed]
    return not failing, [f"{r.rule}: {r.measured} (limit {r.limit})" for r in failing]
