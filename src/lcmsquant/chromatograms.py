"""Read the SRM chromatograms of one injection and match them to the method's transitions.

Traces are matched by their precursor (Q1) and product (Q3) m/z within the method's tolerance,
never by parsing the chromatogram id. Times are kept in minutes, the unit chemists and methods
use; pyopenms hands them back in seconds whatever the file says.

What a file holds is checked on the way in: a file that is not well-formed XML is refused before
the C++ parser sees it (a damaged file once crashed that parser), and each trace is cleaned for
peak finding (missing values dropped, times sorted and made unique) with a warning saying what
was changed. A trace too short to hold a peak is reported as no data, never as no peak.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import sys
import tempfile
import threading
import zlib
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from xml.parsers import expat

import numpy as np

# pyopenms loads with OpenMP threads that gain nothing on small SRM files and, when another
# process holds a core, make each load up to 10x slower (measured on a 2-core machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")
import pyopenms as oms  # noqa: E402  (after the thread setting, which it reads when loaded)

# OpenMS' warning stream counts repeated messages and prints "<...> occurred N times" to the
# terminal when the process exits, long after any capture: it is silenced. The reasons lcmsquant
# reports come from the parser's errors, which still reach file descriptor 2 and are captured.
_log = oms.LogConfigHandler.getInstance()
_log.configure(_log.parse([b"WARNING remove cerr"]))  # type: ignore[list-item]  # pyopenms takes bytes

from lcmsquant.files import not_a_file
from lcmsquant.method import Method, Transition

# Fewest points a trace needs to hold a peak (peak finding smooths over 5 points).
MIN_POINTS = 5


class ChromatogramReadError(Exception):
    """The injection's file cannot be read; the injection is flagged NO_DATA."""


@dataclass(frozen=True)
class Trace:
    """One SRM chromatogram: time in minutes, intensity in counts per second."""

    native_id: str
    q1: float
    q3: float
    time: np.ndarray = field(repr=False, compare=False)
    intensity: np.ndarray = field(repr=False, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)  # what reading changed or doubts

    @property
    def usable(self) -> bool:
        """Enough points to look for a peak; a shorter trace counts as no data."""
        return len(self.time) >= MIN_POINTS

    @property
    def start(self) -> float:
        """The first time point (minutes); NaN for an empty trace."""
        return float(self.time[0]) if len(self.time) else float("nan")

    @property
    def end(self) -> float:
        """The last time point (minutes); NaN for an empty trace."""
        return float(self.time[-1]) if len(self.time) else float("nan")

    def covers(self, rt: float) -> bool:
        """Whether `rt` (minutes) lies within the trace's time range."""
        return len(self.time) > 0 and self.start <= rt <= self.end


_SRM = oms.ChromatogramSettings.ChromatogramType.SELECTED_REACTION_MONITORING_CHROMATOGRAM
_UNKNOWN = oms.ChromatogramSettings.ChromatogramType.MASS_CHROMATOGRAM


def read_traces(path: Path | str, warnings: list[str] | None = None) -> list[Trace]:
    """All SRM traces of an mzML(.gz) file; the TIC and other non-SRM chromatograms are skipped.

    Raises ChromatogramReadError when the file cannot be read or holds no SRM chromatogram. A
    chromatogram the parser skipped (its arrays disagree) is named in `warnings`, when given.
    """
    path = Path(path)
    if problem := not_a_file(path):
        raise ChromatogramReadError(f"{path}: {problem}")
    check_well_formed(path)
    experiment = oms.MSExperiment()
    options = oms.PeakFileOptions()
    options.setMSLevels([])  # chromatograms only: skip any spectra the file may also hold
    options.setSortChromatogramsByRT(False)  # clean_trace sorts, and says so
    handler = oms.MzMLFile()
    handler.setOptions(options)
    with _captured_stderr() as stderr:
        try:
            handler.load(str(path), experiment)
            error = None
        except Exception as err:  # pyopenms raises RuntimeError; the parser's reason goes to stderr
            error = err
    messages = stderr.read()
    if error is not None:
        reason = _parser_reason(messages, error)
        raise ChromatogramReadError(f"{path.name}: not a readable mzML file ({reason})")
    if warnings is not None:
        warnings.extend(_skipped_chromatograms(messages))
    traces = []
    for chrom in experiment.getChromatograms():
        q1, q3 = chrom.getPrecursor().getMZ(), chrom.getProduct().getMZ()
        if chrom.getChromatogramType() not in (_SRM, _UNKNOWN) or q1 <= 0 or q3 <= 0:
            continue
        seconds, intensity = chrom.get_peaks()
        time = np.asarray(seconds, dtype=np.float64) / 60.0
        traces.append(clean_trace(chrom.getNativeID(), float(q1), float(q3), time, intensity))
    if not traces:
        raise ChromatogramReadError(
            f"{path.name}: no SRM chromatogram in the file (is it a triple-quad SRM run converted "
            f"with its chromatograms?)"
        )
    return traces


def clean_trace(native_id: str, q1: float, q3: float, time, intensity) -> Trace:
    """A trace fit for peak finding, with a warning for everything that had to be changed.

    Points with a missing or infinite time or intensity are dropped; times are put in order;
    points sharing a time are merged into their mean. Negative intensities (a count rate cannot
    be negative) are kept as they are and reported.
    """
    time = np.asarray(time, dtype=np.float64).ravel()
    intensity = np.asarray(intensity, dtype=np.float64).ravel()
    with np.errstate(over="ignore"):  # finite values summing past 1.8e308 only take the slow path
        all_finite = bool(np.isfinite(time.sum() + intensity.sum()))
    if (
        len(time) == len(intensity) >= MIN_POINTS
        and all_finite
        and (time[1:] > time[:-1]).all()
        and intensity.min() >= 0
    ):
        return Trace(native_id, q1, q3, time, intensity)  # the usual case: nothing to change
    notes = []
    if len(time) != len(intensity):
        notes.append(f"{len(time)} times but {len(intensity)} intensities: the extra values were dropped")
        n = min(len(time), len(intensity))
        time, intensity = time[:n], intensity[:n]
    finite = np.isfinite(time) & np.isfinite(intensity)
    if not finite.all():
        notes.append(f"{int((~finite).sum())} point(s) with a missing or infinite value dropped")
        time, intensity = time[finite], intensity[finite]
    if len(time) > 1 and np.any(np.diff(time) < 0):
        notes.append("time points out of order: sorted")
        order = np.argsort(time, kind="stable")
        time, intensity = time[order], intensity[order]
    if len(time) > 1 and np.any(np.diff(time) == 0):
        unique, index = np.unique(time, return_inverse=True)
        notes.append(f"{len(time) - len(unique)} repeated time point(s): intensities at the same time averaged")
        # The mean at each time, of values scaled to at most 1 and clipped to the values averaged,
        # so that no sum or rounding overflows near the float maximum.
        scale = float(np.max(np.abs(intensity))) or 1.0
        mean = np.bincount(index, weights=intensity / scale) / np.bincount(index) * scale
        intensity = np.clip(mean, intensity.min(), intensity.max())
        time = unique
    negative = intensity < 0
    if negative.any():
        notes.append(
            f"{int(negative.sum())} negative intensit{'y' if negative.sum() == 1 else 'ies'} (lowest {intensity.min():.4g}) kept as read"
        )
    if len(time) < MIN_POINTS:
        notes.append(f"only {len(time)} usable point(s): too few to look for a peak")
    return Trace(native_id, q1, q3, time, intensity, tuple(f"{native_id}: {n}" for n in notes))


# expat's errors for a document that stops in the middle
_CUT_SHORT = {
    expat.errors.codes[m]
    for m in (
        expat.errors.XML_ERROR_NO_ELEMENTS,
        expat.errors.XML_ERROR_UNCLOSED_TOKEN,
        expat.errors.XML_ERROR_PARTIAL_CHAR,
    )
}


_CHECK_CHUNK = 1 << 20


class _DoctypeFound(Exception):
    """Raised from expat's handler at a document type declaration."""

    def __init__(self, line: int):
        self.line = line


def check_well_formed(path: Path) -> None:
    """Refuse a file that is not well-formed XML (a truncated or damaged file) with the place
    it breaks, before the C++ parser reads it.

    A DOCTYPE is refused too: mzML never needs one, and the C++ parser would resolve its external
    entities and DTDs (reading other local files into its messages, or waiting forever on a FIFO).
    """
    try:
        with open(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if path.name.lower().endswith(".gz") else raw
            parser = expat.ParserCreate()

            def refuse_doctype(*_args) -> None:
                raise _DoctypeFound(parser.CurrentLineNumber)

            parser.StartDoctypeDeclHandler = refuse_doctype
            while chunk := stream.read(_CHECK_CHUNK):  # ParseFile's 2 KB reads cost a third more
                parser.Parse(chunk, False)
            parser.Parse(b"", True)
    except _DoctypeFound as found:
        raise ChromatogramReadError(
            f"{path.name}: not a readable mzML file (a DOCTYPE declaration at line {found.line}: mzML has none, and its "
            "entities and DTDs are not read; remove the declaration or convert the raw file again)"
        ) from None
    except expat.ExpatError as err:
        where = f"line {err.lineno}, column {err.offset + 1}"
        if err.code in _CUT_SHORT:
            reason = f"input ended before all started tags were ended, at {where}: the file was cut short"
        else:
            reason = f"not well-formed XML ({expat.errors.messages[err.code]}) at {where}: the file is damaged"
        raise ChromatogramReadError(
            f"{path.name}: not a readable mzML file ({reason}; convert or copy it again)"
        ) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ChromatogramReadError(
            f"{path.name}: not a readable mzML file (damaged gzip data: {err}; compress or convert it again)"
        ) from None
    except (LookupError, ValueError) as err:  # an XML declaration naming an unknown encoding
        raise ChromatogramReadError(f"{path.name}: not a readable mzML file ({err})") from None
    except OSError as err:
        raise ChromatogramReadError(f"{path.name}: cannot be read ({err.strerror or err})") from None


# Da: how far a trace's Q1 or Q3 may lie from a transition's and still be the same transition
# written by another program. SCIEX tells transitions apart by a 0.001 offset in Q1 (346.002 and
# 346 are two compounds; so are 117.001 and 117), so an exact match must stay below 0.001 by a
# margin. Writers round to 3 decimals or fewer, so one value of a transition may lie up to half
# that step (0.0005) from another: the real Sacc1 file writes 212.023 for the 212.0235 of its own
# transition list, and 180.024 for 180.0245; in floating point the first differs by
# 0.00050000000002 and the second by 0.00049999999999, so a threshold at 0.0005 would call one
# exact and the other not. 0.00075 lies midway between the rounding (0.0005) and the offset
# (0.001), further from either than any float rounding (below 1e-4 even for 32-bit m/z values).
EXACT_MZ = 0.00075


def exact_mz_match(trace: Trace, transition: Transition) -> bool:
    """Q1 and Q3 both the transition's, at the precision instruments write (see EXACT_MZ)."""
    return abs(trace.q1 - transition.q1) < EXACT_MZ and abs(trace.q3 - transition.q3) < EXACT_MZ


def match_transitions(
    traces: Iterable[Trace],
    transitions: Iterable[Transition],
    expected_rt: Mapping[Transition, float],
    mz_tolerance: float,
) -> dict[Transition, Trace | None]:
    """The trace of each transition, or None when the file has none within the m/z tolerance.

    A trace whose Q1 and Q3 are the transition's exactly (`exact_mz_match`) wins over traces that
    only fall within the tolerance: those belong to other transitions that SCIEX tells apart by a
    0.001 offset in Q1 (Sacc1's dgmp, Q1 346.002, beside amp, Q1 346), even when they sit nearer
    the expected RT. Among equally good m/z matches, a usable trace (enough points) wins; when
    several share a Q1/Q3 pair (scheduled SRM), the one whose time range covers the expected RT;
    among those, or when none covers it, the one centred nearest to it; then the nearer m/z.
    Other usable traces that match as well and also cover the RT are named in a warning on the
    trace used.
    """
    traces = list(traces)
    matched: dict[Transition, Trace | None] = {}
    for t in transitions:
        candidates = [tr for tr in traces if abs(tr.q1 - t.q1) <= mz_tolerance and abs(tr.q3 - t.q3) <= mz_tolerance]
        if not candidates:
            matched[t] = None
            continue
        rt = expected_rt[t]

        def preference(tr: Trace, t: Transition = t, rt: float = rt):
            return (
                not exact_mz_match(tr, t),
                not tr.usable,
                not tr.covers(rt),
                abs((tr.start + tr.end) / 2 - rt) if len(tr.time) else np.inf,
                abs(tr.q1 - t.q1) + abs(tr.q3 - t.q3),
            )

        best = min(candidates, key=preference)
        twins = [
            tr
            for tr in candidates
            if tr is not best and preference(tr)[:3] == preference(best)[:3] and best.usable and tr.covers(rt)
        ]
        if twins:
            same = "the same Q1/Q3" if exact_mz_match(best, t) else f"Q1/Q3 within {mz_tolerance:g} of the method's"
            best = replace(
                best,
                warnings=best.warnings
                + (
                    f"{best.native_id}: {len(twins)} other trace(s) with {same} also cover "
                    f"{rt:.2f} min ({', '.join(tr.native_id for tr in twins)}); this one was used",
                ),
            )
        matched[t] = best
    return matched


def read_injection(
    path: Path | str, method: Method, warnings: list[str] | None = None
) -> dict[Transition, Trace | None]:
    """Read one injection and return the trace of every transition of the method."""
    transitions = method.transitions()
    expected = {t: method.expected_rt(t) for t in transitions}
    return match_transitions(read_traces(path, warnings), transitions, expected, method.mz_tolerance)


# File descriptor 2 belongs to the whole process: one capture at a time.
_STDERR_LOCK = threading.Lock()


@contextmanager
def _captured_stderr():
    """Collect what OpenMS' C++ code prints on file descriptor 2, so users see one clean message."""
    with _STDERR_LOCK, tempfile.TemporaryFile(mode="w+b") as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        reader = io.StringIO()
        try:
            yield reader
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            reader.write(sink.read().decode("utf-8", "replace"))
            reader.seek(0)


def _parser_reason(stderr_text: str, err: Exception) -> str:
    """The parser's own sentence ("input ended before all started tags were ended ...",
    "zlib::inflate failed ..."), if any, without OpenMS' source paths."""
    text = stderr_text + "\n" + str(err)
    for pattern in (r"While loading '[^']*': (.*)", r"Parsing error: '(.*?)\s*'", r"While loading '': (.*)"):
        match = re.search(pattern, text)
        if match:
            reason = re.sub(r">? occurred \d+ times$", "", match.group(1).strip())
            return re.sub(
                r"^zlib::inflate failed with code (-?\d+) \.?$",
                r"binary data cannot be decompressed (zlib error \1)",
                reason,
            )[:300]
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"\s*in: /\S+.*$", "", first)[:300]


def _skipped_chromatograms(stderr_text: str) -> list[str]:
    """The chromatograms OpenMS left out of a file it otherwise read, as warnings."""
    found = re.findall(r"chromatogram '([^']*)' differ \(([^!]*)! Not reading chromatogram", stderr_text)
    return [
        f"{native_id}: not read, its time and intensity arrays differ in length ({sizes})" for native_id, sizes in found
    ]
