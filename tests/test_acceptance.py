"""ICH M10 rules at their boundaries."""

import numpy as np
import pandas as pd

from lcmsquant import acceptance
from lcmsquant.calibration import calibrate
from lcmsquant.method import Acceptance

ACC = Acceptance()


def _qcs(levels, accuracies, nominal=100.0):
    table = pd.DataFrame({"level": levels, "nominal": nominal, "concentration_found": np.array(accuracies) * nominal / 100})
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
    outcome = {r.rule: r.passed for r in acceptance.qc_levels_passing("a", "s", qcs, ACC)}
    assert outcome == {"LQC QCs within tolerance": True, "MQC QCs within tolerance": True, "HQC QCs within tolerance": False}


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
    points = pd.DataFrame({"injection": range(8), "level": [f"CAL{i + 1}" for i in range(8)], "nominal": nominal, "area_ratio": ratio})
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
    points = pd.DataFrame({"injection": range(8), "level": [f"CAL{i + 1}" for i in range(8)], "nominal": nominal, "area_ratio": ratio})
    calibration = calibrate(points, "linear", "1/x^2", ACC)
    qcs = pd.DataFrame({"level": ["LQC", "MQC", "HQC"], "nominal": [3.0, 400.0, 800.0]})
    rule = acceptance.range_covers_qcs("a", "s", calibration, qcs)
    assert not rule.passed and rule.detail == "outside: LQC"


def test_verdict_names_every_failing_critical_rule():
    rules = [
        acceptance.Rule("a", "s", "QCs within tolerance", "3.3.2", "3/6 (50 %)", ">= 66.7 %", False),
        acceptance.Rule("a", "s", "QC count", "3.3.1", "LQC 1", ">= 2", False, critical=False),
    ]
    accepted, reasons = acceptance.verdict(rules)
    assert not accepted
    assert reasons == ["QCs within tolerance: 3/6 (50 %) (limit >= 66.7 %)"]
