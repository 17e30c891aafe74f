"""The compiled inner loops of peaks.py: finding, bounding and integrating one peak.

peaks.py defines what is measured (its docstring) and is the API; this module does the work,
compiled by numba so that one trace costs tens of microseconds instead of the ~200 small numpy
calls a Python version makes. Every function mirrors the one of the same name in peaks.py's
history; the baseline is passed as (intercept, slope) in minutes. Peak finding follows
scipy.signal.find_peaks with a prominence threshold (plateaus resolve to their middle point).

Kept apart from peaks.py so that a process that never integrates (the main process of a run
with worker processes) does not pay numba's import time and memory.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

SECONDS_PER_MINUTE = 60.0
NAN = math.nan


class KernelPeak(NamedTuple):
    """A peak as the compiled code finds it: the fields of peaks.Peak, in its units, and whether
    a peak was found at all (found False: every other field is NaN, 0 or False).

    Inside the compiled code it is a KernelPeak (numba compiles named tuples like plain ones);
    find_peak and integrate hand it to Python as a plain tuple in this order (as_tuple), which
    peaks.py names again with KernelPeak(*result). Returning the named tuple itself would have
    numba build it by calling this class from C, and a Ctrl-C arriving during that call crashes
    the process (a segmentation fault) instead of raising KeyboardInterrupt."""

    found: bool
    rt: float
    start: float
    end: float
    area: float
    height: float
    sn: float
    noise: float
    baseline_start: float
    baseline_end: float
    points: int
    edge: bool
    fwhm: float
    tailing_factor: float
    asymmetry: float
    points_fwhm: int
    saturated: bool
    split: bool
    shoulder: bool  # integrate leaves it False: find_peak looks for a shoulder after integrating


_jit = njit(cache=True, nogil=True)

# A valley is a rise of the smoothed signal by more than RISE_Z x its SD at the valley's level.
RISE_Z = 5.0
# A valley lower than RESOLVED_SIGMA x the baseline noise, or RESOLVED_FRACTION of the apex
# height, above the baseline reaches the baseline: it ends the peak without a split.
RESOLVED_SIGMA = 2.0
RESOLVED_FRACTION = 0.05
# The counting gain is fitted to the points more than GAIN_SIGNAL x the baseline noise above it.
GAIN_SIGNAL = 5.0
# A shoulder's curvature stands out by more than SHOULDER_Z x its noise.
SHOULDER_Z = 5.0
# The baseline is fitted to this many widths at half height beside the peak, on each side.
LOCAL_FWHM = 5
# A peak is cut by the trace's end (edge) when its signal there is above this share of its height:
# a tail lower than that holds less than that share of the area.
EDGE_FRACTION = 0.01
# The peak's own smoothing spans this share of its width at half height: wide enough to smooth
# the counting noise of its top, narrow enough to keep the valley before a neighbour 1.25 FWHM away.
OWN_WIDTH_FRACTION = 0.5
# Widest smoothing (points) a peak's own width may ask for.
MAX_SMOOTHING = 51


# ---------------------------------------------------------------------------------------------
# Statistics and smoothing


@_jit
def median(values):
    return np.median(values) if len(values) else NAN


@_jit
def mad(values):
    """Median absolute deviation from the median."""
    return median(np.abs(values - median(values)))


@_jit
def noise_sigma(intensity):
    """Robust RMS noise of a trace: 1.4826 MAD of the first differences / sqrt 2."""
    if len(intensity) < 3:
        return NAN
    diffs = np.diff(intensity)
    sigma = 1.4826 * mad(diffs) / math.sqrt(2.0)
    if sigma > 0:
        return sigma
    # Integer-valued or flat traces: fall back to the spread of the differences.
    spread = np.std(diffs) / math.sqrt(2.0)
    return spread if spread > 0 else 1.0


@_jit
def smoothing_width(time):
    """An odd number of points covering about 3 s, 5 to 15, no more than the trace holds."""
    n = len(time)
    dt_s = median(np.diff(time)) * SECONDS_PER_MINUTE if n > 1 else 1.0
    width = int(np.round(3.0 / dt_s)) if dt_s > 0 else 5
    width = min(max(width, 5), 15, n if n % 2 else n - 1)
    return width - 1 if width % 2 == 0 else width


@_jit
def convolve_nearest(values, weights):
    """scipy.ndimage.convolve1d(values, weights, mode="nearest") for odd-length weights."""
    n, m = len(values), len(weights)
    half = m // 2
    out = np.empty(n)
    for i in range(n):
        total = 0.0
        for k in range(m):
            j = min(max(i + half - k, 0), n - 1)
            total += weights[k] * values[j]
        out[i] = total
    return out


@_jit
def median3(values):
    """Running median of 3 points (the ends kept): a single-point spike or dropout is gone."""
    out = values.copy()
    for i in range(1, len(values) - 1):
        a, b, c = values[i - 1], values[i], values[i + 1]
        out[i] = max(min(a, b), min(max(a, b), c))
    return out


@_jit
def is_clean(time, intensity):
    """All values finite and times strictly increasing (what peak finding assumes)."""
    for i in range(len(time)):
        if not (math.isfinite(time[i]) and math.isfinite(intensity[i])):
            return False
        if i and time[i] <= time[i - 1]:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Peak detection (scipy.signal.find_peaks with a prominence)


@_jit
def prominent_peaks(x, min_prominence):
    """Local maxima of x (a plateau counts once, at its middle) with their prominences, keeping
    those at least `min_prominence` prominent."""
    n = len(x)
    apices = np.empty(n, dtype=np.int64)
    proms = np.empty(n)
    m = 0
    i = 1
    i_max = n - 1
    while i < i_max:
        if x[i - 1] < x[i]:
            ahead = i + 1
            while ahead < i_max and x[ahead] == x[i]:
                ahead += 1
            if x[ahead] < x[i]:
                peak = (i + ahead - 1) // 2
                prominence = x[peak] - max(_side_min(x, peak, -1), _side_min(x, peak, 1))
                if prominence >= min_prominence:
                    apices[m] = peak
                    proms[m] = prominence
                    m += 1
                i = ahead
        i += 1
    return apices[:m], proms[:m]


@_jit
def _side_min(x, peak, step):
    lowest = x[peak]
    i = peak
    while 0 <= i < len(x) and x[i] <= x[peak]:
        if x[i] < lowest:
            lowest = x[i]
        i += step
    return lowest


# ---------------------------------------------------------------------------------------------
# Baseline


@_jit
def line(x, y):
    """Least-squares (slope, intercept)."""
    xm, ym = x.sum() / len(x), y.sum() / len(y)
    dx = x - xm
    sxx = (dx * dx).sum()
    slope = (dx * (y - ym)).sum() / sxx if sxx > 0 else 0.0
    return slope, ym - slope * xm


@_jit
def robust_line_kept(x, y):
    """Least-squares line refitted twice without points beyond 3 robust SDs of the residuals:
    (slope, intercept, points kept, robust SD of the residuals)."""
    keep = np.ones(len(x), dtype=np.bool_)
    trimmed = False
    slope, intercept = line(x, y)
    spread = 0.0
    for iteration in range(2):
        residual = y - (intercept + slope * x)
        spread = 1.4826 * mad(residual)
        if spread <= 0:
            if iteration == 0 and median(residual) != 0:
                # Over half the points are one value (zero-heavy pulse counts) off a line pulled
                # by the rest: that value is the level.
                return 0.0, median(y), keep, 0.0
            break
        new_keep = np.abs(residual) <= 3.0 * spread
        kept = np.count_nonzero(new_keep)
        if kept < 2 or (kept == len(x) if not trimmed else np.all(new_keep == keep)):
            break
        keep = new_keep
        trimmed = True
        slope, intercept = line(x[keep], y[keep])
    return slope, intercept, keep, spread


@_jit
def off_peaks(x, y):
    """The points of a baseline region that are not on another peak.

    The region is cut into 6 stretches; the noise is that of the three lowest ones, and a first
    line runs through the lower quartiles of those and of the stretches on the same line (not
    more than 3 noise SDs above it): another peak never covers half the region. The line is
    then refitted without the points lying more than 3 noise SDs above it until none is left
    out anew: peaks only ever rise above a baseline, so a neighbour or a matrix peak in the
    region cannot lift the line. All points when fewer than 30 % (or 3) would be left."""
    n = len(x)
    keep = np.ones(n, dtype=np.bool_)
    if n < 12:
        return keep
    stretches = 6
    xs, ys, noise = np.empty(stretches), np.empty(stretches), np.empty(stretches)
    for k in range(stretches):
        lo, hi = k * n // stretches, (k + 1) * n // stretches
        xs[k], ys[k], noise[k] = median(x[lo:hi]), _lower_quartile(y[lo:hi]), noise_sigma(y[lo:hi])
    order = np.argsort(ys)
    sigma = median(noise[order[:3]])
    if not sigma > 0:
        return keep
    use = np.zeros(stretches, dtype=np.bool_)
    use[order[:3]] = True
    slope, intercept = line(xs[use], ys[use])
    for k in order[3:]:
        if ys[k] - (intercept + slope * xs[k]) <= 3.0 * sigma:
            use[k] = True
    slope, intercept = line(xs[use], ys[use])
    for _ in range(10):
        new_keep = y - (intercept + slope * x) <= 3.0 * sigma
        kept = np.count_nonzero(new_keep)
        if kept < max(3, 0.3 * n):
            return np.ones(n, dtype=np.bool_)
        if np.all(new_keep == keep):
            break
        keep = new_keep
        slope, intercept = line(x[keep], y[keep])
    return keep


@_jit
def _lower_quartile(values):
    ordered = np.sort(values)
    return ordered[int(0.25 * (len(ordered) - 1))]


@_jit
def level_or_line(x, y):
    """robust_line off other peaks, or a flat level (the mean of the points it kept) when its
    slope is within 2 standard errors of zero. Returns (intercept, slope)."""
    off = off_peaks(x, y)
    x, y = x[off], y[off]
    slope, intercept, keep, spread = robust_line_kept(x, y)
    if spread > 0:
        xs, ys = x[keep], y[keep]
        xm = xs.sum() / len(xs)
        sxx = ((xs - xm) ** 2).sum()
        if abs(slope) * math.sqrt(sxx) < 2.0 * spread:
            return ys.sum() / len(ys), 0.0
    return intercept, slope


@_jit
def baseline_around(time, intensity, smoothed, apex):
    """A straight baseline (intercept, slope) fitted beside the peak at `apex` (local_span), and
    the intensities it was fitted to (off other peaks); the excluded peak region reaches 3 half-widths before and 5
    after the apex, so a tailing peak does not lift its own baseline."""
    n = len(time)
    # Never below the lowest raw point: smoothing rings below the foot of a steep neighbour.
    floor = max(smoothed.min(), intensity.min())
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
        k = max(2, min(5, n // 6))
        lo = k
        hi = n - k - 1
    span = local_span(apex - left, right - apex)
    first, last = max(lo - span, 0), min(hi + span, n - 1)
    x = np.concatenate((time[first:lo], time[hi + 1 : last + 1]))
    y = np.concatenate((intensity[first:lo], intensity[hi + 1 : last + 1]))
    if len(x) >= 2 and x[-1] > x[0]:
        off = off_peaks(x, y)
        slope, intercept, _, _ = robust_line_kept(x[off], y[off])
        y = y[off]
    else:
        slope, intercept = 0.0, median(y)
    return intercept, slope, y


@_jit
def local_span(hw_left, hw_right):
    """Points beside a peak its baseline is fitted to: LOCAL_FWHM widths at half height (at
    least 10 points), so that a curved background far away does not tilt it."""
    return max(LOCAL_FWHM * (max(hw_left, 1) + max(hw_right, 1)), 10)


@_jit
def baseline_and_noise(time, intensity, smoothed, apex):
    """Baseline under the peak at `apex` (intercept, slope) and the noise of the trace outside
    that peak (of the whole trace when too little is left outside)."""
    intercept, slope, outside = baseline_around(time, intensity, smoothed, apex)
    return intercept, slope, noise_sigma(outside if len(outside) >= 10 else intensity)


@_jit
def baseline_outside(time, intensity, start, end, intercept, slope, lo, hi):
    """Baseline refitted to the points of lo..hi outside start..end; flat at the level of one
    side when the other has fewer than 3 points; (intercept, slope) unchanged when neither has 3."""
    n_left, n_right = start - lo, hi - end
    if n_left >= 3 and n_right >= 3:
        return level_or_line(
            np.concatenate((time[lo:start], time[end + 1 : hi + 1])),
            np.concatenate((intensity[lo:start], intensity[end + 1 : hi + 1])),
        )
    if n_left >= 3:
        return level_or_line(np.zeros(n_left), intensity[lo:start])
    if n_right >= 3:
        return level_or_line(np.zeros(n_right), intensity[end + 1 : hi + 1])
    return intercept, slope


# ---------------------------------------------------------------------------------------------
# Boundaries


@_jit
def crossing_times(t, y, apex, step, levels):
    """Times where y first falls to each of `levels` (descending) walking from the apex, linearly
    interpolated; NaN for a level it never falls to."""
    count = len(levels)
    times = np.full(count, NAN)
    found = 0
    level = levels[0]
    i = apex
    stop = len(y) - 1 if step > 0 else 0
    while i != stop:
        j = i + step
        yj = y[j]
        while yj <= level:
            yi = y[i]
            times[found] = t[i] + (t[j] - t[i]) * (yi - level) / (yi - yj)
            found += 1
            if found == count:
                return times
            level = levels[found]
        i = j
    return times


@_jit
def crossing(above, apex, step, level):
    i = apex
    while 0 < i < len(above) - 1 and above[i] > level:
        i += step
    return i if i != apex else apex + step


@_jit
def decay_reach(above, index, apex, step, sigma):
    """Points from the apex to the end of the peak's side as an exponential decay is worth
    integrating (peaks.py docstring), 0 when it cannot be told."""
    height = above[apex]
    if not height > 0:
        return 0
    if 0.05 * height >= 5.0 * sigma:
        upper, lower = 0.2, 0.05
    else:
        upper, lower = 0.5, 0.2
    levels = np.array((upper * height, lower * height))
    found = crossing_times(index, above, apex, step, levels)
    i_upper, i_lower = abs(found[0] - apex), abs(found[1] - apex)
    if not i_lower > i_upper:
        return 0
    tau = (i_lower - i_upper) / math.log(upper / lower)
    level = max(sigma / math.sqrt(2.0 * tau), 1e-4 * height)
    if not lower * height > level:
        return 0
    return int(math.ceil(i_lower + tau * math.log(lower * height / level)))


@_jit
def walk(above, apex, step, noise, reach, resolved):
    """Index where the signal reaches the baseline, whether a valley stopped the walk there, and
    whether that valley lies between two real peaks above the baseline (a split; peaks.py
    docstring).

    `noise` is the SD of each point of the smoothed trace at its own signal level: the walk turns
    into a valley only where the signal rises again by more than RISE_Z of them above the
    lowest point since the apex, so the jagged top of one peak is never a valley. A valley whose
    lowest point lies within `resolved` of the baseline ends the peak without being a split.
    Within `reach` points of the apex a dip to the baseline does not end the walk unless a valley
    follows.
    """
    n = len(above)
    i = apex
    lowest, lowest_at = above[apex], apex
    floor = 1e-4 * above[apex]  # float noise is no valley on noise-free data
    last = apex + step * reach
    dip = -1
    while 0 <= i + step < n:
        i += step
        value = above[i]
        if value < lowest:
            lowest, lowest_at = value, i
        if value <= noise[i]:  # within the noise of the baseline
            if (i - last) * step >= 0:
                return (i if dip < 0 else dip), False, False
            if dip < 0:
                dip = i
        if value - lowest > max(RISE_Z * noise[lowest_at], floor):
            if dip < 0:
                return lowest_at, True, lowest > resolved
            return dip, True, False  # the dip, then another peak: a valley at the baseline
    return i, False, False


@_jit
def holds_signal(raw, base, lo, hi, sigma, floor):
    """Whether the raw points lo..hi-1 lie above the baseline, on average, by more than 2
    standard errors and more than `floor`."""
    count = hi - lo
    if count <= 0:
        return False
    return (raw[lo:hi] - base[lo:hi]).sum() / count > max(2.0 * sigma / math.sqrt(count), floor)


@_jit
def boundaries(smoothed, raw, base, apex, sigma, noise):
    """Peak limits (start, end, cut at a valley) around `apex` (peaks.py docstring), and the
    span (lo, hi) of the trace the baseline may be fitted to; `noise` is the SD of each smoothed
    point (smoothed_noise)."""
    above = smoothed - base
    index = np.arange(len(above)).astype(np.float64)
    half = 0.5 * above[apex]
    hw_left = apex - crossing(above, apex, -1, half)
    hw_right = crossing(above, apex, 1, half) - apex
    reach_left = max(int(math.ceil(2.5 * hw_left)), decay_reach(above, index, apex, -1, sigma))
    reach_right = max(3 * hw_right, decay_reach(above, index, apex, 1, sigma))
    # The peak's height is its raw top's where smoothing flattens a peak of a few points.
    lo, hi = max(apex - 1, 0), min(apex + 2, len(raw))
    height = max(above[apex], (raw[lo:hi] - base[lo:hi]).max())
    resolved = max(RESOLVED_SIGMA * sigma, RESOLVED_FRACTION * height)
    start, left_valley, left_split = walk(above, apex, -1, noise, reach_left, resolved)
    end, right_valley, right_split = walk(above, apex, 1, noise, reach_right, resolved)
    n = len(above)
    floor = 1e-4 * above[apex]  # what is not worth integrating even on noise-free data
    if not left_valley and (
        start > apex - reach_left or not holds_signal(raw, base, start, apex - reach_left, sigma, floor)
    ):
        start = apex - reach_left
    if not right_valley and (
        end < apex + reach_right or not holds_signal(raw, base, apex + reach_right + 1, end + 1, sigma, floor)
    ):
        end = apex + reach_right
    # Never less than the peak's own width at half height.
    start = min(max(start, apex - 6 * hw_left, 0), max(apex - hw_left, 0))
    end = max(min(end, apex + 12 * hw_right, n - 1), min(apex + hw_right, n - 1))
    span = local_span(hw_left, hw_right)
    return start, end, left_split or right_split, max(start - span, 0), min(end + span, n - 1)


@_jit
def counting_gain(intensity, smoothed, base, sigma, centre_weight):
    """g of the noise model var(y) = sigma^2 + g * (signal above the baseline): pulse counting
    makes the scatter of a peak's top grow with the signal (g = 1 / dwell time for counts per
    second). Fitted so that the median of the scaled squared residuals about the smoothed trace
    is that of a normal variable; 0 when fewer than 5 points stand clearly above the noise."""
    above = smoothed - base
    clear = above > GAIN_SIGNAL * sigma
    if np.count_nonzero(clear) < 5:
        return 0.0
    residual = intensity[clear] - smoothed[clear]
    residual2 = residual * residual / max(1.0 - centre_weight, 1e-3)
    signal = above[clear]
    # The median of r^2 / (sigma^2 + g a) is `target` where g is the median of the g at which each
    # point's ratio equals it: (r^2 / target - sigma^2) / a.
    target = 0.4549364231195724  # median of a chi-square variable with 1 degree of freedom
    return max(median((residual2 / target - sigma * sigma) / signal), 0.0)


@_jit
def smoothed_noise(smoothed, base, sigma, gain, centre_weight):
    """SD of each point of the smoothed trace at its own signal level (the smoothing's weights
    have a sum of squares equal to their centre weight)."""
    above = np.maximum(smoothed - base, 0.0)
    return np.sqrt((sigma * sigma + gain * above) * centre_weight)


# ---------------------------------------------------------------------------------------------
# Integration and shape


@_jit
def refine_apex(t, y, i):
    """Apex time from a parabola through the highest point and its neighbours."""
    if 0 < i < len(y) - 1:
        y0, y1, y2 = y[i - 1], y[i], y[i + 1]
        denom = y0 - 2 * y1 + y2
        if denom < 0:
            offset = 0.5 * (y0 - y2) / denom
            if abs(offset) <= 1:
                return t[i] + offset * (t[i + 1] - t[i - 1]) / 2
    return t[i]


@_jit
def flat_top(raw):
    """Three or more consecutive raw points within 0.1 % of the maximum: the detector's ceiling."""
    top = raw.max()
    if top <= 0:
        return False
    limit = top * (1 - 1e-3)
    for i in range(len(raw) - 2):
        if raw[i] >= limit and raw[i + 1] >= limit and raw[i + 2] >= limit:
            return True
    return False


@_jit
def shape(t, y, apex):
    """FWHM, USP tailing (5 %), asymmetry (10 %) and points across the FWHM."""
    height = y[apex]
    if not height > 0:
        return NAN, NAN, NAN, 0
    levels = np.array((0.5 * height, 0.10 * height, 0.05 * height))
    left = crossing_times(t, y, apex, -1, levels)
    right = crossing_times(t, y, apex, 1, levels)
    apex_t = t[apex]
    a5, b5 = apex_t - left[2], right[2] - apex_t
    a10, b10 = apex_t - left[1], right[1] - apex_t
    tailing = (a5 + b5) / (2 * a5) if a5 > 0 else NAN
    asymmetry = b10 / a10 if a10 > 0 else NAN
    points = 0
    for ti in t:
        if left[0] <= ti <= right[0]:
            points += 1
    return right[0] - left[0], tailing, asymmetry, points


@_jit
def no_peak():
    """The KernelPeak of no peak."""
    return KernelPeak(
        found=False,
        rt=NAN,
        start=NAN,
        end=NAN,
        area=NAN,
        height=NAN,
        sn=NAN,
        noise=NAN,
        baseline_start=NAN,
        baseline_end=NAN,
        points=0,
        edge=False,
        fwhm=NAN,
        tailing_factor=NAN,
        asymmetry=NAN,
        points_fwhm=0,
        saturated=False,
        split=False,
        shoulder=False,
    )


@_jit
def as_tuple(peak):
    """A KernelPeak as the plain tuple find_peak and integrate return (see KernelPeak)."""
    return (
        peak.found,
        peak.rt,
        peak.start,
        peak.end,
        peak.area,
        peak.height,
        peak.sn,
        peak.noise,
        peak.baseline_start,
        peak.baseline_end,
        peak.points,
        peak.edge,
        peak.fwhm,
        peak.tailing_factor,
        peak.asymmetry,
        peak.points_fwhm,
        peak.saturated,
        peak.split,
        peak.shoulder,
    )


@_jit
def integrate(time, intensity, start, end, intercept, slope, sigma, reference_trace, split, apex_trace):
    """integrate_peak as a plain tuple, for Python (see KernelPeak)."""
    return as_tuple(
        integrate_peak(time, intensity, start, end, intercept, slope, sigma, reference_trace, split, apex_trace)
    )


@_jit
def integrate_peak(time, intensity, start, end, intercept, slope, sigma, reference_trace, split, apex_trace):
    """Integrate raw intensity minus baseline between point indices start..end (inclusive): a
    KernelPeak (no_peak() for fewer than 3 points; shoulder is not looked for)."""
    if end - start < 2:
        return no_peak()
    t = time[start : end + 1]
    base = intercept + slope * t
    corrected = intensity[start : end + 1] - base
    area = (np.diff(t) * (corrected[1:] + corrected[:-1]) / 2.0).sum() * SECONDS_PER_MINUTE
    reference = reference_trace[start : end + 1] - base
    apex = int(np.argmax(reference))
    height = corrected[max(apex - 2, 0) : apex + 3].max()
    smoothed_height = reference[apex]
    fwhm, tailing, asymmetry, points_fwhm = shape(t, reference, apex)
    rt_trace = apex_trace[start : end + 1] - base
    # Computed before the call: numba cannot compile branches inside a call with many keywords.
    sn = smoothed_height / sigma if sigma > 0 else math.inf
    edge = (start == 0 and reference[0] > EDGE_FRACTION * smoothed_height) or (
        end == len(time) - 1 and reference[-1] > EDGE_FRACTION * smoothed_height
    )
    return KernelPeak(
        found=True,
        rt=refine_apex(t, rt_trace, int(np.argmax(rt_trace))),
        start=t[0],
        end=t[-1],
        area=area,
        height=height,
        sn=sn,
        noise=sigma,
        baseline_start=base[0],
        baseline_end=base[-1],
        points=len(t),
        edge=edge,
        fwhm=fwhm,
        tailing_factor=tailing,
        asymmetry=asymmetry,
        points_fwhm=points_fwhm,
        saturated=flat_top(intensity[start : end + 1]),
        split=split,
        shoulder=False,
    )


@_jit
def has_shoulder(intensity, above, start, end, apex, width, second_derivative, sigma, gain):
    """Whether an unresolved co-eluting peak (a shoulder) sits on the peak (see peaks.py).

    The curvature's noise at each point is the larger of what it is outside the peak and what
    the noise model (sigma, counting gain) gives at that point's signal level, so the counting
    noise of a jagged top is not taken for a second component."""
    if start + len(intensity) - 1 - end < 10:
        return False
    curvature = -convolve_nearest(intensity, second_derivative)
    outside = 1.4826 * mad(np.concatenate((curvature[:start], curvature[end + 1 :])))
    scale = math.sqrt((second_derivative * second_derivative).sum())
    inside = curvature[start : end + 1]
    local = np.empty(len(inside))
    for k in range(len(inside)):
        local[k] = max(outside, scale * math.sqrt(sigma * sigma + gain * max(above[start + k], 0.0)))
    clear = max(width // 2, 2)
    # Cheap test first: most peaks have no local maximum of curvature that could qualify.
    candidate = False
    for k in range(1, len(inside) - 1):
        if (
            inside[k] >= inside[k - 1]
            and inside[k] >= inside[k + 1]
            and inside[k] > SHOULDER_Z * local[k]
            and abs(start + k - apex) >= clear
        ):
            candidate = True
            break
    if not candidate:
        return False
    tops, _ = prominent_peaks(inside, max(6.0 * outside, 0.15 * curvature[apex]))
    for top in tops:
        lo, hi = min(top, apex - start), max(top, apex - start)
        dip = lo + np.argmin(inside[lo : hi + 1])
        if (
            abs(start + top - apex) >= clear
            and inside[top] > SHOULDER_Z * local[top]
            and inside[dip] < -local[dip]
            and above[start + top] >= 0.2 * above[apex]
        ):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# One trace


@_jit
def savgol_smoothing(width):
    """Savitzky-Golay weights of a quadratic over `width` (odd) points, in closed form."""
    h = width // 2
    k = np.arange(-h, h + 1).astype(np.float64)
    return (3.0 * (3 * h * h + 3 * h - 1) - 15.0 * k * k) / ((2 * h - 1) * (2 * h + 1) * (2 * h + 3))


@_jit
def savgol_second_derivative(width):
    """Savitzky-Golay weights of the second derivative (per point squared) of a quadratic."""
    h = width // 2
    k = np.arange(-h, h + 1).astype(np.float64)
    return 30.0 * (3.0 * k * k - h * (h + 1)) / (h * (h + 1) * (2 * h - 1) * (2 * h + 1) * (2 * h + 3))


@_jit
def window_candidates(time, intensity, smoothed, expected_rt, window, min_sn):
    """The local maxima (indices) of the smoothed trace with their apex in the window, standing
    out by min_sn x the noise, with their prominences; and the tallest point of the window with
    the baseline (intercept, slope) and noise measured around it (tallest -1: an empty window)."""
    n = len(time)
    first, last = -1, -1
    tallest = -1
    for i in range(n):
        if abs(time[i] - expected_rt) <= window:
            if first < 0:
                first = i
            last = i
            if tallest < 0 or smoothed[i] > smoothed[tallest]:
                tallest = i
    if first < 0:
        return np.empty(0, dtype=np.int64), np.empty(0), -1, 0.0, 0.0, 1.0
    # The noise is measured away from the tallest signal of the window: a whole-trace estimate
    # counts the peak's own flanks as noise (twice too high on stepped, pulse-counting data).
    intercept, slope, sigma = baseline_and_noise(time, intensity, smoothed, tallest)
    # Padding lets a peak cut by the end of a scheduled trace (apex on the last point) be found.
    padded = np.empty(n + 2)
    padded[0] = padded[n + 1] = smoothed.min()
    padded[1 : n + 1] = smoothed
    apices, proms = prominent_peaks(padded, min_sn * sigma)
    apices = apices - 1
    inside = (apices >= first) & (apices <= last)
    return apices[inside], proms[inside], tallest, intercept, slope, sigma


@_jit
def choose_apex(time, intensity, smoothed, expected_rt, window, min_sn):
    """The most prominent local maximum of the smoothed trace with its apex in the window (the
    nearest the expected RT among equals), with the baseline (intercept, slope) and noise around
    it; apex -1 when there is none."""
    apices, proms, tallest, intercept, slope, sigma = window_candidates(
        time, intensity, smoothed, expected_rt, window, min_sn
    )
    apex = -1
    best_prominence, best_distance = -math.inf, math.inf
    for k in range(len(apices)):
        i = apices[k]
        distance = abs(time[i] - expected_rt)
        if proms[k] > best_prominence or (proms[k] == best_prominence and distance < best_distance):
            apex, best_prominence, best_distance = i, proms[k], distance
    if apex >= 0 and apex != tallest:
        intercept, slope, sigma = baseline_and_noise(time, intensity, smoothed, apex)
    return apex, intercept, slope, sigma


@_jit
def half_width(above, apex, step, noise):
    """Points from the apex to where the signal falls to half its height, or to a valley before
    a neighbouring peak (a rise of RISE_Z x the noise), whichever comes first."""
    half = 0.5 * above[apex]
    lowest, lowest_at = above[apex], apex
    i = apex
    while 0 < i < len(above) - 1 and above[i] > half:
        i += step
        if above[i] < lowest:
            lowest, lowest_at = above[i], i
        elif above[i] - lowest > RISE_Z * noise[lowest_at]:
            return abs(lowest_at - apex)
    return max(abs(i - apex), 1)


@_jit
def candidate_apices(time, intensity, expected_rt, window, min_sn, smoothing):
    """Apex times (min) and prominences of every local maximum of the smoothed trace in the
    window standing out by min_sn x the noise, most prominent first."""
    smoothed = convolve_nearest(intensity, smoothing)
    apices, proms, _, _, _, _ = window_candidates(time, intensity, smoothed, expected_rt, window, min_sn)
    order = np.argsort(-proms, kind="mergesort")
    times = np.empty(len(order))
    for k in range(len(order)):
        times[k] = refine_apex(time, smoothed, apices[order[k]])
    return times, proms[order]


@_jit
def own_smoothing_width(light, base, apex, noise, default, n):
    """Smoothing width (odd, points) fitted to the peak at `apex` of the lightly smoothed trace
    (`noise`: its SD at each point): OWN_WIDTH_FRACTION of its width at half height, at least 5
    points (and the default's) and at most MAX_SMOOTHING points or the trace."""
    above = light - base
    fwhm = half_width(above, apex, -1, noise) + half_width(above, apex, 1, noise)
    width = max(int(round(OWN_WIDTH_FRACTION * fwhm)), default, 5)
    width = min(width, MAX_SMOOTHING, n if n % 2 else n - 1)
    return width - 1 if width % 2 == 0 else width


@_jit
def find_peak(time, intensity, expected_rt, window, min_sn, smoothing, second_derivative):
    """The most prominent peak with its apex in the window, a KernelPeak (found False: none) as a
    plain tuple, for Python (see KernelPeak).

    `smoothing` are the Savitzky-Golay weights over about 3 s (peaks.smoothing_width), used to
    find the peak; it is then smoothed again over OWN_WIDTH_FRACTION of its width at half height
    (after a 3-point running median), so that apex, valleys and boundaries follow the peak and
    not the noise on its top. `second_derivative`
    are the matching weights of the second derivative, for the shoulder test."""
    n = len(time)
    smoothed = convolve_nearest(intensity, smoothing)
    apex, intercept, slope, sigma = choose_apex(time, intensity, smoothed, expected_rt, window, min_sn)
    if apex < 0:
        return as_tuple(no_peak())
    # Height, S/N and shape are measured on the lightly smoothed trace: smoothing over the
    # peak's whole width would broaden it and lower its top.
    light = smoothed
    base = intercept + slope * time
    centre_weight = smoothing[len(smoothing) // 2]
    # The counting gain is the detector's, measured where smoothing bends the peak least.
    gain = counting_gain(intensity, smoothed, base, sigma, centre_weight)
    noise = smoothed_noise(smoothed, base, sigma, gain, centre_weight)
    width = own_smoothing_width(smoothed, base, apex, noise, len(smoothing), n)
    if width != len(smoothing):
        # Valleys and boundaries follow the peak's shape: a single dropped or spiked point (0.4 %
        # of a real trace's points) is no valley.
        smoothing = savgol_smoothing(width)
        smoothed = convolve_nearest(median3(intensity), smoothing)
        apex, intercept, slope, sigma = choose_apex(time, intensity, smoothed, expected_rt, window, min_sn)
        if apex < 0:
            return as_tuple(no_peak())
    centre_weight = smoothing[width // 2]
    noise = smoothed_noise(smoothed, intercept + slope * time, sigma, gain, centre_weight)
    start, end, split, lo, hi = boundaries(smoothed, intensity, intercept + slope * time, apex, sigma, noise)
    # Second pass: the boundaries follow a tail to where it meets the baseline, so the baseline
    # refitted to what lies outside them no longer leans on the tail of a strongly tailing peak.
    for _ in range(3):
        intercept, slope = baseline_outside(time, intensity, start, end, intercept, slope, lo, hi)
        noise = smoothed_noise(smoothed, intercept + slope * time, sigma, gain, centre_weight)
        new_start, new_end, new_split, lo, hi = boundaries(
            smoothed, intensity, intercept + slope * time, apex, sigma, noise
        )
        if new_start == start and new_end == end:
            break
        start, end, split = new_start, new_end, new_split
    peak = integrate_peak(time, intensity, start, end, intercept, slope, sigma, light, split, smoothed)
    if not peak.found or peak.sn < min_sn:
        return as_tuple(no_peak())
    # A shoulder is looked for at the light smoothing's resolution: the peak's own width would
    # smooth it away.
    shoulder = has_shoulder(
        intensity,
        light - (intercept + slope * time),
        start,
        end,
        apex,
        len(second_derivative),
        second_derivative,
        sigma,
        gain,
    )
    return as_tuple(
        KernelPeak(
            found=True,
            rt=peak.rt,
            start=peak.start,
            end=peak.end,
            area=peak.area,
            height=peak.height,
            sn=peak.sn,
            noise=peak.noise,
            baseline_start=peak.baseline_start,
            baseline_end=peak.baseline_end,
            points=peak.points,
            edge=peak.edge,
            fwhm=peak.fwhm,
            tailing_factor=peak.tailing_factor,
            asymmetry=peak.asymmetry,
            points_fwhm=peak.points_fwhm,
            saturated=peak.saturated,
            split=peak.split,
            shoulder=shoulder,
        )
    )


def _warm_up() -> None:
    """Compile the entry points now (from numba's cache after the first run: ~0.1 s), so that
    workers forked from a process that imported this module start with them compiled."""
    t = np.linspace(0.0, 1.0, 64)
    y = 1e4 * np.exp(-(((t - 0.5) / 0.03) ** 2)) + 10.0 + 0.1 * np.sin(37.0 * t)
    weights = np.full(5, 0.2)
    is_clean(t, y)
    smoothing_width(t)
    noise_sigma(y)
    robust_line_kept(t, y)
    find_peak(t, y, 0.5, 0.2, 3.0, weights, weights)
    candidate_apices(t, y, 0.5, 0.2, 3.0, weights)
    integrate(t, y, 20, 40, 10.0, 0.0, 1.0, y, False, y)


_warm_up()
