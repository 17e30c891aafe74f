"""Read the SRM chromatograms of one injection and match them to the method's transitions.

Traces are matched by their precursor (Q1) and product (Q3) m/z within the method's tolerance,
never by parsing the chromatogram id. Times are kept in minutes, the unit chemists and methods
use; pyopenms hands them back in seconds whatever the file says.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# pyopenms loads with OpenMP threads that gain nothing on small SRM files and, when another
# process holds a core, make each load up to 10x slower (measured on a 2-core machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")
import pyopenms as oms  # noqa: E402  (after the thread setting, which it reads when loaded)

from lcmsquant.method import Method, Transition


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

    @property
    def start(self) -> float:
        return float(self.time[0]) if len(self.time) else float("nan")

    @property
    def end(self) -> float:
        return float(self.time[-1]) if len(self.time) else float("nan")

    def covers(self, rt: float) -> bool:
        return len(self.time) > 0 and self.start <= rt <= self.end


_SRM = oms.ChromatogramSettings.ChromatogramType.SELECTED_REACTION_MONITORING_CHROMATOGRAM
_UNKNOWN = oms.ChromatogramSettings.ChromatogramType.MASS_CHROMATOGRAM


def read_traces(path: Path | str) -> list[Trace]:
    """All SRM traces of an mzML(.gz) file; the TIC and other non-SRM chromatograms are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ChromatogramReadError(f"{path}: file does not exist")
    experiment = oms.MSExperiment()
    options = oms.PeakFileOptions()
    options.setMSLevels([])  # chromatograms only: skip any spectra the file may also hold
    handler = oms.MzMLFile()
    handler.setOptions(options)
    with _captured_stderr() as stderr:
        try:
            handler.load(str(path), experiment)
            error = None
        except Exception as err:  # pyopenms raises RuntimeError; the parser's reason goes to stderr
            error = err
    if error is not None:
        reason = _parser_reason(stderr.read(), error)
        raise ChromatogramReadError(f"{path.name}: not a readable mzML file ({reason})")
    traces = []
    for chrom in experiment.getChromatograms():
        q1, q3 = chrom.getPrecursor().getMZ(), chrom.getProduct().getMZ()
        if chrom.getChromatogramType() not in (_SRM, _UNKNOWN) or q1 <= 0 or q3 <= 0:
            continue
        seconds, intensity = chrom.get_peaks()
        time = np.asarray(seconds, dtype=np.float64) / 60.0
        intensity = np.asarray(intensity, dtype=np.float64)
        order = np.argsort(time, kind="stable")
        traces.append(Trace(chrom.getNativeID(), float(q1), float(q3), time[order], intensity[order]))
    return traces


def match_transitions(
    traces: Iterable[Trace],
    transitions: Iterable[Transition],
    expected_rt: Mapping[Transition, float],
    mz_tolerance: float,
) -> dict[Transition, Trace | None]:
    """The trace of each transition, or None when the file has none within the m/z tolerance.

    When several traces share a Q1/Q3 pair (scheduled SRM), the one whose time range covers the
    expected RT wins; among those, or when none covers it, the one centred nearest to it.
    """
    traces = list(traces)
    matched: dict[Transition, Trace | None] = {}
    for t in transitions:
        candidates = [
            tr for tr in traces if abs(tr.q1 - t.q1) <= mz_tolerance and abs(tr.q3 - t.q3) <= mz_tolerance
        ]
        if not candidates:
            matched[t] = None
            continue
        rt = expected_rt[t]
        matched[t] = min(
            candidates,
            key=lambda tr: (
                not tr.covers(rt),
                abs((tr.start + tr.end) / 2 - rt) if len(tr.time) else np.inf,
                abs(tr.q1 - t.q1) + abs(tr.q3 - t.q3),
            ),
        )
    return matched


def read_injection(path: Path | str, method: Method) -> dict[Transition, Trace | None]:
    """Read one injection and return the trace of every transition of the method."""
    transitions = method.transitions()
    expected = {t: method.expected_rt(t) for t in transitions}
    return match_transitions(read_traces(path), transitions, expected, method.mz_tolerance)


@contextmanager
def _captured_stderr():
    """Collect what OpenMS' C++ code prints on file descriptor 2, so users see one clean message."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
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
    """The parser's own sentence ("input ended before all started tags were ended ..."), if any."""
    match = re.search(r"While loading '[^']*': (.*)", stderr_text + "\n" + str(err))
    if match:
        return match.group(1).strip()[:300]
    return str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
