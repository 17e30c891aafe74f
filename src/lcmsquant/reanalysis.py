"""Which study samples go back for reanalysis, and why (ICH M10 3.3.4, 3.3.5).

One row per study sample and analyte whose value cannot be reported as it stands, with reason
codes a chemist acts on: dilute an ALQ sample (with the dilution that brings it into range),
reinject after an instrument failure, reanalyse after an IS anomaly or a rejected run, or review
an integration. A BLQ sample is a reportable result and is listed only when it became BLQ
because the run's LLOQ was raised above the method's.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lcmsquant.method import CALIBRATOR_LEVEL, Method
from lcmsquant.vocabulary import PEAK_REVIEW_FLAGS, Flag, SampleType

# Reason code -> what the lab does about it.
ACTIONS = {
    "RUN_REJECTED": "reanalyse in a new run (the analyte's run was rejected)",
    "NO_DATA": "reinject (the injection could not be read)",
    "NO_IS": "reanalyse (no internal standard peak)",
    "IS_RESPONSE": "reanalyse (IS response outside the band)",
    "ALQ": "dilute and reanalyse",
    "SATURATED": "dilute and reanalyse (detector saturated)",
    "OFF_CURVE": "dilute or reanalyse (response outside the curve)",
    "BLQ_LLOQ_REVISED": "reanalyse in a run whose range reaches the method's LLOQ",
    "DILUTION_QC": "reanalyse (the dilution QCs of this dilution failed)",
    "ION_RATIO": "review identity; reanalyse if the interference is confirmed",
    "NO_QUALIFIER": "review identity (qualifier not measured)",
    "RT_SHIFT": "review identity (retention time off)",
    "NO_PEAK": "review the chromatogram (no peak detected; not reported as zero)",
    "PEAK_REVIEW": "review the integration",
}
# The dilutions a lab pipettes; the one suggested brings an ALQ sample to at most half the ULOQ,
# so that an extrapolated (or saturation-compressed) estimate up to 2x too low still lands in range.
DILUTION_STEPS = (2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
COLUMNS = (
    "injection",
    "file",
    "sample_id",
    "matrix",
    "subject_id",
    "visit",
    "timepoint",
    "analyte",
    "reason",
    "action",
    "detail",
    "suggested_dilution_factor",
)


def suggested_dilution(back_calculated: float, dilution_factor: float, uloq: float) -> float:
    """Total dilution factor that puts the sample at or below half the ULOQ of the curve."""
    if not (np.isfinite(back_calculated) and np.isfinite(uloq) and uloq > 0):
        return float("nan")
    needed = back_calculated / (0.5 * uloq)
    step = next((s for s in DILUTION_STEPS if s >= needed), DILUTION_STEPS[-1] * math.ceil(needed / DILUTION_STEPS[-1]))
    return float(step * (dilution_factor if np.isfinite(dilution_factor) else 1.0))


def method_lloq(method: Method) -> dict[tuple[str, str], float]:
    """(calibrator set, analyte) -> the method's lowest calibrator nominal."""
    out = {}
    for cal_set in method.calibrator_sets:
        cal = cal_set.nominals[cal_set.nominals["level"].str.match(CALIBRATOR_LEVEL)]
        for analyte, rows in cal.groupby("analyte"):
            out[(cal_set.name, analyte)] = float(rows["nominal"].min())
    return out


def reasons(row: pd.Series, flags: list[str], lowest: float | None) -> list[str]:
    """Reason codes for one study-sample row, most decisive first."""
    out = []
    if Flag.REJECTED in flags:
        out.append("RUN_REJECTED")
    for code in ("NO_DATA", "NO_IS", "IS_RESPONSE", "ALQ", "SATURATED", "OFF_CURVE"):
        if code in flags:
            out.append(code)
    if Flag.BLQ in flags and lowest is not None and np.isfinite(row["lloq"]) and row["lloq"] > lowest + 1e-12:
        if np.isfinite(row["back_calculated"]) and row["back_calculated"] >= lowest - 1e-12:
            out.append("BLQ_LLOQ_REVISED")
    for code in ("DILUTION_QC", "ION_RATIO", "NO_QUALIFIER", "RT_SHIFT"):
        if code in flags:
            out.append(code)
    if Flag.NO_PEAK in flags and Flag.BLQ not in flags and Flag.NO_DATA not in flags:
        out.append(Flag.NO_PEAK)
    if any(f in flags for f in PEAK_REVIEW_FLAGS) and Flag.MANUAL not in flags:
        out.append("PEAK_REVIEW")
    return out


IDENTITY = ("injection", "file", "sample_id", "matrix", "subject_id", "visit", "timepoint", "analyte")


def reanalysis_list(results: pd.DataFrame, method: Method) -> pd.DataFrame:
    """The reanalysis list: one row per study sample x analyte with a reason, in injection order.

    `results` is the pipeline's results table (with flags as ';'-joined text).
    """
    lowest = method_lloq(method)
    read = [
        c
        for c in (
            *IDENTITY,
            "flags",
            "calibrator_set",
            "back_calculated",
            "dilution_factor",
            "lloq",
            "uloq",
            "is_response_pct",
        )
        if c in results
    ]
    unknown = results.loc[results["sample_type"] == SampleType.UNKNOWN, read]
    rows = []
    for row in unknown.to_dict("records"):
        flags = [f for f in str(row["flags"]).split(";") if f]
        codes = reasons(row, flags, lowest.get((row["calibrator_set"], row["analyte"])))
        if not codes:
            continue
        detail = []
        dilution = float("nan")
        if Flag.ALQ in codes or Flag.SATURATED in codes:
            dilution = suggested_dilution(row["back_calculated"], row["dilution_factor"], row["uloq"])
            if Flag.SATURATED in codes:
                detail.append("response saturated: the estimate is a lower bound; dilute at least as suggested")
            elif np.isfinite(dilution):
                detail.append(
                    f"about {row['back_calculated'] * row['dilution_factor']:.4g} {method.units} (extrapolated)"
                )
        if "BLQ_LLOQ_REVISED" in codes:
            detail.append(f"run LLOQ raised to {row['lloq']:g} {method.units}")
        if Flag.IS_RESPONSE in codes and np.isfinite(row["is_response_pct"]):
            detail.append(f"IS response {row['is_response_pct']:.0f} % of the calibrator/QC mean")
        review = [f for f in PEAK_REVIEW_FLAGS if f in flags]
        if "PEAK_REVIEW" in codes:
            detail.append("peak " + ", ".join(review))
        rows.append(
            {
                **{c: row.get(c, "") for c in IDENTITY},
                "reason": ";".join(codes),
                "action": ACTIONS[codes[0]],
                "detail": "; ".join(detail),
                "suggested_dilution_factor": dilution,
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))
