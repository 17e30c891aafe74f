"""Weighted calibration: true WLS, back-calculation, and ICH M10 exclusion with refit."""

import numpy as np
import pandas as pd
import pytest

from lcmsquant.calibration import calibrate, fit_curve
from lcmsquant.method import Acceptance

NOMINAL = np.array([1, 2.5, 5, 25, 100, 250, 750, 1000.0])


def _points(nominal, ratio, levels=None):
    levels = levels or [f"CAL{i + 1}" for i in range(len(nominal))]
    return pd.DataFrame({"injection": range(len(nominal)), "level": levels, "nominal": nominal, "area_ratio": ratio})


def test_wls_solves_the_weighted_normal_equations():
    rng = np.random.default_rng(3)
    y = 0.002 + 0.01 * NOMINAL * (1 + rng.normal(0, 0.03, NOMINAL.size))
    curve = fit_curve(NOMINAL, y, "linear", "1/x^2")
    # Hand solution: (X' W X) b = X' W y with W = diag(1/x^2).
    X = np.column_stack([np.ones_like(NOMINAL), NOMINAL])
    W = np.diag(1 / NOMINAL**2)
    b = np.linalg.solve(X.T @ W @ X, X.T @ W @ y)
    assert curve.coefficients == pytest.approx(tuple(b), rel=1e-10)
    # OpenMS-style "1/x" axis transform followed by OLS gives another answer: we must not match it.
    ols = np.polyfit(NOMINAL, y, 1)[::-1]
    assert not np.allclose(curve.coefficients, ols, rtol=1e-3)


@pytest.mark.parametrize("weighting", ["none", "1/x", "1/x^2", "1/y", "1/y^2"])
def test_every_weighting_recovers_an_exact_line(weighting):
    curve = fit_curve(NOMINAL, 0.5 + 0.02 * NOMINAL, "linear", weighting)
    assert curve.coefficients == pytest.approx((0.5, 0.02))
    assert curve.r_squared == pytest.approx(1.0)


def test_back_calculation_inverts_linear_through_zero_and_quadratic_curves():
    through_zero = fit_curve(NOMINAL, 0.02 * NOMINAL, "linear_through_zero", "1/x^2")
    assert through_zero.intercept == 0.0
    assert through_zero.back_calculate([0.02 * 40]) == pytest.approx([40.0])
    y = 0.001 + 0.01 * NOMINAL - 3e-6 * NOMINAL**2  # a saturating detector
    quad = fit_curve(NOMINAL, y, "quadratic", "1/x^2")
    assert quad.back_calculate(y) == pytest.approx(NOMINAL, rel=1e-6)
    # A response above the parabola's maximum has no concentration.
    assert np.isnan(quad.back_calculate([10.0])[0])


def test_failing_calibrator_is_excluded_and_the_curve_refitted():
    ratio = 0.01 * NOMINAL
    ratio[3] *= 1.30  # CAL4 30 % high
    result = calibrate(_points(NOMINAL, ratio), "linear", "1/x^2", Acceptance())
    table = result.calibrators.set_index("level")
    assert table.loc["CAL4", "excluded"] and "back-calculated +" in table.loc["CAL4", "exclusion_reason"]
    assert table.drop("CAL4")["accuracy_pct"].sub(100).abs().max() < 1e-6
    assert result.levels_excluded == ("CAL4",)
    assert (result.lloq, result.uloq) == (1.0, 1000.0)


def test_worst_calibrator_goes_first_and_a_good_one_survives_its_neighbour():
    ratio = 0.01 * NOMINAL
    ratio[5] *= 1.6  # CAL6 badly off, pulls its neighbours before it is removed
    ratio[4] *= 1.10  # CAL5 off by 10 %: within tolerance once CAL6 is gone
    result = calibrate(_points(NOMINAL, ratio), "linear", "1/x^2", Acceptance())
    table = result.calibrators.set_index("level")
    assert table["excluded"].sum() == 1 and table.loc["CAL6", "excluded"]
    assert table.loc["CAL5", "passed"]


def test_lloq_calibrator_gets_20_percent_and_the_next_level_only_15():
    ratio = 0.01 * NOMINAL
    ratio[0] *= 1.18  # 18 %: fine at the LLOQ
    ratio[1] *= 1.18  # 18 %: fails at CAL2
    # Unweighted through zero, the top of the curve fixes the line: low levels keep their error.
    result = calibrate(_points(NOMINAL, ratio), "linear_through_zero", "none", Acceptance())
    table = result.calibrators.set_index("level")
    assert table.loc["CAL1", "passed"] and not table.loc["CAL2", "passed"]
    assert table.loc["CAL1", "tolerance_pct"] == 20 and table.loc["CAL2", "tolerance_pct"] == 15


def test_failing_lloq_moves_the_range_up():
    ratio = 0.01 * NOMINAL
    ratio[0] *= 1.5
    result = calibrate(_points(NOMINAL, ratio), "linear", "1/x^2", Acceptance())
    assert (result.lloq, result.uloq) == (2.5, 1000.0)
    assert result.levels_excluded == ("CAL1",)


def test_a_level_passes_when_half_its_replicates_pass():
    nominal = np.repeat(NOMINAL, 2)
    ratio = 0.01 * nominal
    ratio[6] *= 1.4  # one of the two CAL4
    ratio[10] *= 1.4  # both CAL6
    ratio[11] *= 0.6
    levels = [f"CAL{i // 2 + 1}" for i in range(16)]
    result = calibrate(_points(nominal, ratio, levels), "linear", "1/x^2", Acceptance())
    assert "CAL4" in result.levels_used
    assert result.levels_excluded == ("CAL6",)


def test_calibrator_without_response_is_excluded_not_fatal():
    ratio = 0.01 * NOMINAL
    ratio[2] = np.nan
    result = calibrate(_points(NOMINAL, ratio), "linear", "1/x^2", Acceptance())
    assert result.calibrators.loc[2, "exclusion_reason"] == "no response"
    assert result.curve is not None and result.curve.n == 7


def test_too_few_calibrators_give_no_curve_and_say_why():
    result = calibrate(_points(NOMINAL[:2], [0.01, np.nan]), "linear", "1/x^2", Acceptance())
    assert result.curve is None
    assert "only 1 usable calibrators" in result.problem


def test_failing_uloq_moves_the_range_down():
    ratio = 0.01 * NOMINAL
    ratio[-1] *= 0.7
    result = calibrate(_points(NOMINAL, ratio), "linear", "1/x^2", Acceptance())
    assert (result.lloq, result.uloq) == (1.0, 750.0)
    assert result.levels_excluded == ("CAL8",)


def test_an_analysts_exclusion_leaves_the_calibrator_out_and_counts_as_not_passing():
    points = _points(NOMINAL, 0.01 * NOMINAL)
    points["manual_exclusion"] = ["", "", "excluded by JD: spiking error", "", "", "", "", ""]
    result = calibrate(points, "linear", "1/x^2", Acceptance())
    cal3 = result.calibrators.loc[2]
    assert cal3["excluded"] and not cal3["passed"] and cal3["exclusion_reason"] == "excluded by JD: spiking error"
    assert result.curve.n == 7 and "CAL3" in result.levels_excluded


def test_quadratic_back_calculation_stays_on_the_calibrated_branch_and_says_when_no_root_exists():
    # y = 0.01 x - 4e-6 x^2: vertex at x = 1250, above the range 1..1000
    nominal = NOMINAL
    curve = fit_curve(nominal, 0.01 * nominal - 4e-6 * nominal**2, "quadratic", "1/x^2")
    assert np.allclose(curve.back_calculate([0.01 * 500 - 4e-6 * 500**2]), [500.0])
    top = curve.response(1250.0)
    assert np.isnan(curve.back_calculate([top * 1.01])[0])  # a response the parabola never reaches
