"""Manual integration: applied on every run, shown as MANUAL, audited, and checked row by row."""

import pandas as pd
import pytest

from lcmsquant.batch import BatchError, load_batch
from lcmsquant.overrides import OverrideError
from lcmsquant.pipeline import run_batch
from lcmsquant.results import write_outputs

HEADER = "file,target,action,start_min,end_min,reason,analyst,date\n"


def _unknown(folder, n=0):
    worklist = pd.read_csv(folder / "worklist.csv", dtype=str, keep_default_na=False)
    return worklist[worklist["sample_type"] == "unknown"].iloc[n]


def test_manual_boundaries_replace_the_automatic_peak_and_are_audited(plasma_batch, tmp_path):
    sample = _unknown(plasma_batch, 3)
    _, before = run_batch(plasma_batch)
    auto = before.peaks[
        (before.peaks["injection"] == int(sample.name) + 1) & (before.peaks["transition"] == "flumatinib quantifier")
    ].iloc[0]
    # The analyst cuts the tail: integrate from the start to a quarter of the way down the tail.
    end = auto["rt_min"] + 0.25 * (auto["end_min"] - auto["rt_min"])
    (plasma_batch / "overrides.csv").write_text(
        HEADER
        + f"{sample['file']},flumatinib,integrate,{auto['start_min']:.4f},{end:.4f},tail cut by co-eluting peak,JD,2026-11-24\n"
    )
    batch, after = run_batch(plasma_batch)
    row = after.results[
        (after.results["sample_id"] == sample["sample_id"]) & (after.results["analyte"] == "flumatinib")
    ].iloc[0]
    assert "MANUAL" in row["flags"].split(";")
    assert 0 < row["area"] < 0.95 * auto["area"]
    others = after.results[after.results["sample_id"] != sample["sample_id"]]
    assert not others["flags"].str.contains("MANUAL").any()

    write_outputs(batch, after, tmp_path)
    audit = pd.read_csv(tmp_path / "audit.csv")
    assert len(audit) == 1
    entry = audit.iloc[0]
    assert (entry["transition"], entry["action"], entry["analyst"], entry["date"]) == (
        "flumatinib quantifier",
        "integrate",
        "JD",
        "2026-11-24",
    )
    assert entry["auto_area"] == pytest.approx(auto["area"], rel=1e-6)
    assert entry["manual_area"] == pytest.approx(row["area"], rel=1e-6)


def test_no_peak_override_empties_the_result(plasma_batch):
    sample = _unknown(plasma_batch, 5)
    (plasma_batch / "overrides.csv").write_text(HEADER + f"{sample['file']},M1 quantifier,no peak,,,interference,JD,\n")
    _, result = run_batch(plasma_batch)
    row = result.results[
        (result.results["sample_id"] == sample["sample_id"]) & (result.results["analyte"] == "M1")
    ].iloc[0]
    assert {"NO_PEAK", "MANUAL"} <= set(row["flags"].split(";"))
    assert pd.isna(row["concentration"])


def test_rerun_with_overrides_gives_identical_results(plasma_batch, tmp_path):
    sample = _unknown(plasma_batch, 2)
    (plasma_batch / "overrides.csv").write_text(HEADER + f"{sample['file']},M3-d4,integrate,1.70,2.00,baseline,JD,\n")
    for out in ("a", "b"):
        batch, result = run_batch(plasma_batch)
        write_outputs(batch, result, tmp_path / out)
    for name in ("results.csv", "peaks.csv", "audit.csv", "run.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bad_override_rows_are_refused_with_their_line(plasma_batch):
    sample = _unknown(plasma_batch)
    (plasma_batch / "overrides.csv").write_text(
        HEADER
        + f"{sample['file']},flumatinib,integrate,2.7,2.5,reversed,JD,\n"  # line 2
        + "nowhere.mzML,flumatinib,no_peak,,,x,JD,\n"  # line 3
        + f"{sample['file']},imatinib,no_peak,,,x,JD,\n"  # line 4
        + f"{sample['file']},M1,integrate,2.3,2.6,,JD,\n"  # line 5: no reason
        + f"{sample['file']},M3,erase,,,x,JD,\n"  # line 6
        + f"{sample['file']},M3 quantifier,no_peak,,,x,JD,\n"  # line 7
        + f"{sample['file']},M3,no_peak,,,again,JD,\n"  # line 8: M3 means its quantifier
    )
    with pytest.raises(BatchError) as err:
        load_batch(plasma_batch)
    problems = "\n".join(err.value.problems)
    assert "overrides.csv line 2: start_min 2.7 is not before end_min 2.5" in problems
    assert "overrides.csv line 3: file 'nowhere.mzML' is not in the worklist" in problems
    assert "overrides.csv line 4: target 'imatinib' is no analyte" in problems
    assert "overrides.csv line 5: reason is empty" in problems
    assert "overrides.csv line 6: action 'erase' is not one of integrate, no_peak" in problems
    assert "overrides.csv line 8: M3 of" in problems and "already overridden on line 7" in problems


def test_override_window_without_data_is_an_error_not_ignored(plasma_batch):
    sample = _unknown(plasma_batch)
    (plasma_batch / "overrides.csv").write_text(HEADER + f"{sample['file']},flumatinib,integrate,5.0,5.5,late,JD,\n")
    with pytest.raises(OverrideError, match="line 2: no data of flumatinib quantifier"):
        run_batch(plasma_batch)


def test_an_excluded_calibrator_leaves_that_curve_and_is_audited(plasma_batch, tmp_path):
    worklist = pd.read_csv(plasma_batch / "worklist.csv", dtype=str, keep_default_na=False)
    cal3 = worklist[worklist["sample_id"] == "CAL3"].iloc[0]
    (plasma_batch / "overrides.csv").write_text(
        HEADER + f"{cal3['file']},M1,exclude,,,spiking error in the prep log,JD,2026-11-25\n"
    )
    batch, run = run_batch(plasma_batch)
    cals = run.results[run.results["sample_id"] == "CAL3"].set_index("analyte")
    assert (
        "EXCLUDED" in cals.loc["M1", "flags"]
        and cals.loc["M1", "exclusion_reason"] == "excluded by JD: spiking error in the prep log"
    )
    assert "EXCLUDED" not in cals.loc["flumatinib", "flags"] and "EXCLUDED" not in cals.loc["M3", "flags"]
    calibration = run.calibration.set_index("analyte")
    assert calibration.loc["M1", "n_used"] == calibration.loc["flumatinib", "n_used"] - 1
    write_outputs(batch, run, tmp_path)
    entry = pd.read_csv(tmp_path / "audit.csv").iloc[0]
    assert (entry["transition"], entry["action"], entry["reason"]) == ("M1", "exclude", "spiking error in the prep log")
    assert entry["accuracy_calibrator_pct"] == pytest.approx(cals.loc["M1", "accuracy_pct"], abs=0.1)


def test_only_a_calibrator_can_be_excluded_and_only_for_an_analyte(plasma_batch):
    sample = _unknown(plasma_batch)
    worklist = pd.read_csv(plasma_batch / "worklist.csv", dtype=str, keep_default_na=False)
    cal1 = worklist[worklist["sample_id"] == "CAL1"].iloc[0]
    (plasma_batch / "overrides.csv").write_text(
        HEADER + f"{sample['file']},M1,exclude,,,outlier,JD,\n" + f"{cal1['file']},M3-d4,exclude,,,bad IS,JD,\n"
    )
    with pytest.raises(BatchError) as err:
        load_batch(plasma_batch)
    problems = "\n".join(err.value.problems)
    assert f"line 2: exclude applies to calibrators only; '{sample['file']}' is sample type unknown" in problems
    assert "line 3: exclude needs an analyte as target" in problems


def test_a_manual_window_with_nothing_above_its_baseline_is_no_peak_not_a_negative_area(plasma_batch):
    """One SOP window for every injection also lands on blanks, where the baseline drawn between
    the boundaries can lie above the noise: that is no peak, never a negative area."""
    _, before = run_batch(plasma_batch)
    rt = before.peaks.query("transition == 'M3 quantifier' and status == 'OK'")["rt_min"].median()
    worklist = pd.read_csv(plasma_batch / "worklist.csv", dtype=str, keep_default_na=False)
    (plasma_batch / "overrides.csv").write_text(
        HEADER + "".join(f"{f},M3,integrate,{rt - 0.15:.4f},{rt + 0.15:.4f},SOP window,JD,\n" for f in worklist["file"])
    )
    _, after = run_batch(plasma_batch)
    m3 = after.peaks[after.peaks["transition"] == "M3 quantifier"]
    assert m3["manual"].all()
    assert not (m3["area"] <= 0).any()  # every window integrated gives a positive area ...
    nothing = m3[m3["status"] == "NO_PEAK"]  # ... or none at all
    assert len(nothing) >= 1 and nothing["area"].isna().all()
    blanks = after.results[(after.results["analyte"] == "M3") & (after.results["injection"].isin(nothing["injection"]))]
    assert all({"NO_PEAK", "MANUAL"} <= set(flags.split(";")) for flags in blanks["flags"])
