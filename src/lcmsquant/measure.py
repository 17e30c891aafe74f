"""Measure injections: read each one's SRM traces and find and integrate the peak of every
transition, in this process or in worker processes; the result is the run's peak table.

Kept apart from the rest of the pipeline so that the worker processes import only what reading
and integrating need (pyopenms and the compiled peak finder), not statsmodels and scipy.stats.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from lcmsquant.batch import Batch, Injection
from lcmsquant.chromatograms import ChromatogramReadError, Trace, read_injection
from lcmsquant.method import Analyte, Method, Transition
from lcmsquant.overrides import OVERRIDES, Override, OverrideError
from lcmsquant.peaks import Peak, PeakSearch, find_peak, integrate_between, peak_candidates
from lcmsquant.workers import PARALLEL_MIN_INJECTIONS, WorkerDeath, WorkerPool, interrupt_deferred

AUDITED = ("status", "rt_min", "start_min", "end_min", "area")
PEAK_FIELDS = (
    "rt_min",
    "start_min",
    "end_min",
    "area",
    "height",
    "sn",
    "noise",
    "points",
    "fwhm_s",
    "tailing_factor",
    "asymmetry",
    "points_fwhm",
    "baseline_start",
    "baseline_end",
)


# ---------------------------------------------------------------------------------------------
# One injection


def measure_injection(
    path: Path, method: Method, overrides: Mapping[str, Override] | None = None
) -> tuple[list[dict], str]:
    """Peaks of every transition of one injection, and an error message if it was unreadable.

    Internal standards are found first; each analyte is then searched around the RT its IS
    predicts, and each qualifier around its quantifier's apex. A manual integration replaces
    the automatic peak of its transition (and so anchors what is searched after it); the row
    keeps the automatic values it replaced for the audit trail. A manual window whose signal does
    not rise above its own baseline (area <= 0, e.g. drawn over noise in a blank) is NO_PEAK, not
    a negative area.
    """
    overrides = overrides or {}
    file_warnings: list[str] = []
    try:
        traces = read_injection(path, method, file_warnings)
    except ChromatogramReadError as err:
        return _no_data_rows(method), str(err)
    rows, found_rt = [], {}
    integ = method.integration

    def measure(t: Transition, search: PeakSearch, anchored: bool, found: Peak | None = None) -> Peak | None:
        read = traces.get(t)
        warnings = read.warnings if read is not None else tuple(file_warnings)
        trace = read if read is not None and read.usable else None  # too short to hold a peak: no data, not "no peak"
        peak = found if found is not None and trace is not None else _search(trace, search, anchored)
        override = overrides.get(t.name)
        if override is None:
            rows.append(_peak_row(t, search.expected_rt, trace, peak, read_warnings=warnings))
            return peak
        manual = _manual_peak(trace, override)
        no_signal = manual is not None and not manual.area > 0  # the window holds nothing above its baseline
        row = _peak_row(
            t,
            search.expected_rt,
            trace,
            None if no_signal else manual,
            "NO_PEAK" if (manual is None or no_signal) and trace is not None else None,
            read_warnings=warnings,
        )
        automatic = _peak_row(t, search.expected_rt, trace, peak)
        row.update(manual=True, override_line=override.line, **{f"auto_{k}": automatic[k] for k in AUDITED})
        if override.action == "integrate" and manual is None:
            row["override_problem"] = (
                f"{OVERRIDES} line {override.line}: no data of {t.name} in {path.name} between "
                f"{override.start:g} and {override.end:g} min"
            )
        rows.append(row)
        return None if no_signal else manual

    anchors = offset_anchors(traces, method)
    offset = offset_from(anchors, method)
    for istd in method.internal_standards:
        search = PeakSearch(istd.rt + offset(istd.rt), integ.rt_window, integ.min_detection_sn)
        anchor = anchors.get(istd.name)  # the same peak as the search would find: not searched twice
        same = anchor if anchor is not None and abs(anchor.rt - search.expected_rt) <= search.window else None
        peak = measure(istd.transition, search, anchored=False, found=same)
        if peak is not None:
            found_rt[istd.name] = peak.rt
    for analyte in method.analytes:
        expected, window = predicted_rt(analyte, method, found_rt, offset)
        search = coeluting_search(traces, analyte, PeakSearch(expected, window, integ.min_detection_sn))
        quant = measure(analyte.quantifier, search, anchored=analyte.internal_standard in found_rt)
        for qual in analyte.qualifiers:
            q_expected = quant.rt if quant is not None else expected
            q_window = integ.anchored_rt_window if quant is not None else window
            measure(qual, PeakSearch(q_expected, q_window, integ.min_detection_sn), anchored=quant is not None)
    return rows, ""


# A qualifier peak within this many minutes of a quantifier candidate's apex co-elutes with it;
# candidates less prominent than this fraction of the most prominent one are not considered.
COELUTION_MIN = 0.05
COELUTION_MIN_PROMINENCE = 1 / 3


def coeluting_search(traces: Mapping[Transition, Trace | None], analyte: Analyte, search: PeakSearch) -> PeakSearch:
    """Where to integrate the quantifier: around the most prominent candidate in the window whose
    qualifiers all have a peak at the same time, when the most prominent one has none (an
    interference that the qualifiers do not see); otherwise the search as given."""
    quantifier = traces.get(analyte.quantifier)
    if not analyte.qualifiers or quantifier is None or not quantifier.usable:
        return search
    candidates = peak_candidates(quantifier.time, quantifier.intensity, search)
    if len(candidates) < 2:
        return search
    qualifier_apices = []
    for qual in analyte.qualifiers:
        trace = traces.get(qual)
        if trace is None or not trace.usable:
            return search
        qualifier_apices.append([rt for rt, _ in peak_candidates(trace.time, trace.intensity, search)])

    def coelutes(rt: float) -> bool:
        return all(any(abs(q - rt) <= COELUTION_MIN for q in apices) for apices in qualifier_apices)

    if coelutes(candidates[0][0]):
        return search
    strongest = candidates[0][1]
    for rt, prominence in candidates[1:]:
        if prominence >= COELUTION_MIN_PROMINENCE * strongest and coelutes(rt):
            return PeakSearch(rt, COELUTION_MIN, search.min_sn)
    return search


# Peaks that set the run's RT offset: internal standards at this S/N or more, off no trace edge,
# searched this much wider than the method's window (min) ...
OFFSET_MIN_SN = 20.0
OFFSET_SEARCH_MIN = 1.0
# ... and each RT's offset is the median of the offsets of this many anchors nearest to it;
# with fewer anchors than OFFSET_MIN_ANCHORS (or than the method's internal standards) there is
# none: one stray peak in a blank's IS trace must not move its searches.
OFFSET_NEIGHBOURS = 5
OFFSET_MIN_ANCHORS = 3


def run_rt_offset(traces: Mapping[Transition, Trace | None], method: Method) -> Callable[[float], float]:
    """The run's retention time offset from the method (min), as a function of the method RT.

    Real runs elute up to ~0.5 min from the RTs a method lists (column, dead volume, gradient
    delay), which moves peaks out of their search windows. The internal standards are searched
    in a wide window; those found clearly (S/N >= OFFSET_MIN_SN, 3 points or more across the
    half height, not cut by a trace edge) are anchors, and the offset at a method RT is the
    median offset of the nearest anchors (a few wrong picks do not move it). Too few anchors
    (a blank has no IS): no offset. Only where peaks are searched moves; the RT checks still
    compare with the method's RTs.
    """
    return offset_from(offset_anchors(traces, method), method)


def offset_anchors(traces: Mapping[Transition, Trace | None], method: Method) -> dict[str, Peak]:
    """The internal standards' peaks found clearly in a wide window (see run_rt_offset), by name."""
    integ = method.integration
    anchors = {}
    for istd in method.internal_standards:
        trace = traces.get(istd.transition)
        if trace is None or not trace.usable:
            continue
        peak = find_peak(
            trace.time, trace.intensity, PeakSearch(istd.rt, max(integ.rt_window, OFFSET_SEARCH_MIN), OFFSET_MIN_SN)
        )
        if peak is not None and not peak.edge and peak.sn >= OFFSET_MIN_SN and peak.points_fwhm >= 3:
            anchors[istd.name] = peak
    return anchors


def offset_from(anchors: Mapping[str, Peak], method: Method) -> Callable[[float], float]:
    """The offset function of run_rt_offset from its anchors."""
    if len(anchors) < min(OFFSET_MIN_ANCHORS, len(method.internal_standards)):
        return lambda rt: 0.0
    listed = {istd.name: istd.rt for istd in method.internal_standards}
    at = np.array([listed[name] for name in anchors])
    offsets = np.array([peak.rt - listed[name] for name, peak in anchors.items()])

    def offset(rt: float) -> float:
        nearest = np.argsort(np.abs(at - rt), kind="stable")[:OFFSET_NEIGHBOURS]
        return float(np.median(offsets[nearest]))

    return offset


def _no_data_rows(method: Method) -> list[dict]:
    return [_peak_row(t, method.expected_rt(t), None, None, "NO_DATA") for t in method.transitions()]


def _manual_peak(trace: Trace | None, override: Override) -> Peak | None:
    if trace is None or override.action == "no_peak":
        return None
    assert override.start is not None and override.end is not None  # an integrate override has both (read_overrides)
    return integrate_between(trace.time, trace.intensity, override.start, override.end)


def predicted_rt(
    analyte: Analyte, method: Method, found_is_rt: dict[str, float], offset: Callable[[float], float] = lambda rt: 0.0
) -> tuple[float, float]:
    """Expected RT and search half-window of an analyte, anchored on its IS when the IS was found,
    else at the method RT moved by the run's offset."""
    istd = method.internal_standard(analyte.internal_standard)
    if istd.name in found_is_rt:
        return found_is_rt[istd.name] + (analyte.rt - istd.rt), method.integration.anchored_rt_window
    return analyte.rt + offset(analyte.rt), method.integration.rt_window


# A peak this clear (S/N) just outside an anchored search window, within JUST_OUTSIDE of its
# half-width more, is reported (and flagged RT_SHIFT by the RT check) rather than lost as NO_PEAK.
CLEAR_SN = 10.0
JUST_OUTSIDE = 0.5


def _search(trace: Trace | None, search: PeakSearch, anchored: bool) -> Peak | None:
    """The peak in the search window; for a search anchored on a peak found in this injection
    (the analyte on its IS, the qualifier on its quantifier) also a clear one just outside it.
    Unanchored searches (internal standards, whose run offset already moved the window; an
    analyte in a blank, which has no IS) do not look further: a stray peak beside a blank's
    window would be taken for its IS or analyte."""
    if trace is None:
        return None
    peak = find_peak(trace.time, trace.intensity, search)
    if peak is None and anchored:
        wider = PeakSearch(search.expected_rt, (1 + JUST_OUTSIDE) * search.window, max(search.min_sn, CLEAR_SN))
        peak = find_peak(trace.time, trace.intensity, wider)
    return peak


def _peak_row(
    t: Transition,
    expected: float,
    trace: Trace | None,
    peak: Peak | None,
    status: str | None = None,
    read_warnings: tuple[str, ...] | list[str] = (),
) -> dict:
    if status is None:
        status = "NO_DATA" if trace is None else ("NO_PEAK" if peak is None else "OK")
    row = {
        "transition": t.name,
        "compound": t.compound,
        "role": t.role,
        "q1": t.q1,
        "q3": t.q3,
        "status": status,
        "expected_rt_min": expected,
        "native_id": trace.native_id if trace is not None else "",
        **dict.fromkeys(PEAK_FIELDS, np.nan),
        "edge": False,
        "saturated": False,
        "split": False,
        "shoulder": False,
        "manual": False,
        "override_line": np.nan,
        **{f"auto_{k}": np.nan for k in AUDITED},
        "override_problem": "",
        "read_warnings": " | ".join(read_warnings),
    }
    if peak is not None:
        row.update(
            rt_min=peak.rt,
            start_min=peak.start,
            end_min=peak.end,
            area=peak.area,
            height=peak.height,
            sn=peak.sn,
            noise=peak.noise,
            points=peak.points,
            fwhm_s=peak.fwhm * 60,
            tailing_factor=peak.tailing_factor,
            asymmetry=peak.asymmetry,
            points_fwhm=peak.points_fwhm,
            baseline_start=peak.baseline_start,
            baseline_end=peak.baseline_end,
            edge=peak.edge,
            saturated=peak.saturated,
            split=peak.split,
            shoulder=peak.shoulder,
        )
    return row


# ---------------------------------------------------------------------------------------------
# The batch


def measure_batch(
    batch: Batch,
    progress: Callable[[Injection], None] | None = None,
    jobs: int | None = 1,
    workers: WorkerPool | None = None,
) -> tuple[pd.DataFrame, dict]:
    """The peak table of every injection (one row per injection x transition) and read errors.

    `jobs` processes read and integrate injections at once: 1 measures in this process; None
    uses every core, or this process alone for a batch of fewer than PARALLEL_MIN_INJECTIONS
    (starting workers would cost more than it saves). Workers get file paths and the method and
    send back peak rows, so each holds one injection at a time; the table is the same whatever
    `jobs`. `workers`: the pool to measure with when more than one process measures (the
    caller's, kept open for its next batch); without it one is started and stopped for this
    batch. Raises OverrideError when a manual integration finds no data to integrate.
    """
    return peak_table(batch, measure_injections(batch, progress, jobs, workers))


def measure_injections(
    batch: Batch,
    progress: Callable[[Injection], None] | None = None,
    jobs: int | None = 1,
    workers: WorkerPool | None = None,
) -> dict[int, tuple[list[dict], str]]:
    """Injection order -> (peak rows, read error) of every injection (see measure_batch)."""
    work = [(inj.order, inj.file, batch.overrides_for(inj)) for inj in batch.injections]
    by_order = {inj.order: inj for inj in batch.injections}
    n_jobs = resolve_jobs(jobs, len(work))
    results = {}
    with nullcontext(workers) if workers is not None or n_jobs == 1 else WorkerPool(n_jobs) as pool:
        if n_jobs == 1:
            measured = (_measure_whole(batch.method, item) for item in work)
        else:
            assert pool is not None
            measured = _measure_in_processes(work, batch.method, min(n_jobs, pool.jobs), pool)
        for order, peaks, error in measured:
            results[order] = (peaks, error)
            if progress is not None:
                progress(by_order[order])
    return {inj.order: results[inj.order] for inj in batch.injections}


def peak_table(batch: Batch, measured: Mapping[int, tuple[list[dict], str]]) -> tuple[pd.DataFrame, dict]:
    """The peak table and read errors of a batch from each injection's peak rows, in worklist
    order however they were measured. Raises OverrideError when a manual integration found no
    data to integrate."""
    rows: list[dict] = []
    errors: dict[int, str] = {}
    for inj in batch.injections:
        peaks, error = measured[inj.order]
        if error:
            errors[inj.order] = error
        rows.extend({"injection": inj.order, **p} for p in peaks)
    table = pd.DataFrame(rows)
    problems = [p for p in table["override_problem"] if p]
    if problems:
        raise OverrideError(batch.folder / OVERRIDES, problems)
    return table.drop(columns="override_problem"), errors


def default_jobs() -> int:
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_jobs(jobs: int | None, n_injections: int) -> int:
    """How many processes measure a batch of `n_injections` (see measure_batch)."""
    if jobs is None:
        jobs = default_jobs() if n_injections >= PARALLEL_MIN_INJECTIONS else 1
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a whole number of at least 1, got {jobs!r}")
    if multiprocessing.current_process().daemon:  # e.g. a Dask worker: it may not start processes
        return 1
    return max(1, min(jobs, n_injections))


def _measure_work(method: Method, item: tuple[int, Path, Mapping[str, Override]]) -> tuple[int, list[dict], str]:
    order, path, overrides = item
    peaks, error = measure_injection(path, method, overrides)
    return order, peaks, error


def _measure_whole(method: Method, item: tuple[int, Path, Mapping[str, Override]]) -> tuple[int, list[dict], str]:
    """_measure_work with a Ctrl-C held until the injection is measured: interrupted inside the
    compiled peak finder, numba returns with the KeyboardInterrupt pending (a SystemError) or
    crashes. (Workers ignore Ctrl-C: the main process stops them.)"""
    with interrupt_deferred():
        return _measure_work(method, item)


def _measure_in_processes(work: list, method: Method, jobs: int, pool: WorkerPool):
    """(order, peak rows, error) of every injection, measured by `jobs` worker processes of `pool`.

    If a worker dies (the C++ reader crashing on a damaged file, the out-of-memory killer), the
    injection it held is measured once more in a process of its own and the others go on in a
    fresh pool; an injection whose own process dies too is flagged NO_DATA, naming the signal.
    """
    size = max(1, min(8, len(work) // (4 * jobs)))  # small chunks: the progress bar moves, the load stays even
    for position, measured in pool.map(partial(_measure_work, method), work, size):
        if isinstance(measured, WorkerDeath):
            order, path, _ = work[position]
            yield (
                order,
                _no_data_rows(method),
                (
                    f"{Path(path).name}: the process measuring this injection died twice ({measured}); "
                    f"check the file or convert it again, and rerun"
                ),
            )
        else:
            yield measured
