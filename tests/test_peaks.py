"""Peak finding and integration on traces of known area."""

import numpy as np
import pytest
from scipy.stats import exponnorm

from lcmsquant.peaks import PeakSearch, find_peak, integrate_between, noise_sigma

TIME = np.arange(2.1, 3.1, 0.35 / 60)  # minutes, one point every 0.35 s as on a triple quad


def emg(area: float, rt: float = 2.6, sigma_s: float = 1.8, tau_s: float = 1.0) -> np.ndarray:
    """An exponentially modified Gaussian of the given area (counts), on TIME (cps)."""
    sigma, tau = sigma_s / 60, tau_s / 60
    return area / 60 * exponnorm.pdf(TIME, tau / sigma, loc=rt, scale=sigma)


def _errors(sn: float, tau_s: float, drift: float = 0.0, n: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signal = emg(1e4, tau_s=tau_s)
    noise = signal.max() / sn
    errors = []
    for _ in range(n):
        trace = signal + 300 + drift * (TIME - TIME[0]) + rng.normal(0, noise, TIME.size)
        peak = find_peak(TIME, trace, PeakSearch(2.6, 0.3))
        errors.append(np.nan if peak is None else 100 * (peak.area / 1e4 - 1))
    return np.array(errors)


def test_clean_gaussian_area_height_and_rt_are_exact():
    trace = emg(5000.0, tau_s=0.01) + 100.0
    peak = find_peak(TIME, trace, PeakSearch(2.6, 0.3))
    assert peak.area == pytest.approx(5000.0, rel=2e-3)
    assert peak.rt == pytest.approx(2.6, abs=0.002)
    assert peak.height == pytest.approx(trace.max() - 100.0, rel=1e-3)
    assert peak.start < 2.6 - 3 * 1.8 / 60 and peak.end > 2.6 + 3 * 1.8 / 60


@pytest.mark.parametrize("sn, limit", [(1000, 0.5), (100, 2.0), (30, 4.0)])
def test_area_error_shrinks_with_signal_to_noise(sn, limit):
    errors = _errors(sn, tau_s=1.5)
    assert np.isnan(errors).sum() == 0
    assert np.median(np.abs(errors)) < limit


def test_tailing_peak_is_integrated_to_its_end():
    errors = _errors(300, tau_s=3.0)
    assert abs(np.median(errors)) < 1.0  # no truncation bias


def test_drifting_baseline_is_subtracted():
    errors = _errors(300, tau_s=1.5, drift=2000.0)  # baseline rises by 2000 cps over the trace
    assert abs(np.median(errors)) < 1.0


def test_noise_only_trace_has_no_peak():
    rng = np.random.default_rng(5)
    trace = 200 + rng.normal(0, 20, TIME.size)
    assert find_peak(TIME, trace, PeakSearch(2.6, 0.3)) is None


def test_peak_outside_the_search_window_is_not_taken():
    trace = emg(1e4, rt=2.9, tau_s=0.01) + 100
    assert find_peak(TIME, trace, PeakSearch(2.6, 0.1)) is None
    assert find_peak(TIME, trace, PeakSearch(2.6, 0.35)).rt == pytest.approx(2.9, abs=0.003)


def test_signal_to_noise_is_height_over_robust_noise():
    rng = np.random.default_rng(9)
    signal = emg(1e4, tau_s=0.5)
    trace = signal + 100 + rng.normal(0, signal.max() / 50, TIME.size)
    peak = find_peak(TIME, trace, PeakSearch(2.6, 0.3))
    assert peak.noise == pytest.approx(signal.max() / 50, rel=0.2)
    assert peak.sn == pytest.approx(50, rel=0.2)


def test_noise_estimate_ignores_drift_and_the_peak():
    rng = np.random.default_rng(2)
    baseline = 5000 * TIME + rng.normal(0, 30, TIME.size)
    assert noise_sigma(baseline) == pytest.approx(30, rel=0.15)
    peak = find_peak(TIME, emg(1e5) + baseline, PeakSearch(2.6, 0.3))
    assert peak.noise == pytest.approx(30, rel=0.15)


def test_manual_boundaries_integrate_between_them():
    trace = emg(5000.0, tau_s=0.01) + 100.0
    peak = integrate_between(TIME, trace, 2.45, 2.75)
    assert peak.area == pytest.approx(5000.0, rel=5e-3)
    assert peak.start >= 2.45 and peak.end <= 2.75


def test_unsorted_and_nan_points_are_tolerated():
    trace = emg(5000.0) + 100.0
    order = np.random.default_rng(0).permutation(TIME.size)
    time, intensity = TIME[order].copy(), trace[order].copy()
    intensity[3] = np.nan
    peak = find_peak(time, intensity, PeakSearch(2.6, 0.3))
    assert peak.area == pytest.approx(5000.0, rel=0.01)
