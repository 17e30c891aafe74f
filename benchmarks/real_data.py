"""How does lcmsquant integrate real instrument files, against two independent references?

Runs lcmsquant as a user would (method imported from `traML.csv`, `measure_injection` on each
file) on the real SCIEX QTRAP files of `../shared/data/smartpeak-sciex-srm` and compares its
peaks with

  vendor    the vendor software's integration of RawDataProcessor_mzML_1.mzML (179 transitions,
            `integration_type` Baseline / Valley / Manual; 25 rows changed by an analyst);
  SmartPeak SmartPeak's selected picks of 170808_Jonathan_yeast_Sacc1_1x.mzML;

and, as a peer on the same metrics, OpenMS' own choice (the best-scoring candidate per compound
in RawDataProcessor_mzML_1.smartpeak_candidates.featureXML) against the vendor.

Metrics, per reference peak (a transition the reference integrated and lcmsquant measured):
  found        lcmsquant reports a peak;
  same peak    its apex lies within 3 s of the reference's (also among the reference peaks of
               S/N >= 10: many of SmartPeak's Sacc1 picks are noise at S/N 1-3);
  SPLIT, SHOULDER  of the found peaks, the share flagged so;
  narrow       of the same peaks, integrated over less than half the reference's width;
  area 25 % | S/N>20   lcmsquant's own area within 25 % of the vendor's, reference S/N > 20;
  area 10 %    lcmsquant's own area within 10 % of the vendor's, all same peaks;
  rule 25 % | S/N>20, rule 10 %   both boundaries integrated by one rule (trapezoid of the raw
               trace above a straight line between the two boundary points: the rule that
               reproduces the vendor's `Baseline` areas), so only the boundaries differ.

    python benchmarks/real_data.py [--data ../shared/data/smartpeak-sciex-srm] [--details CSV]

Prints one table (rows: comparisons, and the vendor comparison split by `integration_type`).
Nothing is asserted: the aims are in the issue and the docs; the tests hold known answers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyopenms as oms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lcmsquant.chromatograms import read_traces
from lcmsquant.measure import measure_injection
from lcmsquant.method import load_method
from lcmsquant.transition_list import import_transition_list

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "smartpeak-sciex-srm"
VENDOR_FILE = "RawDataProcessor_mzML_1"
SACC_FILE = "170808_Jonathan_yeast_Sacc1_1x"
SAME_PEAK_S = 3.0


# ---------------------------------------------------------------------------------------------
# References as one table: transition name, q1, q3, rt, start, end (minutes), area, sn, kind


def traml(data: Path) -> pd.DataFrame:
    table = pd.read_csv(data / "traML.csv")
    return pd.DataFrame(
        {
            "name": table["transition_name"],
            "q1": table["PrecursorMz"].astype(float),
            "q3": table["ProductMz"].astype(float),
            "listed_rt": table["RetentionTime"].astype(float) / 60.0,
        }
    )


def vendor_reference(data: Path) -> pd.DataFrame:
    table = pd.read_csv(data / f"{VENDOR_FILE}.vendor_integration.csv")
    mz = table["mass_info"].str.split("/", expand=True).astype(float)
    return pd.DataFrame(
        {
            "name": table["component_name"],
            "q1": mz[0],
            "q3": mz[1],
            "rt": table["retention_time"],
            "start": table["start_time"],
            "end": table["end_time"],
            "area": table["area"],
            "sn": table["signal_2_noise"],
            "kind": table["integration_type"],
            "modified": table["modified_"].astype(str).str.upper().eq("TRUE"),
        }
    )


def feature_reference(path: Path, seconds: bool, best_only: bool) -> pd.DataFrame:
    """One row per transition of the chosen feature of each compound (the best-scoring one, by
    OpenMS' preliminary LDA score, when `best_only`)."""
    features = oms.FeatureMap()
    oms.FeatureXMLFile().load(str(path), features)
    scale = 1 / 60.0 if seconds else 1.0
    rows = []
    for feature in features:
        score = (
            feature.getMetaValue("main_var_xx_lda_prelim_score")
            if feature.metaValueExists("main_var_xx_lda_prelim_score")
            else 0.0
        )
        for sub in feature.getSubordinates():
            log_sn = sub.getMetaValue("logSN") if sub.metaValueExists("logSN") else np.nan
            rows.append(
                {
                    "group": feature.getMetaValue("PeptideRef"),
                    "score": float(score),
                    "name": sub.getMetaValue("native_id"),
                    "rt": feature.getRT() * scale,
                    "start": feature.getMetaValue("leftWidth") * scale,
                    "end": feature.getMetaValue("rightWidth") * scale,
                    "area": np.nan,
                    "sn": float(np.exp(log_sn)),
                    "kind": "",
                    "modified": False,
                }
            )
    table = pd.DataFrame(rows)
    if best_only:
        best = table.groupby("group")["score"].transform("max")
        table = table[table["score"] == best].drop_duplicates("name")
    return table.drop(columns=["group", "score"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# lcmsquant's peaks, matched to the references' transition names


def imported_method(data: Path, workdir: Path):
    return load_method(import_transition_list(data / "traML.csv", workdir / "traml.toml"))


def lcmsquant_peaks(mzml: Path, method, listed: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """lcmsquant's peak rows of one file, with the transition list's name of each; and the
    seconds it took to measure the injection."""
    began = time.perf_counter()
    rows, error = measure_injection(mzml, method)
    seconds = time.perf_counter() - began
    if error:
        raise SystemExit(f"{mzml.name}: {error}")
    measured = pd.DataFrame(rows)
    rt_of = {t.name: method.expected_rt(t) for t in method.transitions()}
    measured["method_rt"] = measured["transition"].map(rt_of)
    names = []
    for row in measured.itertuples():
        same = listed[(listed["q1"] == row.q1) & (listed["q3"] == row.q3)]
        same = same.iloc[(same["listed_rt"] - row.method_rt).abs().argsort()]
        names.append(
            same["name"].iloc[0] if len(same) and abs(same["listed_rt"].iloc[0] - row.method_rt) < 0.01 else ""
        )
    measured["name"] = names
    columns = {
        "status": "status_lq",
        "rt_min": "rt_lq",
        "start_min": "start_lq",
        "end_min": "end_lq",
        "area": "area_lq",
        "split": "split_lq",
        "shoulder": "shoulder_lq",
    }
    return measured[measured["name"] != ""].rename(columns=columns)[["name", *columns.values()]], seconds


def rule_area(time_min: np.ndarray, intensity: np.ndarray, start: float, end: float) -> float:
    """Trapezoid of the raw trace above the straight line between the two boundary points."""
    lo = int(np.argmin(np.abs(time_min - start)))
    hi = int(np.argmin(np.abs(time_min - end)))
    if hi - lo < 1:
        return np.nan
    t, y = time_min[lo : hi + 1], intensity[lo : hi + 1]
    base = y[0] + (y[-1] - y[0]) * (t - t[0]) / (t[-1] - t[0])
    return float(np.trapezoid(y - base, t) * 60.0)


def trace_for(traces, q1: float, q3: float, rt: float):
    candidates = [tr for tr in traces if tr.q1 == q1 and tr.q3 == q3 and tr.covers(rt)]
    if not candidates:
        candidates = [tr for tr in traces if abs(tr.q1 - q1) < 1e-6 and abs(tr.q3 - q3) < 1e-6]
    if not candidates:
        return None
    return min(candidates, key=lambda tr: abs((tr.start + tr.end) / 2 - rt))


def compare(reference: pd.DataFrame, peaks: pd.DataFrame, traces, listed: pd.DataFrame) -> pd.DataFrame:
    """One row per reference peak with lcmsquant's peak (or the candidate's, for OpenMS) beside it."""
    table = reference.merge(peaks, on="name", how="inner")
    mz = listed.set_index("name")
    out = []
    for row in table.itertuples():
        trace = trace_for(traces, mz.at[row.name, "q1"], mz.at[row.name, "q3"], row.rt)
        found = row.status_lq == "OK"
        ref_rule = rule_area(trace.time, trace.intensity, row.start, row.end) if trace is not None else np.nan
        lq_rule = (
            rule_area(trace.time, trace.intensity, row.start_lq, row.end_lq) if trace is not None and found else np.nan
        )
        out.append(
            {
                "name": row.name,
                "kind": row.kind,
                "modified": row.modified,
                "ref_sn": row.sn,
                "ref_rt": row.rt,
                "ref_start": row.start,
                "ref_end": row.end,
                "ref_area": row.area,
                "found": found,
                "rt": row.rt_lq,
                "start": row.start_lq,
                "end": row.end_lq,
                "area": row.area_lq,
                "split": bool(row.split_lq) and found,
                "shoulder": bool(row.shoulder_lq) and found,
                "same": found and abs(row.rt_lq - row.rt) * 60 <= SAME_PEAK_S,
                "width_fraction": (row.end_lq - row.start_lq) / (row.end - row.start) if found else np.nan,
                "ref_rule": ref_rule,
                "rule": lq_rule,
            }
        )
    return pd.DataFrame(out)


def openms_as_peaks(candidates: pd.DataFrame) -> pd.DataFrame:
    """OpenMS' chosen features in the shape of lcmsquant's peak rows."""
    return pd.DataFrame(
        {
            "name": candidates["name"],
            "status_lq": "OK",
            "rt_lq": candidates["rt"],
            "start_lq": candidates["start"],
            "end_lq": candidates["end"],
            "area_lq": np.nan,
            "split_lq": False,
            "shoulder_lq": False,
        }
    )


# ---------------------------------------------------------------------------------------------
# Summary


def _pct(mask: pd.Series, of: pd.Series) -> str:
    n = int(of.sum())
    return f"{100 * (mask & of).sum() / n:.0f} % ({int((mask & of).sum())}/{n})" if n else "-"


def summarise(label: str, c: pd.DataFrame, flags: bool = True, own_area: bool = True) -> dict:
    found, same = c["found"], c["same"]
    within = lambda a, b, tol: np.abs(a - b) / np.abs(b) <= tol  # noqa: E731
    high = c["ref_sn"] > 20
    row = {
        "comparison": label,
        "n": len(c),
        "found": _pct(found, pd.Series(True, index=c.index)),
        "same peak": _pct(same, pd.Series(True, index=c.index)),
        "same, ref S/N>=10": _pct(same, c["ref_sn"] >= 10),
        "SPLIT": _pct(c["split"], found) if flags else "-",
        "SHOULDER": _pct(c["shoulder"], found) if flags else "-",
        "narrow": _pct(c["width_fraction"] < 0.5, same),
        "area 25% S/N>20": _pct(within(c["area"], c["ref_area"], 0.25), same & high & c["ref_area"].notna())
        if own_area
        else "-",
        "area 10%": _pct(within(c["area"], c["ref_area"], 0.10), same & c["ref_area"].notna()) if own_area else "-",
        "rule 25% S/N>20": _pct(within(c["rule"], c["ref_rule"], 0.25), same & high),
        "rule 10%": _pct(within(c["rule"], c["ref_rule"], 0.10), same),
    }
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--details", type=Path, help="write every compared peak to this CSV")
    args = parser.parse_args(argv)
    data = args.data
    listed = traml(data)
    with tempfile.TemporaryDirectory() as tmp:
        method = imported_method(data, Path(tmp))
    rows, details, timings = [], [], []
    vendor_mzml, sacc_mzml = data / f"{VENDOR_FILE}.mzML", data / f"{SACC_FILE}.mzML"

    vendor = vendor_reference(data)
    peaks, seconds = lcmsquant_peaks(vendor_mzml, method, listed)
    timings.append((vendor_mzml.name, seconds, len(peaks)))
    traces = read_traces(vendor_mzml)
    lq_vendor = compare(vendor, peaks, traces, listed)
    rows.append(summarise("lcmsquant vs vendor", lq_vendor))
    for kind in ("Baseline", "Valley", "Manual"):
        rows.append(summarise(f"  integration_type {kind}", lq_vendor[lq_vendor["kind"] == kind]))
    rows.append(summarise("  modified by the analyst", lq_vendor[lq_vendor["modified"]]))

    openms = feature_reference(data / f"{VENDOR_FILE}.smartpeak_candidates.featureXML", seconds=True, best_only=True)
    om_vendor = compare(vendor, openms_as_peaks(openms), traces, listed)
    rows.append(summarise("OpenMS' choice vs vendor", om_vendor, flags=False, own_area=False))

    smartpeak = feature_reference(data / f"{SACC_FILE}.smartpeak.featureXML", seconds=False, best_only=False)
    peaks, seconds = lcmsquant_peaks(sacc_mzml, method, listed)
    timings.append((sacc_mzml.name, seconds, len(peaks)))
    lq_sacc = compare(smartpeak, peaks, read_traces(sacc_mzml), listed)
    rows.append(summarise("lcmsquant vs SmartPeak (Sacc1)", lq_sacc, own_area=False))

    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    print(pd.DataFrame(rows).to_string(index=False))
    both = pd.concat([lq_vendor.assign(file=VENDOR_FILE), lq_sacc.assign(file=SACC_FILE)])
    print(
        f"\nBoth files: SPLIT {_pct(both['split'], both['found'])}, SHOULDER {_pct(both['shoulder'], both['found'])}, "
        f"narrow {_pct(both['width_fraction'] < 0.5, both['same'])}"
    )
    for name, seconds, n in timings:
        print(f"measure_injection {name}: {seconds:.3f} s for {n} transitions (first call, includes reading)")
    if args.details:
        details = pd.concat(
            [
                lq_vendor.assign(reference="vendor"),
                om_vendor.assign(reference="openms_vs_vendor"),
                lq_sacc.assign(reference="smartpeak"),
            ]
        )
        details.to_csv(args.details, index=False)


if __name__ == "__main__":
    main()
