"""Find and integrate one chromatographic peak in an SRM trace.

The smoothed trace is used only to locate the apex and the boundaries; the area is integrated on
the raw signal above a baseline fitted to the trace beside the peak.

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
- smoothing: the peak is found on a Savitzky-Golay smoothing over about 3 s, then smoothed
  again, after a 3-point running median (a single dropped or spiked point), over half its own
  width at half height (5 to 51 points), so that valleys and boundaries follow the peak and not
  the noise on its top, while a neighbour 1.25 widths away keeps its valley; the RT is the apex
  of that smoothing; height, S/N and shape use the ~3 s smoothing;
- noise model: var(y) = sigma^2 + g * signal, g fitted per trace to the scatter of the points
  about the ~3 s smoothing (pulse counting makes a peak's top scatter with its signal: g is
  about 1 / dwell time for counts per second);
- baseline rule: a straight line fitted to the trace beside the peak (5 widths at half height a
  side), off every other peak (the lowest stretches of that region start the line; points more
  than 3 noise SDs above it are left out), flat when its slope is within 2 standard errors of
  zero;
- valley: the smoothed signal rises again by more than 5 SDs (at the valley's signal level)
  above its lowest point since the apex, so a dip on a jagged top is never a valley. A valley
  within 2 sigma or 5 % of the peak's height (its raw top's where smoothing flattens a peak of
  a few points) of the baseline ends the peak without a flag; a valley clearly above the
  baseline between two real peaks cuts the peak by a perpendicular drop to the common baseline
  (`split`);
- shoulder: an unresolved co-eluting peak (no valley, but the curvature bends twice by more
  than 5 times its noise at that signal level) is only flagged (`shoulder`);
- boundaries: where the smoothed signal comes within its noise of the baseline, and at least where the peak's
  side, extrapolated as an exponential decay, is no longer worth integrating (it would add
  more noise than signal: a tail is integrated to its real end, not to its first noise dip);
  never less than the peak's own width at half height;
- edge: a boundary on the first or last point of the trace with the signal there above 1 % of
  the height (a lower tail holds less than 1 % of the area);
- saturated: three or more raw points within 0.1 % of the maximum at the apex (a flat top);
- area: trapezoidal integral of (raw - baseline) between the boundaries, in counts (cps x s).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

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
    edge: bool = False  # cut by the trace's end: a boundary on its first or last point, above 1 % of the height
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


def find_peak(time: np.ndarray, intensity: np.ndarray, search: PeakSearch) -> Peak | None:
    """The most prominent peak whose apex lies in the search window, or None if none is detected.

    (lcmsquant.measure chooses among the candidates by co-elution first, then calls this
    around the chosen one.)"""
    time, intensity = _clean(time, intensity)
    if len(time) < 5:
        return None
    width = _kernels().smoothing_width(time)
    found = _kernels().find_peak(
        time,
        intensity,
        float(search.expected_rt),
        float(search.window),
        float(search.min_sn),
        _savgol(width),
        _savgol_second_derivative(width),
    )
    return _peak(found)


def peak_candidates(time: np.ndarray, intensity: np.ndarray, search: PeakSearch) -> list[tuple[float, float]]:
    """(apex RT, prominence) of every peak whose apex lies in the search window, most prominent
    first: what `find_peak` chooses from."""
    time, intensity = _clean(time, intensity)
    if len(time) < 5:
        return []
    width = _kernels().smoothing_width(time)
    times, prominences = _kernels().candidate_apices(
        time, intensity, float(search.expected_rt), float(search.window), float(search.min_sn), _savgol(width)
    )
    return [(float(t), float(p)) for t, p in zip(times, prominences)]


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
    y0 = float(np.mean(intensity[max(start - 2, 0) : start + 1]))
    y1 = float(np.mean(intensity[end : end + 3]))
    t0, t1 = time[start], time[end]
    slope = (y1 - y0) / (t1 - t0)
    kernels = _kernels()
    smoothed = smooth(intensity, time)
    found = kernels.integrate(
        time, intensity, start, end, y0 - slope * t0, slope, noise_sigma(intensity), smoothed, False, smoothed
    )
    return _peak(found)


def smooth(intensity: np.ndarray, time: np.ndarray, width: int | None = None) -> np.ndarray:
    """Savitzky-Golay smoothing (quadratic) over about 3 s of data (5 to 15 points)."""
    intensity = np.ascontiguousarray(intensity, dtype=np.float64)
    if len(intensity) < 5:
        return intensity.copy()
    kernels = _kernels()
    return kernels.convolve_nearest(intensity, _savgol(width or kernels.smoothing_width(_floats(time))))


def noise_sigma(intensity: np.ndarray) -> float:
    """Robust RMS noise of a trace (see module docstring)."""
    return float(_kernels().noise_sigma(_floats(intensity)))


def robust_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of a least-squares line refitted twice without points beyond 3 robust
    SDs of the residuals: uses every baseline point while a small interfering peak in the
    baseline region is trimmed away."""
    slope, intercept, _, _ = _kernels().robust_line_kept(_floats(x), _floats(y))
    return float(slope), float(intercept)


def savgol_weights(width: int, deriv: int = 0) -> np.ndarray:
    """Savitzky-Golay convolution weights of a quadratic over `width` points (odd): the value
    (deriv=0) or the second derivative (deriv=2, per point squared) of the least-squares
    parabola at the centre point. scipy.signal.savgol_coeffs(width, 2, deriv) gives the same,
    but importing scipy.signal costs the worker processes ~0.8 s."""
    half = width // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    fit = np.linalg.pinv(np.vander(x, 3, increasing=True))  # rows: intercept, slope, curvature / 2
    return np.ascontiguousarray(fit[deriv][::-1] * math.factorial(deriv))


@lru_cache(maxsize=16)
def _savgol(width: int) -> np.ndarray:
    return savgol_weights(width)


@lru_cache(maxsize=16)
def _savgol_second_derivative(width: int) -> np.ndarray:
    return savgol_weights(width, deriv=2)


def peak_finder_compiled() -> bool:
    """Whether numba has already compiled the peak finder for this installation: its cache
    holds an index for find_peak as the source now defines it. The first run after installing
    compiles it (30-45 s, once); the command line says so instead of sitting at 0 %.
    Read from the files alone, without importing numba."""
    source = Path(__file__).with_name("_peak_kernels.py")
    try:
        lines = source.read_text().splitlines()
        line = next(n for n, text in enumerate(lines, 1) if text.startswith("def find_peak("))
    except (OSError, StopIteration):
        return True  # nothing to tell: say nothing
    while line > 1 and lines[line - 2].startswith("@"):  # numba names the index by the first decorator's line
        line -= 1
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    folders = [Path(os.environ["NUMBA_CACHE_DIR"])] if os.environ.get("NUMBA_CACHE_DIR") else []
    folders.append(source.parent / "__pycache__")
    name = f"_peak_kernels.find_peak-{line}.{tag}.nbi"
    return any(any(folder.rglob(name)) if folder.is_dir() else False for folder in folders)


@lru_cache(maxsize=1)
def _kernels():
    """The compiled peak finder, imported on first use (numba costs ~0.3 s and ~70 MB)."""
    from lcmsquant import _peak_kernels

    return _peak_kernels


def _floats(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64)


def _clean(time: np.ndarray, intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finite points in time order (lcmsquant.chromatograms already hands over clean traces)."""
    time, intensity = _floats(time), _floats(intensity)
    if _kernels().is_clean(time, intensity):
        return time, intensity
    ok = np.isfinite(time) & np.isfinite(intensity)
    time, intensity = time[ok], intensity[ok]
    if len(time) > 1 and (time[1:] < time[:-1]).any():
        order = np.argsort(time, kind="stable")
        time, intensity = time[order], intensity[order]
    return time, intensity


def _peak(result: tuple) -> Peak | None:
    """The kernels' result (the fields of _peak_kernels.KernelPeak) as a Peak, None when no peak
    was found."""
    found = _kernels().KernelPeak(*result)
    if not found.found:
        return None
    return Peak(
        rt=found.rt,
        start=found.start,
        end=found.end,
        area=found.area,
        height=found.height,
        sn=found.sn,
        noise=found.noise,
        baseline_start=found.baseline_start,
        baseline_end=found.baseline_end,
        points=found.points,
        edge=found.edge,
        fwhm=found.fwhm,
        tailing_factor=found.tailing_factor,
        asymmetry=found.asymmetry,
        points_fwhm=found.points_fwhm,
        saturated=found.saturated,
        split=found.split,
        shoulder=found.shoulder,
    )
