"""Weighted calibration curves: fit, back-calculation and ICH M10 calibrator exclusion.

Weighting means true weighted least squares (statsmodels WLS, weights w_i in the objective
sum w_i (y_i - f(x_i))^2), as bioanalytical practice and vendor software mean it; it is not a
transform of the x axis followed by ordinary least squares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from statsmodels.regression.linear_model import WLS

from lcmsquant.method import Acceptance


@dataclass(frozen=True)
class Curve:
    """A fitted response curve y = b0 + b1 x (+ b2 x^2); y is the area ratio, x the concentration."""

    model: str
    weighting: str
    coefficients: tuple[float, ...]  # (b0, b1) or (b0, b1, b2); b0 = 0 through zero
    std_errors: tuple[float, ...]
    r_squared: float  # weighted
    n: int
    x_min: float  # the calibrated range the curve was fitted over
    x_max: float

    @property
    def intercept(self) -> float:
        """The curve's response at zero concentration (0 through zero)."""
        return self.coefficients[0]

    @property
    def slope(self) -> float:
        """The linear coefficient: response per unit concentration."""
        return self.coefficients[1]

    @property
    def quadratic(self) -> float:
        """The quadratic coefficient (0 for a straight line)."""
        return self.coefficients[2] if len(self.coefficients) > 2 else 0.0

    def response(self, x) -> np.ndarray:
        """The area ratio the curve gives at each concentration."""
        x = np.asarray(x, dtype=float)
        return self.intercept + self.slope * x + self.quadratic * x * x

    def back_calculate(self, y) -> np.ndarray:
        """Concentration for each response; NaN where the curve gives none.

        For a quadratic the root on the branch of the parabola that holds the calibrated range
        is taken; a response the curve never reaches gives NaN.
        """
        y = np.asarray(y, dtype=float)
        b0, b1, b2 = self.intercept, self.slope, self.quadratic
        if b2 == 0.0:
            return (y - b0) / b1 if b1 != 0 else np.full_like(y, np.nan)
        disc = b1 * b1 - 4.0 * b2 * (b0 - y)
        with np.errstate(invalid="ignore"):
            root = np.sqrt(disc)
        roots = np.stack([(-b1 + root) / (2 * b2), (-b1 - root) / (2 * b2)])
        vertex = -b1 / (2 * b2)
        middle = 0.5 * (self.x_min + self.x_max)
        on_branch = (roots - vertex) * (middle - vertex) >= 0
        chosen = np.where(on_branch[0], roots[0], roots[1])
        return np.where(disc >= 0, chosen, np.nan)


def weights(weighting: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """WLS weights for a weighting scheme ('none', '1/x', '1/x^2', '1/y', '1/y^2')."""
    basis = {"none": None, "1/x": x, "1/x^2": x, "1/y": y, "1/y^2": y}[weighting]
    if basis is None:
        return np.ones_like(x, dtype=float)
    power = 2 if weighting.endswith("^2") else 1
    basis = np.abs(np.asarray(basis, dtype=float))
    if np.any(basis <= 0):
        raise ValueError(f"weighting {weighting} needs non-zero values")
    return 1.0 / basis**power


def fit_curve(x, y, model: str = "linear", weighting: str = "1/x^2") -> Curve:
    """Fit the response curve by weighted least squares."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    columns = {"linear": [np.ones_like(x), x], "linear_through_zero": [x], "quadratic": [np.ones_like(x), x, x * x]}
    design = np.column_stack(columns[model])
    if len(x) < design.shape[1] + 1:
        raise ValueError(f"a {model} curve needs at least {design.shape[1] + 1} calibrators, got {len(x)}")
    result = WLS(y, design, weights=weights(weighting, x, y)).fit()
    params, errors = list(result.params), list(result.bse)
    if model == "linear_through_zero":
        params, errors = [0.0, *params], [0.0, *errors]
    return Curve(
        model,
        weighting,
        tuple(map(float, params)),
        tuple(map(float, errors)),
        float(result.rsquared),
        len(x),
        float(x.min()),
        float(x.max()),
    )


@dataclass(frozen=True)
class CalibrationResult:
    """The accepted curve and the fate of every calibrator injection."""

    curve: Curve | None
    calibrators: pd.DataFrame = field(repr=False)  # one row per calibrator injection
    lloq: float | None  # the run's range after any redefinition
    uloq: float | None
    levels_used: tuple[str, ...]
    levels_excluded: tuple[str, ...]
    problem: str = ""  # why no curve could be fitted


def tolerance_pct(nominal: float, lowest_nominal: float, acceptance: Acceptance) -> float:
    """+-20 % at the method's LLOQ level, +-15 % elsewhere (ICH M10 3.3.2)."""
    if np.isclose(nominal, lowest_nominal):
        return acceptance.lloq_tolerance_pct
    return acceptance.calibrator_tolerance_pct


def calibrate(points: pd.DataFrame, model: str, weighting: str, acceptance: Acceptance) -> CalibrationResult:
    """Fit a curve to calibrators, excluding failing ones one at a time with refit (ICH M10 3.3.2).

    While any included calibrator fails its tolerance, the one excluded is the calibrator that is
    worst against a curve fitted without it (leave-one-out). With 1/x^2 weights an outlying LLOQ
    pulls the curve through itself and makes its neighbours fail; judging each point against
    the others finds the real culprit instead of discarding good calibrators.

    `points` has columns injection, level, nominal, area_ratio (NaN when no peak) and optionally
    manual_exclusion (an analyst's reason; such a calibrator is left out of the fit and counts
    as not passing). Returned calibrators gain back_calculated, accuracy_pct, re_pct,
    tolerance_pct, passed, excluded and exclusion_reason. A calibrator without a response is
    excluded ("no response").
    """
    table = points.copy().reset_index(drop=True)
    lowest = float(table["nominal"].min()) if len(table) else np.nan
    table["tolerance_pct"] = [tolerance_pct(n, lowest, acceptance) for n in table["nominal"]]
    ratio = table["area_ratio"].to_numpy(float)
    usable = np.isfinite(ratio) & (ratio > 0)
    manual = (
        table["manual_exclusion"].fillna("").astype(str)
        if "manual_exclusion" in table
        else pd.Series("", index=table.index)
    )
    table["excluded"] = ~usable | (manual != "")
    table["exclusion_reason"] = np.where(manual != "", manual, np.where(usable, "", "no response"))
    table["back_calculated"] = np.nan
    table["re_pct"] = np.nan
    minimum_points = {"linear": 2, "linear_through_zero": 1, "quadratic": 3}[model] + 1

    while True:
        active = table.index[~table["excluded"]]
        if len(active) < minimum_points:
            problem = f"only {len(active)} usable calibrators: a {model} curve needs {minimum_points}"
            return _result(None, table, acceptance, problem)
        curve = fit_curve(table.loc[active, "nominal"], table.loc[active, "area_ratio"], model, weighting)
        table["back_calculated"] = curve.back_calculate(table["area_ratio"])
        table["re_pct"] = 100.0 * (table["back_calculated"] - table["nominal"]) / table["nominal"]
        failing = (table.loc[active, "re_pct"].abs() > table.loc[active, "tolerance_pct"]) | table.loc[
            active, "re_pct"
        ].isna()
        if not failing.any():
            return _result(curve, table, acceptance, "")
        if len(active) == minimum_points:
            worst = table.loc[active, "re_pct"].abs().div(table.loc[active, "tolerance_pct"]).fillna(np.inf).idxmax()
        else:
            worst = _worst_left_out(table, active, model, weighting)
        table.loc[worst, "excluded"] = True
        table.loc[worst, "exclusion_reason"] = "failing; excluded and the curve refitted"


def _worst_left_out(table: pd.DataFrame, active: pd.Index, model: str, weighting: str):
    """The calibrator with the largest |%RE| / tolerance against a curve fitted without it."""
    badness = {}
    for i in active:
        others = active.drop(i)
        curve = fit_curve(table.loc[others, "nominal"], table.loc[others, "area_ratio"], model, weighting)
        found = curve.back_calculate([table.loc[i, "area_ratio"]])[0]
        re = 100.0 * (found - table.loc[i, "nominal"]) / table.loc[i, "nominal"]
        badness[i] = abs(re) / table.loc[i, "tolerance_pct"] if np.isfinite(re) else np.inf
    return max(badness, key=lambda i: badness[i])


def _result(curve: Curve | None, table: pd.DataFrame, acceptance: Acceptance, problem: str) -> CalibrationResult:
    """Level verdicts (at least 50 % of a level's replicates pass) and the run's LLOQ/ULOQ."""
    refitted = table["exclusion_reason"] == "failing; excluded and the curve refitted"
    table.loc[refitted, "exclusion_reason"] = [
        f"back-calculated {re:+.1f} % from nominal (limit +-{tol:g} %)"
        if np.isfinite(re)
        else "no concentration on the curve"
        for re, tol in zip(table.loc[refitted, "re_pct"], table.loc[refitted, "tolerance_pct"])
    ]
    table["accuracy_pct"] = 100.0 + table["re_pct"]
    table["passed"] = (~table["excluded"]) & (table["re_pct"].abs() <= table["tolerance_pct"])
    levels = table.groupby("level", sort=False).agg(nominal=("nominal", "first"), passed=("passed", "mean"))
    level_ok = levels["passed"] >= acceptance.min_level_replicate_fraction - 1e-9
    used = levels[level_ok].sort_values("nominal")
    excluded = levels[~level_ok].sort_values("nominal")
    lloq = float(used["nominal"].iloc[0]) if curve is not None and len(used) else None
    uloq = float(used["nominal"].iloc[-1]) if curve is not None and len(used) else None
    return CalibrationResult(curve, table, lloq, uloq, tuple(used.index), tuple(excluded.index), problem)
