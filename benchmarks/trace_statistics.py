"""What makes real SRM traces hard, measured the same way on the real files and on simulated traces.

Measures, side by side, on

  RawDataProcessor, Sacc1   every SRM trace of the two real SCIEX QTRAP files in
                            ../shared/data/smartpeak-sciex-srm (read with read_traces);
  simulate (...)            every trace of plasma batches written by `simulate_batch` (default
                            options; `--batches`, seeds from `--seed` on: each batch draws its
                            own cycle-time profile, dwell times and backgrounds), one column per
                            acquisition: "instrument" (what `lcmsquant simulate` writes) and
                            "smooth" (the simulator before issue 13);
  accuracy ...              the traces of benchmarks/integration_accuracy.py (every flat-baseline
                            stratum without shoulder, 25 traces each), one column per noise model
                            it has;

these statistics (nothing is asserted; the aim is that the simulated columns look like the real
ones):

  sampling        interval between points (s), pooled over all points: median (5th-95th
                  percentile); its change within one trace (max / min interval); points per trace;
  quantised       share of traces whose non-zero intensities all sit (>= 80 % of them) on a grid
                  of one step: SCIEX writes counts / dwell time, so a step is one count (cps) and
                  1 / step the dwell time;
  zeros           share of points exactly 0 (pooled; median per trace);
  baseline        level (median of the lower half of the trace) and noise SD (robust SD of the
                  point-to-point differences in the lower half / sqrt 2, at least one step);
  spikes          single-point outliers on the baseline: a point more than 8 baseline SDs above
                  both neighbours while its two neighbours on each side stay within 3 SDs of the
                  baseline; per trace, share of traces with one, amplitude in counts (steps);
  dropouts        points reading less than 20 % of both neighbours while both hold more than
                  20 counts (20 baseline SDs if not quantised): a point lost amid a signal, as a
                  share of the points with such neighbours;
  peak S/N        peak height / baseline SD of every trace holding a peak of at least 10 SDs;
  clean peaks     isolated, high-S/N peaks found the same way in every source (one maximum of
                  the smoothed trace, nothing above 5 % of the height within -3..+6 FWHM, >= 100
                  baseline SDs and steps, apex >= 3 FWHM from the start and 4 from the end,
                  below 3e6 cps: QTRAP tops flatten near 5e6); their FWHM (s, on a local
                  quadratic smooth) and points per FWHM; for RawDataProcessor also the vendor's
                  width_at_50 of every peak it integrated;
  noise on tops   on the clean peaks with >= 4 points per FWHM: each point minus the cubic through
                  its two neighbours on each side (uneven spacing allowed), scaled by
                  1 / sqrt(1 + sum w^2) so it is the point's own scatter; robust SD (1.4826 MAD)
                  per bin of level; fitted as SD = a * level^b (cps) and as a counting model
                  var = v0 + F * n + (r * n)^2 in counts n = level / step (F = 1: pure Poisson
                  pulse counting; r: multiplicative scatter of the ion current from point to
                  point; v0 a constant floor); and the median scatter at the top (points above
                  half height) in % of the level; the lag-1 correlation of these residuals
                  (-0.80 for white noise on an even grid: the scatter is point-to-point);
  jagged tops     on the raw clean peaks: local maxima among the points above half height (1 for
                  a smooth peak), share of peaks with more than one, and the deepest dip between
                  two such maxima (% of height);
  RT offsets      |observed apex - method RT| (min): real files: traML.csv's RetentionTime
                  against the vendor's retention_time (RawDataProcessor) and SmartPeak's picked
                  RT (Sacc1); simulated: the apex of each clean peak against the method's
                  expected RT (accuracy traces: against 2.60 min).

    python benchmarks/trace_statistics.py [--data DIR] [--seed 1] [--batches 3] [--options KEY=VALUE ...]

`--options` passes SimulationOptions to the simulated batch (e.g. `rt_offset_min=0.4`), to see
what an option changes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent / "src"))
sys.path.insert(0, str(BENCHMARKS))

from lcmsquant.chromatograms import read_traces  # noqa: E402

DATA = BENCHMARKS.parents[1] / "shared" / "data" / "smartpeak-sciex-srm"
VENDOR_FILE = "RawDataProcessor_mzML_1"
SACC_FILE = "170808_Jonathan_yeast_Sacc1_1x"
SATURATION_GUARD = 3e6  # cps; tops flatten near 5e6 on the QTRAP files
MIN_POINTS_PER_FWHM = 4.0  # for the noise fit (the cubic through neighbours follows the shape)


@dataclass
class Source:
    """Traces (time in seconds, intensity in cps) and (method RT, observed RT) pairs in minutes."""

    name: str
    traces: list[tuple[np.ndarray, np.ndarray]]
    rt_pairs: list[tuple[float, float]] = field(default_factory=list)
    method_rt: list[float | None] = field(default_factory=list)  # per trace, for sources without a reference
    vendor_fwhm_s: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------
# Building blocks


def local_poly(t: np.ndarray, y: np.ndarray, half_width: float, degree: int = 2) -> np.ndarray:
    """Local polynomial smooth (least squares within +-half_width seconds, uneven spacing)."""
    out = np.empty(len(t))
    lo = np.searchsorted(t, t - half_width, side="left")
    hi = np.searchsorted(t, t + half_width, side="right")
    for i in range(len(t)):
        if hi[i] - lo[i] < degree + 2:
            out[i] = y[i]
            continue
        x = (t[lo[i] : hi[i]] - t[i]) / half_width
        design = np.vander(x, degree + 1, increasing=True)
        out[i] = np.linalg.lstsq(design, y[lo[i] : hi[i]], rcond=None)[0][0]
    return out


def neighbour_residuals(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point minus the cubic through its two neighbours on each side (Lagrange; NaN at the
    ends), scaled to the point's own scatter; and that cubic's value (the local level)."""
    n = len(t)
    res, level = np.full(n, np.nan), np.full(n, np.nan)
    if n < 5:
        return res, level
    i = np.arange(2, n - 2)
    nodes = np.stack([i - 2, i - 1, i + 1, i + 2])
    weights = np.ones((4, len(i)))
    for a in range(4):
        for b in range(4):
            if a != b:
                weights[a] *= (t[i] - t[nodes[b]]) / (t[nodes[a]] - t[nodes[b]])
    level[i] = np.sum(weights * y[nodes], axis=0)
    res[i] = (y[i] - level[i]) / np.sqrt(1.0 + np.sum(weights**2, axis=0))
    return res, level


def quantum(y: np.ndarray) -> float:
    """The grid step of the non-zero intensities (cps per count), or NaN if they are not on one.

    The step is found on the low values (up to 200 steps, where a step is resolved to better than
    0.6 cps) and checked on all of them, each within 0.6 cps plus its share of the step's
    uncertainty (values are written as whole cps)."""
    values = y[y > 0]
    distinct = np.unique(values)
    if len(distinct) < 5:
        return float("nan")
    smallest = float(np.min(np.diff(distinct)))
    if smallest < 5.0:  # finer than any dwell time gives: not counts
        return float("nan")
    low = values[values <= 200 * smallest]
    if len(low) < 5:
        return float("nan")
    candidates = np.linspace(0.95 * smallest, 1.05 * smallest, 2001)
    k = np.round(low[:, None] / candidates[None, :])
    on_grid = (np.abs(low[:, None] - k * candidates[None, :]) <= 0.6).mean(axis=0)
    step = float(candidates[np.argmax(on_grid)])
    resolution = 0.6 / max(float(np.round(low / step).max()), 1.0)
    n = np.round(values / step)
    share = np.mean(np.abs(values - n * step) <= 0.6 + n * resolution)
    return step if share >= 0.8 else float("nan")


@dataclass
class Baseline:
    level: float
    sd: float


def baseline(y: np.ndarray, step: float) -> Baseline:
    lower = y <= np.percentile(y, 50)
    diffs = np.diff(y)[lower[1:] & lower[:-1]]
    sd = 1.4826 * float(np.median(np.abs(diffs))) / np.sqrt(2) if len(diffs) else 0.0
    floor = step if np.isfinite(step) else 0.0
    return Baseline(float(np.median(np.sort(y)[: max(len(y) // 2, 1)])), max(sd, floor))


def dropouts(y: np.ndarray, unit: float) -> tuple[int, int]:
    """(points reading < 20 % of both neighbours while both hold > 20 units above 0, points whose
    both neighbours hold > 20 units): a point lost amid a signal."""
    if len(y) < 3 or not unit > 0:
        return 0, 0
    neighbours = np.minimum(y[:-2], y[2:])
    amid = neighbours > 20 * unit
    return int(np.sum(amid & (y[1:-1] < 0.2 * neighbours))), int(np.sum(amid))


def spikes(y: np.ndarray, base: Baseline) -> np.ndarray:
    """Amplitudes of the single-point outliers on the baseline (see the module docstring)."""
    if len(y) < 5 or base.sd <= 0:
        return np.empty(0)
    i = np.arange(2, len(y) - 2)
    calm = y <= base.level + 3 * base.sd
    above = y[i] - np.maximum(y[i - 1], y[i + 1])
    hit = (above > 8 * base.sd) & calm[i - 1] & calm[i + 1] & calm[i - 2] & calm[i + 2]
    return above[hit]


@dataclass
class Peak:
    apex: int
    height: float
    base: float
    fwhm: float
    dt: float
    step: float
    left: int  # first and last index above half height (smoothed)
    right: int
    asymmetry: float  # (tail - apex) / (apex - front) at 10 % of the height (smoothed)


def _half_run(s: np.ndarray, m: int, level: float) -> tuple[int, int]:
    left = m
    while left > 0 and s[left - 1] >= level:
        left -= 1
    right = m
    while right < len(s) - 1 and s[right + 1] >= level:
        right += 1
    return left, right


def _cross(t, s, inside, outside, level) -> float:
    return float(t[outside] + (level - s[outside]) * (t[inside] - t[outside]) / (s[inside] - s[outside]))


def clean_peak(t: np.ndarray, y: np.ndarray, step: float, base: Baseline) -> Peak | None:
    """The trace's clean, isolated, high-S/N peak (criteria in the module docstring), or None."""
    n = len(t)
    if n < 30 or y.max() > SATURATION_GUARD:
        return None
    dt = float(np.median(np.diff(t)))
    s = local_poly(t, y, max(1.6 * dt, 0.8))
    m = int(np.argmax(s))
    level = float(np.percentile(y, 10))
    for _ in range(3):
        half = level + (s[m] - level) / 2
        left, right = _half_run(s, m, half)
        if left == 0 or right == n - 1 or s[m] <= level:
            return None
        fwhm = _cross(t, s, right, right + 1, half) - _cross(t, s, left, left - 1, half)
        outside = (t < t[m] - 3 * fwhm) | (t > t[m] + 6 * fwhm)
        if outside.sum() < 10:
            return None
        level = float(np.median(y[outside]))
    height = float(s[m] - level)
    if t[m] - t[0] < 3 * fwhm or t[-1] - t[m] < 4 * fwhm or height <= 0:
        return None
    if (s >= level + height / 2).sum() != right - left + 1:
        return None
    if np.max(s[outside]) - level > 0.1 * height:
        return None
    if height < 100 * max(base.sd, step if np.isfinite(step) else 0.0, 1.0):
        return None
    wide = local_poly(t, y, max(0.5 * fwhm, 2 * dt))
    lo, hi = np.searchsorted(t, [t[m] - 3 * fwhm, t[m] + 6 * fwhm])
    seg = wide[lo:hi]
    top = int(np.argmax(seg))
    rise, fall = seg[: top + 1], seg[top:]
    if np.any(rise - np.minimum.accumulate(rise[::-1])[::-1] > 0.05 * height):
        return None  # a second maximum before the apex
    if np.any(fall - np.minimum.accumulate(fall) > 0.05 * height):
        return None  # ... or after it
    tenth = level + 0.1 * height
    front, tail = _half_run(s, m, tenth)
    asymmetry = float("nan")
    if front > 0 and tail < n - 1:
        asymmetry = (_cross(t, s, tail, tail + 1, tenth) - t[m]) / (t[m] - _cross(t, s, front, front - 1, tenth))
    return Peak(m, height, level, fwhm, dt, step, left, right, asymmetry)


def jaggedness(y: np.ndarray, p: Peak) -> tuple[int, float]:
    """Local maxima of the raw points above half height, and the deepest dip between two of them
    (fraction of the height)."""
    lo, hi = p.left, p.right
    seg = y[max(lo - 1, 0) : hi + 2]
    inner = np.arange(1, len(seg) - 1)
    maxima = inner[
        (seg[inner] > seg[inner - 1]) & (seg[inner] >= seg[inner + 1]) & (seg[inner] - p.base >= p.height / 2)
    ]
    dip = 0.0
    for a, b in zip(maxima[:-1], maxima[1:]):
        dip = max(dip, (min(seg[a], seg[b]) - seg[a : b + 1].min()) / p.height)
    return len(maxima), dip


def fit_counting_model(level: np.ndarray, sd: np.ndarray) -> tuple[float, float, float]:
    """var = v0 + F * n + (r * n)^2 on binned (level, robust SD) in counts, relative residuals."""
    from scipy.optimize import nnls

    var = sd**2
    design = np.stack([np.ones_like(level), level, level**2], axis=1) / var[:, None]
    coef, _ = nnls(design, np.ones_like(var))
    v0, f, r2 = coef
    return float(np.sqrt(v0)), float(f), float(np.sqrt(r2))


def binned_sd(level: np.ndarray, res: np.ndarray, per_decade: int = 4, min_n: int = 20):
    edges = 10 ** (
        np.arange(
            np.floor(np.log10(max(level.min(), 1e-3)) * per_decade), np.ceil(np.log10(level.max()) * per_decade) + 1
        )
        / per_decade
    )
    centre, sd, count = [], [], []
    for a, b in zip(edges[:-1], edges[1:]):
        sel = (level >= a) & (level < b)
        if sel.sum() >= min_n:
            r = res[sel]
            centre.append(float(np.mean(level[sel])))
            sd.append(1.4826 * float(np.median(np.abs(r - np.median(r)))))
            count.append(int(sel.sum()))
    return np.array(centre), np.array(sd), np.array(count)


# ---------------------------------------------------------------------------------------------
# Statistics of one source


def _q(values, digits: int = 2, pct=(5, 95)) -> str:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return "-"
    lo, hi = np.percentile(values, pct)
    return f"{np.median(values):.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def statistics(src: Source) -> dict[str, str]:
    out: dict[str, str] = {}
    dts, ratios, npts, steps, zeros, levels, sds, spike_n, spike_amp, sn = [], [], [], [], [], [], [], [], [], []
    quantised, resolvable, peaks = 0, 0, []
    drop_n = drop_of = 0
    for index, (t, y) in enumerate(src.traces):
        if len(t) < 2:
            continue
        d = np.diff(t)
        dts.append(d)
        npts.append(len(t))
        zeros.append(y == 0)
        if len(t) < 30:
            continue
        ratios.append(d.max() / max(d.min(), 1e-9))
        step = quantum(y)
        quantised += np.isfinite(step)
        resolvable += len(np.unique(y[y > 0])) >= 5
        steps.append(step)
        base = baseline(y, step)
        levels.append(base.level)
        sds.append(base.sd)
        lost, amid = dropouts(y, step if np.isfinite(step) else base.sd)
        drop_n += lost
        drop_of += amid
        amps = spikes(y, base)
        spike_n.append(len(amps))
        spike_amp.extend(amps / (step if np.isfinite(step) else base.sd))
        height = float(local_poly(t, y, max(1.6 * np.median(d), 0.8)).max() - base.level)
        if base.sd > 0 and height >= 10 * base.sd:
            sn.append(height / base.sd)
        p = clean_peak(t, y, step, base)
        if p is not None:
            peaks.append((index, t, y, p))
    n_long = len(ratios)
    d_all = np.concatenate(dts)
    out["traces (>= 30 points)"] = f"{len(src.traces)} ({n_long})"
    out["sampling interval, s"] = _q(d_all)
    out["  max/min interval within a trace"] = _q(ratios, 1)
    out["points per trace"] = _q(npts, 0)
    out["quantised traces (1/dwell steps)"] = f"{100 * quantised / max(resolvable, 1):.0f} %"
    out["  step, cps | dwell, ms"] = "-" if not quantised else f"{_q(steps, 0)} | {1000 / np.nanmedian(steps):.0f}"
    z = np.concatenate(zeros)
    out["zero points: pooled | median per trace"] = (
        f"{100 * z.mean():.1f} % | {100 * np.median([x.mean() for x in zeros]):.1f} %"
    )
    out["baseline level, cps [IQR]"] = _q(levels, 0, (25, 75))
    out["baseline noise SD, cps [IQR]"] = _q(sds, 0, (25, 75))
    spike_n = np.array(spike_n)
    out["spikes per trace | traces with one"] = f"{spike_n.mean():.2f} | {100 * np.mean(spike_n > 0):.0f} %"
    out["  spike height, counts (or SDs) [p10-p90]"] = _q(spike_amp, 0, (10, 90))
    out["dropouts, % of points amid a signal"] = f"{100 * drop_n / max(drop_of, 1):.2f} %"
    out["peak height / baseline SD [p10-p90]"] = _q(sn, 0, (10, 90))

    out["clean peaks"] = str(len(peaks))
    out["  FWHM, s [IQR]"] = _q([p.fwhm for *_, p in peaks], 1, (25, 75))
    if src.vendor_fwhm_s is not None:
        out["  vendor width_at_50, s, all peaks [IQR]"] = _q(src.vendor_fwhm_s, 1, (25, 75))
    out["  asymmetry at 10 % height [IQR]"] = _q([p.asymmetry for *_, p in peaks], 1, (25, 75))
    out["  points per FWHM [IQR]"] = _q([p.fwhm / p.dt for *_, p in peaks], 1, (25, 75))

    res_n, lvl_n, res_c, lvl_c, top_rel, lag = [], [], [], [], [], []
    used = 0
    for _, t, y, p in peaks:
        if p.fwhm / p.dt < MIN_POINTS_PER_FWHM:
            continue
        used += 1
        res, level = neighbour_residuals(t, y)
        window = (t >= t[p.apex] - 2 * p.fwhm) & (t <= t[p.apex] + 4 * p.fwhm) & np.isfinite(res) & (level > 0)
        step = p.step if np.isfinite(p.step) else 1.0
        res_n.append(res[window] / step)
        lvl_n.append(level[window] / step)
        res_c.append(res[window])
        lvl_c.append(level[window])
        top = window & (level - p.base >= p.height / 2)
        if top.sum() >= 3:
            top_rel.append(1.4826 * np.median(np.abs(res[top] / level[top])))
        idx = np.flatnonzero(window & (level - p.base >= 0.2 * p.height))
        pairs = [(res[i], res[i + 1]) for i in idx if i + 1 in set(idx)]
        lag.extend(pairs)
    out["noise fit: clean peaks used"] = str(used)
    if used:
        lc, rc = np.concatenate(lvl_c), np.concatenate(res_c)
        centre, sd, _ = binned_sd(lc, rc)
        high = centre >= 0.02 * lc.max()
        if high.sum() >= 2:
            b, log_a = np.polyfit(np.log(centre[high]), np.log(np.maximum(sd[high], 1e-9)), 1)
            out["  SD = a * level^b (cps)"] = f"a {np.exp(log_a):.3g}, b {b:.2f}"
        centre, sd, _ = binned_sd(np.concatenate(lvl_n), np.concatenate(res_n))
        ok = sd > 0
        if ok.sum() >= 3:
            v0, f, r = fit_counting_model(centre[ok], sd[ok])
            out["  var = v0 + F n + (r n)^2 (counts)"] = f"F {f:.2f}, r {100 * r:.1f} %, sqrt(v0) {v0:.2g}"
        out["  scatter at the top, % of level [IQR]"] = _q(100 * np.array(top_rel), 1, (25, 75))
        if len(lag) > 10:
            a = np.array(lag)
            out["  lag-1 correlation (white: -0.80)"] = f"{np.corrcoef(a.T)[0, 1]:.2f}"
    jag = [jaggedness(y, p) for _, t, y, p in peaks]
    if jag:
        counts = np.array([j[0] for j in jag])
        out["jagged tops: maxima above half height [IQR]"] = _q(counts, 0, (25, 75))
        out["  peaks with > 1 maximum"] = f"{100 * np.mean(counts > 1):.0f} %"
        dips = np.array([100 * j[1] for j in jag])
        out["  dip between maxima, % height: mean | p90"] = f"{dips.mean():.1f} | {np.percentile(dips, 90):.1f}"

    pairs = list(src.rt_pairs)
    if not pairs and src.method_rt:
        pairs = [(src.method_rt[i], float(t[p.apex]) / 60.0) for i, t, y, p in peaks if src.method_rt[i] is not None]
    if pairs:
        off = np.abs(np.array([b - a for a, b in pairs]))
        out["RT offset |run - method|, min"] = (
            f"{np.median(off):.3f} (p90 {np.percentile(off, 90):.3f}, max {off.max():.3f})"
        )
        out["  offsets > 0.1 | > 0.25 min"] = f"{100 * np.mean(off > 0.1):.0f} % | {100 * np.mean(off > 0.25):.0f} %"
    return out


# ---------------------------------------------------------------------------------------------
# Sources


def real_source(data: Path, name: str) -> Source:
    traces = [(tr.time * 60.0, tr.intensity.astype(np.float64)) for tr in read_traces(data / f"{name}.mzML")]
    listed = pd.read_csv(data / "traML.csv")
    listed_rt = dict(zip(listed["transition_name"], listed["RetentionTime"].astype(float) / 60.0))
    src = Source(name, traces)
    if name == VENDOR_FILE:
        vendor = pd.read_csv(data / f"{VENDOR_FILE}.vendor_integration.csv")
        src.rt_pairs = [
            (listed_rt[c], float(rt))
            for c, rt in zip(vendor["component_name"], vendor["retention_time"])
            if c in listed_rt
        ]
        src.vendor_fwhm_s = vendor["width_at_50"].to_numpy(dtype=float) * 60.0
    else:
        import pyopenms as oms

        features = oms.FeatureMap()
        oms.FeatureXMLFile().load(str(data / f"{name}.smartpeak.featureXML"), features)
        for feature in features:  # RT in minutes in this file
            for sub in feature.getSubordinates():
                native = sub.getMetaValue("native_id")
                if native in listed_rt:
                    src.rt_pairs.append((listed_rt[native], float(feature.getRT())))
    return src


def simulated_source(seeds: Iterable[int], options: dict, acquisition: str | None = None) -> Source:
    """Every trace of plasma batches written by simulate_batch, one per seed."""
    from lcmsquant.method import default_method_path, load_method
    from lcmsquant.simulate import SimulationOptions, simulate_batch

    method = load_method(default_method_path())
    expected = {(t.q1, t.q3): method.expected_rt(t) for t in method.transitions()}
    if acquisition is not None:
        options = {**options, "acquisition": acquisition}
    src = Source(f"simulate ({options.get('acquisition', 'default')})", [])
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "batch"
            simulate_batch(folder, seed=seed, options=SimulationOptions(**options))
            worklist = pd.read_csv(folder / "worklist.csv", dtype=str, keep_default_na=False)
            for name in worklist["file"]:
                for tr in read_traces(folder / name):
                    src.traces.append((tr.time * 60.0, tr.intensity.astype(np.float64)))
                    src.method_rt.append(expected[(tr.q1, tr.q3)])
    return src


def accuracy_sources(seed: int, per_stratum: int = 25) -> list[Source]:
    """The traces of integration_accuracy.py (flat-baseline strata without a second peak), one
    source per noise model it has."""
    from dataclasses import replace

    import integration_accuracy as ia

    clean = [st for st in ia.STRATA if getattr(st, "noise", "white") == "white" and not (st.drift or st.shoulder)]
    out = []
    for model in getattr(ia, "NOISE_MODELS", ("white",)):
        src = Source(f"accuracy ({model})", [])
        for k, st in enumerate(clean):
            rng = np.random.default_rng([seed, 77, k])
            for _ in range(per_stratum):
                t_min, y = ia.make_trace(replace(st, noise=model) if model != "white" else st, rng)[:2]
                src.traces.append((np.asarray(t_min) * 60.0, np.asarray(y, dtype=np.float64)))
                src.method_rt.append(ia.EXPECTED_MIN)
        out.append(src)
    return out


def _parse_options(items: Iterable[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batches", type=int, default=3, help="simulated batches (seeds from --seed on)")
    parser.add_argument("--options", nargs="*", default=[], help="SimulationOptions for the simulated batch, KEY=VALUE")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    seeds = range(args.seed, args.seed + args.batches)
    from lcmsquant import simulate

    acquisitions = getattr(simulate, "ACQUISITIONS", (None,))
    builders: list[Callable[[], list[Source]]] = [
        lambda: [real_source(args.data, VENDOR_FILE)],
        lambda: [real_source(args.data, SACC_FILE)],
        lambda: [simulated_source(seeds, _parse_options(args.options), acquisition) for acquisition in acquisitions],
        lambda: accuracy_sources(args.seed),
    ]
    columns = {}
    for build in builders:
        for src in build():
            label = {VENDOR_FILE: "RawDataProcessor", SACC_FILE: "Sacc1"}.get(src.name, src.name)
            columns[label] = statistics(src)
    table = pd.DataFrame(columns).fillna("-")
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 40)
    print(
        f"Trace statistics, real (first two columns) vs simulated; median (5th-95th percentile) unless "
        f"the row says otherwise; seed {args.seed}{', options ' + ' '.join(args.options) if args.options else ''}.\n"
    )
    print(table.to_string())
    print(f"\n{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
