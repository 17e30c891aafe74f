"""Across runs: accuracy and precision (ICH M10 3.2.5), ISR (ICH M10 5) and the choice of
calibration model and weighting (ICH M10 3.2.4), checked by hand arithmetic and on simulated runs."""

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import f_oneway

from lcmsquant.method import default_method_path
from lcmsquant.pipeline import run_batch
from lcmsquant.results import write_outputs
from lcmsquant.simulate import SimulationOptions, simulate_batch, truth_path_for
from lcmsquant.validation import (
    ResultsError,
    accuracy_and_precision,
    compare_curves,
    current_choice,
    incurred_sample_reanalysis,
    isr_difference_pct,
    isr_runs,
    isr_samples_needed,
    one_way_anova,
    pooled_calibrators,
    read_runs,
    read_validation_run,
    validate_runs,
)
from lcmsquant.vocabulary import RuleId

VALIDATION = SimulationOptions(n_unknowns=6, qc_replicates=5)


def add_run_date(batch: Path, day: str) -> None:
    """The analyst's worklist records the day of the run (a column carried into results.csv)."""
    worklist = batch / "worklist.csv"
    with worklist.open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows = [rows[0] + ["run_date"]] + [r + [day] for r in rows[1:]]
    with worklist.open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


def simulate_and_run(folder: Path, seed: int, options: SimulationOptions, day: str | None = None, method=None) -> Path:
    simulate_batch(folder, seed=seed, options=options)
    if day:
        add_run_date(folder, day)
    batch, result = run_batch(folder, method)
    write_outputs(batch, result, folder / "results", command=["test"])
    return folder / "results"


@pytest.fixture(scope="module")
def validation_runs(tmp_path_factory):
    """Three clean validation runs over two days, one with M1's QCs spiked 25 % high, and run 1
    quantified again with another version of the method."""
    root = tmp_path_factory.mktemp("validation")
    runs = {
        "day1-a": simulate_and_run(root / "day1-a", 101, VALIDATION, "2024-05-06"),
        "day1-b": simulate_and_run(root / "day1-b", 102, VALIDATION, "2024-05-06"),
        "day2": simulate_and_run(root / "day2", 103, VALIDATION, "2024-05-07"),
        "biased": simulate_and_run(
            root / "biased", 104, dataclasses.replace(VALIDATION, qc_bias_pct={"M1": 25}), "2024-05-07"
        ),
    }
    method = root / "flumatinib-v2.toml"
    text = default_method_path().read_text().replace('version = "1"', 'version = "2"')
    method.write_text(
        text.replace('file = "../calibrators/', f'file = "{default_method_path().parents[1]}/calibrators/')
    )
    batch, result = run_batch(root / "day1-a", method)
    write_outputs(batch, result, root / "day1-a-v2", command=["test"])
    runs["other-method"] = root / "day1-a-v2"
    return runs


@pytest.fixture(scope="module")
def study_and_reanalysis(tmp_path_factory):
    """A study run and its incurred sample reanalysis: the same 12 study samples (same seed, so the
    same true concentrations) injected in another run layout, so every injection has new noise."""
    root = tmp_path_factory.mktemp("isr")
    original = simulate_and_run(root / "study", 205, SimulationOptions(n_unknowns=12))
    repeat = simulate_and_run(root / "reanalysis", 205, SimulationOptions(n_unknowns=12, qc_replicates=3))
    return original, repeat


def qc_frame(
    values_by_run: dict[str, list[float]], nominal: float, level: str = "LQC", analyte: str = "M1"
) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "run": run,
                "analyte": analyte,
                "calibrator_set": "plasma",
                "level": level,
                "nominal": nominal,
                "concentration": v,
            }
            for run, values in values_by_run.items()
            for v in values
        ]
    )


# ---------------------------------------------------------------------------------------------
# One-way ANOVA, by hand


def test_balanced_anova_matches_the_hand_computation():
    # run means 100, 105, 95; grand mean 100
    runs = [[98, 100, 102], [103, 105, 107], [93, 95, 97]]
    anova = one_way_anova(runs)
    # SS_between = 3 (0^2 + 5^2 + 5^2) = 150, df 2 -> MS_between = 75
    # SS_within = (4 + 0 + 4) x 3 = 24, df 6 -> MS_within = 4
    assert (anova.k, anova.n_total, anova.grand_mean) == (3, 9, 100.0)
    assert anova.ss_between == pytest.approx(150.0) and anova.ms_between == pytest.approx(75.0)
    assert anova.ss_within == pytest.approx(24.0) and anova.ms_within == pytest.approx(4.0)
    # balanced: n0 = n = 3; s_b^2 = (75 - 4) / 3 = 23.667
    assert anova.n0 == pytest.approx(3.0)
    assert anova.s_between**2 == pytest.approx(71 / 3)
    # within-run CV = sqrt(4) / 100 = 2 %; between-run CV = sqrt(4 + 23.667) / 100 = 5.260 %
    assert anova.within_run_cv_pct == pytest.approx(2.0)
    assert anova.between_run_cv_pct == pytest.approx(math.sqrt(4 + 71 / 3))
    assert anova.ms_between / anova.ms_within == pytest.approx(f_oneway(*runs).statistic)


def test_unbalanced_anova_uses_n0():
    runs = [[98, 100, 102], [104, 106], [94, 95, 96, 97, 98]]  # n = 3, 2, 5; means 100, 105, 96
    anova = one_way_anova(runs)
    # N = 10, grand mean = (300 + 210 + 480) / 10 = 99
    assert anova.n_total == 10 and anova.grand_mean == pytest.approx(99.0)
    # SS_between = 3 x 1^2 + 2 x 6^2 + 5 x 3^2 = 120, df 2 -> MS_between = 60
    # SS_within = 8 + 2 + 10 = 20, df 7 -> MS_within = 20/7
    assert anova.ms_between == pytest.approx(60.0) and anova.ms_within == pytest.approx(20 / 7)
    # n0 = (10 - (9 + 4 + 25) / 10) / 2 = 3.1 (not the mean n of 3.33)
    assert anova.n0 == pytest.approx(3.1)
    # s_b^2 = (60 - 20/7) / 3.1 = 18.433; between-run CV = sqrt(20/7 + 18.433) / 99 = 4.661 %
    assert anova.s_between**2 == pytest.approx((60 - 20 / 7) / 3.1)
    assert anova.between_run_cv_pct == pytest.approx(100 * math.sqrt(20 / 7 + (60 - 20 / 7) / 3.1) / 99)
    assert anova.between_run_cv_pct == pytest.approx(4.6608, abs=1e-4)
    assert anova.within_run_cv_pct == pytest.approx(100 * math.sqrt(20 / 7) / 99)
    assert anova.ms_between / anova.ms_within == pytest.approx(f_oneway(*runs).statistic)


def test_between_run_variance_is_clipped_at_zero_when_runs_agree_better_than_replicates():
    anova = one_way_anova([[99, 101], [98, 102]])  # both run means 100: MS_between 0 < MS_within 5
    assert anova.ms_between == 0.0 and anova.ms_within == pytest.approx(5.0)
    assert anova.s_between == 0.0
    assert anova.between_run_cv_pct == pytest.approx(anova.within_run_cv_pct) == pytest.approx(math.sqrt(5))


# ---------------------------------------------------------------------------------------------
# Accuracy and precision limits


def spread(mean: float, half_width: float) -> list[float]:
    """Five replicates centred exactly on `mean`."""
    return [mean - half_width, mean - half_width / 2, mean, mean + half_width / 2, mean + half_width]


@pytest.mark.parametrize(("level", "nominal", "limit"), [("LQC", 1.5, 15), ("MQC", 200.0, 15), ("LLOQ", 0.5, 20)])
def test_mean_accuracy_exactly_on_the_limit_passes_and_just_beyond_fails(level, nominal, limit):
    for factor, passes in ((1 - limit / 100, True), (1 + limit / 100, True), (1 - (limit + 0.1) / 100, False)):
        mean = nominal * factor
        table = accuracy_and_precision(qc_frame({r: spread(mean, 0.02 * mean) for r in "ABC"}, nominal, level))
        row = table.iloc[0]
        assert row["mean_accuracy_pct"] == pytest.approx(100 * factor)
        assert row["limit_pct"] == limit
        assert bool(row["passed"]) is passes, (factor, row["failing"])


def test_one_run_off_fails_within_run_accuracy_even_when_the_mean_passes():
    # runs at 100 %, 100 % and 125 %: the mean (108.3 %) passes, the third run does not
    table = accuracy_and_precision(
        qc_frame({"A": spread(200, 4), "B": spread(200, 4), "C": spread(250, 5)}, 200.0, "MQC")
    )
    row = table.iloc[0]
    assert row["mean_accuracy_pct"] == pytest.approx(325 / 3)
    assert row["worst_run_accuracy_pct"] == pytest.approx(125.0)
    assert not row["passed"] and "run C accuracy 125.0 %" in row["failing"]


def test_precision_beyond_15_percent_fails():
    # replicates 100 +- 20 and 100 +- 10: within-run CV above 15 % at an LQC
    noisy = [80, 90, 100, 110, 120, 60, 100, 140, 95, 105]
    table = accuracy_and_precision(qc_frame({"A": noisy[:5], "B": noisy[5:], "C": spread(100, 40)}, 100.0))
    row = table.iloc[0]
    assert row["max_run_cv_pct"] > 15 and not row["passed"]
    assert "CV" in row["failing"]


def test_one_run_cannot_show_between_run_precision():
    row = accuracy_and_precision(qc_frame({"A": spread(100, 2)}, 100.0)).iloc[0]
    assert row["n_runs"] == 1 and np.isnan(row["between_run_cv_pct"])
    assert not row["passed"] and "between-run CV needs 2 runs" in row["failing"]


# ---------------------------------------------------------------------------------------------
# Incurred sample reanalysis, by hand


def results_rows(values: dict[str, float | None]) -> pd.DataFrame:
    """Study-sample rows of a results.csv: None = not reportable (BLQ)."""
    return pd.DataFrame(
        [
            {
                "sample_id": sid,
                "sample_type": "unknown",
                "analyte": "M1",
                "concentration": v if v is not None else np.nan,
                "reportable": v is not None,
                "flags": "" if v is not None else "BLQ",
            }
            for sid, v in values.items()
        ]
    )


def test_isr_samples_needed_is_10_percent_of_the_first_1000_and_5_percent_of_the_rest():
    assert [isr_samples_needed(n) for n in (0, 1, 10, 55, 1000, 1001, 1500, 3000)] == [0, 1, 1, 6, 100, 101, 125, 200]


def test_isr_difference_is_relative_to_the_mean():
    assert isr_difference_pct(90.0, 110.0) == pytest.approx(20.0)  # 20 / 100
    assert isr_difference_pct(110.0, 90.0) == pytest.approx(-20.0)


def test_isr_exactly_two_thirds_within_20_percent_passes():
    original = results_rows({"S1": 90, "S2": 100, "S3": 100, "S4": 100, "S5": 100, "S6": 100, "S7": None})
    # S1 exactly +20 % of the mean, S2-S4 close, S5 and S6 +40 % and -40 %
    repeat = results_rows({"S1": 110, "S2": 101, "S3": 99, "S4": 100, "S5": 150, "S6": 200 / 3, "S7": 5, "S9": 10})
    isr = incurred_sample_reanalysis(original, repeat, n_study_samples=60)
    s = isr.summary.iloc[0]
    assert (s["n_evaluated"], s["n_within"]) == (6, 4) and s["fraction_within"] == pytest.approx(2 / 3)
    assert bool(s["passed"])
    pairs = isr.pairs.set_index("sample_id")
    assert pairs.loc["S1", "difference_pct"] == pytest.approx(20.0) and pairs.loc["S1", "within_limit"]
    assert pairs.loc["S5", "difference_pct"] == pytest.approx(40.0) and not pairs.loc["S5", "within_limit"]
    assert pairs.loc["S7", "status"] == "original not reportable (BLQ)"
    assert pairs.loc["S9", "status"] == "not in the original results"
    assert (isr.needed, isr.done) == (6, 6)
    assert "not in the original results: S9" in isr.warnings

    one_fewer = dict(zip(repeat["sample_id"], repeat["concentration"]), S4=130.0)  # 3 of 6 within
    isr = incurred_sample_reanalysis(original, results_rows(one_fewer), n_study_samples=100)
    assert not bool(isr.summary.iloc[0]["passed"])
    assert any("ICH M10 5 asks for 10" in w for w in isr.warnings)


# ---------------------------------------------------------------------------------------------
# Model and weighting


def test_compare_on_exactly_linear_calibrators_gives_zero_error_for_linear_models():
    nominal = np.array([1, 2.5, 5, 25, 100, 250, 750, 1000.0])
    cals = pd.DataFrame(
        {
            "run": "A",
            "analyte": "flumatinib",
            "calibrator_set": "plasma",
            "level": [f"CAL{i}" for i in range(1, 9)],
            "nominal": nominal,
            "area_ratio": 0.002 + 0.01 * nominal,
        }
    )
    table = compare_curves(cals, {("flumatinib", "plasma"): ("linear", "1/x^2")})
    assert len(table) == 15 and list(table["rank"]) == list(range(1, 16))
    linear = table[table["model"] == "linear"]
    assert linear["sum_abs_re_pct"].max() < 1e-6 and (linear["n_within"] == 8).all()
    # through zero cannot follow the intercept: 0.002 is 20 % of the CAL1 response
    through_zero = table[table["model"] == "linear_through_zero"]
    assert (through_zero["sum_abs_re_pct"] > 10).all()
    assert table.loc[table["current"], ["model", "weighting"]].values.tolist() == [["linear", "1/x^2"]]


def test_compare_on_validation_runs_ranks_every_model_and_marks_the_methods_choice(validation_runs):
    runs = read_runs([validation_runs[k] for k in ("day1-a", "day1-b", "day2")])
    table = compare_curves(pooled_calibrators(runs), current_choice(runs))
    assert list(dict.fromkeys(table["analyte"])) == ["flumatinib", "M1", "M3"]
    for _, rows in table.groupby("analyte"):
        assert len(rows) == 15 and rows["current"].sum() == 1
        assert rows["sum_abs_re_pct"].is_monotonic_increasing
        assert (rows["n_runs"] == 3).all() and (rows["n_calibrators"] == 24).all()
        chosen = rows[rows["current"]].iloc[0]
        assert (chosen["model"], chosen["weighting"]) == ("linear", "1/x^2")
        assert chosen["runs_accepted"] == 3
        # over three decades an unweighted fit loses the low calibrators
        unweighted = rows[(rows["model"] == "linear") & (rows["weighting"] == "none")].iloc[0]
        assert unweighted["sum_abs_re_pct"] > 5 * chosen["sum_abs_re_pct"]
        assert unweighted["n_within"] < 24


# ---------------------------------------------------------------------------------------------
# Simulated validation runs


def test_the_simulator_writes_a_validation_design(validation_runs):
    results = read_validation_run(validation_runs["day1-a"]).results
    qcs = results[(results["sample_type"] == "qc") & (results["analyte"] == "M1")]
    assert qcs.groupby("level").size().to_dict() == {"LLOQ": 5, "LQC": 5, "MQC": 5, "HQC": 5}
    with pytest.raises(ValueError, match="qc_replicates"):
        SimulationOptions(qc_replicates=0)


def test_three_clean_runs_over_two_days_pass(validation_runs):
    runs = read_runs([validation_runs[k] for k in ("day1-a", "day1-b", "day2")])
    validation = validate_runs(runs)
    levels = validation.levels
    assert len(levels) == 12  # 3 analytes x LLOQ, LQC, MQC, HQC
    assert levels["passed"].all(), levels.loc[~levels["passed"], "failing"].tolist()
    assert (levels["n_runs"] == 3).all() and (levels["n_replicates"] == 15).all() and (levels["n0"] == 5).all()
    assert validation.passed and validation.warnings == ()
    assert validation.days == ("2024-05-06", "2024-05-07")
    # every CV is a real spread: the simulated ratio noise is 2 %, a little more at the LLOQ
    assert levels["within_run_cv_pct"].between(0.5, 10).all()
    assert (levels["between_run_cv_pct"] >= levels["within_run_cv_pct"] - 1e-12).all()
    assert len(validation.runs) == 36 and validation.runs["passed"].all()


def test_a_run_with_m1_qcs_25_percent_high_fails_m1_and_nothing_else(validation_runs):
    runs = read_runs([validation_runs[k] for k in ("day1-a", "day1-b", "biased")])
    levels = validate_runs(runs).levels
    m1 = levels[levels["analyte"] == "M1"]
    assert not m1["passed"].any()
    assert m1["failing"].str.contains("run biased accuracy 12").all()
    assert levels[levels["analyte"] != "M1"]["passed"].all()


def test_too_few_runs_replicates_or_days_are_warnings_not_failures(validation_runs):
    first, second = read_runs([validation_runs["day1-a"], validation_runs["day1-b"]])
    results = second.results
    lost = results.index[(results["sample_id"] == "QC-LQC-5")]  # one injection lost in the second run
    second = dataclasses.replace(second, results=results.drop(lost))
    validation = validate_runs([first, second])
    assert validation.passed
    warnings = " | ".join(validation.warnings)
    assert "2 run(s): ICH M10 3.2.5.2 asks for at least 3 runs" in warnings
    assert "all runs on 1 day(s) (2024-05-06)" in warnings
    assert "run day1-b: 4 LQC replicate(s) of M1" in warnings
    lqc = validation.levels[(validation.levels["analyte"] == "M1") & (validation.levels["level"] == "LQC")].iloc[0]
    assert lqc["n_replicates"] == 9 and lqc["n0"] == pytest.approx((9 - (25 + 16) / 9) / 1)


def test_a_run_whose_curve_failed_is_left_out_for_that_analyte(validation_runs):
    runs = list(read_runs([validation_runs[k] for k in ("day1-a", "day1-b", "day2")]))
    summary = json.loads(json.dumps(runs[2].summary))
    for rule in summary["rules"]:  # as run.json records an M3 curve with too few calibrators passing
        if rule["analyte"] == "M3" and rule["id"] == RuleId.CALIBRATORS_PASSING:
            rule.update(measured="5/8 (62 %)", passed=False)
    runs[2] = dataclasses.replace(runs[2], summary=summary)
    validation = validate_runs(runs)
    n_runs = validation.levels.groupby("analyte")["n_runs"].max().to_dict()
    assert n_runs == {"M1": 3, "M3": 2, "flumatinib": 3}
    assert "run day2: the M3 curve (plasma) failed ICH M10 3.2.4: its QCs are left out" in validation.warnings


def test_runs_made_with_different_methods_are_refused(validation_runs):
    with pytest.raises(ResultsError) as err:
        read_runs([validation_runs["day1-a"], validation_runs["other-method"]])
    message = str(err.value)
    assert "flumatinib-v2.toml (flumatinib version 2" in message and "flumatinib.toml (flumatinib version 1" in message


def test_unusable_results_folders_are_refused_with_every_problem(validation_runs, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    results = pd.read_csv(validation_runs["day2"] / "results.csv")
    results.drop(columns=["concentration", "reportable"]).to_csv(folder / "results.csv", index=False)
    (folder / "run.json").write_text("{ not json")
    with pytest.raises(ResultsError) as err:
        read_validation_run(folder)
    rerun = "rerun `lcmsquant run` on the batch to write the folder again"
    assert err.value.problems == [
        f"peaks.csv is missing: {rerun}",
        f"calibration.csv is missing: {rerun}",
        f"results.csv: missing column(s) concentration, reportable: not written by `lcmsquant run` (or by an older one); {rerun}",
        f"run.json: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 3 (char 2)); {rerun}",
    ]
    with pytest.raises(ResultsError, match="given more than once"):
        read_runs([validation_runs["day2"], validation_runs["day2"].parent])


def test_reanalysed_study_samples_agree(study_and_reanalysis):
    original, repeat = study_and_reanalysis
    truth = pd.read_csv(truth_path_for(original.parent)).query("sample_type == 'unknown'")
    truth_repeat = pd.read_csv(truth_path_for(repeat.parent)).query("sample_type == 'unknown'")
    assert (
        truth[["sample_id", "analyte", "true_concentration"]].values.tolist()
        == truth_repeat[["sample_id", "analyte", "true_concentration"]].values.tolist()
    )
    first, second = read_validation_run(original), read_validation_run(repeat)
    injected = {r.sample_id: r.injection for r in first.results.itertuples()}
    assert all(injected[r.sample_id] != r.injection for r in second.results.itertuples() if r.sample_type == "unknown")

    isr = isr_runs([first], [second])
    assert isr.passed and len(isr.summary) == 3
    evaluated = isr.pairs[isr.pairs["status"] == "evaluated"]
    assert evaluated["difference_pct"].abs().max() < 20 and evaluated["difference_pct"].abs().max() > 0
    assert (isr.n_study_samples, isr.needed) == (12, 2) and isr.done >= 2
    assert not any("not in the original" in w for w in isr.warnings)
    # the BLQ, ALQ and pre-dose samples are listed, not compared
    assert (isr.pairs["status"] != "evaluated").sum() >= 3


# ---------------------------------------------------------------------------------------------
# The commands


def test_validate_command_writes_its_tables_and_reruns_identically(validation_runs, tmp_path, invoke):
    runs = [validation_runs[k] for k in ("day1-a", "day1-b", "biased")]
    done = invoke("validate", *runs, "--out", tmp_path / "first")
    assert done.exit_code == 0, done.stderr
    assert "Accuracy and precision: 3 run(s)" in done.stdout and "Validation FAILED" in done.stdout
    assert "M1 LQC fails: run biased accuracy" in done.stdout
    table = pd.read_csv(tmp_path / "first" / "validation.csv")
    assert list(table.groupby("analyte", sort=False)["passed"].all().items()) == [
        ("flumatinib", True),
        ("M1", False),
        ("M3", True),
    ]
    assert invoke("validate", *runs, "--out", tmp_path / "second").exit_code == 0
    for name in ("validation.csv", "validation_runs.csv", "validation.json"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


def test_validate_command_refuses_mixed_methods_and_missing_folders(validation_runs, tmp_path, invoke):
    done = invoke("validate", validation_runs["day1-a"], validation_runs["other-method"], "--out", tmp_path)
    assert done.exit_code == 2 and "must use one method file" in done.stderr and "Traceback" not in done.stderr
    done = invoke("validate", tmp_path / "nowhere", "--out", tmp_path)
    assert done.exit_code == 2 and "no results.csv here" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())


def test_calibration_compare_command(validation_runs, tmp_path, invoke):
    out = tmp_path / "compare.csv"
    done = invoke("calibration", "compare", validation_runs["day2"], "--out", out)
    assert done.exit_code == 0, done.stderr
    assert done.stdout.count("<- method") == 3 and "flumatinib (plasma): 1 run(s)" in done.stdout
    table = pd.read_csv(out)
    assert len(table) == 45 and table["current"].sum() == 3


def test_isr_command(study_and_reanalysis, tmp_path, invoke):
    original, repeat = study_and_reanalysis
    done = invoke("isr", original, repeat, "--out", tmp_path, "--study-samples", 400)
    assert done.exit_code == 0, done.stderr
    assert "ISR passed" in done.stdout and "40 needed for 400 study samples" in done.stdout
    assert "ICH M10 5 asks for 40" in done.stderr
    pairs = pd.read_csv(tmp_path / "isr.csv")
    assert set(pairs["analyte"]) == {"flumatinib", "M1", "M3"} and (pairs["status"] == "evaluated").sum() >= 6
