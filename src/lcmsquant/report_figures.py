"""The report's pictures as inline SVG text: a few matplotlib plots (calibration curve, %RE
residuals, QC accuracy, IS response) and hand-made chromatogram thumbnails, hundreds of which
must be drawn in a second or two.

Every function takes plain arrays or tidy tables and returns SVG markup; nothing is written.
The `*_figure` functions give the matplotlib figure behind a plot, for tests to inspect.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display; must precede the figure import on a headless machine
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator  # noqa: E402

from lcmsquant.vocabulary import QC_LEVELS, QCLevel  # noqa: E402

ANALYTE_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
TYPE_COLOURS = {"calibrator": "#1f77b4", "qc": "#2ca02c", "unknown": "#7f7f7f", "zero": "#9467bd", "blank": "#bcbd22"}
FAIL = "#c62828"
BAND = "#e8f1fb"  # the acceptance band of calibrators and QCs above the LLOQ
LLOQ_BAND = "#fbecd0"  # the wider band that holds only at the LLOQ
NEUTRAL = "#555555"  # legend markers that stand for a shape, not a colour

# Sizes are chosen for the page, so that nothing is scaled: a figure of w inches is w x 96 CSS px
# wide, and its text of p points is p x 4/3 px tall (the SVG's unit is the point). Two plots sit
# side by side, and a wide plot fits, within an A4 page's 703 px printing width; every text is at
# least 11 px (MIN_TEXT_PX) on the screen at 100 % and in the PDF.
SIZE = (3.5, 2.7)  # inches: calibration curve and residuals, two to a row
WIDE_SIZE = (6.8, 2.9)  # inches: QC accuracy and IS response against injection order
LEGEND_WIDTH = 1.8  # inches beside a wide plot for its legend
MIN_TEXT_PX = 11.0
TICK_PT = 9.0  # tick labels and axis labels: 12 px
TITLE_PT = 10.0
SMALL_PT = 8.5  # legends and point labels: 11.3 px
QC_MARKERS: dict[str, str] = {QCLevel.LLOQ: "P", QCLevel.LQC: "o", QCLevel.MQC: "s", QCLevel.HQC: "D", QCLevel.DQC: "*"}
MARKER_AREA = {"P": 42, "o": 28, "s": 26, "D": 22, "*": 70}  # points^2: the shapes look alike in size


def _svg(fig: Figure, key: str) -> str:
    """The figure as SVG text, byte-identical across runs, every element id prefixed with `key`.

    matplotlib numbers its groups per figure (figure_1, axes_1, line2d_1...), so two figures
    inline in one HTML page repeat ids (invalid HTML, and a clip path or marker may then be
    taken from the wrong figure); `svg.hashsalt` only changes the hashed ids. Each id, and each
    reference to it (`url(#...)`, `href="#..."`), is therefore given the prefix; the caller
    gives each figure of a page its own key.
    """
    prefix = re.sub(r"[^A-Za-z0-9_-]", "_", key) + "-"
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": prefix, "svg.fonttype": "none", "svg.id": None}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]  # drop the XML prolog and doctype: the SVG sits inside HTML
    ids = set(re.findall(r'\bid="([^"]+)"', text))

    def prefixed(match: re.Match) -> str:
        opening, name, closing = match.groups()
        return f"{opening}{prefix}{name}{closing}" if name in ids else match.group(0)

    return re.sub(r'(\bid="|\bhref="#|\burl\(#)([^")]+)([")])', prefixed, text)


def _figure(size: tuple[float, float] = SIZE, legend_outside: bool = False) -> tuple[Figure, Axes]:
    """A figure with fixed margins: a "tight" layout would draw every figure twice."""
    fig = Figure(figsize=size, dpi=96)
    right = 1.0 - (LEGEND_WIDTH + 0.05) / size[0] if legend_outside else 1.0 - 0.12 / size[0]
    fig.subplots_adjust(left=0.78 / size[0], right=right, bottom=0.56 / size[1], top=1.0 - 0.3 / size[1])
    ax = fig.add_subplot()
    ax.tick_params(labelsize=TICK_PT)
    ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    return fig, ax


def _labels(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel, fontsize=TICK_PT)
    ax.set_ylabel(ylabel, fontsize=TICK_PT)
    ax.set_title(title, fontsize=TITLE_PT)


def _legend_beside(ax: Axes, handles: list) -> None:
    ax.legend(
        handles=handles,
        fontsize=SMALL_PT,
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        handlelength=1.3,
        labelspacing=0.35,
    )


def _log_axis(ax, which: str) -> None:
    """Log scale labelled 0.5, 1, 10, 100 rather than in mathtext powers (slow to lay out)."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(base=10))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())  # unlabelled minor ticks cost most of the drawing time


@dataclass(frozen=True)
class CurveCoefficients:
    """A calibration curve as calibration.csv records it."""

    intercept: float
    slope: float
    quadratic: float = 0.0

    def response(self, x: np.ndarray) -> np.ndarray:
        """The area ratio the curve gives at each concentration."""
        return self.intercept + self.slope * x + self.quadratic * x * x


def calibration_curve(
    key: str, calibrators: pd.DataFrame, curve: CurveCoefficients | None, analyte: str, units: str
) -> str:
    """Area ratio against nominal concentration (log-log), the fitted curve through it; excluded
    calibrators drawn as red crosses labelled with their level.

    `calibrators` has columns level, nominal, area_ratio, excluded.
    """
    return _svg(calibration_curve_figure(calibrators, curve, analyte, units), key)


def calibration_curve_figure(
    calibrators: pd.DataFrame, curve: CurveCoefficients | None, analyte: str, units: str
) -> Figure:
    """The figure of calibration_curve."""
    fig, ax = _figure()
    cals = calibrators[calibrators["nominal"] > 0]
    x_all = cals["nominal"].to_numpy(float)
    if curve is not None and len(x_all):
        x = np.geomspace(x_all.min() / 1.3, x_all.max() * 1.3, 200)
        y = curve.response(x)
        ok = y > 0
        ax.plot(x[ok], y[ok], color="#444444", linewidth=1.0, label="fitted curve", zorder=2)
    used = cals[~cals["excluded"] & (cals["area_ratio"] > 0)]
    excluded = cals[cals["excluded"] & (cals["area_ratio"] > 0)]
    ax.scatter(used["nominal"], used["area_ratio"], s=22, color=ANALYTE_COLOURS[0], label="used", zorder=3)
    if len(excluded):
        ax.scatter(
            excluded["nominal"], excluded["area_ratio"], s=40, marker="x", color=FAIL, label="excluded", zorder=4
        )
        for _, row in excluded.iterrows():
            ax.annotate(
                str(row["level"]),
                (row["nominal"], row["area_ratio"]),
                xytext=(5, -12),
                textcoords="offset points",
                fontsize=SMALL_PT,
                color=FAIL,
            )
    if len(used) + len(excluded):
        _log_axis(ax, "x")
        _log_axis(ax, "y")
    _labels(ax, f"nominal concentration ({units})", "area ratio (analyte / IS)", f"{analyte}: calibration curve")
    ax.legend(fontsize=SMALL_PT, frameon=False, loc="upper left", handlelength=1.3, borderaxespad=0.3)
    return fig


def residuals(
    key: str, calibrators: pd.DataFrame, tolerance_pct: float, lloq_tolerance_pct: float, analyte: str, units: str
) -> str:
    """%RE of each back-calculated calibrator against its nominal, with the acceptance band: the
    LLOQ's (+-20 %) around the lowest calibrator only, the others' (+-15 %) above it.

    `calibrators` has columns nominal, re_pct, excluded.
    """
    return _svg(residuals_figure(calibrators, tolerance_pct, lloq_tolerance_pct, analyte, units), key)


def residuals_figure(
    calibrators: pd.DataFrame, tolerance_pct: float, lloq_tolerance_pct: float, analyte: str, units: str
) -> Figure:
    """The figure of residuals; the LLOQ band is the artist with gid "lloq-band", the other "band"."""
    fig, ax = _figure()
    nominals = np.unique(calibrators.loc[calibrators["nominal"] > 0, "nominal"].to_numpy(float))
    cals = calibrators[(calibrators["nominal"] > 0) & calibrators["re_pct"].notna()]
    if len(cals):
        _log_axis(ax, "x")
        lo, hi = min(cals["nominal"].min(), nominals[0]) / 1.5, cals["nominal"].max() * 1.5
        # The LLOQ's limit holds up to halfway (on the log axis) to the next calibrator level.
        split = float(np.sqrt(nominals[0] * nominals[1])) if len(nominals) > 1 else hi
        ax.fill_between(
            [lo, split],
            -lloq_tolerance_pct,
            lloq_tolerance_pct,
            color=LLOQ_BAND,
            linewidth=0,
            zorder=0,
            label=f"±{lloq_tolerance_pct:g} % (LLOQ)",
            gid="lloq-band",
        )
        if split < hi:
            ax.fill_between(
                [split, hi],
                -tolerance_pct,
                tolerance_pct,
                color=BAND,
                linewidth=0,
                zorder=0,
                label=f"±{tolerance_pct:g} %",
                gid="band",
            )
        ax.set_xlim(lo, hi)
    ax.axhline(0, color="#888888", linewidth=0.8)
    used, excluded = cals[~cals["excluded"]], cals[cals["excluded"]]
    ax.scatter(used["nominal"], used["re_pct"], s=22, color=ANALYTE_COLOURS[0], label="used", zorder=3)
    if len(excluded):
        ax.scatter(excluded["nominal"], excluded["re_pct"], s=40, marker="x", color=FAIL, label="excluded", zorder=4)
    limit = max(lloq_tolerance_pct * 1.9, float(cals["re_pct"].abs().max()) * 1.15 if len(cals) else 0)
    ax.set_ylim(-limit, limit)
    _labels(ax, f"nominal concentration ({units})", "%RE vs nominal", f"{analyte}: residuals")
    ax.legend(
        fontsize=SMALL_PT,
        frameon=False,
        loc="lower center",
        ncols=2,
        handlelength=1.3,
        borderaxespad=0.2,
        columnspacing=1.0,
        labelspacing=0.2,
    )
    return fig


QC_AXIS_LIMIT_PCT = 60.0  # the accuracy axis never spans more than 100 +- this; beyond, points sit on the edge
DODGE = 0.6  # injections: the spread of the analytes of one injection


def qc_accuracy(
    key: str, qcs: pd.DataFrame, analytes: Sequence[str], tolerance_pct: float, lloq_tolerance_pct: float, title: str
) -> str:
    """QC accuracy (% of nominal) against injection order: one marker shape per QC level, one
    colour per analyte; failing QCs red-edged. The +-15 % band runs across; the LLOQ QCs' +-20 %
    is drawn only at the injections of LLOQ QCs. A QC far off (an IS drop-out reads 500 %) is
    drawn as a triangle on the axis's edge with its value, so it does not squash the others.

    `qcs` has columns injection, analyte, level, accuracy_pct, passed.
    """
    return _svg(qc_accuracy_figure(qcs, analytes, tolerance_pct, lloq_tolerance_pct, title), key)


def qc_accuracy_figure(
    qcs: pd.DataFrame, analytes: Sequence[str], tolerance_pct: float, lloq_tolerance_pct: float, title: str
) -> Figure:
    """The figure of qc_accuracy; the LLOQ QCs' band is the artist with gid "lloq-band"."""
    fig, ax = _figure(WIDE_SIZE, legend_outside=True)
    ax.axhspan(100 - tolerance_pct, 100 + tolerance_pct, color=BAND, linewidth=0, zorder=0, gid="band")
    handles: list = [Patch(color=BAND, label=f"100 ± {tolerance_pct:g} %")]
    lloq_injections = sorted(set(qcs.loc[qcs["level"] == QCLevel.LLOQ, "injection"].astype(float)))
    if lloq_injections:
        low, high = 100 - lloq_tolerance_pct, 100 + lloq_tolerance_pct
        strips = [[(x - 0.4, low), (x + 0.4, low), (x + 0.4, high), (x - 0.4, high)] for x in lloq_injections]
        ax.add_collection(PolyCollection(strips, facecolors=LLOQ_BAND, edgecolors="none", zorder=0.5, gid="lloq-band"))
        handles.append(Patch(color=LLOQ_BAND, label=f"100 ± {lloq_tolerance_pct:g} % (LLOQ)"))
    deviation = (qcs["accuracy_pct"].dropna() - 100).abs()
    span = min(max(lloq_tolerance_pct * 1.5, float(deviation.max()) + 5 if len(deviation) else 0), QC_AXIS_LIMIT_PCT)
    low, high = 100 - span, 100 + span
    present = [str(v) for v in dict.fromkeys(qcs["level"])]
    levels = [lv for lv in QC_LEVELS if lv in present] + [lv for lv in present if lv not in QC_LEVELS]
    stacked: dict[tuple, int] = {}  # labels of off-scale points at one injection go one under another
    any_failing = any_off_scale = False
    for i, analyte in enumerate(analytes):
        rows = qcs[(qcs["analyte"] == analyte) & qcs["accuracy_pct"].notna()]
        # The analytes of one injection sit side by side (within +-0.3 of it), not on one another.
        rows = rows.assign(
            order=rows["injection"],
            injection=rows["injection"] + DODGE * (i - (len(analytes) - 1) / 2) / max(len(analytes) - 1, 1),
        )
        colour = ANALYTE_COLOURS[i % len(ANALYTE_COLOURS)]
        inside = rows["accuracy_pct"].between(low, high)
        for level in levels:
            marker = QC_MARKERS.get(level, "o")
            area = MARKER_AREA.get(marker, 28)
            at_level = rows[(rows["level"] == level) & inside]
            ok, bad = at_level[at_level["passed"]], at_level[~at_level["passed"]]
            if len(ok):
                ax.scatter(ok["injection"], ok["accuracy_pct"], s=area, marker=marker, color=colour, zorder=3)
            if len(bad):
                any_failing = True
                ax.scatter(
                    bad["injection"],
                    bad["accuracy_pct"],
                    s=area * 1.4,
                    marker=marker,
                    color=colour,
                    edgecolors=FAIL,
                    linewidths=1.5,
                    zorder=4,
                )
        for _, row in rows[~inside].iterrows():
            any_off_scale = True
            above = row["accuracy_pct"] > high
            edge = high - span * 0.04 if above else low + span * 0.04
            ax.scatter(
                [row["injection"]],
                [edge],
                s=40,
                marker="^" if above else "v",
                color=colour,
                edgecolors=FAIL,
                linewidths=1.2,
                zorder=4,
            )
            k = stacked[(row["order"], above)] = stacked.get((row["order"], above), -1) + 1
            ax.annotate(
                f"{analyte} {row['level']} {row['accuracy_pct']:.0f} %",
                (row["order"], edge),
                xytext=(6, -4 - 11 * k if above else -4 + 11 * k),
                textcoords="offset points",
                fontsize=SMALL_PT,
                color=FAIL,
            )
    handles += [
        Line2D([], [], linestyle="none", marker=QC_MARKERS.get(lv, "o"), markersize=6.5, color=NEUTRAL, label=lv)
        for lv in levels
    ]
    handles += [Patch(color=ANALYTE_COLOURS[i % len(ANALYTE_COLOURS)], label=a) for i, a in enumerate(analytes)]
    if any_failing:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markersize=6.5,
                markerfacecolor="white",
                markeredgecolor=FAIL,
                markeredgewidth=1.5,
                label="failing",
            )
        )
    if any_off_scale:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="^",
                markersize=6.5,
                color=NEUTRAL,
                markeredgecolor=FAIL,
                label="off scale",
            )
        )
    ax.set_ylim(low, high)
    _labels(ax, "injection", "accuracy (% of nominal)", title)
    _legend_beside(ax, handles)
    return fig


def is_response(key: str, points: pd.DataFrame, reference: float, band_pct: tuple[float, float], title: str) -> str:
    """IS area of every injection against injection order, the acceptance band around the mean
    calibrator/QC IS area, and flagged injections labelled with their sample id.

    `points` has columns injection, sample_id, sample_type, is_area, flagged.
    """
    fig, ax = _figure(WIDE_SIZE, legend_outside=True)
    low, high = band_pct
    if np.isfinite(reference):
        ax.axhspan(
            reference * low / 100,
            reference * high / 100,
            color=BAND,
            linewidth=0,
            zorder=0,
            label=f"{low:g}–{high:g} % of mean",
        )
        ax.axhline(reference, color="#6a8fb5", linewidth=0.8, label="mean cal/QC")
    for sample_type, colour in TYPE_COLOURS.items():
        rows = points[(points["sample_type"] == sample_type) & points["is_area"].notna()]
        if len(rows):
            ax.scatter(rows["injection"], rows["is_area"], s=18, color=colour, label=sample_type, zorder=3)
    flagged = points[points["flagged"] & points["is_area"].notna()]
    if len(flagged):
        ax.scatter(
            flagged["injection"],
            flagged["is_area"],
            s=50,
            facecolors="none",
            edgecolors=FAIL,
            linewidths=1.4,
            zorder=4,
            label="outside band",
        )
        for _, row in flagged.iterrows():
            ax.annotate(
                str(row["sample_id"]),
                (row["injection"], row["is_area"]),
                xytext=(5, 3),
                textcoords="offset points",
                fontsize=SMALL_PT,
                color=FAIL,
            )
    ax.set_ylim(bottom=0)
    _labels(ax, "injection", "IS area (counts)", title)
    ax.yaxis.get_offset_text().set_fontsize(TICK_PT)
    _legend_beside(ax, ax.get_legend_handles_labels()[0])
    return _svg(fig, key)


# ---------------------------------------------------------------------------------------------
# Chromatogram thumbnails, drawn by hand: matplotlib would take ~50 ms each, this ~0.2 ms.

# Three thumbnails and the analyte's name fit a row of an A4 page's 703 px printing width; text
# is 11 px (the report's CSS: .tt, .tn, .tf, .tm), on the screen and in the PDF.
THUMB_W, THUMB_H = 190, 96
PAD_L, PAD_R, PAD_T, PAD_B = 4, 4, 15, 15
MAX_POINTS = 240  # a thumbnail is ~200 px wide: more points draw nothing new


@dataclass(frozen=True)
class Integration:
    """What the integrator decided for one trace (NaN when no peak)."""

    start: float = float("nan")
    end: float = float("nan")
    baseline_start: float = float("nan")
    baseline_end: float = float("nan")
    rt: float = float("nan")
    expected_rt: float = float("nan")


def decimate(time: np.ndarray, intensity: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` points keeping each bucket's minimum and maximum, so no peak is lost."""
    n = len(time)
    if n <= max_points:
        return time, intensity
    buckets = max_points // 2
    edges = np.linspace(0, n, buckets + 1).astype(int)
    picked: list[int] = []
    for a, b in itertools.pairwise(edges):
        if b <= a:
            continue
        segment = intensity[a:b]
        i, j = a + int(np.argmin(segment)), a + int(np.argmax(segment))
        picked.extend((i, j) if i <= j else (j, i))
    keep = np.unique(np.asarray(picked))
    return time[keep], intensity[keep]


def display_window(time: np.ndarray, peak: Integration) -> tuple[float, float]:
    """The part of the trace worth seeing: the whole of a short (scheduled) trace, else the peak
    or its expected RT with a margin of 3 peak widths (at least +-0.5 min)."""
    if len(time) == 0:
        return 0.0, 1.0
    t0, t1 = float(time[0]), float(time[-1])
    if t1 - t0 <= 2.0:
        return t0, t1
    centre = peak.rt if np.isfinite(peak.rt) else peak.expected_rt
    if not np.isfinite(centre):
        return t0, t1
    half = 0.5
    if np.isfinite(peak.start) and np.isfinite(peak.end):
        half = max(half, 3.0 * (peak.end - peak.start))
    return max(t0, centre - half), min(t1, centre + half)


def _points(xs: np.ndarray, ys: np.ndarray) -> str:
    pairs = np.column_stack([xs, ys]).ravel()
    return (("%.1f,%.1f " * len(xs)) % tuple(pairs)).rstrip()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _compact(value: float) -> str:
    """A number in at most ~5 characters: 0.0123, 1.23, 123, 1234, 1.2e5."""
    if value == 0 or not np.isfinite(value):
        return "0"
    exponent = int(np.floor(np.log10(abs(value))))
    if -2 <= exponent <= 3:
        return f"{value:.{max(0, 2 - exponent)}f}"
    return f"{value / 10.0**exponent:.1f}e{exponent}"


def chromatogram_thumbnail(
    title: str,
    time: np.ndarray | None,
    intensity: np.ndarray | None,
    peak: Integration,
    note: str = "",
    state: str = "",
    absent: str = "no data",
    flags: str = "",
) -> str:
    """One SRM trace as a small SVG: the trace, the integrated area shaded above its baseline,
    the boundaries, the baseline and the expected RT. `state` is "" / "flagged" / "manual"
    (drawn as a coloured frame); `note` is printed bottom right (the area), `flags` under the
    title, over the trace; `absent` in the middle when there is no trace."""
    w, h = THUMB_W, THUMB_H
    parts = [
        f'<svg class="thumb {state}" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img"><title>{_escape(title)}</title>'
    ]
    parts.append(f'<text x="{PAD_L}" y="11" class="tt">{_escape(title)}</text>')
    if note:
        parts.append(f'<text x="{w - PAD_R}" y="{h - 3}" class="tn" text-anchor="end">{_escape(note)}</text>')
    flag_text = f'<text x="{PAD_L + 2}" y="{PAD_T + 12}" class="tf">{_escape(flags)}</text>' if flags else ""
    if time is None or intensity is None or len(time) < 2:
        parts.append(f'<text x="{w / 2}" y="{h / 2 + 4}" class="tm" text-anchor="middle">{_escape(absent)}</text>')
        return "".join(parts) + flag_text + "</svg>"
    lo, hi = display_window(time, peak)
    inside = (time >= lo) & (time <= hi)
    t, y = time[inside], intensity[inside]
    if len(t) < 2:
        t, y = time, intensity
        lo, hi = float(t[0]), float(t[-1])
    t, y = decimate(t, y)
    y_min = min(float(np.min(y)), 0.0)
    y_max = float(np.max(y))
    if y_max <= y_min:
        y_max = y_min + 1.0
    x_scale = (w - PAD_L - PAD_R) / max(hi - lo, 1e-9)
    y_scale = (h - PAD_T - PAD_B) / (y_max - y_min)

    def sx(v):
        return PAD_L + (np.asarray(v, float) - lo) * x_scale

    def sy(v):
        return h - PAD_B - (np.asarray(v, float) - y_min) * y_scale

    if np.isfinite(peak.expected_rt) and lo <= peak.expected_rt <= hi:
        x = sx(peak.expected_rt)
        parts.append(f'<line class="te" x1="{x:.1f}" y1="{PAD_T}" x2="{x:.1f}" y2="{h - PAD_B}"/>')
    if np.isfinite(peak.start) and np.isfinite(peak.end):
        seg = (t >= peak.start) & (t <= peak.end)
        bt = np.concatenate([[peak.start], t[seg], [peak.end]])
        by = np.concatenate([[np.interp(peak.start, time, intensity)], y[seg], [np.interp(peak.end, time, intensity)]])
        slope = (peak.baseline_end - peak.baseline_start) / max(peak.end - peak.start, 1e-12)
        base = peak.baseline_start + slope * (bt - peak.start)
        if np.all(np.isfinite(base)):
            xs = np.concatenate([sx(bt), sx(bt[::-1])])
            ys = np.concatenate([sy(by), sy(base[::-1])])
            parts.append(f'<polygon class="ta" points="{_points(xs, ys)}"/>')
            parts.append(
                f'<line class="tb" x1="{sx(peak.start):.1f}" y1="{sy(peak.baseline_start):.1f}" '
                f'x2="{sx(peak.end):.1f}" y2="{sy(peak.baseline_end):.1f}"/>'
            )
        for boundary in (peak.start, peak.end):
            x = sx(boundary)
            parts.append(f'<line class="tk" x1="{x:.1f}" y1="{PAD_T}" x2="{x:.1f}" y2="{h - PAD_B}"/>')
    parts.append(f'<polyline class="tr" points="{_points(sx(t), sy(y))}"/>')
    parts.append(f'<text x="{PAD_L}" y="{h - 3}" class="tn">{lo:.2f}–{hi:.2f} min</text>')
    parts.append(f'<text x="{w - PAD_R}" y="11" class="tn" text-anchor="end">max {_compact(y_max)}</text>')
    parts.append(flag_text + "</svg>")
    return "".join(parts)
