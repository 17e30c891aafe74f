"""Find and integrate one chromatographic peak in an SRM trace.

The smoothed trace is used only to locate the apex and the boundaries; the area is integrated on
the raw signal above a baseline fitted to the trace around the peak.

Definitions used everywhere in lcmsquant:
- noise (sigma): robust RMS of the baseline noise, 1.4826 * MAD of the first differences of the
  raw trace outside the peak, divided by sqrt(2) (first differences remove drift, the MAD
  ignores spikes);
- height: the highest raw point above the baseline, near the smoothed apex;
- S/N: baseline-corrected apex height of the smoothed trace divided by sigma (the smoothed
  height is not inflated by the noise it is compared with);
- shape, on the baseline-corrected smoothed trace: FWHM; USP tailing factor T = (a + b) / 2a at
  5 % of the height; asymmetry factor As = b / a at 10 % (a: apex to front edge, b: apex to
  back edge); points across the FWHM;
- baseline rule: a straight line fitted to the trace outside the peak (base to base), flat when
  its slope is within 2 standard errors of zero; where a boundary is a valley before a
  neighbouring peak the peak is cut there by a perpendicular drop to that same baseline
  (`split`); an unresolved co-eluting peak (no valley, but the signal bends twice) is only
  flagged (`shoulder`);
- boundaries: where the smoothed signal meets the baseline, and at least where the peak's
  side, extrapolated as an exponential decay, is no longer worth integrating (it would add
  more noise than signal: a tail is integrated to its real end, not to its first noise dip);
- saturated: three or more raw points within 0.1 % of the maximum at the apex (a flat top);
- area: trapezoidal integral of (raw - baseline) between the boundaries, in counts (cps x s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy.ndimage import convolve1d
from scipy.signal import find_peaks, savgol_coeffs

SECONDS_PER_MINUTE = 60.0


@dataclass(frozen=True)
class Peak:
    """An integrated peak; times in minutes, area in counts, height in counts per second."""

    rt: float
    start: float
    end: float
    area: float
    height: float
    sn: float
    noise: float
    baseline_start: float  # baseline level at the start boundary
    baseline_end: float
    points: int  # raw data points between the boundaries
    edge: bool = False  # a boundary sits on the first or last point of the trace
    fwhm: float = float("nan")  # minutes
    tailing_factor: float = float("nan")  # USP, at 5 % height
    asymmetry: float = float("nan")  # at 10 % height
    points_fwhm: int = 0
    saturated: bool = False
    split: bool = False  # cut at a valley before or after a neighbouring peak
    shoulder: bool = False  # a second, unresolved maximum of curvature inside the peak


@dataclass(frozen=True)
class PeakSearch:
    """Where to look and what counts as a peak."""

    expected_rt: float  # minutes
    window: float  # half-width, minutes
    min_sn: float = 3.0


def smooth(intensity: np.ndarray, time: np.ndarray, width: int | None = None) -> np.ndarray:
    """Savitzky-Golay smoothing (quadratic) over about 3 s of data (5 to 15 points)."""
    n = len(intensity)
    if n < 5:
        return intensity.astype(float)
    return convolve1d(intensity, _savgol(width or _smoothing_width(time)), mode="nearest")


def _smoothing_width(time: np.ndarray) -> int:
    """An odd number of points covering about 3 s, 5 to 15, no more than the trace holds."""
    n = len(time)
    dt_s = _median(np.diff(time)) * SECONDS_PER_MINUTE if n > 1 else 1.0
    width = int(round(3.0 / dt_s)) if dt_s > 0 else 5
    width = min(max(width, 5), 15, n if n % 2 else n - 1)
    return width - 1 if width % 2 == 0 else width


@lru_cache(maxsize=16)
def _savgol(width: int) -> np.ndarray:
    return savgol_coeffs(width, polyorder=2)


@lru_cache(maxsize=16)
def _savgol_second_derivative(width: int) -> np.ndarray:
    return savgol_coeffs(width, polyorder=2, deriv=2)


def _median(values: np.ndarray) -> float:
    """np.median of a finite 1-D array, without its fixed overhead (a tenth of the time on
    the few hundred points of a trace)."""
    n = len(values)
    k = n // 2
    if n % 2:
        return float(np.partition(values, k)[k])
    both = np.partition(values, (k - 1, k))
    return float((both[k - 1] + both[k]) / 2.0)


def _mad(values: np.ndarray) -> float:
    """Median absolute deviation from the median."""
    return _median(np.abs(values - _median(values)))


def noise_sigma(intensity: np.ndarray) -> float:
    """Robust RMS noise of a trace (see module docstring)."""
    if len(intensity) < 3:
        return float("nan")
    diffs = np.diff(intensity)
    sigma = 1.4826 * _mad(diffs) / np.sqrt(2.0)
    if sigma > 0:
        return sigma
    # Integer-valued or flat traces: fall back to the spread of the differences.
    spread = float(np.std(diffs)) / np.sqrt(2.0)
    return spread if spread > 0 else 1.0


def find_peak(time: np.ndarray, intensity: np.ndarray, search: PeakSearch) -> Peak | None:
    """The most prominent peak whose apex lies in the search window, or None if none is detected."""
    time, intensity = _clean(time, intensity)
    if len(time) < 5:
        return None
    width = _smoothing_width(time)
    smoothed = smooth(intensity, time, width)
    in_window = np.flatnonzero(np.abs(time - search.expected_rt) <= search.window)
    if not len(in_window):
        return None
    # The noise is measured away from the tallest signal of the window: a whole-trace estimate
    # counts the peak's own flanks as noise (twice too high on stepped, pulse-counting data).
    tallest = int(in_window[np.argmax(smoothed[in_window])])
    baseline, sigma = _baseline_and_noise(time, intensity, smoothed, tallest)
    # Padding lets a peak cut by the end of a scheduled trace (apex on the last point) be found.
    floor = float(smoothed.min())
    padded = np.concatenate(([floor], smoothed, [floor]))
    apices, props = find_peaks(padded, prominence=search.min_sn * sigma)
    candidates = [(i - 1, p) for i, p in zip(apices, props["prominences"]) if in_window[0] <= i - 1 <= in_window[-1]]
    if not candidates:
        return None
    apex = max(candidates, key=lambda c: (c[1], -abs(time[c[0]] - search.expected_rt)))[0]
    if apex != tallest:
        baseline, sigma = _baseline_and_noise(time, intensity, smoothed, apex)
    start, end, split = _boundaries(smoothed, intensity, baseline(time), apex, sigma)
    # Second pass: the boundaries follow a tail to where it meets the baseline, so the baseline
    # refitted to what lies outside them no longer leans on the tail of a strongly tailing peak.
    for _ in range(3):
        baseline = _baseline_outside(time, intensity, start, end, baseline)
        bounds = _boundaries(smoothed, intensity, baseline(time), apex, sigma)
        if bounds[:2] == (start, end):
            break
        start, end, split = bounds
    peak = integrate(time, intensity, start, end, baseline, sigma, smoothed, split=split)
    if peak is None or peak.sn < search.min_sn:
        return None
    if _has_shoulder(intensity, smoothed - baseline(time), start, end, apex, width):
        peak = replace(peak, shoulder=True)
    return peak


def _baseline_and_noise(time: np.ndarray, intensity: np.ndarray, smoothed: np.ndarray, apex: int):
    """Baseline under the peak at `apex` and the noise of the trace outside that peak (of the
    whole trace when too little is left outside)."""
    baseline, outside = _baseline(time, intensity, smoothed, apex)
    return baseline, noise_sigma(outside if len(outside) >= 10 else intensity)


def integrate(
    time: np.ndarray,
    intensity: np.ndarray,
    start: int,
    end: int,
    baseline,
    sigma: float,
    smoothed: np.ndarray | None = None,
    split: bool = False,
) -> Peak | None:
    """Integrate raw intensity minus baseline between point indices start..end (inclusive)."""
    if end - start < 2:
        return None
    seg = slice(start, end + 1)
    t = time[seg]
    base = baseline(t)
    corrected = intensity[seg] - base
    area = _trapezoid(corrected, t) * SECONDS_PER_MINUTE
    reference = (smoothed if smoothed is not None else intensity)[seg] - base
    apex = int(np.argmax(reference))
    near = slice(max(apex - 2, 0), apex + 3)
    smoothed_height = float(reference[apex])
    return Peak(
        rt=float(_refine_apex(t, reference, apex)),
        start=float(t[0]),
        end=float(t[-1]),
        area=area,
        height=float(np.max(corrected[near])),
        sn=smoothed_height / sigma if sigma > 0 else float("inf"),
        noise=sigma,
        baseline_start=float(base[0]),
        baseline_end=float(base[-1]),
        points=len(t),
        edge=start == 0 or end == len(time) - 1,
        split=split,
        saturated=_flat_top(intensity[seg]),
        **_shape(t, reference, apex),
    )


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """np.trapezoid(y, x) without its fixed overhead (same operations, same result)."""
    return float((np.diff(x) * (y[1:] + y[:-1]) / 2.0).sum())


def _shape(t: np.ndarray, y: np.ndarray, apex: int) -> dict:
    """FWHM, USP tailing (5 %), asymmetry (10 %) and points across the FWHM (module docstring)."""
    height = y[apex]
    if not height > 0:
        return {}
    t_list, y_list = t.tolist(), y.tolist()  # walked point by point: Python floats are faster
    levels = (0.5 * height, 0.10 * height, 0.05 * height)
    half_left, front10, front5 = _crossing_times(t_list, y_list, apex, -1, levels)
    half_right, back10, back5 = _crossing_times(t_list, y_list, apex, +1, levels)
    apex_t = t[apex]
    a5, b5 = apex_t - front5, back5 - apex_t
    a10, b10 = apex_t - front10, back10 - apex_t
    return {
        "fwhm": half_right - half_left,
        "tailing_factor": (a5 + b5) / (2 * a5) if a5 > 0 else float("nan"),
        "asymmetry": b10 / a10 if a10 > 0 else float("nan"),
        "points_fwhm": int(np.count_nonzero((t >= half_left) & (t <= half_right))),
    }


def _crossing_times(t, y: list[float], apex: int, step: int, levels: tuple[float, ...]) -> list[float]:
    """Times where y first falls to each of `levels` (descending) walking from the apex, linearly
    interpolated; NaN for a level it never falls to."""
    times = []
    count = len(levels)
    level = levels[0]
    i, stop = apex, (len(y) - 1 if step > 0 else 0)
    while i != stop:
        j = i + step
        yj = y[j]
        while yj <= level:
            yi = y[i]
            times.append(t[i] + (t[j] - t[i]) * (yi - level) / (yi - yj))
            if len(times) == count:
                return times
            level = levels[len(times)]
        i = j
    return times + [math.nan] * (count - len(times))


def _has_shoulder(intensity: np.ndarray, above: np.ndarray, start: int, end: int, apex: int, width: int) -> bool:
    """Whether an unresolved co-eluting peak (a shoulder) sits on the peak.

    A shoulder too close to leave a valley still bends the signal twice: the curvature
    (-d2y/dt2) has a second concave maximum inside the peak, clear of the apex by half the
    smoothing width, with a convex stretch (below -1 curvature noise) between it and the apex,
    concave by 3 times the curvature noise outside the peak, standing out by 15 % of the apex's
    curvature and 6 times that noise, and where the signal is still 20 % of the apex height
    (noise in a long tail does not pass all of these). The peak is not cut there: on real
    traces the test also fires on jagged tops, where a drop would halve a clean peak.
    """
    if start + len(intensity) - 1 - end < 10:
        return False
    curvature = -convolve1d(intensity, _savgol_second_derivative(width), mode="nearest")
    noise = 1.4826 * _mad(np.concatenate((curvature[:start], curvature[end + 1:])))
    inside = curvature[start: end + 1]
    clear = max(width // 2, 2)
    # Cheap test first: most peaks have no local maximum of curvature that could qualify.
    mid = inside[1:-1]
    offset = np.abs(np.arange(start + 1 - apex, start + len(inside) - 1 - apex))
    if not np.any((mid >= inside[:-2]) & (mid >= inside[2:]) & (mid > 3.0 * noise) & (offset >= clear)):
        return False
    tops, _ = find_peaks(inside, prominence=max(6.0 * noise, 0.15 * curvature[apex]))
    for top in tops:
        lo, hi = sorted((top, apex - start))
        if (abs(start + top - apex) >= clear and inside[top] > 3.0 * noise and inside[lo: hi + 1].min() < -noise
                and above[start + top] >= 0.2 * above[apex]):
            return True
    return False


def _flat_top(raw: np.ndarray) -> bool:
    """Three or more consecutive raw points within 0.1 % of the maximum: the detector's ceiling."""
    top = float(np.max(raw))
    if top <= 0:
        return False
    at_top = raw >= top * (1 - 1e-3)
    return bool(np.any(at_top[:-2] & at_top[1:-1] & at_top[2:]))


def integrate_between(time: np.ndarray, intensity: np.ndarray, start_rt: float, end_rt: float) -> Peak | None:
    """Integrate fixed boundaries (a manual integration) with a base-to-base baseline.

    Each end of the baseline is the mean of the boundary point and the two points outside it,
    so one noisy point does not tilt the baseline and the peak's own flank does not lift it.
    """
    time, intensity = _clean(time, intensity)
    inside = np.flatnonzero((time >= start_rt) & (time <= end_rt))
    if len(inside) < 3:
        return None
    start, end = int(inside[0]), int(inside[-1])
    y0 = float(np.mean(intensity[max(start - 2, 0): start + 1]))
    y1 = float(np.mean(intensity[end: end + 3]))
    t0, t1 = time[start], time[end]
    slope = (y1 - y0) / (t1 - t0)
    baseline = _straight(y0 - slope * t0, slope)
    return integrate(time, intensity, start, end, baseline, noise_sigma(intensity), smooth(intensity, time))


def _clean(time: np.ndarray, intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    time = np.asarray(time, dtype=float)
    intensity = np.asarray(intensity, dtype=float)
    if not np.isfinite(time.sum() + intensity.sum()):  # one test for any NaN or infinity
        ok = np.isfinite(time) & np.isfinite(intensity)
        time, intensity = time[ok], intensity[ok]
    if len(time) > 1 and (time[1:] < time[:-1]).any():
        order = np.argsort(time, kind="stable")
        time, intensity = time[order], intensity[order]
    return time, intensity


def _baseline(time: np.ndarray, intensity: np.ndarray, smoothed: np.ndarray, apex: int):
    """A straight baseline fitted (least squares with outlier trimming) around the peak,
    and the intensities of the points it was fitted to.

    The peak region excluded from the fit reaches 3 half-widths before and 5 after the apex,
    so that a tailing peak does not lift its own baseline.
    """
    n = len(time)
    floor = float(np.min(smoothed))
    half = floor + 0.5 * (smoothed[apex] - floor)
    left = apex
    while left > 0 and smoothed[left] > half:
        left -= 1
    right = apex
    while right < n - 1 and smoothed[right] > half:
        right += 1
    lo = max(apex - 3 * max(apex - left, 1), 0)
    hi = min(apex + 5 * max(right - apex, 1), n - 1)
    if lo + n - 1 - hi < 6:
        # Short scheduled traces: the first and last points are the best baseline we have.
        lo = k = max(2, min(5, n // 6))
        hi = n - k - 1
    x = np.concatenate((time[:lo], time[hi + 1:]))
    y = np.concatenate((intensity[:lo], intensity[hi + 1:]))
    if len(x) >= 2 and x[-1] > x[0]:
        slope, intercept = robust_line(x, y)
    else:
        slope, intercept = 0.0, _median(y)
    return _straight(intercept, slope), y


def _baseline_outside(time: np.ndarray, intensity: np.ndarray, start: int, end: int, fallback):
    """Baseline refitted to the points outside start..end (`_level_or_line`).

    When one side has fewer than 3 such points (the trace ends in the peak's tail, or before
    its front), the last points there are still on the peak: the baseline is then flat at the
    level of the other side (all its points, trimmed), rather than a slope extrapolated across
    the whole peak.
    """
    n_left, n_right = start, len(time) - 1 - end
    if n_left >= 3 and n_right >= 3:
        slope, intercept = _level_or_line(np.concatenate((time[:start], time[end + 1:])),
                                          np.concatenate((intensity[:start], intensity[end + 1:])))
    elif n_left >= 3 or n_right >= 3:
        side = intensity[:start] if n_left >= 3 else intensity[end + 1:]
        slope, intercept = _level_or_line(np.zeros(len(side)), side)
    else:
        return fallback
    return _straight(intercept, slope)


def _straight(intercept: float, slope: float):
    """The baseline as a function of time (minutes)."""

    def baseline(t):
        return intercept + slope * np.asarray(t, dtype=float)

    return baseline


def robust_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares line refitted twice without points beyond 3 robust SDs of the residuals.

    Uses every baseline point (unlike a median of pairwise slopes, which must be thinned on long
    traces to stay fast) while a small interfering peak in the baseline region is trimmed away.
    """
    return _robust_line(x, y)[:2]


def _robust_line(x: np.ndarray, y: np.ndarray):
    """robust_line, with the points kept (None: all) and the robust SD of the residuals."""
    keep = None  # all points
    slope, intercept = _line(x, y)
    spread = 0.0
    for iteration in range(2):
        residual = y - (intercept + slope * x)
        spread = 1.4826 * _mad(residual)
        if spread <= 0:
            if iteration == 0 and _median(residual) != 0:
                # Over half the points are one value (zero-heavy pulse counts) off a line pulled
                # by the rest: that value is the level.
                return 0.0, _median(y), None, 0.0
            break
        new_keep = np.abs(residual) <= 3.0 * spread
        kept = np.count_nonzero(new_keep)
        if kept < 2 or (kept == len(x) if keep is None else (new_keep == keep).all()):
            break
        keep = new_keep
        slope, intercept = _line(x[keep], y[keep])
    return slope, intercept, keep, spread


def _level_or_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """robust_line, or a flat level (the mean of the points it kept) when its slope is within 2
    standard errors of zero: a slope that is only noise, or a few points of a tail just past the
    peak's end, tilts the baseline under a wide peak for nothing."""
    slope, intercept, keep, spread = _robust_line(x, y)
    if spread > 0:
        xs, ys = (x, y) if keep is None else (x[keep], y[keep])
        sxx = float(((xs - xs.sum() / len(xs)) ** 2).sum())
        if abs(slope) * math.sqrt(sxx) < 2.0 * spread:
            return 0.0, float(ys.sum() / len(ys))
    return slope, intercept


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    xm, ym = x.sum() / len(x), y.sum() / len(y)
    dx = x - xm
    sxx = float(dx @ dx)
    slope = float(dx @ (y - ym) / sxx) if sxx > 0 else 0.0
    return slope, float(ym - slope * xm)


def _boundaries(
    smoothed: np.ndarray, raw: np.ndarray, base: np.ndarray, apex: int, sigma: float
) -> tuple[int, int, bool]:
    """Peak limits: where the smoothed signal returns to the baseline, or a valley before another
    peak, nor wider than 6 half-widths before and 12 after the apex.

    Each side reaches at least 2.5 half-widths before and 3 after the apex, and as far as its
    decay, extrapolated as an exponential, is worth integrating (`_decay_reach`), unless a valley
    comes first: within that reach the walk goes on through noise dips below the baseline (a
    tail is integrated to its real end, not to its first dip) but stops at a valley. Beyond the
    reach it stops where the signal meets the baseline, and that stretch is kept only where it
    holds signal (its mean above the baseline exceeds 2 standard errors and 0.01 % of the
    height): at low S/N a walk that goes on while the noise stays above the baseline only adds
    noise, biased upwards.
    """
    above = (smoothed - base).tolist()  # walked point by point: Python floats are faster
    half = 0.5 * above[apex]
    hw_left = apex - _crossing(above, apex, -1, half)
    hw_right = _crossing(above, apex, +1, half) - apex
    reach_left = max(math.ceil(2.5 * hw_left), _decay_reach(above, apex, -1, sigma))
    reach_right = max(3 * hw_right, _decay_reach(above, apex, +1, sigma))
    start, left_valley = _walk(above, apex, -1, sigma, reach_left)
    end, right_valley = _walk(above, apex, +1, sigma, reach_right)
    n = len(above)
    floor = 1e-4 * above[apex]  # what is not worth integrating even on noise-free data
    if not left_valley and (start > apex - reach_left or not _holds_signal(raw, base, start, apex - reach_left, sigma, floor)):
        start = apex - reach_left
    if not right_valley and (end < apex + reach_right or not _holds_signal(raw, base, apex + reach_right + 1, end + 1, sigma, floor)):
        end = apex + reach_right
    start = max(start, apex - 6 * hw_left, 0)
    end = min(end, apex + 12 * hw_right, n - 1)
    return start, end, left_valley or right_valley


def _holds_signal(raw: np.ndarray, base: np.ndarray, lo: int, hi: int, sigma: float, floor: float) -> bool:
    """Whether the raw points lo..hi-1 lie above the baseline, on average, by more than 2
    standard errors and more than `floor`."""
    count = hi - lo
    return count > 0 and float((raw[lo:hi] - base[lo:hi]).sum()) / count > max(2.0 * sigma / math.sqrt(count), floor)


def _decay_reach(above: list[float], apex: int, step: int, sigma: float) -> int:
    """Points from the apex to the end of the peak's side, 0 when it cannot be told.

    The side is extrapolated as an exponential decay (tau points) through where it falls to 50 %
    and 20 % of the height (20 % and 5 % when 5 % of the height is 5 sigma or more: the lower
    part of a Gaussian side falls faster than its upper part suggests), and ends where it has
    fallen to sigma / sqrt(2 tau): one more point
    there would add more noise variance (sigma^2) than it removes squared truncation bias
    (2 level^2 tau), so this end minimises the area's mean squared error; never below 0.01 % of
    the height (noise-free data). A Gaussian side, which falls faster than the exponential
    through those two points, is given a little more than it needs.
    """
    height = above[apex]
    if not height > 0:
        return 0
    # Fractional indices where it falls to the two levels (NaN when it never does).
    upper, lower = (0.2, 0.05) if 0.05 * height >= 5.0 * sigma else (0.5, 0.2)
    t_upper, t_lower = _crossing_times(range(len(above)), above, apex, step, (upper * height, lower * height))
    i_upper, i_lower = abs(t_upper - apex), abs(t_lower - apex)
    if not i_lower > i_upper:
        return 0
    tau = (i_lower - i_upper) / math.log(upper / lower)
    level = max(sigma / math.sqrt(2.0 * tau), 1e-4 * height)
    if not lower * height > level:
        return 0
    return math.ceil(i_lower + tau * math.log(lower * height / level))


def _crossing(above: list[float], apex: int, step: int, level: float) -> int:
    i = apex
    while 0 < i < len(above) - 1 and above[i] > level:
        i += step
    return i if i != apex else apex + step


def _walk(above: list[float], apex: int, step: int, sigma: float, reach: int = 0) -> tuple[int, bool]:
    """Index where the signal reaches the baseline, and whether a valley stopped the walk there
    (the signal rises again by 3 sigma above the lowest point since the apex: another peak).

    Within `reach` points of the apex a dip to the baseline does not end the walk (noise on a
    tail), unless the signal then rises into another peak: the walk ends at that dip.
    """
    n = len(above)
    i = apex
    lowest, lowest_at = above[apex], apex
    rise = max(3.0 * sigma, 1e-4 * above[apex])  # float noise is no valley on noise-free data
    last = apex + step * reach
    dip = None
    while 0 <= i + step < n:
        i += step
        value = above[i]
        if value < lowest:
            lowest, lowest_at = value, i
        if value <= 0:
            if (i - last) * step >= 0:
                return (i if dip is None else dip), False
            if dip is None:
                dip = i
        if value - lowest > rise:
            return (lowest_at, True) if dip is None else (dip, False)
    return i, False


def _refine_apex(t: np.ndarray, y: np.ndarray, i: int) -> float:
    """Apex time from a parabola through the highest point and its neighbours."""
    if 0 < i < len(y) - 1:
        y0, y1, y2 = y[i - 1], y[i], y[i + 1]
        denom = y0 - 2 * y1 + y2
        if denom < 0:
            offset = 0.5 * (y0 - y2) / denom
            if abs(offset) <= 1:
                return float(t[i] + offset * (t[i + 1] - t[i - 1]) / 2)
    return float(t[i])
