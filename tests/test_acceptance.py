"""ICH M10 rules at their boundaries."""

import numpy as np
import pandas as pd
import pytest

from lcmsquant import acceptance
from lcmsquant.calibration import calibrate
from lcmsquant.method import Acceptance
from lcmsquant.pipeline import run_batch
from lcmsquant.simulate import SimulationOptions, simulate_batch
from lcmsquant.vocabulary import RuleId

ACC = Acceptance()


def _qcs(levels, accuracies, nominal=100.0):
    table = pd.DataFrame(
        {"level": levels, "nominal": nominal, "concentration_found": np.array(accuracies) * nominal / 100}
    )
    return acceptance.qc_accuracy(table, ACC)


def test_qc_accuracy_limits_are_15_percent_and_20_at_the_lloq():
    qcs = _qcs(["LQC", "LQC", "LLOQ", "LLOQ"], [115.0, 115.1, 120.0, 120.1])
    assert qcs["qc_passed"].tolist() == [True, False, True, False]


def test_exactly_two_thirds_of_qcs_passing_is_accepted():
    levels = ["LQC", "MQC", "HQC"] * 2
    rule = acceptance.qc_passing("a", "s", _qcs(levels, [100, 100, 100, 100, 130, 130]), ACC)
    assert rule.passed and rule.measured == "4/6 (67 %)"
    rule = acceptance.qc_passing("a", "s", _qcs(levels, [100, 100, 100, 130, 130, 130]), ACC)
    assert not rule.passed


def test_each_level_needs_half_its_qcs():
    qcs = _qcs(["LQC", "LQC", "MQC", "MQC", "HQC", "HQC"], [100, 130, 100, 100, 130, 130])
    outcome = {r.id: r.passed for r in acceptance.qc_levels_passing("a", "s", qcs, ACC)}
    assert outcome == {RuleId.LQC_PASSING: True, RuleId.MQC_PASSING: True, RuleId.HQC_PASSING: False}


def test_dilution_qcs_do_not_count_towards_the_two_thirds():
    qcs = _qcs(["LQC", "MQC", "HQC", "DQC", "DQC"], [100, 100, 100, 150, 150])
    assert acceptance.qc_passing("a", "s", qcs, ACC).passed
    dqc = acceptance.dilution_qcs("a", "s", qcs, ACC)
    assert not dqc.passed and not dqc.critical


def _calibration(failing_fraction: int):
    nominal = np.array([1, 2.5, 5, 25, 100, 250, 750, 1000.0])
    ratio = 0.01 * nominal
    for i in range(failing_fraction):
        ratio[2 + i] *= 1.5 if i % 2 else 0.6
    points = pd.DataFrame(
        {"injection": range(8), "level": [f"CAL{i + 1}" for i in range(8)], "nominal": nominal, "area_ratio": ratio}
    )
    return calibrate(points, "linear", "1/x^2", ACC)


def test_exactly_75_percent_of_calibrators_passing_is_accepted():
    rule = acceptance.calibrators_passing("a", "s", _calibration(2), ACC)
    assert rule.passed and rule.measured == "6/8 (75 %)"
    assert acceptance.calibrator_levels("a", "s", _calibration(2), ACC).passed
    assert not acceptance.calibrators_passing("a", "s", _calibration(3), ACC).passed
    assert not acceptance.calibrator_levels("a", "s", _calibration(3), ACC).passed


def test_narrowed_range_must_still_hold_the_low_qc():
    nominal = np.array([1, 2.5, 5, 25, 100, 250, 750, 1000.0])
    ratio = 0.01 * nominal
    ratio[0] *= 1.5
    ratio[1] *= 1.5  # LLOQ moves to 5, above the LQC at 3
    points = pd.DataFrame(
        {"injection": range(8), "level": [f"CAL{i + 1}" for i in range(8)], "nominal": nominal, "area_ratio": ratio}
    )
    calibration = calibrate(points, "linear", "1/x^2", ACC)
    qcs = pd.DataFrame({"level": ["LQC", "MQC", "HQC"], "nominal": [3.0, 400.0, 800.0]})
    rule = acceptance.range_covers_qcs("a", "s", calibration, qcs)
    assert not rule.passed and rule.detail == "outside: LQC"


def test_verdict_names_every_failing_critical_rule():
    rules = [
        acceptance.Rule.of(RuleId.QCS_PASSING, "a", "s", "3/6 (50 %)", ">= 66.7 %", False),
        acceptance.Rule.of(RuleId.QC_COUNT, "a", "s", "LQC 1", ">= 2", False, critical=False),
    ]
    accepted, reasons = acceptance.verdict(rules)
    assert not accepted
    assert reasons == ["QCs within tolerance: 3/6 (50 %) (limit >= 66.7 %)"]


def _samples(rows):
    """A results table of one analyte: (injection, sample_type, sample_id, nominal, area, is_area, is_response_pct)."""
    columns = ["injection", "sample_type", "sample_id", "nominal", "area", "is_area", "is_response_pct"]
    table = pd.DataFrame(rows, columns=columns)
    table["excluded"] = False
    return table


# LLOQ calibrators average 1000 counts; calibrators and QCs average 1e5 IS counts.
RUN = [
    (1, "blank", "BLK-1", np.nan, np.nan, np.nan, np.nan),
    (2, "zero", "ZERO-1", np.nan, np.nan, 1e5, 100.0),
    (3, "calibrator", "CAL1", 1.0, 900.0, 0.9e5, 90.0),
    (4, "calibrator", "CAL1", 1.0, 1100.0, 1.1e5, 110.0),
    (5, "calibrator", "CAL8", 1000.0, 1e6, 1e5, 100.0),
    (6, "blank", "BLK-2", np.nan, 200.0, 5000.0, 5.0),
    (7, "qc", "QC-MQC-1", 400.0, 4e5, 1e5, 100.0),
]


def test_carryover_at_exactly_20_percent_of_the_lloq_and_5_percent_is_passes():
    samples = _samples(RUN)
    blanks = (6,)
    rules = acceptance.carryover("a", "s", samples, blanks, 1.0, ACC)
    assert [(r.id, r.passed) for r in rules] == [(RuleId.CARRYOVER_ANALYTE, True), (RuleId.CARRYOVER_IS, True)]
    assert rules[0].measured == "20.0 % of the LLOQ response (BLK-2)"
    assert rules[1].measured == "5.0 % of the mean IS response (BLK-2)"
    assert all(r.category == "carryover" and r.section == "3.2.6" for r in rules)
    worse = _samples([*RUN[:5], (6, "blank", "BLK-2", np.nan, 201.0, 5001.0, 5.0), RUN[6]])
    assert [r.passed for r in acceptance.carryover("a", "s", worse, blanks, 1.0, ACC)] == [False, False]


def test_carryover_not_assessed_without_a_blank_after_the_uloq_is_a_warning():
    (rule,) = acceptance.carryover("a", "s", _samples(RUN), (), 1.0, ACC)
    assert not rule.passed and not rule.critical and "not assessed" in rule.detail


def test_blank_after_the_uloq_calibrator_judges_carryover_the_others_selectivity():
    samples = _samples(RUN)
    assert acceptance.carryover_blanks(samples) == (6,)
    rules = {r.id: r for r in acceptance.selectivity("a", "s", samples, (6,), 1.0, ACC)}
    assert rules[RuleId.BLANK_SELECTIVITY_ANALYTE].measured == "0.0 % of the LLOQ response (BLK-1)"
    assert all(r.passed and r.category == "selectivity" for r in rules.values())


def test_interference_in_the_zero_sample_above_20_percent_of_the_lloq_fails():
    rows = [*RUN]
    rows[1] = (2, "zero", "ZERO-1", np.nan, 250.0, 1e5, 100.0)
    rules = {r.id: r for r in acceptance.selectivity("a", "s", _samples(rows), (6,), 1.0, ACC)}
    rule = rules[RuleId.ZERO_SELECTIVITY_ANALYTE]
    assert not rule.passed and rule.critical and rule.measured == "25.0 % of the LLOQ response (ZERO-1)"


def test_is_drift_is_the_robust_trend_over_the_run():
    order = np.arange(1, 21)
    rows = [(i, "unknown", f"S{i}", np.nan, 1.0, 1.0, 110.0 - i) for i in order]  # -1 % per injection
    rows[5] = (6, "unknown", "S6", np.nan, 1.0, 1.0, 20.0)  # one outlier does not move a Theil-Sen line
    change, span = acceptance.is_trend(_samples(rows))
    assert span == 19 and np.isclose(change, -19.0)
    rules = {r.id: r for r in acceptance.is_response("a", "s", _samples(rows), ACC)}
    assert rules[RuleId.IS_RESPONSE_DRIFT].passed and not rules[RuleId.IS_RESPONSE_DRIFT].critical
    assert rules[RuleId.IS_RESPONSE_BAND].detail == "S6"
    steeper = _samples([(i, "unknown", f"S{i}", np.nan, 1.0, 1.0, 120.0 - 2 * i) for i in order])
    drift = {r.id: r for r in acceptance.is_response("a", "s", steeper, ACC)}[RuleId.IS_RESPONSE_DRIFT]
    assert not drift.passed and drift.measured == "-38.0 % over 19 injections"


def test_fewer_than_two_qc_levels_inside_the_study_samples_range_is_a_warning():
    qcs = pd.DataFrame({"level": ["LQC", "MQC", "HQC"], "nominal": [3.0, 400.0, 800.0]})
    samples = pd.DataFrame(
        {
            "sample_type": ["unknown"] * 3,
            "back_calculated": [5.0, 50.0, 500.0],
            "lloq": 1.0,
            "uloq": 1000.0,
        }
    )
    rule = acceptance.qc_levels_in_study_range("a", "s", qcs, samples)
    assert not rule.passed and not rule.critical and rule.measured == "1 (MQC) in 5-500"
    samples["back_calculated"] = [2.0, 50.0, 500.0]
    assert acceptance.qc_levels_in_study_range("a", "s", qcs, samples).measured == "2 (LQC, MQC) in 2-500"


# Runs made to fail on purpose: the right analyte rejected for the right reason, the others accepted.


@pytest.fixture(scope="module")
def spoiled_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spoiled") / "batch"
    options = SimulationOptions(
        n_unknowns=12,
        qc_bias_pct={"M1": 30.0},
        spoil_calibrator=("M3", "CAL4"),
        is_dropout=("S002-C1D15-PL",),
    )
    simulate_batch(folder, seed=31, options=options)
    return run_batch(folder)


@pytest.fixture(scope="module")
def carryover_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("carryover") / "batch"
    simulate_batch(folder, seed=32, options=SimulationOptions(n_unknowns=12, carryover_fraction=2e-3))
    return run_batch(folder)


def _failing(run, analyte):
    return {r.id for r in run.rules if r.analyte == analyte and r.critical and not r.passed}


def test_biased_qcs_reject_that_analyte_only(spoiled_run):
    _, run = spoiled_run
    assert _failing(run, "M1") == {
        RuleId.QCS_PASSING,
        RuleId.LLOQ_QCS_PASSING,
        RuleId.LQC_PASSING,
        RuleId.MQC_PASSING,
        RuleId.HQC_PASSING,
    }
    assert run.verdicts[("flumatinib", "plasma")]["accepted"] and run.verdicts[("M3", "plasma")]["accepted"]
    m1 = run.results[(run.results["analyte"] == "M1") & (run.results["sample_type"] == "unknown")]
    assert m1["flags"].str.contains("REJECTED").all() and not m1["reportable"].any()
    assert (run.reanalysis.loc[run.reanalysis["analyte"] == "M1", "reason"].str.startswith("RUN_REJECTED")).all()


def test_a_spoiled_calibrator_is_excluded_with_its_error_and_the_run_stands(spoiled_run):
    _, run = spoiled_run
    cal4 = run.results[(run.results["analyte"] == "M3") & (run.results["level"] == "CAL4")].iloc[0]
    assert "EXCLUDED" in cal4["flags"] and cal4["exclusion_reason"].startswith("back-calculated +")
    others = run.results[(run.results["analyte"] != "M3") & (run.results["sample_type"] == "calibrator")]
    assert not others["flags"].str.contains("EXCLUDED").any()


def test_an_is_dropout_flags_the_sample_for_reanalysis_and_rejects_nothing(spoiled_run):
    _, run = spoiled_run
    dropped = run.results[run.results["sample_id"] == "S002-C1D15-PL"]
    assert dropped["flags"].str.contains("IS_RESPONSE").all() and not dropped["reportable"].any()
    listed = run.reanalysis[run.reanalysis["sample_id"] == "S002-C1D15-PL"]
    assert set(listed["analyte"]) == {"flumatinib", "M1", "M3"} and listed["reason"].str.contains("IS_RESPONSE").all()
    band = [r for r in run.rules if r.id == RuleId.IS_RESPONSE_BAND and r.analyte == "M3"][0]
    assert not band.passed and not band.critical and "S002-C1D15-PL" in band.detail


def test_carryover_after_the_uloq_rejects_each_analyte_for_carryover(carryover_run):
    _, run = carryover_run
    for analyte in ("flumatinib", "M1", "M3"):
        # BLK-3 closes the run right after the last HQC, so the same carry-over shows there as
        # interference in a selectivity blank; QCs and calibrators are unaffected.
        assert _failing(run, analyte) == {RuleId.CARRYOVER_ANALYTE, RuleId.BLANK_SELECTIVITY_ANALYTE}, analyte
        rule = [r for r in run.rules if r.analyte == analyte and r.id == RuleId.CARRYOVER_ANALYTE][0]
        assert rule.measured.endswith("of the LLOQ response (BLK-2)")
        assert float(rule.measured.split(" %")[0]) > 20.0
