"""End to end on simulated batches with known truth: the numbers a chemist would sign."""

import pandas as pd
import pytest

from lcmsquant.pipeline import run_batch
from lcmsquant.vocabulary import RuleId


def _unknowns(result, truth):
    table = result.results.merge(truth[["sample_id", "analyte", "true_concentration"]], on=["sample_id", "analyte"])
    table = table[table["sample_type"] == "unknown"].copy()
    table["in_range"] = table["true_concentration"] / table["dilution_factor"]
    table["error_pct"] = 100 * (table["concentration"] / table["true_concentration"] - 1)
    return table


@pytest.mark.parametrize("fixture", ["plasma_run", "csf_run"])
def test_unknowns_inside_the_range_come_back_within_15_percent(fixture, request):
    _, truth, _, result = request.getfixturevalue(fixture)
    table = _unknowns(result, truth)
    inside = table[(table["in_range"] >= table["lloq"]) & (table["in_range"] <= table["uloq"])]
    assert len(inside) >= 3 * 15
    assert inside["concentration"].notna().all()
    assert inside["error_pct"].abs().max() <= 15
    assert inside["error_pct"].abs().median() <= 3


@pytest.mark.parametrize("fixture", ["plasma_run", "csf_run"])
def test_samples_outside_the_range_are_flagged_not_reported(fixture, request):
    _, truth, _, result = request.getfixturevalue(fixture)
    table = _unknowns(result, truth)
    flags = table["flags"].str.split(";")
    below = table[(table["true_concentration"] > 0) & (table["in_range"] < table["lloq"])]
    above = table[table["in_range"] > table["uloq"]]
    assert len(below) >= 6 and len(above) >= 3
    assert flags[below.index].map(lambda f: "BLQ" in f).all()
    assert flags[above.index].map(lambda f: "ALQ" in f).all()
    assert table.loc[below.index.union(above.index), "concentration"].isna().all()
    predose = table[table["true_concentration"] == 0]
    assert flags[predose.index].map(lambda f: "NO_PEAK" in f or "BLQ" in f).all()


def test_a_sample_diluted_1_to_10_comes_back_within_15_percent(plasma_run):
    _, truth, _, result = plasma_run
    table = _unknowns(result, truth)
    diluted = table[table["dilution_factor"] == 10]
    assert len(diluted) == 3
    assert diluted["error_pct"].abs().max() <= 15
    assert (diluted["concentration"] > diluted["uloq"]).all()  # reported after dilution


@pytest.mark.parametrize("fixture", ["plasma_run", "csf_run"])
def test_clean_simulated_runs_are_accepted_with_every_rule_recorded(fixture, request):
    _, _, _, result = request.getfixturevalue(fixture)
    assert all(v["accepted"] for v in result.verdicts.values())
    rules = {(r.analyte, r.id) for r in result.rules}
    for analyte in ("flumatinib", "M1", "M3"):
        for rule in (
            RuleId.CURVE_FITTED,
            RuleId.CALIBRATORS_PASSING,
            RuleId.CALIBRATOR_LEVELS,
            RuleId.QCS_PASSING,
            RuleId.LQC_PASSING,
            RuleId.RANGE_COVERS_QCS,
        ):
            assert (analyte, rule) in rules
    calibrators = result.results[result.results["sample_type"] == "calibrator"]
    assert calibrators["accuracy_pct"].between(80, 120).all()
    assert (result.calibration["r_squared"] > 0.99).all()


def test_qualifier_interference_is_caught_by_the_ion_ratio(plasma_run):
    _, truth, _, result = plasma_run
    hit = truth[(truth["interference"].fillna("") != "") & (truth["sample_type"] == "unknown")]
    assert len(hit) >= 1
    rows = result.results.merge(hit[["sample_id", "analyte"]], on=["sample_id", "analyte"])
    assert rows["flags"].str.contains("ION_RATIO").all()
    assert not rows["reportable"].any()


def test_each_study_sample_is_quantified_on_its_matrix_set(plasma_run, csf_run):
    _, _, _, plasma = plasma_run
    _, _, _, csf = csf_run
    unknown = plasma.results[plasma.results["sample_type"] == "unknown"]
    assert set(unknown["matrix"]) == {"plasma", "serum", "marrow"}
    assert set(unknown["calibrator_set"]) == {"plasma"}
    assert set(csf.results["calibrator_set"]) == {"csf"}
    assert set(csf.calibration["lloq"]) == {0.1}


def test_corrupt_injection_is_flagged_and_the_rest_of_the_batch_finishes(plasma_batch):
    worklist = pd.read_csv(plasma_batch / "worklist.csv", dtype=str, keep_default_na=False)
    victim = worklist[worklist["sample_type"] == "unknown"].iloc[0]
    path = plasma_batch / victim["file"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _, result = run_batch(plasma_batch)
    rows = result.results[result.results["sample_id"] == victim["sample_id"]]
    assert (rows["flags"].str.contains("NO_DATA")).all() and rows["concentration"].isna().all()
    assert "not a readable mzML file" in next(iter(result.injection_errors.values()))
    others = result.results[
        (result.results["sample_type"] == "unknown") & (result.results["sample_id"] != victim["sample_id"])
    ]
    assert others["concentration"].notna().sum() > 30
    assert all(v["accepted"] for v in result.verdicts.values())


def test_a_missing_transition_flags_its_analyte_only(plasma_batch):
    from lcmsquant.method import default_method_path

    text = default_method_path().read_text().replace("q1 = 279.1, q3 = 184.1", "q1 = 279.1, q3 = 150.0")
    text = text.replace('file = "../calibrators/', f'file = "{default_method_path().parents[1]}/calibrators/')
    (plasma_batch / "method.toml").write_text(text)
    _, result = run_batch(plasma_batch)
    peaks = result.peaks
    missing = peaks[peaks["transition"] == "M3 qualifier"]
    assert (missing["status"] == "NO_DATA").all()
    m3 = result.results[result.results["analyte"] == "M3"]
    assert m3["ion_ratio"].isna().all()
    quantified = m3[m3["area"].notna()]
    assert len(quantified) > 30 and quantified["flags"].str.contains("NO_QUALIFIER").all()
    assert not m3.loc[m3["sample_type"] == "unknown", "reportable"].any()
    assert result.results[result.results["analyte"] == "flumatinib"]["flags"].str.contains("NO_DATA").sum() == 0


def test_flags_follow_the_peak_measurements(plasma_run, csf_run):
    for _, _, _, result in (plasma_run, csf_run):
        table = result.results[(result.results["sample_type"] != "blank")]
        found = table[table["area"].notna()]
        low = found["flags"].str.contains("LOW_SN")
        assert (low == (found["sn"] < 5.0)).all()
        assert (found["fwhm_s"].between(3, 8)).all() and (found["tailing_factor"].between(0.9, 2.0)).all()
        assert (found["rrt"] / found["rrt_expected"] - 1).abs().max() < 0.01


def test_no_peak_is_reported_blq_only_when_the_method_says_so(plasma_batch):
    from lcmsquant.method import default_method_path

    _, result = run_batch(plasma_batch)
    predose = result.results[result.results["timepoint"] == "pre-dose"]
    assert predose["flags"].str.contains("NO_PEAK").all() and not predose["flags"].str.contains("BLQ").any()
    text = default_method_path().read_text().replace("no_peak_as_blq = false", "no_peak_as_blq = true")
    text = text.replace('file = "../calibrators/', f'file = "{default_method_path().parents[1]}/calibrators/')
    (plasma_batch / "method.toml").write_text(text)
    _, result = run_batch(plasma_batch)
    predose = result.results[result.results["timepoint"] == "pre-dose"]
    assert predose["flags"].str.contains("BLQ").all() and predose["concentration"].isna().all()


def test_ion_ratio_reference_is_the_mean_of_the_calibrators_kept_in_the_curve(plasma_batch):
    worklist = pd.read_csv(plasma_batch / "worklist.csv", dtype=str, keep_default_na=False)
    cal3 = worklist[worklist["sample_id"] == "CAL3"].iloc[0]["file"]
    (plasma_batch / "overrides.csv").write_text(
        "file,target,action,start_min,end_min,reason,analyst\n" + f"{cal3},M1,exclude,,,spiking error,JD\n"
    )
    _, run = run_batch(plasma_batch)
    m1 = run.results[run.results["analyte"] == "M1"]
    kept = m1[(m1["sample_type"] == "calibrator") & ~m1["excluded"]]
    assert len(kept) == len(m1[m1["sample_type"] == "calibrator"]) - 1
    assert m1["ion_ratio_reference"].iloc[0] == pytest.approx(kept["ion_ratio"].mean(), rel=1e-12)
