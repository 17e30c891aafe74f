"""Runs without a calibration: a method without calibrator sets (as imported from a transition
list) integrates peaks only, on any batch; a batch without calibrator injections has no curve
and says so. Either way the results are written, read back and reported."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from lcmsquant.batch import load_batch
from lcmsquant.method import PEAKS_ONLY, default_method_path
from lcmsquant.pipeline import BLOCKING_FLAGS, run_batch
from lcmsquant.report import render_report, write_report
from lcmsquant.results import read_results, write_outputs
from lcmsquant.vocabulary import RuleId

SACC = "170808_Jonathan_yeast_Sacc1_1x.mzML"
RAW = "RawDataProcessor_mzML_1.mzML"
# Flags that only a curve can give: none of them in a run without one.
CALIBRATION_FLAGS = {"BLQ", "ALQ", "OFF_CURVE", "REJECTED", "EXCLUDED", "QC_FAIL", "DILUTION_QC"}
WORKLIST_HEADER = "file,sample_id,sample_type,level,matrix,subject_id,visit,timepoint,dilution_factor"


def _peaks_only_method(tmp_path, **integration) -> str:
    """The shipped flumatinib method without its [calibrator_sets] tables."""
    text = default_method_path().read_text()
    text = re.sub(r"\[calibrator_sets\.\w+\]\nfile = .*\nmatrices = .*\n\n", "", text)
    assert "calibrator_sets" not in text
    for key, value in integration.items():
        text = re.sub(rf"(?m)^{key} = \S+", f"{key} = {value}", text)
    path = tmp_path / "peaks-only.toml"
    path.write_text(text)
    return path


def _flags(table: pd.DataFrame) -> set[str]:
    return {f for flags in table["flags"] for f in flags.split(";") if f}


def _section(html: str, section_id: str) -> str:
    start = html.index(f'<section id="{section_id}">')
    return html[start : html.index("</section>", start)]


# ---------------------------------------------------------------------------------------------
# A method without calibrator sets


def test_a_method_without_calibrator_sets_integrates_every_injection_and_quantifies_none(plasma_batch, tmp_path):
    """The same peaks as a calibrated run of the batch, with no curve, concentration or verdict;
    even with no_peak_as_blq a missing peak is not BLQ, for there is no LLOQ."""
    method = _peaks_only_method(tmp_path, no_peak_as_blq="true")
    _, calibrated = run_batch(plasma_batch)
    batch, result = run_batch(plasma_batch, method)

    assert batch.method.peaks_only and "has no [calibrator_sets]" in result.peaks_only
    assert result.verdicts == {} and result.rules == () and result.calibration.empty
    results, reference = result.results, calibrated.results
    for column in ("rt_min", "area", "is_area", "area_ratio", "qualifier_area", "sn"):
        assert np.array_equal(results[column], reference[column], equal_nan=True), column
    assert results["back_calculated"].isna().all() and results["concentration"].isna().all()
    assert not results["reportable"].any() and (results["calibrator_set"] == "").all()
    assert results["flags"].str.contains("NO_PEAK").any()  # the blanks, and study samples without a peak
    assert not _flags(results) & CALIBRATION_FLAGS
    assert _flags(results) == _flags(reference) - CALIBRATION_FLAGS  # the peak flags stay


def test_a_peaks_only_run_is_written_read_back_and_reported_as_such(plasma_batch, tmp_path):
    batch, result = run_batch(plasma_batch, _peaks_only_method(tmp_path))
    out = tmp_path / "results"
    write_outputs(batch, result, out)
    files = read_results(out)
    assert files.summary["peaks_only"] == result.peaks_only and files.summary["run_accepted"] is False
    assert files.summary["analytes"] == {} and files.summary["rules"] == []
    assert list(files.calibration.columns)[:2] == ["analyte", "calibrator_set"] and files.calibration.empty
    assert files.results["area"].notna().any() and files.results["concentration"].isna().all()

    write_report(out)
    html = (out / "report.html").read_text()
    assert "<title>Run report: batch (peaks only)</title>" in html
    verdict = _section(html, "verdict")
    assert PEAKS_ONLY.capitalize() in verdict and "has no [calibrator_sets]" in verdict
    assert "REJECTED" not in verdict and "Run rejected" not in verdict
    assert "No calibration" in _section(html, "calibration")
    assert "not assessed in a peaks-only run" in _section(html, "checks")
    samples = _section(html, "samples")
    for injection in batch.injections:  # calibrators, QCs and blanks too: every injection is listed
        assert f">{injection.sample_id}<" in samples


# ---------------------------------------------------------------------------------------------
# A method with calibrator sets, a batch without calibrators


def test_a_batch_without_calibrator_injections_has_no_curve_and_says_why(plasma_batch):
    worklist = pd.read_csv(plasma_batch / "worklist.csv", dtype=str, keep_default_na=False)
    worklist[worklist["sample_type"] != "calibrator"].to_csv(plasma_batch / "worklist.csv", index=False)
    batch, result = run_batch(plasma_batch)
    assert not result.peaks_only

    calibration = result.calibration.set_index("analyte")
    assert list(calibration.index) == ["flumatinib", "M1", "M3"]
    assert (calibration["model"] == "").all() and not calibration["accepted"].any()
    assert calibration["problem"].str.startswith("no calibrator injection of set 'plasma' in the batch").all()
    assert all(not v["accepted"] for v in result.verdicts.values())
    unknowns = result.results[result.results["sample_type"] == "unknown"]
    assert unknowns["flags"].str.contains("REJECTED").all() and unknowns["area"].notna().any()

    out = plasma_batch / "results"
    write_outputs(batch, result, out)
    assert len((out / "calibration.csv").read_bytes()) > 100  # was a 1-byte file the report refused
    html = render_report(out)
    assert "no calibrator injection of set &#39;plasma&#39; in the batch" in _section(html, "verdict")
    assert "Run rejected for flumatinib (plasma), M1 (plasma), M3 (plasma)" in html


def test_a_batch_calibrators_csv_makes_a_peaks_only_method_quantify_without_qc_levels(plasma_batch, tmp_path):
    """The issue's user: a method imported from a transition list, nominal concentrations of the
    calibrators in the batch folder, no QCs injected, so no QC level to list. (Without a matrix
    column the file makes one set per matrix of the batch: here plasma only.)"""
    shipped = load_batch(plasma_batch).method.calibrator_set_for("plasma").nominals
    shipped[shipped["level"].str.startswith("CAL")].to_csv(plasma_batch / "calibrators.csv", index=False)
    worklist = pd.read_csv(plasma_batch / "worklist.csv", dtype=str, keep_default_na=False)
    worklist[(worklist["sample_type"] != "qc") & (worklist["matrix"] == "plasma")].to_csv(
        plasma_batch / "worklist.csv", index=False
    )

    batch, result = run_batch(plasma_batch, _peaks_only_method(tmp_path))
    assert not result.peaks_only and set(result.calibration["model"]) == {"linear"}
    unknowns = result.results[result.results["sample_type"] == "unknown"]
    assert unknowns["back_calculated"].notna().all()
    # A curve, but ICH M10 accepts no run without QCs: the verdict says so, rule by rule.
    failing = {r.id for r in result.rules if r.critical and not r.passed}
    assert failing == {RuleId.QCS_PASSING} and not any(v["accepted"] for v in result.verdicts.values())


# ---------------------------------------------------------------------------------------------
# End to end on the real SCIEX files, as the user ran them


@pytest.fixture(scope="module")
def sciex_peaks_only(sciex_dir, tmp_path_factory, invoke):
    """`lcmsquant method import traML.csv`, then `lcmsquant run` of a batch of both real files
    (study samples only) with that method: (CliRunner result, results folder)."""
    root = tmp_path_factory.mktemp("sciex-peaks-only")
    done = invoke("method", "import", sciex_dir / "traML.csv", "-o", root / "yeast.toml")
    assert done.exit_code == 0, done.stderr
    assert "runs peaks only" in " ".join(done.stdout.split())  # rich wraps long lines
    batch = root / "batch"
    batch.mkdir()
    for name in (SACC, RAW):
        (batch / name).symlink_to(sciex_dir / name)
    (batch / "worklist.csv").write_text(
        f"{WORKLIST_HEADER}\n{SACC},Sacc1,unknown,,plasma,,,,\n{RAW},BloodProject01-QC-Broth-1,unknown,,plasma,,,,\n"
    )
    return invoke("run", batch, "--method", root / "yeast.toml", "--jobs", "1"), batch / "results"


def test_a_peaks_only_run_of_the_real_files_finishes_and_says_so(sciex_peaks_only):
    done, _ = sciex_peaks_only
    assert done.exit_code == 0, done.stderr
    assert "Traceback" not in done.stderr
    summary = " ".join(done.stdout.split())  # rich wraps long lines
    assert f"Run summary: {PEAKS_ONLY}" in summary and "has no [calibrator_sets]" in summary
    assert "2 injection(s) x 115 analyte(s): quantifier peak found" in summary


def test_the_real_peaks_only_results_hold_areas_ratios_rts_and_flags(sciex_peaks_only):
    _, out = sciex_peaks_only
    files = read_results(out)
    results = files.results
    assert len(results) == 2 * 115
    found = results[results["area"].notna()]
    assert len(found) > 0.7 * len(results)  # most compounds of a yeast extract are there
    assert found["rt_min"].notna().all() and (found["area"] > 0).all()
    assert found["area_ratio"].notna().any() and (results["flags"] != "").any()
    assert results["concentration"].isna().all() and not results["reportable"].any()
    assert not _flags(results) & CALIBRATION_FLAGS and _flags(results) & set(BLOCKING_FLAGS) <= {
        "NO_DATA",
        "NO_PEAK",
        "NO_IS",
    }
    assert files.calibration.empty and json.loads((out / "run.json").read_text())["peaks_only"]
    # dgmp (Q1 346.002 -> 79) is read from its own trace, not from amp's (346 -> 79)
    peaks = files.peaks[files.peaks["injection"] == 1].set_index("transition")
    assert "Q1=346.002 Q3=79 " in peaks.loc["dgmp quantifier", "native_id"]


def test_the_real_peaks_only_report_says_peaks_only(sciex_peaks_only):
    _, out = sciex_peaks_only
    html = (out / "report.html").read_text()
    assert "(peaks only)</title>" in html
    verdict = _section(html, "verdict")
    assert PEAKS_ONLY.capitalize() in verdict and "no ICH M10 verdict" in verdict
    assert ">dgmp<" in verdict  # the per-analyte overview of what was found
    assert "gsn" in _section(html, "samples") and "NO_PEAK" in _section(html, "samples")
