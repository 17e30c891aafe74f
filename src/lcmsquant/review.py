"""Reviewing a run: a batch held in memory with its peaks, changed by manual integrations and
calibrator exclusions, each written to overrides.csv as a hand-written row would be, the batch
re-quantified and its results set rewritten by the writers of `lcmsquant run`, and every change,
undo and signature recorded in the results folder's audit trail.

`open_review` holds the results folder's lock for the whole review, so a `run` into the same
folder is refused with a message rather than interleaved. A change is confirmed once
overrides.csv, the results set and the trail entry are on disk; the review itself keeps only
what undo and redo need. `lcmsquant review` (review_app) is the browser on top of this; a
notebook can use it directly.
"""

from __future__ import annotations

import csv
import io
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lcmsquant.audit_trail import (
    MAX_NAME,
    Trail,
    TrailEntry,
    TrailNote,
    account,
    append_entry,
    check_name,
    read_trail,
    record_report,
    recorded,
    results_sha256,
    sign,
    utc_now,
)
from lcmsquant.batch import Batch, Injection, load_batch, resolve_method_path
from lcmsquant.chromatograms import ChromatogramReadError, Trace, read_injection
from lcmsquant.files import InputError, atomic_write, read_csv_rows
from lcmsquant.measure import measure_injection, measure_injections, peak_table
from lcmsquant.method import MAX_REASON, Method, load_method
from lcmsquant.overrides import ACTIONS, COLUMNS, OVERRIDES, OverrideError, target_names
from lcmsquant.pipeline import RunResult, quantify
from lcmsquant.results import RESULTS_FOLDER, output_set, results_lock, write_outputs
from lcmsquant.vocabulary import Meaning, SampleType, TrailEvent

# What a reviewer can do to one transition (or, for exclude/include, one calibrator of an analyte).
RESTORE = "restore"  # back to the automatic integration (the override row is removed)
INCLUDE = "include"  # an excluded calibrator back in its curve (the exclude row is removed)
CORRECTIONS = (*ACTIONS, RESTORE, INCLUDE)
CHANGED_AT = "changed_at_utc"  # the column a review adds to overrides.csv (carried into audit.csv)


class ReviewError(InputError):
    """A change the review cannot make (an unknown target, a window with no data, no reason)."""

    kind = "review"


class ReviewConflict(ReviewError):
    """overrides.csv was changed outside this review: the review reloaded it; try again."""


@dataclass(frozen=True)
class Correction:
    """One change to one transition of one injection (`target`: an analyte, meaning its
    quantifier; an internal standard; or a transition name), or to one calibrator."""

    file: str  # as in the worklist
    target: str
    action: str  # one of CORRECTIONS
    start_min: float | None = None
    end_min: float | None = None


@dataclass(frozen=True)
class Step:
    """A confirmed change as undo and redo see it: overrides.csv before and after (None: absent)."""

    summary: str
    before: bytes | None
    after: bytes | None
    details: Mapping = field(default_factory=dict)
    by: str = ""  # who made the change (undo may be pressed by someone else, in another tab)


class ReviewSession:
    """A batch under review: its measured peaks, its results, and the changes made to them.

    Thread-safe: every change holds one lock, and `version` grows with each, so that two
    browser tabs (or a tab and a notebook) see each other's changes.
    """

    def __init__(
        self,
        folder: Path | str,
        method_path: Path | str | None = None,
        out_dir: Path | str | None = None,
        jobs: int | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.method: Method = load_method(resolve_method_path(self.folder, method_path))
        self.out_dir = Path(out_dir) if out_dir is not None else self.folder / RESULTS_FOLDER
        self.command = list(command) if command is not None else ["lcmsquant", "review", str(self.folder)]
        self.version = 0
        self.lock = threading.RLock()
        self.undo_steps: list[Step] = []
        self.redo_steps: list[Step] = []
        self.batch: Batch = load_batch(self.folder, self.method)
        self._overrides = self._read_overrides_bytes()
        self._measured = measure_injections(self.batch, jobs=jobs)
        if self.batch.injections:  # load the compiled peak finder here now, not on the first change (0.5 s)
            first = self.batch.injections[0]
            measure_injection(first.file, self.method, self.batch.overrides_for(first))
        self.result: RunResult = self._quantify()
        self._traces = lru_cache(maxsize=64)(self._read_traces)

    # -- what the review shows -----------------------------------------------------------

    @property
    def results_sha256(self) -> str:
        """The SHA-256 naming the results set on disk (that of run.json)."""
        return results_sha256(self.out_dir)

    @property
    def trail(self) -> Trail:
        """The results folder's audit trail as it is on disk."""
        return read_trail(self.out_dir)

    def injection(self, order: int) -> Injection:
        """The injection at that position of the worklist."""
        return next(inj for inj in self.batch.injections if inj.order == order)

    def traces(self, order: int) -> Mapping:
        """The traces of one injection by transition name (read once, then kept for a while)."""
        return self._traces(order)

    def file_of(self, injection: Injection) -> str:
        """An injection's file as the worklist and overrides.csv name it."""
        return str(injection.file.relative_to(self.batch.folder))

    # -- changes ---------------------------------------------------------------------------

    def write_results(self, analyst: str | None = None) -> TrailEntry | None:
        """Write the results set when the one on disk is not what the batch's files give now
        (no results yet, or results of other inputs or software); the trail records it as a run.
        Results that are current but that the trail does not record (written before trails
        existed) get an entry saying so, so that they can be signed."""
        with self.lock:
            files = output_set(self.batch, self.result, self.out_dir, self.command)
            on_disk = self.out_dir / "run.json"
            by = analyst or account()
            if on_disk.is_file() and on_disk.read_bytes() == files[on_disk]:
                if recorded(self.trail, self.results_sha256):
                    return None
                entry = append_entry(
                    self.out_dir,
                    TrailEvent.RUN,
                    by,
                    "results found current at the start of a review (not yet in the trail)",
                )
            else:
                write_outputs(
                    self.batch,
                    self.result,
                    self.out_dir,
                    self.command,
                    note=TrailNote(TrailEvent.RUN, by, "results written at the start of a review"),
                )
                entry = self.trail.entries[-1]
            self.version += 1
            return entry

    def apply(self, corrections: Sequence[Correction], reason: str, analyst: str) -> TrailEntry:
        """Make one change (one or more corrections with one reason), write it to overrides.csv,
        re-quantify and write the results; the trail records it, undo takes it back."""
        reason, analyst = _checked_reason(reason), _checked_analyst(analyst)
        if not corrections:
            raise ReviewError(self.folder, ["nothing to change: no correction was given"])
        with self.lock:
            self._check_not_edited_elsewhere()
            after = self._edited_overrides(corrections, reason, analyst)
            summary = _summary(corrections, reason)
            details = {
                "reason": reason,
                "corrections": [{k: v for k, v in vars(c).items() if v is not None} for c in corrections],
            }
            step = Step(summary, self._overrides, after, details, analyst)
            entry = self._change_to(after, TrailNote(TrailEvent.CHANGE, analyst, summary, details))
            self.undo_steps.append(step)
            self.redo_steps.clear()
            return entry

    def undo(self, analyst: str) -> TrailEntry:
        """Take back the last change (its overrides.csv rows as they were before it)."""
        return self._replay(self.undo_steps, self.redo_steps, TrailEvent.UNDO, analyst)

    def redo(self, analyst: str) -> TrailEntry:
        """Make the last undone change again."""
        return self._replay(self.redo_steps, self.undo_steps, TrailEvent.REDO, analyst)

    def _replay(self, steps: list[Step], other: list[Step], event: TrailEvent, analyst: str) -> TrailEntry:
        """Undo (overrides.csv as before the last step) or redo (as after it), moving the step
        from one history to the other."""
        analyst = _checked_analyst(analyst)
        with self.lock:
            if not steps:
                raise ReviewError(self.folder, [f"nothing to {event}"])
            self._check_not_edited_elsewhere()
            step = steps[-1]
            done = "Undid" if event == TrailEvent.UNDO else "Redid"
            entry = self._change_to(
                step.before if event == TrailEvent.UNDO else step.after,
                TrailNote(event, analyst, f"{done}: {step.summary}", step.details),
            )
            other.append(steps.pop())
            return entry

    def sign(self, name: str, meaning: Meaning | str) -> TrailEntry:
        """Sign the current results set (see audit_trail.sign)."""
        with self.lock:
            entry = sign(self.out_dir, name, meaning)
            self.version += 1
            return entry

    def write_report(self, by: str | None = None) -> Path:
        """Draw report.html from the results set on disk, with its signatures and trail."""
        from lcmsquant.report import write_report

        with self.lock:
            path = write_report(self.out_dir, self.folder)
            record_report(self.out_dir, [path], by or account(), self.command)
            self.version += 1
            return path

    # -- inside ----------------------------------------------------------------------------

    def _quantify(self) -> RunResult:
        peaks, errors = peak_table(self.batch, self._measured)
        return quantify(self.batch, peaks, errors)

    def _read_traces(self, order: int) -> Mapping[str, Trace | None]:
        try:
            traces = read_injection(self.injection(order).file, self.method)
        except ChromatogramReadError:  # flagged NO_DATA in the results: nothing to draw
            return {}
        return {t.name: trace for t, trace in traces.items()}

    def _read_overrides_bytes(self) -> bytes | None:
        path = self.folder / OVERRIDES
        return path.read_bytes() if path.is_file() else None

    def _check_not_edited_elsewhere(self) -> None:
        on_disk = self._read_overrides_bytes()
        if on_disk != self._overrides:
            self._change_to(
                on_disk,
                TrailNote(TrailEvent.RUN, account(), f"{OVERRIDES} was changed outside the review: results rewritten"),
            )
            self.undo_steps.clear()
            self.redo_steps.clear()
            raise ReviewConflict(
                self.folder / OVERRIDES,
                [
                    f"{OVERRIDES} was changed outside this review; the review now shows it as it is: make the change again"
                ],
            )

    def _overrides_rows(self) -> tuple[list[str], list[dict[str, str]]]:
        """overrides.csv's header and rows as they are (on disk as this review last left it)."""
        if self._overrides is None:
            return [], []
        header, records = read_csv_rows(self.folder / OVERRIDES, OverrideError)
        return header, [dict(zip(header, values)) for _, values in records]

    def _edited_overrides(self, corrections: Sequence[Correction], reason: str, analyst: str) -> bytes | None:
        """overrides.csv with each correction's row replaced, added or removed."""
        header, rows = self._overrides_rows()
        header = list(dict.fromkeys([*COLUMNS, *header, CHANGED_AT]))
        now = utc_now()
        names = target_names(self.method)
        files = {self.file_of(inj): inj for inj in self.batch.injections}
        problems = []
        for c in corrections:
            where = f"{c.target} of {c.file}"
            if c.file not in files:
                problems.append(f"{where}: '{c.file}' is not in the worklist")
                continue
            if c.action not in CORRECTIONS:
                problems.append(f"{where}: action '{c.action}' is not one of {', '.join(CORRECTIONS)}")
                continue
            on_calibrator = c.action in ("exclude", INCLUDE)
            if on_calibrator and c.target not in {a.name for a in self.method.analytes}:
                problems.append(f"{where}: a calibrator is excluded or included for an analyte, not '{c.target}'")
                continue
            if on_calibrator and files[c.file].sample_type != SampleType.CALIBRATOR:
                problems.append(f"{where}: only a calibrator can be excluded from a curve")
                continue
            if not on_calibrator and c.target not in names:
                problems.append(f"{where}: '{c.target}' is no analyte, internal standard or transition of the method")
                continue
            if c.action == "integrate" and not (
                c.start_min is not None and c.end_min is not None and 0 <= c.start_min < c.end_min
            ):
                problems.append(
                    f"{where}: integrate needs a start before the end (minutes), got {c.start_min}, {c.end_min}"
                )
                continue
            key = (c.file, "exclude" if on_calibrator else names[c.target], c.target if on_calibrator else "")
            rows = [r for r in rows if _row_key(r, names) != key]
            if c.action in (RESTORE, INCLUDE):
                continue
            row = dict.fromkeys(header, "")
            row.update(
                file=c.file,
                target=c.target,
                action=c.action,
                start_min=_minutes(c.start_min) if c.action == "integrate" else "",
                end_min=_minutes(c.end_min) if c.action == "integrate" else "",
                reason=reason,
                analyst=analyst,
                **{CHANGED_AT: now},
            )
            rows.append(row)
        if problems:
            raise ReviewError(self.folder, problems)
        if not rows and self._overrides is None:
            return None
        out = io.StringIO()
        writer = csv.DictWriter(out, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().encode("utf-8")

    def _change_to(self, overrides: bytes | None, note: TrailNote) -> TrailEntry:
        """Put `overrides` in place, re-measure the injections whose manual integrations it
        changes, re-quantify and write the results set; on any problem put everything back."""
        path = self.folder / OVERRIDES
        before = self._overrides, self.batch, self._measured, self.result
        _put(path, overrides)
        try:
            batch = load_batch(self.folder, self.method)
            measured = dict(self._measured)
            was = {inj.order: _integrations(self.batch.overrides_for(inj)) for inj in self.batch.injections}
            for inj in batch.injections:
                if _integrations(batch.overrides_for(inj)) != was[inj.order]:
                    measured[inj.order] = measure_injection(inj.file, self.method, batch.overrides_for(inj))
            self.batch, self._measured, self._overrides = batch, measured, overrides
            self.result = self._quantify()
            write_outputs(self.batch, self.result, self.out_dir, self.command, note=note)
        except (InputError, OSError) as err:
            _put(path, before[0])
            self._overrides, self.batch, self._measured, self.result = before
            if isinstance(err, OverrideError):  # about rows the review wrote, not lines a person typed
                raise ReviewError(path, [_OVERRIDE_LINE.sub("", p) for p in err.problems]) from None
            raise
        self.version += 1
        return self.trail.entries[-1]


@contextmanager
def open_review(
    folder: Path | str,
    method_path: Path | str | None = None,
    out_dir: Path | str | None = None,
    jobs: int | None = None,
    analyst: str | None = None,
    command: Sequence[str] | None = None,
) -> Iterator[ReviewSession]:
    """A review of a batch, holding its results folder for as long as it is open.

    The batch is measured as `lcmsquant run` measures it; when the results on disk are not what
    its files give (or there are none), they are written first and the trail records a run.
    """
    folder = Path(folder)
    out = Path(out_dir) if out_dir is not None else folder / RESULTS_FOLDER
    command = list(command) if command is not None else ["lcmsquant", "review", str(folder)]
    with results_lock(out, command):  # a run refused meanwhile names the review as the holder
        session = ReviewSession(folder, method_path, out, jobs, command)
        session.write_results(analyst)
        yield session


_OVERRIDE_LINE = re.compile(rf"^{re.escape(OVERRIDES)} line \d+: ")


def _checked_reason(reason: str) -> str:
    reason = " ".join(str(reason).split())
    if not reason:
        raise ReviewError(OVERRIDES, ["every change needs a reason: pick one or type it"])
    if len(reason) > MAX_REASON or not reason.isprintable():
        raise ReviewError(
            OVERRIDES, [f"the reason must be one line of printable text of at most {MAX_REASON} characters"]
        )
    return reason


def _checked_analyst(analyst: str) -> str:
    try:
        return check_name(analyst, "analyst's name")
    except ValueError as err:
        raise ReviewError(OVERRIDES, [f"{err} (at most {MAX_NAME} characters)"]) from None


def _summary(corrections: Sequence[Correction], reason: str) -> str:
    first = corrections[0]
    what = {
        "integrate": f"integrated {first.target} between {_minutes(first.start_min)} and {_minutes(first.end_min)} min",
        "no_peak": f"set {first.target} to no peak",
        "exclude": f"excluded calibrator from the {first.target} curve",
        RESTORE: f"restored the automatic integration of {first.target}",
        INCLUDE: f"included calibrator in the {first.target} curve again",
    }[first.action]
    where = first.file if len(corrections) == 1 else f"{len(corrections)} injections"
    return f"{what} in {where}: {reason}"


def _row_key(row: Mapping[str, str], names: Mapping[str, str]) -> tuple[str, str, str]:
    action = row.get("action", "").lower().replace(" ", "_")
    if action == "exclude":
        return (row.get("file", ""), "exclude", row.get("target", ""))
    return (row.get("file", ""), names.get(row.get("target", ""), row.get("target", "")), "")


def _integrations(overrides: Mapping) -> dict[str, tuple]:
    return {name: (o.action, o.start, o.end) for name, o in overrides.items()}


def _put(path: Path, data: bytes | None) -> None:
    if data is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, data)


def _minutes(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
