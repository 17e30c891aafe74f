"""The run's validation report: one self-contained HTML file a reviewer reads and signs.

Rendered from the results folder alone (results.csv, peaks.csv, calibration.csv, audit.csv,
run.json, session.json, reanalysis.csv when present), so `lcmsquant report RESULTS_DIR` works
long after the run; the mzML files are read only to draw the chromatograms, and the folder's
audit-trail.jsonl to show the signatures and the trail. Sections follow the order a reviewer
works in: signatures, verdict, calibration, QCs, carry-over/blanks/IS, samples, chromatograms,
audit and provenance, audit trail.
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from lcmsquant import acceptance
from lcmsquant import report_figures as figures
from lcmsquant.audit_trail import TRAIL, Trail, read_trail, signatures
from lcmsquant.chromatograms import EXACT_MZ, ChromatogramReadError, Trace, read_traces
from lcmsquant.files import (
    REPORT_HASH_META,
    REPORT_HTML,
    REPORT_PDF,
    InputError,
    atomic_write_all,
    read_set,
    report_run_json_sha256,
    sha256,
)
from lcmsquant.method import ACCEPTANCE_LABELS, PEAKS_ONLY
from lcmsquant.reanalysis import COLUMNS as REANALYSIS_COLUMNS
from lcmsquant.results import RUN_JSON, RunOutputs, parse_results, peak_counts, read_results, sample_counts
from lcmsquant.vocabulary import (
    PEAK_FLAGS,
    QC_LEVELS,
    Flag,
    QCLevel,
    RuleCategory,
    RuleId,
    SampleType,
    TrailEvent,
    flag_list,
)


class ReportError(InputError):
    """The results folder cannot be turned into a report."""

    kind = "results folder"


def read_run_files(results_dir: Path | str) -> RunOutputs:
    """Read a results folder written by `lcmsquant run` (see results.read_results); every problem is named."""
    return read_results(results_dir, error=ReportError)


# ---------------------------------------------------------------------------------------------
# Small helpers


def has_flag(table: pd.DataFrame, flag: str) -> pd.Series:
    """Rows of a results table whose flags include `flag`."""
    return table["flags"].map(lambda f: flag in flag_list(f))


def rule_category(rule: dict) -> str:
    """The report section of a rule as run.json records it (by its id, or its title in older results)."""
    if rule.get("category"):
        return str(rule["category"])
    rule_id = RuleId.of_record(rule)
    return str(rule_id.category) if rule_id is not None else str(RuleCategory.CALIBRATION)


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# Numbers are written without a thousands separator: "1,000" reads as 1.0 where the comma is the
# decimal sign, and a reader must never have to guess. The decimal sign is always ".".


def fmt(value, digits: int = 4) -> str:
    """A measured number with `digits` significant digits, no exponent for everyday magnitudes and
    no thousands separator (1235, 0.9896); '–' if none."""
    if not _finite(value):
        return "–"
    value = float(value)
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 6 or magnitude < -4:
        return f"{value:.{digits - 1}e}"
    decimals = max(digits - 1 - magnitude, 0)
    return f"{value:.{decimals}f}"


def fmt_nominal(value) -> str:
    """A nominal concentration as the method gives it, without trailing zeros (1, 0.5, 1000,
    not 1.000 or 1,000): a nominal is exact, and "1.000" reads as one thousand in many locales."""
    return f"{float(value):g}" if _finite(value) else "–"


def fmt_factor(value) -> str:
    """A dilution factor: 10, 2.5 (never 10.00)."""
    return f"{float(value):g}" if _finite(value) else "–"


def file_name(name) -> Markup:
    """A file name or path as the page shows it: each name unbroken (CSS `white-space: nowrap`
    on its parts), a line allowed to break only after a path separator."""
    parts = [part for part in re.split(r"(?<=[/\\])", str(name or "")) if part]
    return Markup('<span class="file">{}</span>').format(
        Markup("<wbr>").join(Markup("<span>{}</span>").format(part) for part in parts)
    )


def breakable_at(text, separators: str = "/\\") -> Markup:
    """Text holding paths (a command line) or codes: a line may break at its spaces and after
    each of `separators`, never inside a name."""
    pattern = "([" + re.escape(separators) + "])"
    return Markup(re.sub(pattern, r"\1<wbr>", str(Markup.escape(str(text or "")))))


def fmt_pct(value) -> str:
    """A percentage with one decimal, or an en dash when there is none."""
    return f"{float(value):.1f}" if _finite(value) else "–"


def sort_key(value) -> str:
    """The text a table column sorts a number by in the browser ("" for none: sorted last)."""
    return repr(float(value)) if _finite(value) else ""


def _analytes_in_order(files: RunOutputs) -> list[str]:
    return list(dict.fromkeys(files.results["analyte"]))


def _sets(files: RunOutputs) -> list[tuple[str, str]]:
    return [(r["analyte"], r["calibrator_set"]) for _, r in files.calibration.iterrows()]


def _rows(files: RunOutputs, analyte: str, cal_set: str, sample_type: str | None = None) -> pd.DataFrame:
    table = files.results
    mask = (table["analyte"] == analyte) & (table["calibrator_set"] == cal_set)
    if sample_type is not None:
        mask &= table["sample_type"] == sample_type
    return table[mask]


def _rules(files: RunOutputs, analyte: str | None = None, cal_set: str | None = None, categories=None) -> list[dict]:
    rules = []
    for rule in files.summary.get("rules", []):
        if analyte is not None and rule.get("analyte") != analyte:
            continue
        if cal_set is not None and rule.get("calibrator_set") != cal_set:
            continue
        category = rule_category(rule)
        if categories is not None and category not in categories:
            continue
        rules.append({**rule, "category": category})
    return rules


# ---------------------------------------------------------------------------------------------
# Reanalysis


def reanalysis_list(files: RunOutputs) -> pd.DataFrame:
    """Study samples to reanalyse, as the run listed them in reanalysis.csv (see lcmsquant.reanalysis);
    empty for a results folder written before reanalysis.csv existed."""
    if files.reanalysis is not None:
        return files.reanalysis
    return pd.DataFrame(columns=list(REANALYSIS_COLUMNS))


def peaks_only(files: RunOutputs) -> str:
    """Why the run has no calibration at all (run.json's `peaks_only`); "" for a calibrated run."""
    return str(files.summary.get("peaks_only", "") or "")


def peak_overview(files: RunOutputs) -> list[dict]:
    """Per analyte, over every injection, what was found (results.peak_counts): the verdict
    section of a peaks-only run, which has no verdict."""
    return [
        {"analyte": analyte, "internal_standard": table["internal_standard"].iloc[0], **peak_counts(table)}
        for analyte, table in files.results.groupby("analyte", sort=False)
    ]


def verdict_section(files: RunOutputs) -> dict:
    """Section 1: the run's verdict per analyte, with failing rules and warnings."""
    why = peaks_only(files)
    if why:
        return {
            "accepted": False,
            "peaks_only": True,
            "headline": PEAKS_ONLY[:1].upper() + PEAKS_ONLY[1:],
            "why": why[:1].upper() + why[1:] + ".",
            "rows": [],
            "overview": peak_overview(files),
            "injection_errors": sorted(files.summary.get("injection_errors", {}).items(), key=lambda kv: int(kv[0])),
        }
    analytes = files.summary.get("analytes", {})
    rows = []
    for analyte, cal_set in _sets(files):
        stored = analytes.get(analyte, {}).get(cal_set, {})
        accepted = (
            stored.get("verdict") == "accepted"
            if stored
            else bool(
                files.calibration[
                    (files.calibration["analyte"] == analyte) & (files.calibration["calibrator_set"] == cal_set)
                ]["accepted"].iloc[0]
            )
        )
        failing = [r for r in _rules(files, analyte, cal_set) if not r["passed"]]
        unknown = _rows(files, analyte, cal_set, "unknown")
        rows.append(
            {
                "analyte": analyte,
                "set": cal_set,
                "accepted": accepted,
                "failing": [_rule_words(r) for r in failing if r.get("critical", True)],
                "warnings": [_rule_words(r) for r in failing if not r.get("critical", True)],
                "counts": sample_counts(unknown),
            }
        )
    rejected = [f"{r['analyte']} ({r['set']})" for r in rows if not r["accepted"]]
    accepted_run = bool(files.summary.get("run_accepted", not rejected)) and not rejected
    if accepted_run:
        headline = f"Run accepted: all {len(rows)} analyte curves meet ICH M10"
    else:
        headline = f"Run rejected for {', '.join(rejected) if rejected else 'every analyte'}"
        if len(rows) - len(rejected) > 0:
            headline += f"; {len(rows) - len(rejected)} of {len(rows)} accepted"
    return {
        "accepted": accepted_run,
        "peaks_only": False,
        "headline": headline,
        "rows": rows,
        "injection_errors": sorted(files.summary.get("injection_errors", {}).items(), key=lambda kv: int(kv[0])),
    }


def _rule_words(rule: dict) -> str:
    text = f"{rule['rule']}: {rule['measured']} (limit {rule['limit']})"
    return text + (f"; {rule['detail']}" if rule.get("detail") else "")


# ---------------------------------------------------------------------------------------------
# 2. Calibration


def calibrator_table(files: RunOutputs, analyte: str, cal_set: str) -> pd.DataFrame:
    """Every calibrator injection with its back-calculated value, %RE, limit and fate."""
    acc = files.acceptance
    cals = _rows(files, analyte, cal_set, "calibrator").copy()
    lowest = cals["nominal"].min()
    cals["excluded"] = has_flag(cals, "EXCLUDED") if len(cals) else pd.Series(dtype=bool)
    cals["re_pct"] = cals["accuracy_pct"] - 100.0
    cals["tolerance_pct"] = np.where(
        np.isclose(cals["nominal"], lowest), acc.lloq_tolerance_pct, acc.calibrator_tolerance_pct
    )
    return cals.sort_values(["nominal", "injection"], kind="stable")


def calibration_section(files: RunOutputs) -> list[dict]:
    """Section 2: each curve with its calibrators, residuals and plot."""
    acc, units = files.acceptance, files.units
    blocks = []
    for number, (_, cal) in enumerate(files.calibration.iterrows(), 1):
        analyte, cal_set = cal["analyte"], cal["calibrator_set"]
        cals = calibrator_table(files, analyte, cal_set)
        curve = None
        if cal["model"] and _finite(cal["slope"]):
            quadratic = float(cal["quadratic"]) if _finite(cal.get("quadratic")) else 0.0
            curve = figures.CurveCoefficients(float(cal["intercept"]), float(cal["slope"]), quadratic)
        key = f"cal{number}-{analyte}-{cal_set}"  # the number keeps the figures' ids unique in the page
        plot_points = cals[["level", "nominal", "area_ratio", "excluded", "re_pct"]]
        coefficients = [("model", cal["model"] or "no curve"), ("weighting", cal["weighting"] or "–")]
        for name in ("intercept", "slope") + (("quadratic",) if cal["model"] == "quadratic" else ()):
            coefficients.append((name, f"{fmt(cal[name], 6)} ± {fmt(cal[name + '_se'], 3)} (SE)"))
        coefficients += [
            ("weighted r²", f"{cal['r_squared']:.5f}" if _finite(cal["r_squared"]) else "–"),
            ("calibrators used", f"{int(cal['n_used'])} of {int(cal['n_calibrators'])}"),
            ("levels used", str(cal["levels_used"]).replace(";", ", ") or "–"),
            ("levels failing", str(cal["levels_excluded"]).replace(";", ", ") or "none"),
            (
                "run range",
                f"{fmt_nominal(cal['lloq'])} – {fmt_nominal(cal['uloq'])} {units}" if _finite(cal["lloq"]) else "none",
            ),
        ]
        if cal.get("problem"):
            coefficients.append(("problem", cal["problem"]))
        blocks.append(
            {
                "analyte": analyte,
                "set": cal_set,
                "accepted": bool(cal["accepted"]),
                "anchor": f"cal-{analyte}-{cal_set}",
                "curve_svg": Markup(figures.calibration_curve(key + "-curve", plot_points, curve, analyte, units)),
                "residual_svg": Markup(
                    figures.residuals(
                        key + "-residuals",
                        plot_points,
                        acc.calibrator_tolerance_pct,
                        acc.lloq_tolerance_pct,
                        analyte,
                        units,
                    )
                ),
                "coefficients": coefficients,
                "calibrators": [
                    {
                        "injection": int(r["injection"]),
                        "sample_id": r["sample_id"],
                        "level": r["level"],
                        "nominal": fmt_nominal(r["nominal"]),
                        "area_ratio": fmt(r["area_ratio"]),
                        "back_calculated": fmt(r["back_calculated"]),
                        "accuracy": fmt_pct(r["accuracy_pct"]),
                        "re": fmt_pct(r["re_pct"]),
                        "limit": f"±{r['tolerance_pct']:g}",
                        "excluded": bool(r["excluded"]),
                        "reason": r["exclusion_reason"],
                        "ok": bool(
                            not r["excluded"] and _finite(r["re_pct"]) and abs(r["re_pct"]) <= r["tolerance_pct"] + 1e-9
                        ),
                    }
                    for _, r in cals.iterrows()
                ],
                "rules": _rules(files, analyte, cal_set, ("calibration",)),
            }
        )
    return blocks


# ---------------------------------------------------------------------------------------------
# 3. QCs


def qc_table(files: RunOutputs) -> pd.DataFrame:
    """Every QC injection x analyte: found, accuracy and pass/fail against its limit."""
    acc = files.acceptance
    results = files.results
    qcs = results[results["sample_type"] == SampleType.QC].copy()
    qcs["found"] = qcs["back_calculated"] * qcs["dilution_factor"]
    qcs["passed"] = ~has_flag(qcs, "QC_FAIL") & qcs["accuracy_pct"].notna() if len(qcs) else pd.Series(dtype=bool)
    qcs["tolerance_pct"] = np.where(qcs["level"] == QCLevel.LLOQ, acc.lloq_qc_tolerance_pct, acc.qc_tolerance_pct)
    qcs["level_rank"] = qcs["level"].map({lvl: i for i, lvl in enumerate(QC_LEVELS)}).fillna(len(QC_LEVELS))
    return qcs.sort_values(["level_rank", "injection"], kind="stable")


def qc_section(files: RunOutputs) -> list[dict]:
    """Section 3: QC accuracy per level and run, and the QC plot."""
    acc = files.acceptance
    qcs = qc_table(files)
    blocks = []
    for number, cal_set in enumerate(dict.fromkeys(files.calibration["calibrator_set"]), 1):
        in_set = qcs[qcs["calibrator_set"] == cal_set]
        analytes = [a for a, s in _sets(files) if s == cal_set]
        tables = []
        for analyte in analytes:
            rows = in_set[in_set["analyte"] == analyte]
            levels = []
            for level, level_rows in rows.groupby("level", sort=False):
                n, ok = len(level_rows), int(level_rows["passed"].sum())
                levels.append(
                    {
                        "level": level,
                        "nominal": fmt_nominal(level_rows["nominal"].iloc[0]),
                        "limit": f"±{level_rows['tolerance_pct'].iloc[0]:g}",
                        "injections": [
                            {
                                "injection": int(r["injection"]),
                                "sample_id": r["sample_id"],
                                "found": fmt(r["found"]),
                                "accuracy": fmt_pct(r["accuracy_pct"]),
                                "passed": bool(r["passed"]),
                                "dilution": fmt_factor(r["dilution_factor"]),
                            }
                            for _, r in level_rows.iterrows()
                        ],
                        "count": f"{ok}/{n}",
                        "fraction_ok": n > 0 and ok / n >= acc.min_qc_level_fraction - 1e-9,
                    }
                )
            judged = rows[rows["level"] != QCLevel.DQC]
            n, ok = len(judged), int(judged["passed"].sum())
            tables.append(
                {
                    "analyte": analyte,
                    "levels": levels,
                    "total": f"{ok}/{n}",
                    "total_ok": n > 0 and ok / n >= acc.min_qc_fraction - 1e-9,
                    "rules": _rules(files, analyte, cal_set, ("qc",)),
                }
            )
        svg = figures.qc_accuracy(
            f"qc{number}-{cal_set}",
            in_set,
            analytes,
            acc.qc_tolerance_pct,
            acc.lloq_qc_tolerance_pct,
            f"QC accuracy by injection ({cal_set} curve)",
        )
        blocks.append(
            {
                "set": cal_set,
                "plot_svg": Markup(svg),
                "tables": tables,
                "min_level_pct": f"{100 * acc.min_qc_level_fraction:.0f}",
                "min_total_pct": f"{100 * acc.min_qc_fraction:.1f}",
            }
        )
    return blocks


# ---------------------------------------------------------------------------------------------
# 4. Carry-over, blanks and IS response


def blank_checks(files: RunOutputs) -> pd.DataFrame:
    """Analyte and IS response of every blank and zero against the ICH M10 limits.

    The per-injection view of acceptance.carryover and acceptance.selectivity, with the same
    references: the blank right after the ULOQ calibrator judges carry-over, the other blanks
    (and the zeros, for the analyte) selectivity; a blank or zero without a peak counts as 0 %.
    """
    acc = files.acceptance
    results = files.results
    order = results.drop_duplicates("injection").set_index("injection").sort_index()
    rows = []
    for (analyte, cal_set), table in results.groupby(["analyte", "calibrator_set"], sort=False):
        table = table.assign(excluded=has_flag(table, "EXCLUDED"))
        lloq = table["lloq"].dropna()
        lloq_area = acceptance.lloq_response(table, float(lloq.iloc[0]) if len(lloq) else None)
        reference = acceptance.mean_is_response(table)
        carryover = set(acceptance.carryover_blanks(table))
        for _, row in table[table["sample_type"].isin([SampleType.BLANK, SampleType.ZERO])].iterrows():
            previous = order.loc[row["injection"] - 1] if row["injection"] - 1 in order.index else None
            role = "carry-over" if row["injection"] in carryover else "selectivity"
            analyte_limit, is_limit = (
                (acc.carryover_pct_of_lloq, acc.carryover_is_pct)
                if role == "carry-over"
                else (acc.selectivity_pct_of_lloq, acc.selectivity_is_pct)
            )
            area = row["area"] if _finite(row["area"]) else 0.0
            analyte_pct = 100.0 * area / lloq_area if _finite(lloq_area) and lloq_area > 0 else np.nan
            is_area = row["is_area"] if _finite(row["is_area"]) else 0.0
            is_pct = (
                100.0 * is_area / reference
                if row["sample_type"] == SampleType.BLANK and _finite(reference) and reference > 0
                else np.nan
            )
            analyte_ok = not _finite(analyte_pct) or analyte_pct <= analyte_limit + 1e-9
            is_ok = not _finite(is_pct) or is_pct <= is_limit + 1e-9
            rows.append(
                {
                    "injection": int(row["injection"]),
                    "sample_id": row["sample_id"],
                    "sample_type": row["sample_type"],
                    "after": previous["sample_id"] if previous is not None else "",
                    "check": role,
                    "analyte": analyte,
                    "calibrator_set": cal_set,
                    "internal_standard": row["internal_standard"],
                    "analyte_area": row["area"],
                    "analyte_pct_lloq": analyte_pct,
                    "is_area": row["is_area"],
                    "is_pct": is_pct,
                    "passed": analyte_ok and is_ok,
                }
            )
    columns = [
        "injection",
        "sample_id",
        "sample_type",
        "after",
        "check",
        "analyte",
        "calibrator_set",
        "internal_standard",
        "analyte_area",
        "analyte_pct_lloq",
        "is_area",
        "is_pct",
        "passed",
    ]
    return pd.DataFrame(rows, columns=columns).sort_values(["injection", "analyte"], kind="stable")


def is_response_table(files: RunOutputs) -> list[dict]:
    """Per internal standard and calibrator set: the IS area of each injection, the reference
    (mean calibrator/QC IS area) and the flagged injections."""
    results = files.results
    out = []
    for (istd, cal_set), table in results.groupby(["internal_standard", "calibrator_set"], sort=False):
        per_injection = (
            table.sort_values("injection")
            .groupby("injection", sort=True)
            .agg(
                sample_id=("sample_id", "first"),
                sample_type=("sample_type", "first"),
                is_area=("is_area", "first"),
                is_response_pct=("is_response_pct", "first"),
                flagged=("flags", lambda f: any(Flag.IS_RESPONSE in flag_list(x) for x in f)),
            )
            .reset_index()
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            implied = per_injection["is_area"] * 100.0 / per_injection["is_response_pct"]
        reference = float(implied.dropna().median()) if implied.notna().any() else np.nan
        out.append({"internal_standard": istd, "set": cal_set, "points": per_injection, "reference": reference})
    return out


def checks_section(files: RunOutputs) -> dict:
    """Section 4: carry-over, blank and zero selectivity, and the IS response."""
    acc = files.acceptance
    # Without a curve there is no LLOQ response to judge blanks against; the IS response is
    # judged where the batch has calibrators or QCs to give its reference.
    only_peaks = bool(peaks_only(files))
    blanks = blank_checks(files)
    if only_peaks:
        blanks = blanks.iloc[0:0]
    is_blocks = []
    for number, item in enumerate(is_response_table(files), 1):
        if only_peaks and not _finite(item["reference"]):
            continue
        points = item["points"]
        title = f"{item['internal_standard']} response by injection ({item['set']} curve)"
        key = f"is{number}-{item['internal_standard']}-{item['set']}"
        flagged = points[points["flagged"]]
        is_blocks.append(
            {
                "internal_standard": item["internal_standard"],
                "set": item["set"],
                "reference": fmt(item["reference"]),
                "plot_svg": Markup(
                    figures.is_response(key, points, item["reference"], acc.is_response_band_pct, title)
                ),
                "flagged": [
                    {
                        "injection": int(r["injection"]),
                        "sample_id": r["sample_id"],
                        "sample_type": r["sample_type"],
                        "is_area": fmt(r["is_area"]),
                        "pct": fmt_pct(r["is_response_pct"]),
                    }
                    for _, r in flagged.iterrows()
                ],
            }
        )
    return {
        "rules": _rules(files, categories=("carryover", "selectivity", "is_response")),
        "blanks": [
            {
                **r,
                "analyte_area": fmt(r["analyte_area"]) if _finite(r["analyte_area"]) else "not detected",
                "analyte_pct_lloq": fmt_pct(r["analyte_pct_lloq"]),
                "is_area_text": fmt(r["is_area"]) if _finite(r["is_area"]) else "not detected",
                "is_pct": fmt_pct(r["is_pct"]) if r["sample_type"] == SampleType.BLANK else "IS added",
            }
            for r in blanks.to_dict("records")
        ],
        "analyte_limit": f"{acc.carryover_pct_of_lloq:g}",
        "is_limit": f"{acc.carryover_is_pct:g}",
        "selectivity_analyte_limit": f"{acc.selectivity_pct_of_lloq:g}",
        "selectivity_is_limit": f"{acc.selectivity_is_pct:g}",
        "band": f"{acc.is_response_band_pct[0]:g}-{acc.is_response_band_pct[1]:g}",
        "is_blocks": is_blocks,
        "peaks_only": only_peaks,
    }


# ---------------------------------------------------------------------------------------------
# 5. Samples


def samples_section(files: RunOutputs, reanalysis: pd.DataFrame) -> dict:
    """Section 5: study samples with their concentrations and flags, and the reanalysis list."""
    results = files.results
    only_peaks = bool(peaks_only(files))
    # A peaks-only run has no study-sample result: every injection is listed with its peak.
    unknown = results if only_peaks else results[results["sample_type"] == SampleType.UNKNOWN]
    unknown = unknown.sort_values(["injection", "analyte"], kind="stable")
    rows = []
    for _, r in unknown.iterrows():
        flags = flag_list(r["flags"])
        if _finite(r["concentration"]):
            shown, key = fmt(r["concentration"]), sort_key(r["concentration"])
        elif Flag.BLQ in flags:
            shown, key = f"BLQ (< {fmt_nominal(r['lloq'])})", "-1"
        elif Flag.ALQ in flags:
            shown, key = f"ALQ (> {fmt_nominal(r['uloq'])})", sort_key(r["back_calculated"] * r["dilution_factor"])
        elif Flag.NO_PEAK in flags:
            shown, key = "not detected", "-2"
        else:
            shown, key = "–", ""
        rows.append(
            {
                "injection": int(r["injection"]),
                "sample_id": r["sample_id"],
                "matrix": r["matrix"],
                "subject_id": r["subject_id"],
                "visit": r["visit"],
                "timepoint": r["timepoint"],
                "dilution": fmt_factor(r["dilution_factor"]),
                "analyte": r["analyte"],
                "area_ratio": fmt(r["area_ratio"]),
                "area_ratio_key": sort_key(r["area_ratio"]),
                "concentration": shown,
                "concentration_key": key,
                "flags": flags,
                "reportable": bool(r["reportable"]),
                **(
                    {
                        "sample_type": r["sample_type"],
                        "rt": fmt(r["rt_min"]),
                        "rt_key": sort_key(r["rt_min"]),
                        "area": fmt(r["area"]),
                        "area_key": sort_key(r["area"]),
                        "is_area": fmt(r["is_area"]),
                        "is_area_key": sort_key(r["is_area"]),
                    }
                    if only_peaks
                    else {}
                ),
            }
        )
    columns, reanalysis_rows = reanalysis_cells(reanalysis)
    return {
        "rows": rows,
        "peaks_only": only_peaks,
        "reanalysis_columns": columns,
        "reanalysis": reanalysis_rows,
        "units": files.units,
        "source": "reanalysis.csv"
        if files.reanalysis is not None
        else "no reanalysis.csv (a results folder written before it existed)",
    }


# The reanalysis list as the page shows it: the sample's subject, visit, timepoint and matrix in
# the sample's cell, so that the table fits a printed page; other columns as reanalysis.csv has them.
REANALYSIS_SAMPLE_DETAIL = ("subject_id", "visit", "timepoint", "matrix")
REANALYSIS_HEADERS = {"injection": "inj.", "sample_id": "sample", "suggested_dilution_factor": "suggested dilution"}


def reanalysis_cells(reanalysis: pd.DataFrame) -> tuple[list[str], list[list[Markup]]]:
    """Column headers and rows of cells (markup) of the reanalysis table."""
    columns = [
        c for c in reanalysis.columns if not (c in REANALYSIS_SAMPLE_DETAIL and "sample_id" in reanalysis.columns)
    ]

    def text(value) -> str:
        if isinstance(value, float):
            return "" if not math.isfinite(value) else fmt(value)
        return str(value)

    def cell(row: dict, column: str) -> Markup:
        value = row[column]
        if column == "file":
            return file_name(value)
        if column == "suggested_dilution_factor":
            return Markup.escape(fmt_factor(value) if _finite(value) else "")
        if column == "reason":  # codes joined by ";": a line may break after each
            return breakable_at(text(value), ";")
        if column == "sample_id":
            detail = " · ".join(text(row[c]) for c in REANALYSIS_SAMPLE_DETAIL if c in row and text(row[c]))
            sample = Markup('<span class="nb">{}</span>').format(text(value))
            return sample + Markup('<div class="detail">{}</div>').format(detail) if detail else sample
        return Markup.escape(text(value))

    rows = [[cell(row, c) for c in columns] for row in reanalysis.to_dict("records")]
    return [REANALYSIS_HEADERS.get(c, c.replace("_", " ")) for c in columns], rows


# ---------------------------------------------------------------------------------------------
# 6. Chromatograms


def _integration(peak: dict | None) -> figures.Integration:
    if peak is None:
        return figures.Integration()
    get = lambda k: float(peak[k]) if _finite(peak.get(k)) else float("nan")  # noqa: E731
    return figures.Integration(
        get("start_min"),
        get("end_min"),
        get("baseline_start"),
        get("baseline_end"),
        get("rt_min"),
        get("expected_rt_min"),
    )


def _is_manual(peak: dict | None) -> bool:
    return peak is not None and str(peak.get("manual", False)) == "True"


def _panel(peak: dict | None, traces: list[Trace], label: str, flags: list[str], absent: str = "no data") -> Markup:
    """One thumbnail: the trace the run integrated (see _trace_of) and its peak; `absent` is
    written where there is no trace to draw."""
    trace = _trace_of(peak, traces)
    manual = _is_manual(peak)
    state = " ".join(s for s, on in (("flagged", bool(flags)), ("manual", manual)) if on)
    note = ""
    if peak is not None and _finite(peak.get("area")):
        note = f"area {fmt(peak['area'], 3)}"
    elif peak is not None:
        note = str(peak["status"]).replace("_", " ").lower()
    shown_flags = ([Flag.MANUAL] if manual else []) + flags
    title = label if peak is None else f"{label} {peak['q1']:g}>{peak['q3']:g}"
    time, intensity = (trace.time, trace.intensity) if trace is not None else (None, None)
    return Markup(
        figures.chromatogram_thumbnail(
            title, time, intensity, _integration(peak), note, state, absent, " · ".join(shown_flags)
        )
    )


def _trace_of(peak: dict | None, traces: list[Trace]) -> Trace | None:
    """The trace the run integrated for this peak: the one with the chromatogram id peaks.csv
    records; where a file gives several traces that id, the one whose Q1/Q3 is nearest the
    transition's, then, as chromatograms.match_transitions prefers, a usable one, one covering
    the peak (else the expected RT), the one centred nearest it, and the first in the file."""
    native_id = str(peak.get("native_id") or "") if peak is not None else ""
    if peak is None or not native_id:
        return None  # the run found no trace for this transition
    same = [t for t in traces if t.native_id == native_id]
    if len(same) <= 1:
        return next(iter(same), None)
    q1, q3 = float(peak["q1"]), float(peak["q3"])
    distance = {id(t): max(abs(t.q1 - q1), abs(t.q3 - q3)) for t in same}
    nearest = min(distance.values())
    same = [t for t in same if distance[id(t)] <= nearest + EXACT_MZ]
    rt = float(peak["rt_min"]) if _finite(peak.get("rt_min")) else float(peak.get("expected_rt_min", float("nan")))
    return min(
        same,
        key=lambda t: (
            not t.usable,
            not t.covers(rt),
            abs((t.start + t.end) / 2 - rt) if len(t.time) and math.isfinite(rt) else math.inf,
        ),
    )


def _injection_traces(path: Path) -> tuple[list[Trace], str]:
    if not path.is_file():
        return [], "file not found"
    try:
        return read_traces(path), ""
    except ChromatogramReadError as err:
        return [], str(err)


def _recorded_files(files: RunOutputs) -> dict[str, tuple[str, str]]:
    """Injection file as results.csv names it -> (path in the batch folder, SHA-256 the run
    read), from run.json's provenance; a name two recorded files share is left out."""
    inputs = files.summary.get("provenance", {}).get("inputs", [])
    by_name: dict[str, list[tuple[str, str]]] = {}
    for item in inputs:
        by_name.setdefault(Path(item["file"]).name, []).append((item["file"], item["sha256"]))
    recorded = {name: found[0] for name, found in by_name.items() if len(found) == 1}
    recorded.update({item["file"]: (item["file"], item["sha256"]) for item in inputs})  # an exact name wins
    return recorded


def chromatogram_section(
    files: RunOutputs, batch_dir: Path | str | None = None, warnings: list[str] | None = None
) -> dict:
    """Small multiples of quantifier, qualifier(s) and IS for every injection, read from the
    batch folder's mzML files; a missing folder or file is said, not fatal.

    Each file is drawn only if it is the one the run integrated (its SHA-256 is the one run.json
    records): a file replaced since would show other traces under the run's integration. Such
    an injection is shown as not drawn, and named in `warnings` (when given).
    """
    recorded = files.session.get("batch_folder")
    folder = Path(batch_dir) if batch_dir is not None else (Path(recorded) if recorded else None)
    if folder is None:
        return {
            "available": False,
            "message": "The batch folder is not recorded in session.json: "
            "rerun `lcmsquant report RESULTS_DIR --batch BATCH_DIR` to draw the chromatograms.",
            "injections": [],
        }
    if not folder.is_dir():
        return {
            "available": False,
            "message": f"The batch folder {folder} was not found, so the chromatograms "
            "are not drawn: rerun `lcmsquant report RESULTS_DIR --batch BATCH_DIR` with the mzML files.",
            "injections": [],
        }
    peaks: dict[tuple, list[dict]] = {}
    for peak in files.peaks.to_dict("records"):
        peaks.setdefault((peak["injection"], peak["compound"], peak["role"]), []).append(peak)
    by_injection: dict[int, list[dict]] = {}
    for row in files.results.sort_values(["injection"], kind="stable").to_dict("records"):
        by_injection.setdefault(int(row["injection"]), []).append(row)
    inputs = _recorded_files(files)
    injections, missing, undrawn = [], 0, []
    for injection, rows in by_injection.items():
        first = rows[0]
        traces, problem, why = _checked_traces(folder, first["file"], inputs.get(first["file"]))
        missing += problem == "file not found"
        if why:
            undrawn.append(f"{first['file']} (injection {injection}) {why}")
        absent = "not drawn" if problem else "no data"
        quiet = first["sample_type"] in ("blank", "zero")  # no analyte peak is expected there
        lines, all_flags, manual = [], [], False
        for row in rows:
            flags = flag_list(row["flags"])
            all_flags += flags
            quant = next(iter(peaks.get((injection, row["analyte"], "quantifier"), [])), None)
            quals = peaks.get((injection, row["analyte"], "qualifier"), [])
            istd = next(iter(peaks.get((injection, row["internal_standard"], "internal_standard"), [])), None)
            quant_flags = [f for f in flags if f in PEAK_FLAGS and not (quiet and f == Flag.NO_PEAK)]
            panels = [_panel(quant, traces, "quant", quant_flags, absent)]
            panels += [
                _panel(q, traces, "qual", [f for f in flags if f in ("ION_RATIO", "NO_QUALIFIER")], absent)
                for q in quals
            ]
            panels.append(_panel(istd, traces, "IS", [f for f in flags if f in ("IS_RESPONSE", "NO_IS")], absent))
            manual = manual or any(_is_manual(p) for p in [quant, *quals, istd])
            lines.append({"analyte": row["analyte"], "panels": panels})
        injections.append(
            {
                "injection": injection,
                "sample_id": first["sample_id"],
                "sample_type": first["sample_type"],
                "level": first["level"],
                "file": first["file"],
                "manual": manual,
                "problem": problem,
                "flags": list(dict.fromkeys(f for f in all_flags if not (quiet and f == Flag.NO_PEAK))),
                "lines": lines,
            }
        )
    if warnings is not None:
        warnings.extend(f"{text}: its chromatograms are not drawn ({REDRAW})" for text in undrawn)
    if injections and missing == len(injections):
        return {
            "available": False,
            "message": f"None of the mzML files was found in {folder}: rerun "
            "`lcmsquant report RESULTS_DIR --batch BATCH_DIR` with the folder that holds them.",
            "injections": [],
        }
    notes = []
    if missing:
        notes.append(f"{missing} of {len(injections)} mzML files were not found in {folder}.")
    if undrawn:
        notes.append(
            f"The chromatograms of {len(undrawn)} of {len(injections)} injections are not drawn, as their "
            "mzML files are not those the run integrated: " + "; ".join(undrawn) + f". To draw them, {REDRAW}."
        )
    return {"available": True, "message": " ".join(notes), "injections": injections}


REDRAW = "rerun `lcmsquant run` on the batch to integrate the files as they now are"


def _checked_traces(folder: Path, name: str, recorded: tuple[str, str] | None) -> tuple[list[Trace], str, str]:
    """The traces of an injection's file if it is the file the run read (its SHA-256 is the one
    run.json records); else no trace, the injection's problem, and why it is not drawn."""
    relative, expected = recorded if recorded is not None else (name, "")
    path = folder / relative
    if not path.is_file():
        return [], "file not found", ""
    if not expected:
        return (
            [],
            "not drawn: no SHA-256 in run.json",
            (f"has no SHA-256 of its own in {RUN_JSON}, so it cannot be told to be the file the run read"),
        )
    found = sha256(path)
    if found != expected:
        return (
            [],
            "not drawn: the file changed since the run",
            (f"changed since the run (SHA-256 {found[:12]}..., the run read {expected[:12]}...)"),
        )
    traces, problem = _injection_traces(path)
    return traces, problem, ""


# ---------------------------------------------------------------------------------------------
# 7. Audit and provenance


def acceptance_limits(limits: Mapping[str, object]) -> list[tuple[str, str]]:
    """The acceptance limits the run applied as (words, value) rows, in method.ACCEPTANCE_LABELS'
    words and order (fractions as %); a key it does not know (results of a newer version) is
    shown as it is, after the others."""

    def value_text(value, factor: float) -> str:
        if isinstance(value, (list, tuple)):
            return "–".join(value_text(v, factor) for v in value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{round(float(value) * factor, 1):g}"
        return str(value)

    known = [
        (words, value_text(limits[key], factor)) for key, (words, factor) in ACCEPTANCE_LABELS.items() if key in limits
    ]
    unknown = [(key, value_text(limits[key], 1.0)) for key in sorted(set(limits) - set(ACCEPTANCE_LABELS))]
    return known + unknown


def _excluded_by(reason: str) -> str:
    """Who excluded a calibrator: an analyst in overrides.csv (pipeline writes the reason as
    "excluded by NAME: why") or the run's ICH M10 rule."""
    if str(reason).startswith("excluded by "):
        return "analyst (overrides.csv)"
    return "lcmsquant, ICH M10 rule (automatic)"


def provenance_section(files: RunOutputs) -> dict:
    """Section 7: input files, method and software with their hashes, and the session."""
    prov = files.summary.get("provenance", {})
    session = files.session
    command = session.get("command", [])
    software = dict(prov.get("software", {}))
    for name in ("jinja2", "matplotlib"):
        try:
            software[f"{name} (report)"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            software[f"{name} (report)"] = "unknown"
    results = files.results
    excluded = results[(results["sample_type"] == SampleType.CALIBRATOR) & has_flag(results, "EXCLUDED")]
    audit = files.audit if files.audit is not None else pd.DataFrame()
    return {
        "audit_columns": list(audit.columns),
        "audit": [
            {k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in audit.to_dict("records")
        ],
        "exclusions": [
            {
                "injection": int(r["injection"]),
                "sample_id": r["sample_id"],
                "analyte": r["analyte"],
                "level": r["level"],
                "reason": r["exclusion_reason"] or "excluded",
                "by": _excluded_by(r["exclusion_reason"]),
            }
            for _, r in excluded.sort_values(["analyte", "injection"]).iterrows()
        ],
        "method": prov.get("method", {}),
        "calibrator_sets": prov.get("calibrator_sets", []),
        "acceptance": acceptance_limits(prov.get("acceptance") or asdict(files.acceptance)),
        "inputs": prov.get("inputs", []),
        "software": sorted(software.items()),
        "batch": files.summary.get("batch", ""),
        "lcmsquant": files.summary.get("lcmsquant", ""),
        "finished_at": session.get("finished_at", "not recorded"),
        "command": shlex.join(command) if isinstance(command, list) else str(command),
        "host": session.get("host", ""),
        "batch_folder": session.get("batch_folder", ""),
        "run_json_sha256": files.sha256[RUN_JSON],
    }


# ---------------------------------------------------------------------------------------------
# Signatures and the audit trail

# Entries that record a results set being written: the last of them names the results now in place.
WRITING_EVENTS = (TrailEvent.RUN, TrailEvent.CHANGE, TrailEvent.UNDO, TrailEvent.REDO)
SHORT_SHA = 12  # characters of a SHA-256 the trail table shows


def signature_section(trail: Trail, run_json_sha256: str) -> dict:
    """The signatures the audit trail holds, each marked whether it covers the results this
    report shows (it signed the run.json with this SHA-256) or was given to results since changed."""
    return {
        "signatures": [
            {
                "name": s.name,
                "meaning": str(s.meaning),
                "statement": s.meaning.statement,
                "at": s.at,
                "results_sha256": s.results_sha256,
                "entry": s.entry,
                "current": s.current,
            }
            for s in signatures(trail, run_json_sha256)
        ],
        "intact": trail.intact,
    }


def trail_section(trail: Trail, run_json_sha256: str, drawn_during_run: bool = False) -> dict:
    """Every entry of the audit trail, what checking its chain found, and what the report cannot
    show: the entries appended after it was drawn.

    `drawn_during_run`: the report is drawn from a results set before it is written
    (render_set), so the trail does not yet hold the entry that records that set. Otherwise the
    last entry that wrote results should name the results shown; when it does not, the report
    says so (entries removed from the end, or results written without the trail).
    """
    entries = [
        {
            **e.listed(),
            "short": e.results_sha256[:SHORT_SHA],
            "these": bool(run_json_sha256) and e.results_sha256 == run_json_sha256,
        }
        for e in trail.entries
    ]
    short = run_json_sha256[:SHORT_SHA]
    if drawn_during_run:
        pending = (
            f"This report was drawn while these results (SHA-256 {short}...) were being written: the entry "
            f"recording them is appended to {TRAIL} just after, so it is not listed here."
        )
    else:
        pending = f"Entries appended after this report was drawn (such as the one recording that it was drawn) are in {TRAIL} only."
    mismatch = ""
    written = [e for e in trail.entries if e.event in WRITING_EVENTS]
    if not drawn_during_run and written and written[-1].results_sha256 != run_json_sha256:
        mismatch = (
            f"The last entry that wrote results (entry {written[-1].number}, SHA-256 {written[-1].results_sha256[:SHORT_SHA]}...) "
            f"is not of the results this report shows (SHA-256 {short}...): entries were removed from the end of "
            f"{TRAIL}, or these results were put in place without it."
        )
    return {
        "entries": entries,
        "problems": list(trail.problems),
        "pending": pending,
        "mismatch": mismatch,
    }


def _trail_warnings(trail: Trail, mismatch: str) -> list[str]:
    """What the reader of the report must be told about the trail (added to the report's warnings)."""
    found = [f"the audit trail's chain is broken: {problem}" for problem in trail.problems]
    return found + ([mismatch] if mismatch else [])


# ---------------------------------------------------------------------------------------------
# The document


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("lcmsquant", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt
    env.filters["file"] = file_name
    env.filters["breakable"] = breakable_at
    return env


def render_report(
    results_dir: Path | str, batch_dir: Path | str | None = None, warnings: list[str] | None = None
) -> str:
    """The report's HTML for a results folder (chromatograms from `batch_dir`, else the batch
    folder recorded in session.json); what the reader should know (an mzML file changed since
    the run) is added to `warnings`, when given."""
    return render_outputs(read_run_files(results_dir), batch_dir, warnings)


def render_set(results_dir: Path | str, data: Mapping[str, bytes], warnings: list[str] | None = None) -> str:
    """The report's HTML for a results set given as file name -> bytes: what `lcmsquant run`
    is about to write into results_dir, drawn before any of it is renamed into place (so the
    trail it shows lacks the entry that records this set, and says so)."""
    return render_outputs(parse_results(Path(results_dir), data, ReportError), None, warnings, drawn_during_run=True)


def render_outputs(
    files: RunOutputs,
    batch_dir: Path | str | None = None,
    warnings: list[str] | None = None,
    drawn_during_run: bool = False,
) -> str:
    """The report's HTML for a results set read back; it names the SHA-256 of its run.json
    (in a <meta> of its head and in the provenance section), which binds it to those results.
    The signatures and the audit trail are read from the results folder's audit-trail.jsonl
    (`drawn_during_run`: see trail_section)."""
    reanalysis = reanalysis_list(files)
    trail = read_trail(files.folder)
    run_sha = files.sha256[RUN_JSON]
    audit_trail = trail_section(trail, run_sha, drawn_during_run)
    if warnings is not None:
        warnings.extend(_trail_warnings(trail, audit_trail["mismatch"]))
    context = {
        "signatures": signature_section(trail, run_sha),
        "trail": audit_trail,
        "batch": files.summary.get("batch", files.folder.parent.name),
        "method": files.summary.get("provenance", {}).get("method", {}),
        "units": files.units,
        "run_json_sha256": files.sha256[RUN_JSON],
        "hash_meta": REPORT_HASH_META,
        "verdict": verdict_section(files),
        "calibration": calibration_section(files),
        "qc": qc_section(files),
        "checks": checks_section(files),
        "samples": samples_section(files, reanalysis),
        "chromatograms": chromatogram_section(files, batch_dir, warnings),
        "provenance": provenance_section(files),
    }
    return _environment().get_template("report.html.j2").render(**context)


def write_report(
    results_dir: Path | str, batch_dir: Path | str | None = None, warnings: list[str] | None = None
) -> Path:
    """Write RESULTS_DIR/report.html (atomically) from the results as they now are, and return its path.

    A report.pdf is kept only beside the very report it was printed from: when report.html
    changes, report.pdf is removed in the same step (re-print it with write_pdf).
    """
    folder = Path(results_dir)
    html = render_report(folder, batch_dir, warnings).encode("utf-8")
    path = folder / REPORT_HTML
    try:
        unchanged = path.read_bytes() == html
    except OSError:
        unchanged = False
    atomic_write_all({path: html}, remove=() if unchanged else (folder / REPORT_PDF,))
    return path


def report_matches(results_dir: Path | str) -> bool:
    """Whether RESULTS_DIR/report.html was drawn from the run.json now beside it (by the
    SHA-256 it names); False when either is missing."""
    data = read_set(Path(results_dir), (RUN_JSON, REPORT_HTML))
    if RUN_JSON not in data or REPORT_HTML not in data:
        return False
    return report_run_json_sha256(data[REPORT_HTML]) == hashlib.sha256(data[RUN_JSON]).hexdigest()


def write_pdf(results_dir: Path | str) -> Path:
    """Print RESULTS_DIR/report.html to RESULTS_DIR/report.pdf with headless Chromium; refused
    for a report.html drawn from another run.json than the one beside it."""
    from lcmsquant.browser import print_pdf

    html = Path(results_dir) / REPORT_HTML
    if not html.is_file():
        raise ReportError(results_dir, [f"{REPORT_HTML} is missing: write it first (`lcmsquant report RESULTS_DIR`)"])
    if not report_matches(results_dir):
        raise ReportError(
            results_dir,
            [
                f"{REPORT_HTML} was not drawn from the {RUN_JSON} beside it (it names another SHA-256, or none): "
                f"write it again first (`lcmsquant report {results_dir}`)"
            ],
        )
    return print_pdf(html, Path(results_dir) / REPORT_PDF)
