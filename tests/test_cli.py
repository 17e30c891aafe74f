"""The `lcmsquant` command as a chemist uses it: exit codes, messages, files, reruns."""

import json
import os
from pathlib import Path

import pandas as pd

import lcmsquant
from lcmsquant.method import default_method_path

REQUIRED_COLUMNS = [
    "file",
    "sample_id",
    "sample_type",
    "level",
    "matrix",
    "subject_id",
    "visit",
    "timepoint",
    "dilution_factor",
    "analyte",
    "rt_min",
    "area",
    "is_area",
    "area_ratio",
    "sn",
    "concentration",
    "nominal",
    "accuracy_pct",
    "flags",
]
DETERMINISTIC = ("results.csv", "peaks.csv", "calibration.csv", "reanalysis.csv", "run.json")


def test_version(invoke):
    done = invoke("--version")
    assert done.exit_code == 0 and done.stdout.strip() == f"lcmsquant {lcmsquant.__version__}"


def test_run_writes_results_and_prints_the_summary(plasma_batch, invoke):
    done = invoke("run", plasma_batch)
    assert done.exit_code == 0, done.stderr
    for analyte in ("flumatinib", "M1", "M3"):
        assert analyte in done.stdout
    assert "accepted" in done.stdout and "lin 1/x²" in done.stdout
    out = plasma_batch / "results"
    results = pd.read_csv(out / "results.csv")
    assert set(REQUIRED_COLUMNS) <= set(results.columns)
    worklist = pd.read_csv(plasma_batch / "worklist.csv")
    assert len(results) == 3 * len(worklist)
    summary = json.loads((out / "run.json").read_text())
    assert summary["run_accepted"] is True
    assert len(summary["provenance"]["inputs"]) == len(worklist) + 1
    assert all(len(item["sha256"]) == 64 for item in summary["provenance"]["inputs"])
    assert not list(out.glob(".*tmp"))  # no temporary file left behind
    assert "Run accepted" in (out / "report.html").read_text()  # the reviewer's report comes with every run


def test_the_summary_names_each_failing_rule_that_does_not_reject_its_analyte(tmp_path):
    """A study sample's IS response outside the band does not reject the run (ICH M10 3.3), but
    the chemist reading the summary must see it without opening the report."""
    from typer.testing import CliRunner

    from lcmsquant.cli import app
    from lcmsquant.simulate import SimulationOptions, simulate_batch

    simulate_batch(tmp_path / "design", seed=7)
    worklist = pd.read_csv(tmp_path / "design" / "worklist.csv")
    dropped = tuple(worklist.loc[worklist["sample_type"] == "unknown", "sample_id"][:6])
    simulate_batch(tmp_path / "batch", seed=7, options=SimulationOptions(is_dropout=dropped))
    done = CliRunner().invoke(app, ["run", str(tmp_path / "batch"), "--no-report", "--jobs", "1"])
    assert done.exit_code == 0, done.output
    warned = [" ".join(line.split()) for line in done.output.splitlines() if line.startswith("warning:")]
    for analyte in ("flumatinib", "M1", "M3"):
        assert (
            f"warning: {analyte} (plasma): IS response within the band, 6 of 46 injections outside "
            "(limit 50-150 % of the calibrator/QC mean): does not reject the analyte; see report.html"
        ) in warned
    assert "accepted" in done.output and "rejected" not in done.output


def test_the_run_summary_fits_an_80_column_terminal_without_cutting_a_cell(plasma_run):
    from rich.console import Console

    from lcmsquant.cli import summary_table

    _, _, _, result = plasma_run
    terminal = Console(width=80, record=True, color_system=None)
    terminal.print(summary_table(result))
    lines = terminal.export_text().splitlines()
    assert "…" not in "".join(lines) and max(map(len, (line.rstrip() for line in lines))) <= 80
    header = next(line for line in lines if line.startswith("analyte"))
    assert header.split() == [
        "analyte",
        "set",
        "curve",
        "r²",
        "QCs",
        "ok",
        "verdict",
        "quant",
        "BLQ",
        "ALQ",
        "flag",
        "redo",
    ]


def test_help_shows_choices_and_flags_as_such(invoke):
    simulate = invoke("simulate", "--help").stdout
    assert "--matrix <plasma|csf>" in simulate and "--acquisition <instrument|smooth>" in simulate
    assert "<bool>" not in simulate and "--matrix-peak  " in simulate
    assert "--format <csv|parquet|sdtm>" in invoke("cohort", "export", "--help").stdout


def test_rerun_gives_byte_identical_outputs(plasma_batch, tmp_path, invoke):
    first, second = tmp_path / "first", tmp_path / "second"
    assert invoke("run", plasma_batch, "--out", first).exit_code == 0
    assert invoke("run", plasma_batch, "--out", second).exit_code == 0
    for name in DETERMINISTIC:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "session.json").is_file()
    assert not (plasma_batch / "results").exists()


def test_a_run_with_workers_writes_what_a_serial_run_writes_and_leaves_nothing_behind(plasma_batch, tmp_path, cli):
    """The command stops its worker processes before it leaves, so multiprocessing has no leaked
    semaphores to warn about on stderr, and it removes multiprocessing's temporary folder (the
    fork server's socket), which leaving with os._exit would otherwise skip."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = dict(os.environ, TMPDIR=str(temporary))
    serial = cli("run", plasma_batch, "--out", tmp_path / "serial", "--jobs", "1", "--no-report")
    parallel = cli("run", plasma_batch, "--out", tmp_path / "parallel", "--jobs", "2", "--no-report", env=env)
    assert serial.returncode == parallel.returncode == 0, parallel.stderr
    for name in DETERMINISTIC:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes(), name
    assert "Warning" not in parallel.stderr and "leaked" not in parallel.stderr, parallel.stderr
    assert list(temporary.iterdir()) == []


def test_no_report_gives_the_same_tables_and_removes_a_report_that_no_longer_fits(plasma_batch, tmp_path, invoke):
    out = tmp_path / "out"
    assert invoke("run", plasma_batch, "--out", out).exit_code == 0
    tables = {name: (out / name).read_bytes() for name in DETERMINISTIC}
    done = invoke("run", plasma_batch, "--out", out, "--no-report")
    assert done.exit_code == 0 and "report.html" not in done.stdout
    assert {name: (out / name).read_bytes() for name in DETERMINISTIC} == tables
    assert not (out / "report.html").exists()


def test_unusable_batch_exits_2_with_every_problem_and_writes_nothing(plasma_batch, invoke):
    worklist = plasma_batch / "worklist.csv"
    lines = worklist.read_text().splitlines()
    lines[3] = lines[3].replace("calibrator", "standard")
    lines[5] = lines[5].replace(".mzML", ".mzXML", 1)
    worklist.write_text("\n".join(lines) + "\n")
    done = invoke("run", plasma_batch)
    assert done.exit_code == 2
    assert "worklist.csv line 4: unknown sample_type 'standard'" in done.stderr
    assert "worklist.csv line 6: file" in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (plasma_batch / "results").exists()


def test_missing_folder_and_bad_method_exit_2_without_traceback(tmp_path, plasma_batch, invoke):
    done = invoke("run", tmp_path / "nowhere")
    assert done.exit_code == 2 and "is not a folder" in done.stderr
    bad = tmp_path / "bad.toml"
    text = default_method_path().read_text().replace('weighting = "1/x^2"  ', 'weighting = "1/x^3"  ')
    bad.write_text(text.replace('file = "../calibrators/', f'file = "{default_method_path().parents[1]}/calibrators/'))
    done = invoke("run", plasma_batch, "--method", bad)
    assert done.exit_code == 2
    assert "[calibration].weighting: unknown value '1/x^3'" in done.stderr
    assert "Traceback" not in done.stderr


def test_corrupt_injection_is_a_warning_not_a_failure(plasma_batch, invoke):
    victim = sorted(plasma_batch.glob("*.mzML"))[-5]
    victim.write_bytes(victim.read_bytes()[:5000])
    done = invoke("run", plasma_batch)
    assert done.exit_code == 0
    assert f"{victim.name}: not a readable mzML file" in done.stderr
    results = pd.read_csv(plasma_batch / "results" / "results.csv")
    assert results.loc[results["file"] == victim.name, "flags"].str.contains("NO_DATA").all()


def test_simulate_writes_a_batch_and_its_truth_beside_it(tmp_path, invoke):
    done = invoke("simulate", tmp_path / "sim", "--seed", 3, "--matrix", "csf", "--unknowns", 8)
    assert done.exit_code == 0, done.stderr
    assert (tmp_path / "sim" / "worklist.csv").is_file() and (tmp_path / "sim_truth.csv").is_file()
    assert invoke("simulate", tmp_path / "x", "--matrix", "urine").exit_code == 2


def test_simulate_looks_like_the_instrument_and_adds_the_situations(tmp_path, invoke):
    from lcmsquant.chromatograms import read_traces

    done = invoke(
        "simulate",
        tmp_path / "sim",
        "--seed",
        2,
        "--unknowns",
        6,
        "--matrix-peak",
        "--neighbour-peak",
        "--rt-offset",
        "-0.4",
    )
    assert done.exit_code == 0, done.stderr
    worklist = pd.read_csv(tmp_path / "sim" / "worklist.csv")
    trace = read_traces(tmp_path / "sim" / worklist["file"].iloc[0])[0]
    # the instrument acquisition: whole cps, a cycle time that changes, a window widened by 0.4 min
    assert (trace.intensity == trace.intensity.round()).all()
    assert len(set((trace.time[1:] - trace.time[:-1]).round(5))) > 1
    assert trace.end - trace.start > 1.75
    smooth = invoke("simulate", tmp_path / "smooth", "--unknowns", 6, "--acquisition", "smooth")
    assert smooth.exit_code == 0, smooth.stderr
    for bad in (("--rt-offset", "2"), ("--acquisition", "perfect"), ("--unknowns", "3")):
        done = invoke("simulate", tmp_path / "x", *bad)
        assert done.exit_code == 2 and bad[0] in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()


def test_shipped_example_runs(tmp_path, cli):
    example = Path(__file__).resolve().parents[1] / "examples" / "plasma-batch"
    done = cli("run", example, "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    results = pd.read_csv(tmp_path / "results.csv")
    assert results.loc[results["sample_type"] == "unknown", "concentration"].notna().sum() >= 20


def test_shipped_method_is_found_inside_an_installed_package():
    path = default_method_path()
    assert path.is_file() and path.name == "flumatinib.toml"
    package = Path(lcmsquant.__file__).resolve().parent
    if "site-packages" in package.parts:  # a non-editable install, as in CI
        assert package in path.parents


def test_method_import_writes_a_loadable_method(sciex_dir, tmp_path, invoke):
    out = tmp_path / "methods" / "yeast.toml"
    done = invoke("method", "import", sciex_dir / "traML.csv", "-o", out)
    assert done.exit_code == 0, done.stderr
    from lcmsquant.method import load_method

    assert len(load_method(out).analytes) == 115
    bad = tmp_path / "bad.csv"
    bad.write_text("transition_group_id,PrecursorMz\nx,abc\n")
    done = invoke("method", "import", bad, "-o", tmp_path / "bad.toml")
    assert done.exit_code == 2 and "missing required column" in done.stderr
    assert not (tmp_path / "bad.toml").exists()


def test_simulate_refuses_a_folder_that_holds_earlier_results(tmp_path, invoke):
    (tmp_path / "batch" / "results").mkdir(parents=True)
    done = invoke("simulate", tmp_path / "batch", "--unknowns", "6")
    assert done.exit_code == 2 and "holds the results of an earlier run" in done.stderr
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["results"]
