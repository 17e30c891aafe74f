"""Hostile files and faults around the report (issue 14, points 3 and 4, and run.json of point 8):
a report never describes other results than the tables beside it, `lcmsquant report` never
draws a file the run did not integrate, and a run.json of the wrong shape is refused by name."""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lcmsquant import report as report_module
from lcmsquant.audit_trail import TRAIL
from lcmsquant.cli import app
from lcmsquant.files import REPORT_HASH_META, _set_agrees, report_run_json_sha256
from lcmsquant.report import (
    REPORT_HTML,
    REPORT_PDF,
    ReportError,
    fmt,
    read_run_files,
    render_report,
    report_matches,
    write_pdf,
    write_report,
)
from lcmsquant.results import read_results
from lcmsquant.runs import process_batch
from lcmsquant.simulate import SimulationOptions, simulate_batch

RERUN = "rerun `lcmsquant run` on the batch to write the folder again"
# The results set and the folder's audit trail (appended, never replaced).
OUTPUTS = sorted(
    ["audit.csv", "calibration.csv", "peaks.csv", "reanalysis.csv", "results.csv", "run.json", "session.json", TRAIL]
)
OLD_PDF = b"%PDF-1.4 printed from the previous report\n"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A small simulated plasma batch processed as `lcmsquant run` does, report included; never
    modified (copy it)."""
    folder = tmp_path_factory.mktemp("hostile-report") / "batch"
    simulate_batch(folder, seed=7, matrix="plasma", options=SimulationOptions(n_unknowns=6))
    outcome = process_batch(folder, command=["lcmsquant", "run", str(folder)])
    assert outcome.ok and not outcome.report_problem, outcome
    return folder


@pytest.fixture
def batch(first_run, tmp_path) -> Path:
    """A copy of the batch with its results, for a test to change."""
    return Path(shutil.copytree(first_run, tmp_path / "batch"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _section(html: str, section_id: str) -> str:
    return re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S).group(1)


def _double_a_dilution(folder: Path) -> tuple[int, str, float]:
    """Dilute a reportable study sample twice as much in the worklist: injection, sample and its
    M1 concentration before."""
    results = read_results(folder / "results").results
    row = results[(results["sample_type"] == "unknown") & (results["analyte"] == "M1") & results["reportable"]].iloc[0]
    worklist = pd.read_csv(folder / "worklist.csv", dtype=str, keep_default_na=False)
    line = worklist["sample_id"] == row["sample_id"]
    worklist.loc[line, "dilution_factor"] = f"{2 * float(worklist.loc[line, 'dilution_factor'].iloc[0] or 1):g}"
    worklist.to_csv(folder / "worklist.csv", index=False)
    return int(row["injection"]), row["sample_id"], float(row["concentration"])


def _concentration(results: pd.DataFrame, injection: int) -> float:
    return float(results[(results["injection"] == injection) & (results["analyte"] == "M1")]["concentration"].iloc[0])


def _words(text: str) -> str:
    """Console output with the line breaks of its fixed width undone."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# 3. A report describes the tables beside it, or there is none


def test_a_report_that_cannot_be_drawn_during_a_run_leaves_no_report_of_other_results(batch, monkeypatch):
    out = batch / "results"
    (out / REPORT_PDF).write_bytes(OLD_PDF)
    injection, _, before = _double_a_dilution(batch)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report_module, "render_set", full_disk)  # the renderer's write fails, as on a full disk
    done = CliRunner().invoke(app, ["run", str(batch), "--jobs", "1"])
    assert done.exit_code == 0, done.output
    assert "Traceback" not in done.output
    assert (
        f"warning: report.html not written: OSError: [Errno 28] No space left on device (the results are "
        f"complete and the previous report was removed; write the report with `lcmsquant report {out}`)"
    ) in _words(done.output)
    assert "open report.html" not in done.output
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS  # old report.html and report.pdf gone, no temporary
    assert _concentration(read_results(out).results, injection) == pytest.approx(2 * before)  # the new tables


def test_a_rerun_replaces_the_report_and_removes_the_pdf_of_the_previous_results(batch):
    out = batch / "results"
    old_report = (out / REPORT_HTML).read_bytes()
    (out / REPORT_PDF).write_bytes(OLD_PDF)
    injection, sample, before = _double_a_dilution(batch)
    outcome = process_batch(batch, command=["lcmsquant", "run", str(batch)])
    assert outcome.ok and outcome.report_problem == "" and outcome.report_warnings == ()
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, REPORT_HTML])  # report.pdf removed
    html = (out / REPORT_HTML).read_text()
    assert report_run_json_sha256(html) == _sha(out / "run.json") != report_run_json_sha256(old_report)
    after = _concentration(read_results(out).results, injection)
    assert after == pytest.approx(2 * before)
    row = re.search(
        rf'<tr><td class="n">{injection}</td><td>{sample}</td>.*?<td>M1</td>.*?</tr>', _section(html, "samples")
    ).group(0)
    assert f">{fmt(after)}</td>" in row and f">{fmt(before)}</td>" not in row

    outcome = process_batch(batch, report=False)  # --no-report: the report of the previous run goes too
    assert outcome.ok and sorted(p.name for p in out.iterdir()) == OUTPUTS


def test_the_report_names_the_sha256_of_the_run_json_it_was_drawn_from(first_run, tmp_path):
    out = first_run / "results"
    html = (out / REPORT_HTML).read_text()
    digest = _sha(out / "run.json")
    assert f'<meta name="{REPORT_HASH_META}" content="{digest}">' in html[:500]
    assert report_run_json_sha256(html) == digest and report_matches(out)
    assert f'<td>run.json SHA-256</td><td class="mono">{digest}</td>' in _section(html, "provenance")
    # The same results give the same report, hash and all; only its audit trail differs, as the
    # report `run` drew was drawn before the trail held the entry of these results.
    redrawn = render_report(out)
    assert redrawn.replace(_section(redrawn, "audit-trail"), "") == html.replace(_section(html, "audit-trail"), "")

    copy = Path(shutil.copytree(out, tmp_path / "results"))
    run = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**run, "batch": "another batch"}, indent=2) + "\n")
    assert not report_matches(copy)
    assert not _set_agrees({"run.json": (copy / "run.json").read_bytes(), REPORT_HTML: html.encode()})
    with pytest.raises(ReportError) as err:
        write_pdf(copy)  # never printed from a report of other results (refused before Chromium is looked for)
    assert err.value.problems == [
        f"report.html was not drawn from the run.json beside it (it names another SHA-256, or none): "
        f"write it again first (`lcmsquant report {copy}`)"
    ]
    write_report(copy)  # `lcmsquant report` binds the report to run.json as it now is
    assert report_run_json_sha256((copy / REPORT_HTML).read_bytes()) == _sha(copy / "run.json") != digest
    assert report_matches(copy)


def test_lcmsquant_report_keeps_a_pdf_only_beside_the_report_it_was_printed_from(first_run, tmp_path):
    copy = Path(shutil.copytree(first_run / "results", tmp_path / "results"))
    write_report(copy)  # the report `run` drew lacks the run's trail entry; this one holds it
    (copy / REPORT_PDF).write_bytes(OLD_PDF)
    write_report(copy)  # the same results and trail give the same report: the PDF printed from it stays
    assert (copy / REPORT_PDF).read_bytes() == OLD_PDF
    write_report(copy, batch_dir=tmp_path / "gone")  # another report (no chromatograms): the PDF goes with the old one
    assert not (copy / REPORT_PDF).exists()
    assert "was not found, so the chromatograms are not drawn" in (copy / REPORT_HTML).read_text()


# ---------------------------------------------------------------------------------------------
# 4. The chromatograms drawn are those the run integrated


def test_lcmsquant_report_warns_of_a_swapped_mzml_and_does_not_draw_it(batch, cli):
    worklist = pd.read_csv(batch / "worklist.csv", dtype=str)
    swapped, other = worklist["file"].iloc[4], worklist["file"].iloc[5]  # CAL3 replaced by CAL4's file
    recorded = _sha(batch / swapped)
    shutil.copy(batch / other, batch / swapped)
    done = cli("report", batch / "results", "--batch", batch)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    warning = (
        f"warning: {swapped} (injection 5) changed since the run (SHA-256 {_sha(batch / other)[:12]}..., the run "
        f"read {recorded[:12]}...): its chromatograms are not drawn (rerun `lcmsquant run` on the batch to "
        f"integrate the files as they now are)"
    )
    assert _words(done.stderr) == warning
    chromatograms = _section((batch / "results" / REPORT_HTML).read_text(), "chromatograms")
    blocks = re.findall(r'<details class="inj".*?</details>', chromatograms, re.S)
    assert len(blocks) == len(worklist)
    undrawn = [
        b for b in blocks if f'· <span class="file"><span>{swapped}</span></span></span>' in b
    ]  # the summary names the file
    assert len(undrawn) == 1 and "not drawn: the file changed since the run" in undrawn[0]
    assert '<polyline class="tr"' not in undrawn[0] and undrawn[0].count(">not drawn</text>") == 9
    assert all(
        b.count('<polyline class="tr"') == 9 for b in blocks if b is not undrawn[0]
    )  # 3 analytes x quant, qual, IS
    assert (
        f"{swapped} (injection 5) changed since the run" in chromatograms.split("<details")[0]
    )  # said above the injections


def test_duplicate_chromatogram_ids_draw_the_trace_of_each_transition(first_run, tmp_path):
    """Every SRM chromatogram of every file named "SRM": the run matches them by Q1/Q3, and so
    must the report; it draws exactly what it draws for the same files with their own ids."""
    folder = Path(shutil.copytree(first_run, tmp_path / "batch", ignore=shutil.ignore_patterns("results")))
    for path in folder.glob("*.mzML"):
        text = path.read_text()
        text = re.sub(r'(<chromatogram index="\d+" id=")- SRM SIC [^"]*"', r'\1SRM"', text)
        path.write_text(re.sub(r'(<offset idRef=")- SRM SIC [^"]*"', r'\1SRM"', text))
    outcome = process_batch(folder, command=["lcmsquant", "run", str(folder)])
    assert outcome.ok and outcome.report_problem == "" and outcome.report_warnings == ()
    assert set(read_results(folder / "results").peaks["native_id"]) == {"SRM"}
    drawn = _section((folder / "results" / REPORT_HTML).read_text(), "chromatograms")
    assert drawn == _section((first_run / "results" / REPORT_HTML).read_text(), "chromatograms")
    first = re.search(r'<details class="inj".*?</details>', drawn, re.S).group(0)
    traces = re.findall(r'<polyline class="tr" points="([^"]*)"', first)
    in_file = (folder / "001_BLK-1.mzML").read_text().count('id="SRM"')
    assert len(traces) == 9 and len(set(traces)) == in_file == 8  # every trace of the file (two analytes share an IS)


# ---------------------------------------------------------------------------------------------
# 8. run.json of the wrong shape is refused, naming the field


def _set(run: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        run = run[key]
    run[last] = value


WRONG_TYPES = {
    "outputs is text": ("outputs", "x", "outputs is the text 'x', not an object"),
    "inputs is a number": ("provenance.inputs", 5, "provenance.inputs is the number 5, not a list"),
    "acceptance is a list": ("provenance.acceptance", [], "provenance.acceptance is a list, not an object"),
    "a limit is text": (
        "provenance.acceptance.qc_tolerance_pct",
        "15",
        "provenance.acceptance.qc_tolerance_pct is the text '15', not a number",
    ),
    "a limit is NaN": (
        "provenance.acceptance.lloq_tolerance_pct",
        float("nan"),
        "provenance.acceptance.lloq_tolerance_pct is NaN, not a number",
    ),
    "the IS band has one end": (
        "provenance.acceptance.is_response_band_pct",
        [50],
        "provenance.acceptance.is_response_band_pct holds 1 number(s), not 2 (lowest and highest %)",
    ),
    "a count is text": (
        "sample_counts.M1.unknowns",
        "6",
        "sample_counts.M1.unknowns is the text '6', not a whole number",
    ),
    "the verdict is text": ("run_accepted", "true", "run_accepted is the text 'true', not true or false"),
    "the results format is text": ("results_format", "1", "results_format is the text '1', not a whole number"),
    "analytes is a list": ("analytes", [], "analytes is a list, not an object"),
    "the method is text": (
        "provenance.method",
        "flumatinib",
        "provenance.method is the text 'flumatinib', not an object",
    ),
    "matrices is text": (
        "provenance.calibrator_sets",
        [{"name": "plasma", "matrices": "plasma", "file": "p.csv", "sha256": ""}],
        "provenance.calibrator_sets[0].matrices is the text 'plasma', not a list",
    ),
    "an injection error names no injection": (
        "injection_errors",
        {"first": "unreadable"},
        "injection_errors names 'first', not an injection number",
    ),
}


@pytest.mark.parametrize("path, value, problem", WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_a_run_json_field_of_the_wrong_type_is_refused_by_name(path, value, problem, first_run, tmp_path):
    copy = Path(shutil.copytree(first_run / "results", tmp_path / "results"))
    run = json.loads((copy / "run.json").read_text())
    _set(run, path, value)
    (copy / "run.json").write_text(json.dumps(run))
    with pytest.raises(ReportError) as err:
        render_report(copy)
    assert err.value.path == copy and err.value.problems == [f"run.json: {problem}; {RERUN}"]
    done = CliRunner().invoke(app, ["report", str(copy)])
    assert done.exit_code == 2 and isinstance(done.exception, SystemExit)
    assert f"run.json: {problem}; {RERUN}" in _words(done.output) and "Traceback" not in done.output
    assert (copy / REPORT_HTML).read_bytes() == (first_run / "results" / REPORT_HTML).read_bytes()  # nothing written


def test_rules_that_are_not_rules_are_refused_by_the_command_without_a_traceback(first_run, tmp_path, cli):
    copy = Path(shutil.copytree(first_run / "results", tmp_path / "results"))
    run = json.loads((copy / "run.json").read_text())
    run["rules"] = ["calibration curve fitted", 7, {k: v for k, v in run["rules"][0].items() if k != "passed"}]
    (copy / "run.json").write_text(json.dumps(run))
    done = cli("report", copy)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert _words(done.stderr) == (
        f"error: {copy}: 3 problem(s) in the results folder: "
        f"- run.json: rules[0] is the text 'calibration curve fitted', not an object; {RERUN} "
        f"- run.json: rules[1] is the number 7, not an object; {RERUN} "
        f"- run.json: rules[2] has no passed; {RERUN}"
    )


UNCHECKED = {
    "outputs empty": (
        {},
        "outputs does not list results.csv, peaks.csv, calibration.csv, audit.csv, reanalysis.csv, "
        "so the tables cannot be checked against their SHA-256",
    ),
    "outputs missing": (None, "outputs is missing: the tables cannot be checked against their SHA-256"),
    "a table unlisted": (
        "reanalysis.csv",
        "outputs does not list reanalysis.csv, so the tables cannot be checked against their SHA-256",
    ),
}


@pytest.mark.parametrize("outputs, problem", UNCHECKED.values(), ids=UNCHECKED.keys())
def test_a_run_json_that_does_not_list_every_table_is_refused(outputs, problem, first_run, tmp_path):
    """Without the tables' SHA-256 a table edited by hand would pass: such a run.json is refused
    with the tables it leaves out (and the edited table is then not read)."""
    copy = Path(shutil.copytree(first_run / "results", tmp_path / "results"))
    run = json.loads((copy / "run.json").read_text())
    if outputs is None:
        del run["outputs"]
    elif isinstance(outputs, str):
        del run["outputs"][outputs]
    else:
        run["outputs"] = outputs
    (copy / "run.json").write_text(json.dumps(run))
    (copy / "reanalysis.csv").write_text((copy / "reanalysis.csv").read_text() + "\n")  # edited by hand
    with pytest.raises(ReportError) as err:
        read_run_files(copy)
    assert err.value.problems == [f"run.json: {problem}; {RERUN}"]
