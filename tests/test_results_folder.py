"""Reading a results folder back: read_results is the inverse of write_outputs, and a folder that
is not what a run wrote (missing, incomplete, edited by hand, from a newer lcmsquant) is refused
with one message naming each file and what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lcmsquant import __version__, cohort, report, validation
from lcmsquant.files import InputError
from lcmsquant.pipeline import run_batch
from lcmsquant.results import (
    COLUMN_TYPES,
    RESULTS_FORMAT,
    ResultsFolderError,
    output_tables,
    read_results,
    write_outputs,
)
from lcmsquant.simulate import SimulationOptions, simulate_batch

RERUN = "rerun `lcmsquant run` on the batch to write the folder again"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A simulated run with a worklist column of the lab's own (empty in places, and once the text
    "NA") and three manual overrides with an extra column, processed and written as `lcmsquant run` does."""
    folder = tmp_path_factory.mktemp("reader") / "batch"
    simulate_batch(folder, seed=23, options=SimulationOptions(n_unknowns=6))
    worklist = pd.read_csv(folder / "worklist.csv", dtype=str, keep_default_na=False)
    worklist["tray"] = ["NA" if i == 3 else "" if i % 2 else f"P{i}" for i in range(len(worklist))]
    worklist.to_csv(folder / "worklist.csv", index=False)
    unknown = worklist[worklist["sample_type"] == "unknown"]["file"].tolist()
    cal4 = worklist.loc[worklist["sample_id"] == "CAL4", "file"].iloc[0]
    (folder / "overrides.csv").write_text(
        "file,target,action,start_min,end_min,reason,analyst,ticket\n"
        f"{unknown[0]},M3-d4,integrate,1.70,2.00,baseline drawn under the tail,JD,T-17\n"
        f"{unknown[1]},M1,no_peak,,,noise only,JD,\n"
        f"{cal4},M3,exclude,,,spiking error,JD,T-18\n"
    )
    batch, run = run_batch(folder)
    write_outputs(batch, run, folder / "results", command=["lcmsquant", "run", str(folder)])
    return folder / "results", output_tables(batch, run)


@pytest.fixture
def copy(written, tmp_path) -> Path:
    """A copy of the written results folder a test may spoil."""
    return Path(shutil.copytree(written[0], tmp_path / "results"))


def _refused(folder: Path) -> list[str]:
    with pytest.raises(ResultsFolderError) as err:
        read_results(folder)
    return err.value.problems


# ---------------------------------------------------------------------------------------------
# The inverse of write_outputs


def test_every_table_comes_back_as_written_with_its_types(written):
    folder, tables = written
    outputs = read_results(folder)
    for name, attribute in (
        ("results.csv", "results"),
        ("peaks.csv", "peaks"),
        ("calibration.csv", "calibration"),
        ("audit.csv", "audit"),
        ("reanalysis.csv", "reanalysis"),
    ):
        pd.testing.assert_frame_equal(getattr(outputs, attribute), tables[name], check_exact=True, obj=name)
    assert outputs.summary == json.loads((folder / "run.json").read_text())
    assert outputs.session["command"] == ["lcmsquant", "run", str(folder.parent)]
    assert outputs.method["sha256"] == outputs.summary["provenance"]["method"]["sha256"]
    assert outputs.summary["results_format"] == RESULTS_FORMAT
    for name, table in tables.items():  # a column the pipeline adds must be given its type
        assert set(table.columns) - set(COLUMN_TYPES[name]) <= {"tray", "ticket"}, name


def test_empty_text_and_missing_numbers_stay_apart(written):
    results = read_results(written[0]).results
    assert results["tray"].dtype == results["flags"].dtype and results["tray"].notna().all()
    assert "" in set(results["tray"]) and "NA" in set(results["tray"])  # the text "NA" is not a missing value
    assert (results["exclusion_reason"] == "").any() and results["exclusion_reason"].notna().all()
    blq = results[results["flags"].str.contains("BLQ")]
    assert len(blq) and blq["concentration"].isna().all() and results["concentration"].dtype == np.float64
    assert results["injection"].dtype == np.int64 and results["reportable"].dtype == bool


def test_the_audit_trail_keeps_each_override_and_its_extra_column(written):
    audit = read_results(written[0]).audit
    assert audit["action"].tolist() == ["integrate", "no_peak", "exclude"]
    assert audit["ticket"].tolist() == ["T-17", "", "T-18"]
    assert audit["override_line"].dtype == np.int64 and audit["start_min"].dtype == np.float64
    assert np.isnan(audit["start_min"].iloc[2]) and audit["auto_status"].iloc[2] == ""
    assert set(COLUMN_TYPES["audit.csv"]) <= set(audit.columns)


def test_a_folder_written_before_audit_and_reanalysis_csv_is_still_read(copy):
    run = json.loads((copy / "run.json").read_text())
    del run["outputs"], run["results_format"]  # as run.json was before it recorded them
    (copy / "run.json").write_text(json.dumps(run))
    (copy / "audit.csv").unlink()
    (copy / "reanalysis.csv").unlink()
    outputs = read_results(copy)
    assert outputs.audit is None and outputs.reanalysis is None and len(outputs.results)


# ---------------------------------------------------------------------------------------------
# What is refused


def test_a_missing_folder_is_named(tmp_path):
    assert _refused(tmp_path / "nowhere") == [
        f"{tmp_path / 'nowhere'} is not a folder: give the results folder of a run (BATCH_DIR/results)"
    ]


def test_a_table_missing_from_the_set_makes_the_folder_incomplete(copy):
    (copy / "peaks.csv").unlink()
    assert _refused(copy) == [f"peaks.csv is missing, though run.json lists it: the folder is incomplete; {RERUN}"]


def test_a_table_edited_by_hand_is_refused_and_its_bad_cell_named(copy):
    lines = (copy / "peaks.csv").read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    cells = lines[4].rstrip("\n").split(",")
    cells[header.index("area")] = "n/a"
    lines[4] = ",".join(cells) + "\n"
    (copy / "peaks.csv").write_text("".join(lines))
    problems = _refused(copy)
    assert len(problems) == 2
    assert problems[0].startswith("peaks.csv is not the file run.json records (SHA-256 ")
    assert problems[0].endswith(f": the folder was edited by hand or is incomplete (files of two runs mixed); {RERUN}")
    assert problems[1] == f"peaks.csv line 5, column area: 'n/a' is not a number; {RERUN}"


def test_a_table_of_another_run_is_refused(copy, written, plasma_run):
    other = copy.parent / "other"
    folder, _, batch, result = plasma_run
    write_outputs(batch, result, other)
    shutil.copy(other / "results.csv", copy / "results.csv")
    problems = _refused(copy)
    assert len(problems) == 1 and problems[0].startswith("results.csv is not the file run.json records")


def test_a_file_that_is_not_csv_or_json_is_named(copy):
    (copy / "calibration.csv").write_bytes(b"\xff\xfe\x00garbage")
    (copy / "session.json").write_text("{ cut short")
    problems = _refused(copy)
    assert problems[0].startswith("calibration.csv is not the file run.json records")
    assert problems[1].startswith("calibration.csv: not a readable CSV ('utf-8' codec can't decode byte 0xff")
    assert problems[2].startswith("session.json: not valid JSON (") and problems[2].endswith(RERUN)


def test_a_run_json_of_a_newer_results_format_is_refused_alone(copy):
    run = json.loads((copy / "run.json").read_text())
    run.update(results_format=RESULTS_FORMAT + 1, lcmsquant="9.0.0")
    (copy / "run.json").write_text(json.dumps(run))
    (copy / "peaks.csv").unlink()  # a newer format may name its files otherwise: not reported
    assert _refused(copy) == [
        f"run.json: results format {RESULTS_FORMAT + 1} (lcmsquant 9.0.0), but lcmsquant {__version__} reads format "
        f"{RESULTS_FORMAT}: read it with the version that wrote it, or rerun `lcmsquant run` on the batch"
    ]


def test_a_run_json_without_provenance_is_not_a_run_summary(copy):
    run = json.loads((copy / "run.json").read_text())
    del run["provenance"]
    (copy / "run.json").write_text(json.dumps(run))
    assert _refused(copy) == [
        f"run.json: provenance.method.sha256 is missing: not a run.json of `lcmsquant run`; {RERUN}",
        f"run.json: provenance.inputs is not a list of files with their SHA-256; {RERUN}",
    ]


# ---------------------------------------------------------------------------------------------
# One reader behind validate, isr, cohort add and report


@pytest.mark.parametrize(
    "read, error",
    [
        (validation.read_validation_run, validation.ResultsError),
        (cohort.read_cohort_run, cohort.CohortError),
        (report.read_run_files, report.ReportError),
    ],
    ids=["validation", "cohort", "report"],
)
def test_every_command_refuses_an_edited_folder_with_the_same_words(read, error, copy):
    (copy / "reanalysis.csv").write_text((copy / "reanalysis.csv").read_text() + "\n")
    with pytest.raises(error) as err:
        read(copy)
    assert isinstance(err.value, InputError) and err.value.path == copy
    assert err.value.problems == _refused(copy)
    assert err.value.problems[0].startswith("reanalysis.csv is not the file run.json records")


def test_the_validate_command_says_so_without_a_traceback(copy, invoke):
    (copy / "audit.csv").unlink()
    done = invoke("validate", copy, "--out", copy.parent / "v")
    assert done.exit_code == 2 and "Traceback" not in done.stderr
    assert "audit.csv is missing, though run.json lists it" in " ".join(done.stderr.split())
    assert not (copy.parent / "v").exists()
