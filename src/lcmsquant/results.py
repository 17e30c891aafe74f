"""The run's files: results.csv, peaks.csv, calibration.csv, run.json (deterministic) and
session.json (when and how the run was made, kept apart so reruns compare byte for byte).

Every file is written to a temporary name in the output folder and renamed into place, so a
reader never sees half a file and an interrupted run leaves the previous file intact.
`read_results` is the inverse of `write_outputs`: the one reader of a results folder. A run
holds the folder's lock (results_lock) from before measuring until its report is written, so
that two runs never write into one folder at once.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import math
import os
import platform
import re
import stat
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lcmsquant import __version__
from lcmsquant.audit_trail import TrailNote, account, append_entry
from lcmsquant.batch import CALIBRATORS, WORKLIST, Batch
from lcmsquant.batch import COLUMNS as WORKLIST_COLUMNS
from lcmsquant.files import (
    REPORT_HTML,
    REPORT_PDF,
    InputError,
    atomic_write,
    atomic_write_all,
    csv_text,
    not_a_file,
    read_set,
    remove_stale_temporaries,
    restore_text,
    sha256,
)
from lcmsquant.measure import AUDITED, PEAK_FIELDS
from lcmsquant.method import Acceptance
from lcmsquant.overrides import OVERRIDES
from lcmsquant.reanalysis import COLUMNS as REANALYSIS_COLUMNS
from lcmsquant.vocabulary import Flag, SampleType, TrailEvent

if TYPE_CHECKING:  # lcmsquant.pipeline imports statsmodels: see runs.process_batch
    from lcmsquant.pipeline import RunResult

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

RESULT_COLUMNS = ("injection", *WORKLIST_COLUMNS)
# The peak fields results.csv takes from the quantifier's peak (same names as in peaks.csv).
QUANTIFIER_FIELDS = (
    "rt_min",
    "expected_rt_min",
    "start_min",
    "end_min",
    "area",
    "height",
    "sn",
    "fwhm_s",
    "tailing_factor",
    "asymmetry",
    "points",
    "points_fwhm",
)
MEASURE_COLUMNS = (
    "analyte",
    "calibrator_set",
    "internal_standard",
    *QUANTIFIER_FIELDS,
    "is_rt_min",
    "rrt",
    "is_area",
    "is_response_pct",
    "area_ratio",
    "qualifier_area",
    "ion_ratio",
    "ion_ratio_reference",
    "back_calculated",
    "concentration",
    "nominal",
    "accuracy_pct",
    "lloq",
    "uloq",
    "flags",
    "reportable",
    "exclusion_reason",
    "reanalysis",
)
# Decimal places (or significant digits, negative) per column, for readable, stable CSVs.
ROUNDING = {
    "rt_min": 4,
    "expected_rt_min": 4,
    "start_min": 4,
    "end_min": 4,
    "is_rt_min": 4,
    "area": 1,
    "height": 1,
    "is_area": 1,
    "qualifier_area": 1,
    "sn": 1,
    "noise": 2,
    "is_response_pct": 1,
    "accuracy_pct": 1,
    "area_ratio": -6,
    "ion_ratio": -4,
    "ion_ratio_reference": -4,
    "back_calculated": -4,
    "concentration": -4,
    "nominal": -6,
    "lloq": -6,
    "uloq": -6,
    "intercept": -6,
    "slope": -6,
    "quadratic": -6,
    "intercept_se": -4,
    "slope_se": -4,
    "quadratic_se": -4,
    "r_squared": 6,
    "auto_rt_min": 4,
    "auto_start_min": 4,
    "auto_end_min": 4,
    "auto_area": 1,
    "manual_rt_min": 4,
    "manual_area": 1,
    "fwhm_s": 2,
    "tailing_factor": 3,
    "asymmetry": 3,
    "rrt": 5,
    "back_calculated_calibrator": -4,
    "accuracy_calibrator_pct": 1,
    "baseline_start": 1,
    "baseline_end": 1,
}
SOFTWARE = ("pyopenms", "numpy", "scipy", "pandas", "statsmodels")
# run.json's "results_format": raised when a table or run.json changes so that an older reader
# would misread it; read_results refuses a folder of a format it does not know.
RESULTS_FORMAT = 1
PEAK_COLUMNS = (
    "injection",
    "file",
    "sample_id",
    "transition",
    "compound",
    "role",
    "q1",
    "q3",
    "status",
    "expected_rt_min",
    "native_id",
    *PEAK_FIELDS,
    "edge",
    "saturated",
    "split",
    "shoulder",
    "manual",
    "override_line",
    *(f"auto_{k}" for k in AUDITED),
    "read_warnings",
)
CALIBRATION_COLUMNS = (
    "analyte",
    "calibrator_set",
    "model",
    "weighting",
    "intercept",
    "slope",
    "quadratic",
    "intercept_se",
    "slope_se",
    "quadratic_se",
    "r_squared",
    "n_calibrators",
    "n_used",
    "levels_used",
    "levels_excluded",
    "lloq",
    "uloq",
    "accepted",
    "problem",
)
# audit.csv: the override, the override file's extra columns, then what the override replaced.
AUDIT_OVERRIDE_COLUMNS = (
    "override_line",
    "injection",
    "file",
    "sample_id",
    "transition",
    "action",
    "start_min",
    "end_min",
    "reason",
    "analyst",
)
AUDIT_REPLACED_COLUMNS = (
    *(f"auto_{k}" for k in AUDITED),
    "manual_status",
    "manual_rt_min",
    "manual_area",
    "back_calculated_calibrator",
    "accuracy_calibrator_pct",
)


def results_table(batch: Batch, run: RunResult) -> pd.DataFrame:
    """results.csv: worklist columns (and any extra ones), then the measurement per analyte."""
    table = run.results
    columns = [*RESULT_COLUMNS, *batch.extra_columns, *MEASURE_COLUMNS]
    return _rounded(table[columns].sort_values("injection", kind="stable"))


def peaks_table(batch: Batch, run: RunResult) -> pd.DataFrame:
    """peaks.csv: every transition of every injection as integrated."""
    files = {inj.order: inj.file_name for inj in batch.injections}
    ids = {inj.order: inj.sample_id for inj in batch.injections}
    peaks = run.peaks.copy()
    peaks.insert(1, "file", peaks["injection"].map(files))
    peaks.insert(2, "sample_id", peaks["injection"].map(ids))
    return _rounded(peaks)


def audit_table(batch: Batch, run: RunResult, peaks: pd.DataFrame | None = None) -> pd.DataFrame:
    """audit.csv: every manual integration with the automatic values it replaced (`peaks`: the
    peaks_table, if already made)."""
    by_line = {o.line: o for o in batch.overrides}
    extra_columns = sorted({k for o in batch.overrides for k, _ in o.extra})
    rows = []
    peaks = peaks_table(batch, run) if peaks is None else peaks
    for _, peak in peaks[peaks["manual"]].iterrows():
        o = by_line[int(peak["override_line"])]
        rows.append(
            {
                "override_line": o.line,
                "injection": peak["injection"],
                "file": peak["file"],
                "sample_id": peak["sample_id"],
                "transition": peak["transition"],
                "action": o.action,
                "start_min": o.start,
                "end_min": o.end,
                "reason": o.reason,
                "analyst": o.analyst,
                **{k: dict(o.extra).get(k, "") for k in extra_columns},
                **{f"auto_{k}": peak[f"auto_{k}"] for k in AUDITED},
                "manual_status": peak["status"],
                "manual_rt_min": peak["rt_min"],
                "manual_area": peak["area"],
            }
        )
    results = run.results
    for o in batch.overrides:
        if o.action != "exclude":
            continue
        cal = results[(results["file"] == o.file) & (results["analyte"] == o.analyte)].iloc[0]
        rows.append(
            {
                "override_line": o.line,
                "injection": cal["injection"],
                "file": o.file,
                "sample_id": cal["sample_id"],
                "transition": o.analyte,
                "action": o.action,
                "start_min": None,
                "end_min": None,
                "reason": o.reason,
                "analyst": o.analyst,
                **{k: dict(o.extra).get(k, "") for k in extra_columns},
                "back_calculated_calibrator": cal["back_calculated"],
                "accuracy_calibrator_pct": cal["accuracy_pct"],
            }
        )
    columns = [*AUDIT_OVERRIDE_COLUMNS, *extra_columns, *AUDIT_REPLACED_COLUMNS]
    table = pd.DataFrame(rows, columns=columns).sort_values("override_line", kind="stable")
    return _rounded(table)


def reanalysis_table(run: RunResult) -> pd.DataFrame:
    """reanalysis.csv: every study sample x analyte to reanalyse or review, with reason codes."""
    return _rounded(run.reanalysis)


def calibration_table(run: RunResult) -> pd.DataFrame:
    """calibration.csv: one row per analyte x calibrator set (the header alone when there is none)."""
    return _rounded(run.calibration)  # quantify gives it CALIBRATION_COLUMNS even with no row


def run_summary(batch: Batch, run: RunResult) -> dict:
    """run.json: verdicts, every rule with its measured value and limit, and provenance; for a
    run without calibration, `peaks_only` says why (see pipeline.peaks_only_reason)."""
    analytes: dict[str, dict] = {}
    for (analyte, cal_set), v in run.verdicts.items():
        analytes.setdefault(analyte, {})[cal_set] = {
            "verdict": "accepted" if v["accepted"] else "rejected",
            "reasons": v["reasons"],
        }
    results = run.results
    unknown = results[results["sample_type"] == SampleType.UNKNOWN]
    counts = {analyte: sample_counts(rows) for analyte, rows in unknown.groupby("analyte")}
    summary = {
        "lcmsquant": __version__,
        "results_format": RESULTS_FORMAT,
        "batch": batch.folder.name,
        "run_accepted": all(v["accepted"] for v in run.verdicts.values()) if run.verdicts else False,
    }
    if run.peaks_only:  # the key exists only then: a calibrated run's run.json is as before
        summary["peaks_only"] = run.peaks_only
    return {
        **summary,
        "analytes": analytes,
        "sample_counts": counts,
        "rules": [r.as_dict() for r in run.rules],
        "injection_errors": {str(k): v for k, v in sorted(run.injection_errors.items())},
        "read_warnings": read_warnings(run.peaks),
        "provenance": provenance(batch),
    }


def read_warnings(peaks: pd.DataFrame) -> dict[str, list[str]]:
    """Injection -> what reading its file changed or doubted (points dropped, times sorted, ...)."""
    if "read_warnings" not in peaks.columns:
        return {}
    found: dict[str, list[str]] = {}
    for injection, text in zip(peaks["injection"], peaks["read_warnings"]):
        for warning in filter(None, str(text).split(" | ")):
            found.setdefault(str(injection), [])
            if warning not in found[str(injection)]:
                found[str(injection)].append(warning)
    return found


def sample_counts(unknown: pd.DataFrame) -> dict[str, int]:
    """What became of these study-sample rows: reportable, quantified, BLQ, ALQ, flagged."""
    flags = unknown["flags"].str.split(";")
    return {
        "unknowns": int(len(unknown)),
        "reportable": int(unknown["reportable"].sum()),
        "quantified": int(unknown["concentration"].notna().sum()),
        "blq": int(flags.map(lambda f: Flag.BLQ in f).sum()),
        "alq": int(flags.map(lambda f: Flag.ALQ in f).sum()),
        "flagged": int((unknown["flags"] != "").sum()),
        "reanalyse": int((unknown["reanalysis"] != "").sum()) if "reanalysis" in unknown else 0,
    }


def peak_counts(rows: pd.DataFrame) -> dict[str, int]:
    """What was found in these results rows (injection x analyte): quantifier peaks found, no
    peak, no data, no IS peak, rows flagged. What a peaks-only run, without curve or verdict,
    has to summarise."""
    flags = rows["flags"].str.split(";")
    return {
        "injections": int(rows["injection"].nunique()),
        "analytes": int(rows["analyte"].nunique()),
        "found": int(rows["area"].notna().sum()),
        "no_peak": int(flags.map(lambda f: Flag.NO_PEAK in f).sum()),
        "no_data": int(flags.map(lambda f: Flag.NO_DATA in f).sum()),
        "no_is": int(flags.map(lambda f: Flag.NO_IS in f).sum()),
        "flagged": int((rows["flags"] != "").sum()),
    }


def provenance(batch: Batch) -> dict:
    """Input files with SHA-256, the method and its hash, and software versions."""
    inputs = [{"file": WORKLIST, "sha256": sha256(batch.folder / WORKLIST)}]
    for optional in (CALIBRATORS, OVERRIDES):
        if (batch.folder / optional).is_file():
            inputs.append({"file": optional, "sha256": sha256(batch.folder / optional)})
    for inj in batch.injections:
        inputs.append({"file": str(inj.file.relative_to(batch.folder)), "sha256": sha256(inj.file)})
    method = batch.method
    return {
        "method": {
            "name": method.name,
            "version": method.version,
            "file": Path(method.path).name,
            "sha256": method.sha256,
        },
        "units": method.units,
        "acceptance": asdict(method.acceptance),  # the limits the run was judged against, for the report
        "calibrator_sets": [
            {
                "name": s.name,
                "matrices": list(s.matrices),
                "file": Path(s.source).name,
                "sha256": sha256(Path(s.source)) if Path(s.source).is_file() else "",
            }
            for s in method.calibrator_sets
        ],
        "inputs": inputs,
        "software": dict(software_versions()),
    }


@functools.cache
def software_versions() -> dict:
    """Versions of lcmsquant, Python and the libraries that make the numbers (cached)."""
    versions = {"lcmsquant": __version__, "python": platform.python_version()}
    for name in SOFTWARE:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def write_outputs(
    batch: Batch,
    run: RunResult,
    out_dir: Path,
    command: list[str] | None = None,
    report: ReportRenderer | None = None,
    note: TrailNote | None = None,
) -> list[Path]:
    """Write every output file of a run as one set (see files.atomic_write_all), and record it
    in the folder's audit trail.

    Parameters
    ----------
    batch, run : Batch, RunResult
        What run_batch returns.
    out_dir : Path
        The results folder (created if missing).
    command : list of str, optional
        The command line recorded in session.json (default: this process's).
    report : callable, optional
        Draws report.html from the set's bytes (see below).
    note : TrailNote, optional
        What the audit trail records of this set (default: a run by this account, with the
        command line).

    Returns
    -------
    list of Path
        The files written.

    run.json records the SHA-256 of the five tables it goes with, so a reader can tell that a
    set belongs together; temporary files a killed run left behind are removed first.
    report: draws report.html from the set's bytes before anything is renamed, so that it is
    written with the set (see _write_set); without it, or when it draws none, the previous
    report.html and report.pdf are removed with the same step.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    files = output_set(batch, run, out_dir, command)
    written = _write_set(out_dir, files, report)
    if note is None:
        command = command if command is not None else sys.argv
        note = TrailNote(TrailEvent.RUN, account(), "results written", {"command": list(map(str, command))})
    run_json = files[out_dir / "run.json"]
    sha = hashlib.sha256(run_json if isinstance(run_json, bytes) else run_json.encode("utf-8")).hexdigest()
    append_entry(out_dir, note.event, note.by, note.summary, note.details, sha)
    return written


def output_set(
    batch: Batch, run: RunResult, out_dir: Path, command: list[str] | None = None
) -> dict[Path, bytes | str]:
    """The files of a results set by path, as write_outputs writes them (without the report)."""
    tables = output_tables(batch, run)
    table_bytes = {out_dir / name: csv_text(table).encode("utf-8") for name, table in tables.items()}
    summary = run_summary(batch, run)
    summary["outputs"] = {path.name: hashlib.sha256(data).hexdigest() for path, data in table_bytes.items()}
    run_json = json.dumps(_jsonable(summary), indent=2) + "\n"
    files: dict[Path, bytes | str] = {**table_bytes, out_dir / "run.json": run_json.encode("utf-8")}
    session = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command if command is not None else sys.argv,
        "host": platform.node(),
        "batch_folder": str(batch.folder.resolve()),  # where the report finds the mzML files
        "hashes": {"run.json": hashlib.sha256(run_json.encode("utf-8")).hexdigest()},  # see files.read_set
    }
    files[out_dir / "session.json"] = json.dumps(session, indent=2) + "\n"
    return files


def output_tables(batch: Batch, run: RunResult) -> dict[str, pd.DataFrame]:
    """The tables of a results folder by file name, typed as in COLUMN_TYPES (what read_results gives back)."""
    peaks = peaks_table(batch, run)
    tables = {
        "results.csv": results_table(batch, run),
        "peaks.csv": peaks,
        "calibration.csv": calibration_table(run),
        "audit.csv": audit_table(batch, run, peaks),
        "reanalysis.csv": reanalysis_table(run),
    }
    return {name: _typed(table, COLUMN_TYPES[name]) for name, table in tables.items()}


# Draws report.html from a results set given as file name -> bytes (before any of it is in
# place), or returns None when it cannot; see runs.process_batch.
ReportRenderer = Callable[[Mapping[str, bytes]], "str | bytes | None"]


def _write_set(out_dir: Path, files: dict[Path, bytes | str], report: ReportRenderer | None) -> list[Path]:
    """Write the set with report.html drawn from it, or with no report at all.

    The previous report.html and report.pdf describe the previous set: both are removed once
    the new files are staged and before they are renamed (files.atomic_write_all), so that no
    report of other results stays beside the new tables, even for a run killed meanwhile. A
    new report.html is renamed last and names the SHA-256 of the run.json it was drawn from.
    """
    html = None
    if report is not None:
        html = report(
            {path.name: data.encode("utf-8") if isinstance(data, str) else data for path, data in files.items()}
        )
    if html is not None:
        files = {**files, out_dir / REPORT_HTML: html}
    return atomic_write_all(files, remove=(out_dir / REPORT_HTML, out_dir / REPORT_PDF))


LOCK_FILE = ".lcmsquant.lock"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_WINDOWS_LOCKED_BYTE = 1 << 30  # msvcrt locks are mandatory: lock a byte far beyond the holder's details


class ResultsFolderBusy(InputError):
    """Another run (or `lcmsquant report`) is writing into this results folder."""

    kind = "results folder"


@contextmanager
def results_lock(out_dir: Path | str, command: list[str] | None = None) -> Iterator[Path]:
    """Hold a results folder (creating it) while writing into it; raise ResultsFolderBusy at once,
    naming the holder's PID, host and start time, if another process holds it.

    An advisory lock on OUT_DIR/.lcmsquant.lock (flock; msvcrt on Windows): the system releases
    it when its process ends, so a run that was killed never blocks the next. The file is removed
    on release, and the folder too if this call created it and nothing was written.
    """
    out_dir = Path(out_dir)
    created = not out_dir.is_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    fd = _acquire(path, out_dir)
    try:
        if fd is not None:
            holder = {
                "pid": os.getpid(),
                "host": platform.node(),
                "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": command if command is not None else sys.argv,
            }
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(holder) + "\n").encode("utf-8"))
        yield out_dir
    finally:
        if fd is not None:
            _release(path, fd)
        if created:
            try:
                out_dir.rmdir()  # only if empty: the run wrote nothing
            except OSError:
                pass


def _acquire(path: Path, out_dir: Path) -> int | None:
    """The locked file's descriptor; None where the file system cannot lock (the run goes on)."""
    while True:
        try:  # never through a link, and never blocking on a FIFO put in its place
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _NONBLOCK, 0o644)
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR):
                raise
            fd = None
        if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
            if fd is not None:
                os.close(fd)
            raise ResultsFolderError(
                out_dir,
                [
                    f"{LOCK_FILE} {'is a symbolic link' if path.is_symlink() else not_a_file(path)}: not a lock file "
                    f"lcmsquant made, so nothing was written; remove {path} and run again"
                ],
            )
        try:
            locked = _try_lock(fd)
        except OSError:
            os.close(fd)
            return None
        if not locked:
            holder, command = _holder(fd)
            os.close(fd)
            # a review holds the folder until someone ends it: waiting alone would not do
            wait = (
                "a review holds it until it is ended: end it with Ctrl-C in the window where it runs, then try again"
                if command[1:2] == ["review"]
                else "wait until it has finished"
            )
            raise ResultsFolderBusy(
                out_dir,
                [f"another lcmsquant process is writing into it ({holder}); {wait}, or write elsewhere with --out"],
            )
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed the file while we opened it: lock the one there now


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    os.lseek(fd, _WINDOWS_LOCKED_BYTE, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # locked by another process
        return False
    return True


def _release(path: Path, fd: int) -> None:
    if fcntl is not None:
        path.unlink(missing_ok=True)  # while still holding it, so that no one else has it yet
        os.close(fd)
        return
    os.lseek(fd, _WINDOWS_LOCKED_BYTE, os.SEEK_SET)
    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    os.close(fd)
    try:
        path.unlink()
    except OSError:  # another process has opened it meanwhile: it is theirs now
        pass


def _holder(fd: int) -> tuple[str, list[str]]:
    """The holder's details as it wrote them into the lock file, and its command."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 1 << 16).decode("utf-8"))
        words = [str(w) for w in holder.get("command") or []]
        command = " ".join(words)
        return f"PID {holder['pid']} on {holder['host']}, started {holder['started_at']}" + (
            f": {command}" if command else ""
        ), words
    except (ValueError, KeyError, TypeError, AttributeError):
        return "it has just started and not yet written its PID", []


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    """Write a table as spreadsheet-safe CSV, atomically."""
    return atomic_write(path, csv_text(table))


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for column, digits in ROUNDING.items():
        if column in table.columns:
            values = pd.to_numeric(table[column], errors="coerce")
            table[column] = (
                values.round(digits) if digits >= 0 else values.map(lambda v, digits=digits: _significant(v, -digits))
            )
    return table


def _significant(value: float, digits: int) -> float:
    if not np.isfinite(value) or value == 0:
        return value
    return float(f"{value:.{digits}g}")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    return obj


# ---------------------------------------------------------------------------------------------
# Reading a results folder back

FLOAT, INT, BOOL, TEXT = "float64", "int64", "bool", str
RUN_JSON, SESSION_JSON = "run.json", "session.json"
REQUIRED_FILES = ("results.csv", "peaks.csv", "calibration.csv", RUN_JSON)  # audit.csv and reanalysis.csv came later
RERUN = "rerun `lcmsquant run` on the batch to write the folder again"


def _schema(
    columns: Sequence[str], text: Sequence[str] = (), ints: Sequence[str] = (), bools: Sequence[str] = ()
) -> dict:
    """Column -> type of one table: text, whole numbers and true/false as named, decimal numbers otherwise."""
    return {c: TEXT if c in text else INT if c in ints else BOOL if c in bools else FLOAT for c in columns}


# The type of every column of every table; a column not named (a worklist column carried into
# results.csv, an extra column of overrides.csv) is text. Empty text is "", a number without a
# value NaN, so the two stay apart through the CSV.
COLUMN_TYPES = {
    "results.csv": _schema(
        (*RESULT_COLUMNS, *MEASURE_COLUMNS),
        ints=("injection",),
        bools=("reportable",),
        text=(
            *(c for c in WORKLIST_COLUMNS if c != "dilution_factor"),  # every worklist column is text but that one
            "analyte",
            "calibrator_set",
            "internal_standard",
            "flags",
            "exclusion_reason",
            "reanalysis",
        ),
    ),
    "peaks.csv": _schema(
        PEAK_COLUMNS,
        ints=("injection",),
        bools=("edge", "saturated", "split", "shoulder", "manual"),
        text=(
            "file",
            "sample_id",
            "transition",
            "compound",
            "role",
            "status",
            "native_id",
            "auto_status",
            "read_warnings",
        ),
    ),
    "calibration.csv": _schema(
        CALIBRATION_COLUMNS,
        ints=("n_calibrators", "n_used"),
        bools=("accepted",),
        text=("analyte", "calibrator_set", "model", "weighting", "levels_used", "levels_excluded", "problem"),
    ),
    "audit.csv": _schema(
        (*AUDIT_OVERRIDE_COLUMNS, *AUDIT_REPLACED_COLUMNS),
        ints=("override_line", "injection"),
        text=("file", "sample_id", "transition", "action", "reason", "analyst", "auto_status", "manual_status"),
    ),
    "reanalysis.csv": _schema(
        REANALYSIS_COLUMNS,
        ints=("injection",),
        text=[c for c in REANALYSIS_COLUMNS if c not in ("injection", "suggested_dilution_factor")],
    ),
}
TYPE_WORDS = {FLOAT: "a number", INT: "a whole number", BOOL: "True or False"}


class ResultsFolderError(InputError):
    """A results folder that cannot be read back, or written safely."""

    kind = "results folder"


@dataclass(frozen=True)
class RunOutputs:
    """A results folder read back by read_results: its tables typed as COLUMN_TYPES says, run.json and session.json."""

    folder: Path
    results: pd.DataFrame = field(repr=False)
    peaks: pd.DataFrame = field(repr=False)
    calibration: pd.DataFrame = field(repr=False)
    audit: pd.DataFrame | None = field(repr=False)  # None: the folder was written before audit.csv existed
    reanalysis: pd.DataFrame | None = field(repr=False)  # None: written before reanalysis.csv existed
    summary: dict = field(repr=False)  # run.json
    session: dict = field(repr=False)  # session.json; {} when there is none
    sha256: dict = field(repr=False)  # file name -> SHA-256 of each table read, and of run.json

    @property
    def run_json_sha256(self) -> str:
        """The SHA-256 of the run.json read with the tables (one snapshot)."""
        return self.sha256.get(RUN_JSON, "")

    @property
    def method(self) -> dict:
        """The method the run was made with: name, version, file and SHA-256."""
        return self.summary.get("provenance", {}).get("method", {})

    @property
    def units(self) -> str:
        """The concentration units the run reported in."""
        return self.summary.get("provenance", {}).get("units", "ng/mL")

    @property
    def acceptance(self) -> Acceptance:
        """The limits the run was judged against (ICH M10 defaults for results written before
        run.json recorded them)."""
        stored = self.summary.get("provenance", {}).get("acceptance")
        if not stored:
            return Acceptance()
        known = {k: v for k, v in stored.items() if k in Acceptance.__dataclass_fields__}
        if "is_response_band_pct" in known:
            known["is_response_band_pct"] = tuple(known["is_response_band_pct"])
        return Acceptance(**known)


RESULTS_FOLDER = "results"  # BATCH/results, where `lcmsquant run` writes by default


def results_dir_of(path: Path | str) -> Path:
    """The results folder `path` means: a results.csv's folder; `path/results` when `path` is
    no results folder itself but holds one (a batch folder); else `path`. Every command that
    reads results takes the batch folder this way."""
    path = Path(path)
    if path.is_file() and path.name == "results.csv":
        return path.parent
    if not any((path / name).exists() for name in ("results.csv", RUN_JSON)) and (path / RESULTS_FOLDER).is_dir():
        return path / RESULTS_FOLDER
    return path


def read_results(results_dir: Path | str, error: type[InputError] = ResultsFolderError) -> RunOutputs:
    """Read back what write_outputs wrote into results_dir, as it wrote it (the inverse of write_outputs).

    Parameters
    ----------
    results_dir : path-like
        A results folder.
    error : type of InputError
        The error raised (each command raises its own kind).

    Returns
    -------
    RunOutputs
        The five tables typed as COLUMN_TYPES says, run.json, session.json and their SHA-256.

    Refused with one `error` listing every problem: no such folder, a file missing or not
    parsing, a run.json of a results format this version does not know or with a field of the
    wrong type, or a table whose SHA-256 is not the one run.json records (the folder was edited
    by hand or is incomplete).
    """
    folder = Path(results_dir)
    if not folder.is_dir():
        raise error(folder, [f"{folder} is not a folder: give the results folder of a run (BATCH_DIR/results)"])
    data = read_set(folder, (*COLUMN_TYPES, RUN_JSON, SESSION_JSON))  # of one run, even while a run replaces them
    return parse_results(folder, data, error)


def parse_results(folder: Path, data: Mapping[str, bytes], error: type[InputError] = ResultsFolderError) -> RunOutputs:
    """A results set from its files' bytes (file name -> bytes), checked as read_results checks
    a folder: what a run is about to write can so be read back before it is in place."""
    summary, summary_problems = _parse_json(RUN_JSON, data)
    too_new = _newer_format(summary)
    if too_new:
        raise error(folder, [too_new])
    if RUN_JSON in data and not summary_problems:
        summary_problems = _summary_problems(summary)
    outputs = summary.get("outputs")
    recorded = (
        {name: digest for name, digest in outputs.items() if name in COLUMN_TYPES} if isinstance(outputs, dict) else {}
    )
    problems = [_missing(name, recorded) for name in dict.fromkeys((*REQUIRED_FILES, *recorded)) if name not in data]
    digests = {name: hashlib.sha256(data[name]).hexdigest() for name in (*COLUMN_TYPES, RUN_JSON) if name in data}
    for name, expected in recorded.items():
        if name in digests and digests[name] != expected:
            problems.append(
                f"{name} is not the file run.json records (SHA-256 {digests[name][:12]}, recorded {str(expected)[:12]}): "
                f"the folder was edited by hand or is incomplete (files of two runs mixed); {RERUN}"
            )
    tables = {}
    for name, types in COLUMN_TYPES.items():
        if name in data:
            tables[name] = _parse_table(name, data[name], types, problems)
    session, session_problems = _parse_json(SESSION_JSON, data)
    problems += summary_problems + session_problems
    if problems:
        raise error(folder, problems)
    return RunOutputs(
        folder=folder,
        results=tables["results.csv"],
        peaks=tables["peaks.csv"],
        calibration=tables["calibration.csv"],
        audit=tables.get("audit.csv"),
        reanalysis=tables.get("reanalysis.csv"),
        summary=summary,
        session=session,
        sha256=digests,
    )


def _missing(name: str, recorded: dict) -> str:
    if name in recorded:
        return f"{name} is missing, though run.json lists it: the folder is incomplete; {RERUN}"
    return f"{name} is missing: {RERUN}"


def _parse_json(name: str, data: Mapping[str, bytes]) -> tuple[dict, list[str]]:
    if name not in data:
        return {}, []
    try:
        document = json.loads(data[name].decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return {}, [f"{name}: not valid JSON ({err}); {RERUN}"]
    if not isinstance(document, dict):
        return {}, [f"{name}: not a JSON object; {RERUN}"]
    return document, []


def _newer_format(summary: dict) -> str:
    """The problem with a run.json of a results format this version cannot read ("" when none;
    a results_format that is not a whole number is a wrong type, see _summary_problems)."""
    found = summary.get("results_format", RESULTS_FORMAT)
    if not _is_int(found) or found <= RESULTS_FORMAT:
        return ""
    return (
        f"{RUN_JSON}: results format {found!r} (lcmsquant {summary.get('lcmsquant', '?')}), but lcmsquant {__version__} "
        f"reads format {RESULTS_FORMAT}: read it with the version that wrote it, or rerun `lcmsquant run` on the batch"
    )


def _summary_problems(summary: dict) -> list[str]:
    """What run.json lacks that every reader relies on, and every field of the wrong type."""
    wrong = _wrong_types(summary)

    def typed(path: str) -> bool:  # already named as a field of the wrong type (or inside one)
        return any(path == p or path.startswith(p + ".") for p, _ in wrong)

    provenance: dict = summary["provenance"] if isinstance(summary.get("provenance"), dict) else {}
    method: dict = provenance["method"] if isinstance(provenance.get("method"), dict) else {}
    inputs = provenance.get("inputs")
    problems = [
        f"{RUN_JSON}: {key} is missing: not a run.json of `lcmsquant run`; {RERUN}"
        for key, value in (("lcmsquant", summary.get("lcmsquant")), ("provenance.method.sha256", method.get("sha256")))
        if not value and not typed(key)
    ]
    if not typed("provenance.inputs") and (
        not isinstance(inputs, list) or not all(isinstance(i, dict) and "file" in i and "sha256" in i for i in inputs)
    ):
        problems.append(f"{RUN_JSON}: provenance.inputs is not a list of files with their SHA-256; {RERUN}")
    outputs = summary.get("outputs")
    if outputs is None and "results_format" in summary:  # every run.json with a results_format lists them
        problems.append(f"{RUN_JSON}: outputs is missing: the tables cannot be checked against their SHA-256; {RERUN}")
    elif isinstance(outputs, dict):
        # A run.json without a results_format was written before reanalysis.csv was a table of the set.
        tables = (
            COLUMN_TYPES
            if "results_format" in summary
            else ("results.csv", "peaks.csv", "calibration.csv", "audit.csv")
        )
        unlisted = [name for name in tables if name not in outputs]
        if unlisted:
            problems.append(
                f"{RUN_JSON}: outputs does not list {', '.join(unlisted)}, so the tables cannot be checked "
                f"against their SHA-256; {RERUN}"
            )
    named = [f"{RUN_JSON}: {what}; {RERUN}" for _, what in wrong[:_MAX_TYPE_PROBLEMS]]
    if len(wrong) > _MAX_TYPE_PROBLEMS:
        named.append(f"{RUN_JSON}: {len(wrong) - _MAX_TYPE_PROBLEMS} more field(s) of the wrong type; {RERUN}")
    return problems + named


# What every field of run.json holds, as run_summary and write_outputs write it: a type, a
# ("list", item), a ("map", value) (an object with names of the writer's choosing), a dict (an
# object with these keys; others are ignored, as are those missing: _summary_problems requires
# what every reader needs), or ("record", dict, keys it must have). Readers rely on these
# types; a field of another type is refused by name rather than failing later with a traceback.
_NUMBER = "number"
_RULE = (
    "record",
    {
        "analyte": str,
        "calibrator_set": str,
        "rule": str,
        "section": str,
        "measured": str,
        "limit": str,
        "passed": bool,
        "critical": bool,
        "detail": str,
        "category": str,
        "id": str,
    },
    ("analyte", "calibrator_set", "rule", "section", "measured", "limit", "passed", "critical", "detail"),
)  # category, id came later
_ACCEPTANCE = {
    name: ("list", _NUMBER) if name == "is_response_band_pct" else _NUMBER for name in Acceptance.__dataclass_fields__
}
RUN_JSON_FIELDS = {
    "lcmsquant": str,
    "results_format": int,
    "batch": str,
    "run_accepted": bool,
    "peaks_only": str,
    "analytes": ("map", ("map", {"verdict": str, "reasons": ("list", str)})),
    "sample_counts": ("map", ("map", int)),
    "rules": ("list", _RULE),
    "injection_errors": ("map", str),
    "read_warnings": ("map", ("list", str)),
    "provenance": {
        "method": {"name": str, "version": str, "file": str, "sha256": str},
        "units": str,
        "acceptance": _ACCEPTANCE,
        "calibrator_sets": (
            "list",
            (
                "record",
                {"name": str, "matrices": ("list", str), "file": str, "sha256": str},
                ("name", "matrices", "file", "sha256"),
            ),
        ),
        "inputs": ("list", {"file": str, "sha256": str}),
        "software": ("map", str),
    },
    "outputs": ("map", str),
}
_WORDS = {
    str: "text",
    int: "a whole number",
    bool: "true or false",
    _NUMBER: "a number",
    "list": "a list",
    "map": "an object",
}
_MAX_TYPE_PROBLEMS = 10


def _wrong_types(summary: dict) -> list[tuple[str, str]]:
    """(path, what is wrong) of every field of run.json whose value is not of the type
    RUN_JSON_FIELDS gives it, and of the values readers read further (injection numbers, the
    two ends of the IS response band)."""
    found: list[tuple[str, str]] = []
    _check_type(summary, RUN_JSON_FIELDS, "", found)
    if not found:
        for key in summary.get("injection_errors", {}):
            if not re.fullmatch(r"[0-9]{1,9}", key):
                found.append(("injection_errors", f"injection_errors names {key[:40]!r}, not an injection number"))
        band = summary.get("provenance", {}).get("acceptance", {}).get("is_response_band_pct")
        if band is not None and len(band) != 2:
            found.append(
                (
                    "provenance.acceptance.is_response_band_pct",
                    f"provenance.acceptance.is_response_band_pct holds {len(band)} number(s), not 2 (lowest and highest %)",
                )
            )
    return found


def _check_type(value, spec, path: str, found: list[tuple[str, str]]) -> None:
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            found.append((path, f"{path} is {_json_type(value)}, not an object"))
            return
        for key, item_spec in spec.items():
            if key in value:
                _check_type(value[key], item_spec, f"{path}.{key}" if path else key, found)
    elif isinstance(spec, tuple) and spec[0] == "record":
        _, fields, required = spec
        _check_type(value, fields, path, found)
        if isinstance(value, dict):
            found += [(f"{path}.{key}", f"{path} has no {key}") for key in required if key not in value]
    elif isinstance(spec, tuple):
        kind, item_spec = spec
        if not isinstance(value, list if kind == "list" else dict):
            found.append((path, f"{path} is {_json_type(value)}, not {_WORDS[kind]}"))
            return
        items: Iterable[tuple[object, object]] = enumerate(value) if isinstance(value, list) else value.items()
        for key, item in items:
            _check_type(item, item_spec, f"{path}[{key}]" if kind == "list" else f"{path}.{key}", found)
    elif not _of_type(value, spec):
        found.append((path, f"{path} is {_json_type(value)}, not {_WORDS[spec]}"))


def _of_type(value, kind) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return _is_int(value)
    if kind == _NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value) -> str:
    """A JSON value in words, for a message: the text '15', the number 15, a list, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(value)]  # as JSON spells them
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {value[:40]!r}" + ("..." if len(value) > 40 else "")
    return "a list" if isinstance(value, list) else "an object"


def _parse_table(name: str, data: bytes, types: dict, problems: list[str]) -> pd.DataFrame | None:
    """One table with its columns typed (None, and the problems added, when it cannot be read)."""
    try:
        table = pd.read_csv(
            io.BytesIO(data),
            dtype=defaultdict(lambda: TEXT, types),
            keep_default_na=False,
            na_values={c: [""] for c, kind in types.items() if kind == FLOAT},
            encoding="utf-8",
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        problems.append(f"{name}: not a readable CSV ({str(err).splitlines()[0]}); {RERUN}")
        return None
    except ValueError as err:
        problems.extend(_bad_cells(name, data, types) or [f"{name}: not a readable CSV ({err}); {RERUN}"])
        return None
    missing = [c for c in types if c not in table.columns]
    if missing:
        problems.append(
            f"{name}: missing column(s) {', '.join(missing)}: not written by `lcmsquant run` (or by an older one); {RERUN}"
        )
    for column in table.columns:
        if types.get(column, TEXT) is TEXT:
            table[column] = table[column].map(restore_text)
    return table


def _bad_cells(name: str, data: bytes, types: dict) -> list[str]:
    """The first cell of each typed column that is not of its type, with its line."""
    raw = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8")
    problems = []
    for column in raw.columns:
        kind = types.get(column, TEXT)
        if kind is TEXT:
            continue
        fits = raw[column].map(lambda v, kind=kind: _fits(v, kind)).to_numpy(bool)
        if not fits.all():
            row = int(np.argmin(fits))
            problems.append(
                f"{name} line {row + 2}, column {column}: {raw[column].iloc[row]!r} is not {TYPE_WORDS[kind]}; {RERUN}"
            )
    return problems


def _fits(text: str, kind: str) -> bool:
    if kind == INT:
        return re.fullmatch(r"\s*[+-]?\d+\s*", text) is not None
    if kind == BOOL:
        return text.strip().lower() in ("true", "false")
    if text.strip() == "":
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _typed(table: pd.DataFrame, types: dict) -> pd.DataFrame:
    """`table` with each column of its type in COLUMN_TYPES (text for the others); text holds "" for nothing, never NaN."""
    typed = {}
    for column in table.columns:
        kind, values = types.get(column, TEXT), table[column]
        if kind is TEXT:
            typed[column] = values.astype(object).fillna("").astype(str)
        else:
            typed[column] = values if values.dtype == kind else values.astype(kind)
    return pd.DataFrame(typed, index=table.index)
