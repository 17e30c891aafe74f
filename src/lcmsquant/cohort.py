"""The cohort: results of many runs in one SQLite database, the value reported for each study
sample, paired trough draws across matrices and their penetration ratios.

A run is identified by its raw data (the SHA-256 of its injection files), so adding a run again,
even reprocessed, replaces it. The cohort holds one method: a run processed with another method
file, or whose calibrators have other nominal concentrations, is refused. Every analysis of a
study sample is kept (original and repeats); which one is reported follows the method's
[cohort] `reanalysis` rule.

The database is checked before it is opened (a regular file, SQLite, not damaged, a cohort
database) and never written when the check fails. Every `cohort add` is kept in an append-only,
hash-chained log with the rows it replaced (docs/security.md says what that does and does not
prove).
"""

from __future__ import annotations

import getpass
import gzip
import hashlib
import json
import os
import re
import socket
import sqlite3
import stat
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from lcmsquant import __version__
from lcmsquant.files import InputError, atomic_write, csv_text, mode_kind, sha256
from lcmsquant.method import (
    CALIBRATOR_LEVEL,
    CohortSettings,
    MethodError,
    default_method_path,
    load_method,
)
from lcmsquant.results import read_results, results_dir_of
from lcmsquant.vocabulary import Flag, Matrix, SampleType

SCHEMA_VERSION = 2  # 2 added the log; a schema 1 database gets it at its next `cohort add`
SCHEMA = """
CREATE TABLE IF NOT EXISTS methods (
    sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL, file TEXT NOT NULL,
    units TEXT NOT NULL, analytes TEXT NOT NULL, settings TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, batch TEXT NOT NULL, results_dir TEXT NOT NULL,
    results_sha256 TEXT NOT NULL, method_sha256 TEXT NOT NULL REFERENCES methods(sha256),
    acquired TEXT NOT NULL, run_accepted INTEGER NOT NULL, lcmsquant_version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calibrator_sets (
    run_id TEXT NOT NULL, name TEXT NOT NULL, matrices TEXT NOT NULL, file TEXT NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS nominals (
    run_id TEXT NOT NULL, calibrator_set TEXT NOT NULL, level TEXT NOT NULL, analyte TEXT NOT NULL,
    nominal REAL NOT NULL, PRIMARY KEY (run_id, calibrator_set, level, analyte)
);
CREATE TABLE IF NOT EXISTS verdicts (
    run_id TEXT NOT NULL, analyte TEXT NOT NULL, calibrator_set TEXT NOT NULL, accepted INTEGER NOT NULL,
    reasons TEXT NOT NULL, lloq REAL, uloq REAL, PRIMARY KEY (run_id, analyte, calibrator_set)
);
CREATE TABLE IF NOT EXISTS analyses (
    run_id TEXT NOT NULL, injection INTEGER NOT NULL, file TEXT NOT NULL, file_sha256 TEXT NOT NULL,
    sample_id TEXT NOT NULL, subject_id TEXT NOT NULL, visit TEXT NOT NULL, timepoint TEXT NOT NULL,
    matrix TEXT NOT NULL, analyte TEXT NOT NULL, calibrator_set TEXT NOT NULL, dilution_factor REAL NOT NULL,
    concentration REAL, curve_lloq REAL, curve_uloq REAL, lloq REAL, uloq REAL, flags TEXT NOT NULL,
    reportable INTEGER NOT NULL, outcome TEXT NOT NULL, last_dose_time TEXT NOT NULL, sampling_time TEXT NOT NULL,
    hours_since_dose REAL, extra TEXT NOT NULL, PRIMARY KEY (run_id, injection, analyte)
);
CREATE INDEX IF NOT EXISTS analyses_by_sample ON analyses (subject_id, visit, timepoint, matrix, analyte);
CREATE TABLE IF NOT EXISTS additions (
    number INTEGER PRIMARY KEY AUTOINCREMENT, added_at TEXT NOT NULL, run_id TEXT NOT NULL, action TEXT NOT NULL,
    results_dir TEXT NOT NULL, command TEXT NOT NULL
);
"""
DATA_TABLES = ("analyses", "verdicts", "nominals", "calibrator_sets", "runs")
ROW_ORDER = {
    "analyses": "injection, analyte",
    "verdicts": "analyte, calibrator_set",
    "nominals": "calibrator_set, level, analyte",
    "calibrator_sets": "name",
    "runs": "run_id",
}
LOG_SCHEMA = (
    """CREATE TABLE log (
    number INTEGER PRIMARY KEY, recorded_at TEXT NOT NULL, action TEXT NOT NULL, run_id TEXT NOT NULL,
    batch TEXT NOT NULL, results_dir TEXT NOT NULL, run_json_sha256 TEXT NOT NULL, tables_sha256 TEXT NOT NULL,
    analyses_added INTEGER NOT NULL, analyses_replaced INTEGER NOT NULL, content_sha256 TEXT NOT NULL,
    replaced_content_sha256 TEXT NOT NULL, os_user TEXT NOT NULL, host TEXT NOT NULL, command TEXT NOT NULL,
    lcmsquant_version TEXT NOT NULL, previous_sha256 TEXT NOT NULL, entry_sha256 TEXT NOT NULL
)""",
    "CREATE TABLE history (log_number INTEGER NOT NULL REFERENCES log(number), table_name TEXT NOT NULL, row TEXT NOT NULL)",
    *(
        f"CREATE TRIGGER {table}_append_only_{event.lower()} BEFORE {event} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, 'the cohort {table} is append-only: its entries cannot be changed or removed'); END"
        for table in ("log", "history")
        for event in ("UPDATE", "DELETE")
    ),
)
LOG_COLUMNS = (
    "number",
    "recorded_at",
    "action",
    "run_id",
    "batch",
    "results_dir",
    "run_json_sha256",
    "tables_sha256",
    "analyses_added",
    "analyses_replaced",
    "content_sha256",
    "replaced_content_sha256",
    "os_user",
    "host",
    "command",
    "lcmsquant_version",
    "previous_sha256",
    "entry_sha256",
)
LOG_TRIGGERS = {f"{t}_append_only_{e}" for t in ("log", "history") for e in ("update", "delete")}
COHORT_TABLES = {"methods", "runs", "calibrator_sets", "nominals", "verdicts", "analyses", "additions"}
LOG_TABLES = {"log", "history"}
FIRST_PREVIOUS = "0" * 64  # previous_sha256 of the log's first entry
SQLITE_HEADER = b"SQLite format 3\x00"

# Outcome of one analysis of a study sample. "value" and "BLQ" are valid results.
VALID_OUTCOMES = ("value", "BLQ")
# A BLQ is not a valid result when one of these says the measurement itself is in doubt.
BLQ_INVALIDATING = (Flag.REJECTED, Flag.NO_DATA, Flag.NO_IS, Flag.IS_RESPONSE, Flag.DILUTION_QC)
REFERENCE_MATRICES = (Matrix.SERUM, Matrix.PLASMA)  # serum first; plasma stands in when there is no serum
TARGET_MATRICES = (Matrix.CSF, Matrix.MARROW)
RATIO_NAMES = {Matrix.CSF: "CSF:serum", Matrix.MARROW: "marrow:serum"}
START_TIME = re.compile(rb'<run\b[^>]*\bstartTimeStamp="([^"]+)"')


class CohortError(InputError):
    """A results folder or cohort database that cannot be used; `problems` lists every reason."""

    kind = "cohort"


@dataclass(frozen=True)
class MethodRecord:
    """The method a cohort's runs were processed with, as the database stores it."""

    name: str
    version: str
    file: str
    sha256: str
    units: str
    analytes: tuple[str, ...]
    settings: CohortSettings


@dataclass(frozen=True)
class CohortRun:
    """One processed run as read from its results folder (results.csv, calibration.csv, run.json)."""

    run_id: str  # SHA-256 over the injection files' SHA-256: the same raw data is the same run
    batch: str
    results_dir: str
    results_sha256: str
    acquired: str  # start time of the first injection (mzML startTimeStamp), "" if not found
    run_accepted: bool
    lcmsquant_version: str
    method: MethodRecord
    calibrator_sets: pd.DataFrame  # name, matrices, file, sha256
    nominals: pd.DataFrame  # calibrator_set, level, analyte, nominal (calibrator levels only)
    verdicts: pd.DataFrame  # analyte, calibrator_set, accepted, reasons, lloq, uloq
    analyses: pd.DataFrame  # one row per study sample x analyte
    run_json_sha256: str = ""
    tables_sha256: dict = field(
        default_factory=dict
    )  # file name -> SHA-256 of results.csv, calibration.csv, ... as read


@dataclass(frozen=True)
class Addition:
    """What one `cohort add` did with one run: added or replaced, and how many rows."""

    run_id: str
    batch: str
    action: str  # "added" or "replaced"
    analyses: int
    reportable: int
    replaced: int = 0  # analyses replaced, kept in the history table
    log_entry: int = 0  # number of the log entry that records the addition


# ---------------------------------------------------------------------------------------------
# Reading a results folder (edge)


def read_cohort_run(results_dir: Path | str, method_path: Path | str | None = None) -> CohortRun:
    """Read what `lcmsquant run` wrote into results_dir, with the method it was processed with.

    The method file is `method_path`, else the batch folder's method.toml (results_dir's
    parent), else the shipped method; it must be the very file named in run.json (same SHA-256),
    because its [cohort] table decides how the cohort reports and pairs the results.
    """
    outputs = read_results(results_dir_of(results_dir), error=CohortError)
    folder, summary = outputs.folder, outputs.summary
    provenance = summary["provenance"]
    inputs = {item["file"]: item["sha256"] for item in provenance["inputs"]}
    method = _method_for(folder, provenance["method"], method_path)
    results = _with_lines(outputs.results)
    calibration = outputs.calibration

    files = list(dict.fromkeys(results["file"]))
    missing = [f for f in files if f not in inputs]
    if missing:
        raise CohortError(folder, [f"run.json: no SHA-256 for injection file(s) {', '.join(missing[:5])}"])
    run_id = hashlib.sha256("\n".join(sorted(inputs[f] for f in files)).encode()).hexdigest()

    sets = pd.DataFrame(
        [
            {
                "name": s["name"],
                "matrices": ";".join(s.get("matrices", [])),
                "file": s.get("file", ""),
                "sha256": s.get("sha256", ""),
            }
            for s in provenance.get("calibrator_sets", [])
        ],
        columns=["name", "matrices", "file", "sha256"],
    )
    cal_rows = results[(results["sample_type"] == SampleType.CALIBRATOR) & results["level"].str.match(CALIBRATOR_LEVEL)]
    nominals = (
        cal_rows[["calibrator_set", "level", "analyte", "nominal"]]
        .dropna()
        .drop_duplicates(["calibrator_set", "level", "analyte"])
        .reset_index(drop=True)
    )
    verdicts = pd.DataFrame(
        {
            "analyte": calibration["analyte"],
            "calibrator_set": calibration["calibrator_set"],
            "accepted": calibration["accepted"],
            "reasons": [
                json.dumps(summary.get("analytes", {}).get(a, {}).get(s, {}).get("reasons", []))
                for a, s in zip(calibration["analyte"], calibration["calibrator_set"])
            ],
            "lloq": calibration["lloq"],
            "uloq": calibration["uloq"],
        }
    )
    analyses = _analyses(results, inputs, method.settings, folder / "results.csv")
    return CohortRun(
        run_id=run_id,
        batch=str(summary.get("batch", folder.parent.name)),
        results_dir=str(folder.resolve()),
        results_sha256=outputs.sha256["results.csv"],
        acquired=_acquired(folder.parent / files[0], inputs[files[0]]) if files else "",
        run_accepted=bool(summary.get("run_accepted", False)),
        lcmsquant_version=str(summary.get("lcmsquant", "")),
        method=method,
        calibrator_sets=sets,
        nominals=nominals,
        verdicts=verdicts,
        analyses=analyses,
        run_json_sha256=outputs.run_json_sha256,
        tables_sha256={name: digest for name, digest in outputs.sha256.items() if name != "run.json"},
    )


def _method_for(folder: Path, info: dict, method_path: Path | str | None) -> MethodRecord:
    wanted = info.get("sha256", "")
    described = f"method '{info.get('name', '?')}' version {info.get('version', '?')} ({info.get('file', '?')}, sha256 {wanted[:12]})"
    if method_path is not None:
        candidates = [Path(method_path)]
    else:
        candidates = [folder.parent / "method.toml", default_method_path()]
    seen = []
    for path in candidates:
        if not path.is_file():
            continue
        try:
            method = load_method(path)
        except MethodError as err:
            if method_path is not None:
                raise
            seen.append(f"{path} (unusable: {err.problems[0]})")
            continue
        if method.sha256 == wanted:
            return MethodRecord(
                method.name,
                method.version,
                path.name,
                method.sha256,
                method.units,
                tuple(a.name for a in method.analytes),
                method.cohort,
            )
        seen.append(f"{path} (sha256 {method.sha256[:12]})")
    raise CohortError(
        folder,
        [
            f"run.json: the run was processed with {described}, but "
            + (f"{', '.join(seen)} is another file" if seen else "that file was not found")
            + ": give the method file the run was processed with (--method)"
        ],
    )


def _with_lines(results: pd.DataFrame) -> pd.DataFrame:
    """results.csv with the line of each row, for messages; a missing dilution factor is 1."""
    table = results.copy()
    table.insert(0, "line", np.arange(len(table)) + 2)
    table["dilution_factor"] = table["dilution_factor"].fillna(1.0)
    return table


def _analyses(results: pd.DataFrame, file_sha: dict[str, str], settings: CohortSettings, path: Path) -> pd.DataFrame:
    """Study-sample rows of results.csv with their outcome, bounds and time since the last dose."""
    unknown = results[results["sample_type"] == SampleType.UNKNOWN].copy()
    # results.csv puts the worklist's extra columns between dilution_factor and analyte
    columns = list(results.columns)
    worklist_extra = columns[columns.index("dilution_factor") + 1 : columns.index("analyte")]
    extra_columns = [c for c in worklist_extra if c not in (settings.last_dose_column, settings.sampling_column)]
    problems = []
    hours, dose_text, sample_text = [], [], []
    for _, row in unknown.iterrows():
        dose = row.get(settings.last_dose_column, "")
        taken = row.get(settings.sampling_column, "")
        dose_text.append(dose)
        sample_text.append(taken)
        h = np.nan
        parsed = {}
        for column, text in ((settings.last_dose_column, dose), (settings.sampling_column, taken)):
            if text:
                try:
                    parsed[column] = datetime.fromisoformat(text)
                except ValueError:
                    problems.append(
                        f"{path.name} line {row['line']} ({row['sample_id']}): {column} {text!r} is not an "
                        "ISO 8601 date-time (e.g. 2024-03-18T07:55)"
                    )
        if len(parsed) == 2:
            try:
                h = (parsed[settings.sampling_column] - parsed[settings.last_dose_column]).total_seconds() / 3600
            except TypeError:
                problems.append(
                    f"{path.name} line {row['line']} ({row['sample_id']}): one date-time has a time zone and the other not"
                )
            else:
                if h < 0:
                    problems.append(
                        f"{path.name} line {row['line']} ({row['sample_id']}): sampled at {taken}, before the last dose "
                        f"at {dose}: correct {settings.last_dose_column} or {settings.sampling_column} in the worklist"
                    )
        hours.append(h)
    if problems:
        raise CohortError(path, sorted(set(problems), key=problems.index))
    df = unknown["dilution_factor"]
    out = pd.DataFrame(
        {
            "injection": unknown["injection"].astype(int),
            "file": unknown["file"],
            "file_sha256": unknown["file"].map(file_sha),
            "sample_id": unknown["sample_id"],
            "subject_id": unknown["subject_id"],
            "visit": unknown["visit"],
            "timepoint": unknown["timepoint"],
            "matrix": unknown["matrix"],
            "analyte": unknown["analyte"],
            "calibrator_set": unknown["calibrator_set"],
            "dilution_factor": df,
            "concentration": unknown["concentration"],
            "curve_lloq": unknown["lloq"],
            "curve_uloq": unknown["uloq"],
            "lloq": unknown["lloq"] * df,
            "uloq": unknown["uloq"] * df,
            "flags": unknown["flags"],
            "reportable": unknown["reportable"],
            "outcome": [analysis_outcome(f, r) for f, r in zip(unknown["flags"], unknown["reportable"])],
            "last_dose_time": dose_text,
            "sampling_time": sample_text,
            "hours_since_dose": hours,
            "extra": [json.dumps({c: row[c] for c in extra_columns}, sort_keys=True) for _, row in unknown.iterrows()],
        }
    )
    return out.reset_index(drop=True)


def analysis_outcome(flags: str, reportable: bool) -> str:
    """value | BLQ | ALQ | rejected | not_reportable: what one analysis of a study sample gave."""
    f = set(flags.split(";")) - {""}
    if Flag.REJECTED in f:
        return "rejected"
    if reportable:
        return "value"
    if Flag.BLQ in f and not f & set(BLQ_INVALIDATING):
        return "BLQ"
    if Flag.ALQ in f:
        return "ALQ"
    return "not_reportable"


def _acquired(path: Path, expected_sha256: str) -> str:
    """The run's start: startTimeStamp of its first injection's mzML, when that very file (same
    SHA-256 as in run.json) is beside the results folder."""
    if not path.is_file() or sha256(path) != expected_sha256:
        return ""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return ""
    match = START_TIME.search(head)
    return match.group(1).decode("ascii", "replace") if match else ""


# ---------------------------------------------------------------------------------------------
# The database (edge)


def connect(db: Path | str) -> sqlite3.Connection:
    """Open a cohort database read-only, once check_database has found it usable and not empty."""
    db = Path(db)
    if check_database(db) == 0:
        raise CohortError(db, [f"{db} holds no run yet: add runs with `lcmsquant cohort add RESULTS_DIR --db {db}`"])
    return _read_only(db)


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db.absolute().as_uri() + "?mode=ro", uri=True)


def check_database(db: Path | str, create: bool = False) -> int:
    """The cohort schema version of the database at `db`; 0 when it has none yet (a new or empty
    file, which only `create` accepts when missing).

    Refused, with nothing opened for writing: a path that is not a regular file (folder, FIFO,
    device, socket, or a link to one), a missing folder, a journal name beside it that is not a
    plain file, a file that is not SQLite, is damaged (PRAGMA quick_check) or is another
    program's database. The file is stat-ed before it is opened, so a FIFO cannot block and a
    device is never touched; only the journal of an interrupted write is rolled back (_inspect).
    """
    db = Path(db)
    problem = _path_problem(db, create) or _journal_problem(db)
    if problem:
        raise CohortError(db, [problem])
    if not db.exists():
        return 0
    head = _head(db)
    if not head:
        return 0
    if not head.startswith(SQLITE_HEADER):
        raise CohortError(db, [f"{db} is not an lcmsquant cohort database (not an SQLite file): {USE_A_COHORT}"])
    checked, version, tables = _inspect(db)
    if checked != ["ok"]:
        said = "; ".join(checked[:3]) + (f" (and {len(checked) - 3} more)" if len(checked) > 3 else "")
        raise CohortError(db, [f"{db} is damaged: PRAGMA quick_check says {said}; restore it from a backup"])
    return _schema_version(db, version, tables - {"sqlite_sequence"})


USE_A_COHORT = "give --db the cohort's database file, or the name of a new file to start a cohort"


def _inspect(db: Path, rolled_back: bool = False) -> tuple[list[str], int, set[str]]:
    """PRAGMA quick_check's findings (or SQLite's error), the schema version and the tables, read-only.

    A journal left by an interrupted write is rolled back first, as SQLite does when it opens
    the database for writing: the database is then as the last completed `cohort add` left it.
    """
    try:
        with closing(_read_only(db)) as con:
            checked = [" ".join(r[0].split()) for r in con.execute("PRAGMA quick_check")]
            version = con.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as err:
        if getattr(err, "sqlite_errorname", "") == "SQLITE_READONLY_ROLLBACK" and not rolled_back:
            _roll_back_interrupted_write(db)
            return _inspect(db, rolled_back=True)
        if "locked" in str(err):
            raise CohortError(
                db, [f"{db} is in use by another process (SQLite says {err}): try again when it is done"]
            ) from None
        return [str(err)], 0, set()
    return checked, version, tables


def _roll_back_interrupted_write(db: Path) -> None:
    try:
        with closing(sqlite3.connect(db)) as con:
            con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as err:
        raise CohortError(
            db,
            [
                f"{db}: an interrupted write left its journal {db.name}-journal, which SQLite could not roll back ({err}): "
                "run the command once with write access to the database and its folder"
            ],
        ) from None


def _journal_problem(db: Path) -> str:
    """A journal name beside the database that is not a plain file: SQLite would follow or open it."""
    for base in dict.fromkeys([db.absolute(), Path(os.path.realpath(db))]):
        for suffix in ("-journal", "-wal", "-shm"):
            side = base.with_name(base.name + suffix)
            try:
                mode = os.lstat(side).st_mode
            except OSError:
                continue
            if not stat.S_ISREG(mode):
                kind = mode_kind(mode)
                return (
                    f"{side} is {kind}; SQLite keeps the journal of {db.name} under that name and would follow or "
                    "open it: remove it (SQLite only ever writes a plain file there)"
                )
    return ""


def _path_problem(db: Path, create: bool) -> str:
    """Why `db` cannot be a cohort database file, judged from os.stat alone ("" when it can)."""
    try:
        info = os.stat(db)
    except FileNotFoundError:
        if db.is_symlink():
            return f"{db} is a symbolic link to {os.readlink(db)}, which does not exist: give --db the database file itself"
        if not create:
            return f"no cohort database at {db}: create it with `lcmsquant cohort add RESULTS_DIR --db {db}`"
        folder = db.absolute().parent
        if not folder.exists():
            return f"folder {folder} does not exist: create it first, or give --db a file in an existing folder"
        if not folder.is_dir():
            return f"{folder} is not a folder: give --db a file in an existing folder"
        return ""
    except NotADirectoryError:
        return f"{db}: a part of the path is a file, not a folder: give --db a file in an existing folder"
    except OSError as err:
        return f"{db} cannot be looked at ({err.strerror}): check the path and its permissions"
    if stat.S_ISREG(info.st_mode):
        return ""
    link = f" (a symbolic link to {os.readlink(db)})" if db.is_symlink() else ""
    return (
        f"{db}{link} is {mode_kind(info.st_mode)}, not a cohort database file, and was left untouched: {USE_A_COHORT}"
    )


def _head(db: Path) -> bytes:
    """The first 100 bytes (the SQLite header) of a regular file, without blocking on a FIFO put in its place."""
    try:
        fd = os.open(db, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise CohortError(db, [f"{db} cannot be read ({err.strerror}): check its permissions"]) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CohortError(
                db, [f"{db} was replaced by something that is not a regular file while it was checked: {USE_A_COHORT}"]
            )
        return os.read(fd, 100)
    finally:
        os.close(fd)


def _schema_version(db: Path, version: int, tables: set[str]) -> int:
    if not tables:
        return 0
    if COHORT_TABLES <= tables and version > SCHEMA_VERSION:
        raise CohortError(
            db,
            [
                f"{db} was made by a newer lcmsquant (cohort schema {version}; lcmsquant {__version__} "
                f"reads up to {SCHEMA_VERSION}): use that version"
            ],
        )
    wanted = {1: COHORT_TABLES, 2: COHORT_TABLES | LOG_TABLES}.get(version)
    if wanted is None or not wanted <= tables:
        shown = ", ".join(sorted(tables)[:8]) + (", ..." if len(tables) > 8 else "")
        raise CohortError(
            db, [f"{db} is not an lcmsquant cohort database (it holds the tables {shown}): {USE_A_COHORT}"]
        )
    return version


def add_runs(
    db: Path | str,
    results_dirs: Sequence[Path | str],
    method_path: Path | str | None = None,
    command: Sequence[str] = (),
) -> list[Addition]:
    """Add (or replace) processed runs in the cohort database, all or none, each logged.

    Refused, with both sides named: a run processed with another method file than the cohort's,
    and a calibrator level whose nominal concentration differs from the cohort's; a database
    check_database refuses is refused before anything is read or written. A schema 1 database
    (no log) gets the log first, with one "already held" entry per run it holds.
    """
    db = Path(db)
    check_database(db, create=True)
    runs = [read_cohort_run(d, method_path) for d in results_dirs]
    check_database(db, create=True)  # again: reading the runs took a while
    created = not db.exists()
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")  # one writer at a time: each log entry follows the last one
        who = _who(command)
        _prepare(con, who)
        additions = [_add(con, run, who) for run in runs]
        con.execute("COMMIT")
    except BaseException as err:
        con.close()  # rolls back
        if created:
            db.unlink(missing_ok=True)
        if isinstance(err, sqlite3.Error):
            raise CohortError(db, [f"{db} could not be written: SQLite says {err}; nothing was added"]) from None
        raise
    con.close()
    return additions


def _prepare(con: sqlite3.Connection, who: dict) -> None:
    """A new database gets every table and the log; a schema 1 database the log."""
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version == 0:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                con.execute(statement)
    for statement in LOG_SCHEMA:
        con.execute(statement)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    for run_id, batch, results_dir, results_sha in con.execute(
        "SELECT run_id, batch, results_dir, results_sha256 FROM runs ORDER BY seq"
    ).fetchall():
        rows = _run_rows(con, run_id)
        _append_log(
            con,
            {
                **who,
                "action": "already held",
                "run_id": run_id,
                "batch": batch,
                "results_dir": results_dir,
                "run_json_sha256": "",
                "tables_sha256": json.dumps({"results.csv": results_sha}),
                "analyses_added": len(rows["analyses"]),
                "analyses_replaced": 0,
                "content_sha256": _digest(rows),
                "replaced_content_sha256": "",
            },
            {},
        )


def _who(command: Sequence[str]) -> dict:
    """When, by whom and with which command: the log's record of one `cohort add`."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return {
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "os_user": user,
        "host": socket.gethostname(),
        "command": json.dumps(list(command)),
        "lcmsquant_version": __version__,
    }


def _add(con: sqlite3.Connection, run: CohortRun, who: dict) -> Addition:
    _check_conflicts(con, run)
    previous = con.execute("SELECT seq FROM runs WHERE run_id = ?", (run.run_id,)).fetchone()
    replaced = _run_rows(con, run.run_id) if previous else {}
    for table in DATA_TABLES:
        con.execute(f"DELETE FROM {table} WHERE run_id = ?", (run.run_id,))
    seq = previous[0] if previous else (con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchone()[0])
    m = run.method
    con.execute(
        "INSERT OR IGNORE INTO methods VALUES (?, ?, ?, ?, ?, ?, ?)",
        (m.sha256, m.name, m.version, m.file, m.units, json.dumps(list(m.analytes)), json.dumps(asdict(m.settings))),
    )
    con.execute(
        "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run.run_id,
            seq,
            run.batch,
            run.results_dir,
            run.results_sha256,
            m.sha256,
            run.acquired,
            int(run.run_accepted),
            run.lcmsquant_version,
        ),
    )
    _insert(con, "calibrator_sets", run.run_id, run.calibrator_sets)
    _insert(con, "nominals", run.run_id, run.nominals)
    _insert(con, "verdicts", run.run_id, run.verdicts)
    _insert(con, "analyses", run.run_id, run.analyses)
    action = "replaced" if previous else "added"
    con.execute(
        "INSERT INTO additions (added_at, run_id, action, results_dir, command) VALUES (?, ?, ?, ?, ?)",
        (who["recorded_at"], run.run_id, action, run.results_dir, who["command"]),
    )
    number = _append_log(
        con,
        {
            **who,
            "action": action,
            "run_id": run.run_id,
            "batch": run.batch,
            "results_dir": run.results_dir,
            "run_json_sha256": run.run_json_sha256,
            "tables_sha256": json.dumps(run.tables_sha256, sort_keys=True),
            "analyses_added": len(run.analyses),
            "analyses_replaced": len(replaced.get("analyses", ())),
            "content_sha256": _digest(_run_rows(con, run.run_id)),
            "replaced_content_sha256": _digest(replaced) if replaced else "",
        },
        replaced,
    )
    return Addition(
        run.run_id,
        run.batch,
        action,
        len(run.analyses),
        int(run.analyses["reportable"].sum()),
        len(replaced.get("analyses", ())),
        number,
    )


def _insert(con: sqlite3.Connection, table: str, run_id: str, rows: pd.DataFrame) -> None:
    if rows.empty:
        return
    values = rows.astype(object).where(rows.notna(), None)
    records = [(run_id, *(_plain(v) for v in r)) for r in values.itertuples(index=False, name=None)]
    marks = ", ".join("?" * (len(rows.columns) + 1))
    con.executemany(f"INSERT INTO {table} (run_id, {', '.join(rows.columns)}) VALUES ({marks})", records)


def _plain(value):
    if isinstance(value, (np.bool_, bool)):
        return int(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _check_conflicts(con: sqlite3.Connection, run: CohortRun) -> None:
    problems = []
    m = run.method
    others = con.execute(
        "SELECT m.name, m.version, m.file, m.sha256, r.batch FROM runs r JOIN methods m ON m.sha256 = r.method_sha256 "
        "WHERE r.run_id != ? AND r.method_sha256 != ? ORDER BY r.seq LIMIT 1",
        (run.run_id, m.sha256),
    ).fetchone()
    if others:
        name, version, file, sha, batch = others
        problems.append(
            f"run '{run.batch}' was processed with method '{m.name}' version {m.version} ({m.file}, sha256 {m.sha256[:12]}), "
            f"the cohort with method '{name}' version {version} ({file}, sha256 {sha[:12]}, e.g. run '{batch}'): "
            "a cohort holds the results of one method file; reprocess the run with the cohort's method or start another cohort"
        )
    cohort_nominals = pd.read_sql_query(
        "SELECT n.calibrator_set, n.level, n.analyte, n.nominal, r.batch, c.file, c.sha256 FROM nominals n "
        "JOIN runs r ON r.run_id = n.run_id LEFT JOIN calibrator_sets c ON c.run_id = n.run_id AND c.name = n.calibrator_set "
        "WHERE n.run_id != ? ORDER BY r.seq",
        con,
        params=(run.run_id,),
    ).drop_duplicates(["calibrator_set", "level", "analyte", "nominal"])
    merged = run.nominals.merge(cohort_nominals, on=["calibrator_set", "level", "analyte"], suffixes=("", "_cohort"))
    differ = merged[
        ~np.isclose(merged["nominal"].astype(float), merged["nominal_cohort"].astype(float), rtol=1e-9, atol=0)
    ]
    own_files = dict(zip(run.calibrator_sets["name"], zip(run.calibrator_sets["file"], run.calibrator_sets["sha256"])))
    for _, d in differ.head(5).iterrows():
        own_file, own_sha = own_files.get(d["calibrator_set"], ("?", ""))
        problems.append(
            f"calibrator set '{d['calibrator_set']}' {d['level']} {d['analyte']}: nominal {d['nominal']:g} in run "
            f"'{run.batch}' ({own_file}, sha256 {own_sha[:12]}) but {d['nominal_cohort']:g} in the cohort's run "
            f"'{d['batch']}' ({d['file']}, sha256 {(d['sha256'] or '')[:12]}): results made on other calibrators "
            "cannot be pooled"
        )
    if len(differ) > 5:
        problems.append(f"... and {len(differ) - 5} more calibrator nominal(s) differ")
    if problems:
        raise CohortError(run.results_dir, problems)


def cohort_method(con: sqlite3.Connection) -> MethodRecord:
    """The cohort's method (one per database), read from the database."""
    row = con.execute(
        "SELECT name, version, file, sha256, units, analytes, settings FROM methods "
        "WHERE sha256 IN (SELECT method_sha256 FROM runs) LIMIT 1"
    ).fetchone()
    if row is None:
        raise CohortError("cohort", ["the cohort holds no run yet: add runs with `lcmsquant cohort add`"])
    name, version, file, sha, units, analytes, settings = row
    raw = json.loads(settings)
    raw["trough_window_h"] = tuple(raw["trough_window_h"])
    raw["sdtm_testcd"] = tuple(tuple(p) for p in raw["sdtm_testcd"])
    raw["sdtm_test"] = tuple(tuple(p) for p in raw["sdtm_test"])
    return MethodRecord(name, version, file, sha, units, tuple(json.loads(analytes)), CohortSettings(**raw))


def load_analyses(con: sqlite3.Connection) -> pd.DataFrame:
    """Every analysis of every study sample, in analysis order (run start, then injection).

    Runs whose start is unknown (mzML files not beside the results) come after the others, in the
    order they were first added.
    """
    table = pd.read_sql_query(
        "SELECT a.*, r.batch, r.acquired, r.seq FROM analyses a JOIN runs r ON r.run_id = a.run_id "
        "ORDER BY r.acquired = '', r.acquired, r.seq, a.injection",
        con,
    )
    table["reportable"] = table["reportable"].astype(bool)
    for column in ("dilution_factor", "concentration", "curve_lloq", "curve_uloq", "lloq", "uloq", "hours_since_dose"):
        table[column] = pd.to_numeric(table[column]).astype(float)  # NULL comes back as None
    return table


def load_runs(con: sqlite3.Connection) -> pd.DataFrame:
    """The runs table of the cohort database: one row per run added."""
    return pd.read_sql_query(
        "SELECT r.run_id, r.batch, r.acquired, r.run_accepted, r.results_sha256, m.name AS method, m.version "
        "AS method_version, m.sha256 AS method_sha256 FROM runs r JOIN methods m ON m.sha256 = r.method_sha256 "
        "ORDER BY r.acquired = '', r.acquired, r.seq",
        con,
    )


# ---------------------------------------------------------------------------------------------
# The log of additions (edge)


def _run_rows(con: sqlite3.Connection, run_id: str) -> dict[str, list[dict]]:
    """Every row the database holds for one run, table by table, in a fixed order."""
    rows = {}
    for table in DATA_TABLES:
        cursor = con.execute(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY {ROW_ORDER[table]}", (run_id,))
        names = [d[0] for d in cursor.description]
        rows[table] = [dict(zip(names, r)) for r in cursor]
    return rows


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr).encode()).hexdigest()


def _append_log(con: sqlite3.Connection, entry: dict, replaced: dict[str, list[dict]]) -> int:
    """Append one entry, chained to the last by its SHA-256, and keep the rows it replaced."""
    last = con.execute("SELECT number, entry_sha256 FROM log ORDER BY number DESC LIMIT 1").fetchone()
    number, previous = (last[0] + 1, last[1]) if last else (1, FIRST_PREVIOUS)
    entry = {**entry, "number": number, "previous_sha256": previous}
    entry["entry_sha256"] = _digest(entry)
    con.execute(f"INSERT INTO log ({', '.join(entry)}) VALUES ({', '.join('?' * len(entry))})", tuple(entry.values()))
    con.executemany(
        "INSERT INTO history (log_number, table_name, row) VALUES (?, ?, ?)",
        [(number, table, json.dumps(row, sort_keys=True)) for table, rows in replaced.items() for row in rows],
    )
    return number


@dataclass(frozen=True)
class LogCheck:
    """The cohort's log and what verify_log found: `problems` is empty when the chain is intact
    and every run's rows are those its last entry records."""

    db: Path
    entries: pd.DataFrame
    problems: tuple[str, ...]
    note: str = ""  # e.g. a database made before the log existed

    @property
    def intact(self) -> bool:
        """Whether the log and the history agree with every hash they record."""
        return not self.problems


def verify_log(db: Path | str) -> LogCheck:
    """Check the log of a cohort database: each entry's SHA-256 over its content and the previous
    entry's SHA-256, the rows kept for each replacement, the append-only triggers, and that each
    run's rows are as its last entry records them.

    An intact log shows that nothing was edited casually or by accident since it was written;
    anyone who can write the file can rebuild a consistent one (docs/security.md).
    """
    db = Path(db)
    if check_database(db) == 1:
        return LogCheck(
            db,
            pd.DataFrame(),
            (),
            f"{db} has no log: it was made by an earlier lcmsquant; "
            f"the next `lcmsquant cohort add ... --db {db}` starts one",
        )
    with closing(connect(db)) as con:
        try:
            cursor = con.execute(f"SELECT {', '.join(LOG_COLUMNS)} FROM log ORDER BY number")
            entries = [dict(zip(LOG_COLUMNS, r)) for r in cursor]
            history: dict[int, list[tuple[str, str]]] = {}
            for number, table, row in con.execute("SELECT log_number, table_name, row FROM history ORDER BY rowid"):
                history.setdefault(number, []).append((table, row))
            triggers = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
            current = {r[0]: _digest(_run_rows(con, r[0])) for r in con.execute("SELECT run_id FROM runs").fetchall()}
        except sqlite3.Error as err:
            return LogCheck(
                db,
                pd.DataFrame(columns=LOG_COLUMNS),
                (f"the log cannot be read (SQLite says {err}): its tables were altered",),
            )
    problems = [
        *_chain_problems(entries),
        *_history_problems(entries, history),
        *(
            f"the trigger {t} that keeps the log append-only is missing: it was removed"
            for t in sorted(LOG_TRIGGERS - triggers)
        ),
        *_data_problems(entries, current),
    ]
    return LogCheck(db, pd.DataFrame(entries, columns=LOG_COLUMNS), tuple(problems))


def _chain_problems(entries: list[dict]) -> list[str]:
    problems = []
    previous = FIRST_PREVIOUS
    for position, entry in enumerate(entries, start=1):
        number = entry["number"]
        if number != position:
            problems.append(
                f"log entry {number} comes where entry {position} should: entries were removed or renumbered"
            )
        if entry["previous_sha256"] != previous:
            problems.append(
                f"log entry {number} does not follow the entry before it (previous_sha256 differs): "
                "an entry was removed, inserted or rewritten"
            )
        if _digest({k: v for k, v in entry.items() if k != "entry_sha256"}) != entry["entry_sha256"]:
            problems.append(
                f"log entry {number} ({entry['action']} run '{entry['batch']}') does not match its SHA-256: "
                "it was edited after it was written"
            )
        previous = entry["entry_sha256"]
    return problems


def _history_problems(entries: list[dict], history: dict[int, list[tuple[str, str]]]) -> list[str]:
    problems = []
    kept = dict(history)
    for entry in entries:
        rows = kept.pop(entry["number"], [])
        if not entry["replaced_content_sha256"]:
            if rows:
                problems.append(f"the history holds rows for log entry {entry['number']}, which replaced nothing")
            continue
        replaced: dict[str, list] | None = {t: [] for t in DATA_TABLES}
        try:
            for table, row in rows:
                replaced.setdefault(table, []).append(json.loads(row))  # type: ignore[union-attr]
        except (TypeError, ValueError):
            replaced = None
        if replaced is None or _digest(replaced) != entry["replaced_content_sha256"]:
            problems.append(
                f"the rows kept for log entry {entry['number']} ({entry['action']} run '{entry['batch']}') "
                "are not those it replaced: the history was edited"
            )
    problems += [f"the history holds rows for log entry {n}, which does not exist" for n in kept]
    return problems


def _data_problems(entries: list[dict], current: dict[str, str]) -> list[str]:
    last = {e["run_id"]: e for e in entries}
    problems = []
    for run_id, digest in current.items():
        entry = last.get(run_id)
        if entry is None:
            problems.append(f"run {run_id[:12]} is in the database but not in the log: it was added without lcmsquant")
        elif entry["content_sha256"] != digest:
            problems.append(
                f"run '{entry['batch']}' ({run_id[:12]}): its rows are not those log entry {entry['number']} "
                "recorded: they were edited in the database after they were added"
            )
    problems += [
        f"run '{e['batch']}' ({run_id[:12]}) of log entry {e['number']} is missing from the database: its rows were deleted"
        for run_id, e in last.items()
        if run_id not in current
    ]
    return problems


def replaced_analyses(db: Path | str) -> pd.DataFrame:
    """Every analysis a later `cohort add` replaced, as it was, with the log entry that replaced it
    (log_number, replaced_at, batch and the run.json SHA-256 of the replacement)."""
    db = Path(db)
    if check_database(db) < SCHEMA_VERSION:
        return pd.DataFrame()
    with closing(connect(db)) as con:
        kept = con.execute(
            "SELECT h.log_number, l.recorded_at, l.batch, l.run_json_sha256, h.row FROM history h "
            "JOIN log l ON l.number = h.log_number WHERE h.table_name = 'analyses' ORDER BY h.rowid"
        ).fetchall()
    return pd.DataFrame(
        [
            {
                "log_number": n,
                "replaced_at": at,
                "replaced_by_batch": batch,
                "replaced_by_run_json_sha256": run_json,
                **json.loads(row),
            }
            for n, at, batch, run_json, row in kept
        ]
    )


# ---------------------------------------------------------------------------------------------
# The reported value of each study sample (pure)


REPORTED_COLUMNS = (
    "subject_id",
    "visit",
    "timepoint",
    "matrix",
    "analyte",
    "sample_id",
    "status",
    "concentration",
    "lloq",
    "uloq",
    "flags",
    "hours_since_dose",
    "trough",
    "last_dose_time",
    "sampling_time",
    "batch",
    "run_id",
    "injection",
    "file",
    "file_sha256",
    "n_analyses",
    "analyses",
)


def reported_results(
    analyses: pd.DataFrame, settings: CohortSettings, analyte_order: Sequence[str] = ()
) -> pd.DataFrame:
    """One row per study sample and analyte: the analysis the method's rule reports.

    A valid analysis gave a value or a BLQ in an accepted run without a flag that casts doubt
    on it. `first_valid` reports the first valid analysis (a repeat replaces only an original
    that was not valid: ALQ, IS anomaly, ...); `repeat` reports the last valid one. Without a
    valid analysis the status is the last analysis' outcome (ALQ, not_reportable, rejected) and
    no concentration is reported. `analyses` lists every analysis (batch:injection outcome).
    """
    if analyses.empty:
        return pd.DataFrame(columns=REPORTED_COLUMNS)
    table = analyses.reset_index(drop=True).copy()
    table["order"] = np.arange(len(table))
    has_subject = table["subject_id"] != ""
    table["sample_key"] = np.where(
        has_subject,
        table["subject_id"] + "|" + table["visit"] + "|" + table["timepoint"] + "|" + table["matrix"],
        "id|" + table["sample_id"],
    )
    low, high = settings.trough_window_h
    rows = []
    for (_, _), group in table.groupby(["sample_key", "analyte"], sort=False):
        valid = group[group["outcome"].isin(VALID_OUTCOMES)]
        if valid.empty:
            chosen = group.iloc[-1]
        else:
            chosen = valid.iloc[0] if settings.reanalysis == "first_valid" else valid.iloc[-1]
        status = chosen["outcome"]
        hours = chosen["hours_since_dose"]
        rows.append(
            {
                **{c: chosen[c] for c in ("subject_id", "visit", "timepoint", "matrix", "analyte", "sample_id")},
                "status": status,
                "concentration": chosen["concentration"] if status == "value" else np.nan,
                "lloq": chosen["lloq"],
                "uloq": chosen["uloq"],
                "flags": chosen["flags"],
                "hours_since_dose": hours,
                "trough": "" if pd.isna(hours) else ("in window" if low <= hours <= high else "OUTSIDE_TROUGH"),
                "last_dose_time": chosen["last_dose_time"],
                "sampling_time": chosen["sampling_time"],
                **{c: chosen[c] for c in ("batch", "run_id", "injection", "file", "file_sha256")},
                "n_analyses": len(group),
                "analyses": "; ".join(
                    f"{b}:{int(i)} {o}{f' ({f})' if f and o != 'value' else ''}{'*' if k == chosen['order'] else ''}"
                    for b, i, o, f, k in zip(
                        group["batch"], group["injection"], group["outcome"], group["flags"], group["order"]
                    )
                ),
            }
        )
    out = pd.DataFrame(rows, columns=REPORTED_COLUMNS)
    return _sorted(out, analyte_order)


MATRIX_ORDER = (Matrix.SERUM, Matrix.PLASMA, Matrix.MARROW, Matrix.CSF)


def _sorted(
    table: pd.DataFrame, analyte_order: Sequence[str], keys: Sequence[str] = ("subject_id", "visit", "timepoint")
) -> pd.DataFrame:
    """Subject, visit, timepoint, then matrix (serum, plasma, marrow, csf) and the method's analyte order."""
    analytes = {a: i for i, a in enumerate(analyte_order)}
    matrices = {m: i for i, m in enumerate(MATRIX_ORDER)}
    ranked = table.assign(
        _analyte=table["analyte"].map(lambda a: analytes.get(a, len(analytes))),
        _matrix=table["matrix"].map(lambda m: matrices.get(m, len(matrices))) if "matrix" in table else 0,
    )
    columns = [*keys, *(["_matrix", "matrix"] if "matrix" in table else []), "_analyte", "analyte"]
    return ranked.sort_values(columns, kind="stable").drop(columns=["_analyte", "_matrix"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Pairing and penetration ratios (pure)


def penetration(reported: pd.DataFrame, settings: CohortSettings, analyte_order: Sequence[str] = ()) -> pd.DataFrame:
    """One row per subject, visit, timepoint and analyte: the paired concentrations and ratios.

    The reference is serum, or plasma when the draw has no serum (`reference_matrix` says which).
    With `blq_ratio_policy = "censor"` a ratio with a BLQ side is not a number: `<` (CSF BLQ) or
    `>` (reference BLQ) its bound, `censored` true; 0 is never substituted. `half_lloq` counts a
    BLQ value as LLOQ / 2 and says so in the note. `trough` lists the matrices drawn outside the
    method's trough window.
    """
    paired = reported[reported["subject_id"] != ""]
    rows = []
    for (subject, visit, timepoint, analyte), group in paired.groupby(
        ["subject_id", "visit", "timepoint", "analyte"], sort=False
    ):
        by_matrix = {row["matrix"]: row for _, row in group.iterrows()}
        reference_matrix = next((m for m in REFERENCE_MATRICES if m in by_matrix), "")
        if not reference_matrix and not any(t in by_matrix for t in TARGET_MATRICES):
            continue
        ref = by_matrix.get(reference_matrix)
        row = {
            "subject_id": subject,
            "visit": visit,
            "timepoint": timepoint,
            "analyte": analyte,
            "reference_matrix": reference_matrix,
            **_side("reference", ref),
        }
        for target in TARGET_MATRICES:
            side = by_matrix.get(target)
            row.update(_side(target, side))
            row.update(_ratio(target, side, ref, reference_matrix, settings.blq_ratio_policy))
        row["hours_since_dose"] = ref["hours_since_dose"] if ref is not None else np.nan
        outside = [
            f"{m} {r['hours_since_dose']:.1f} h" for m, r in by_matrix.items() if r["trough"] == "OUTSIDE_TROUGH"
        ]
        judged = [r["trough"] for r in by_matrix.values() if r["trough"]]
        # as cohort_results says it per draw: "in window", the draws outside, or "" (no dose times)
        row["trough"] = f"OUTSIDE_TROUGH: {', '.join(outside)}" if outside else ("in window" if judged else "")
        rows.append(row)
    columns = [
        "subject_id",
        "visit",
        "timepoint",
        "analyte",
        "reference_matrix",
        *(f"reference_{c}" for c in SIDE_COLUMNS),
        *(
            c
            for t in TARGET_MATRICES
            for c in (*(f"{t}_{s}" for s in SIDE_COLUMNS), *(f"{t}_{r}" for r in RATIO_COLUMNS))
        ),
        "hours_since_dose",
        "trough",
    ]
    table = pd.DataFrame(rows, columns=columns)
    return _sorted(table, analyte_order, keys=("subject_id", "visit", "timepoint"))


SIDE_COLUMNS = ("sample_id", "status", "concentration", "lloq", "flags")
RATIO_COLUMNS = ("serum_ratio", "serum_ratio_text", "censored", "serum_ratio_bound", "note")


def _side(prefix: str, row: pd.Series | None) -> dict:
    if row is None:
        return {f"{prefix}_{c}": (np.nan if c in ("concentration", "lloq") else "") for c in SIDE_COLUMNS}
    return {f"{prefix}_{c}": row[c] for c in SIDE_COLUMNS}


def _ratio(target: str, side: pd.Series | None, ref: pd.Series | None, ref_matrix: str, policy: str) -> dict:
    def out(ratio=np.nan, text="", censored=False, note="", bound=np.nan):
        return {
            f"{target}_serum_ratio": ratio,
            f"{target}_serum_ratio_text": text,
            f"{target}_censored": censored,
            f"{target}_serum_ratio_bound": bound,
            f"{target}_note": note,
        }

    if side is None:
        return out(note=f"no {target} sample")
    if ref is None:
        return out(note="no serum or plasma sample")
    problems = [
        f"{m} {r['status']}" for m, r in ((target, side), (ref_matrix, ref)) if r["status"] not in VALID_OUTCOMES
    ]
    if problems:
        return out(note="; ".join(problems) + ": no ratio")
    t_blq, r_blq = side["status"] == Flag.BLQ, ref["status"] == Flag.BLQ
    if policy == "half_lloq" and (t_blq or r_blq):
        t = side["lloq"] / 2 if t_blq else side["concentration"]
        r = ref["lloq"] / 2 if r_blq else ref["concentration"]
        which = " and ".join(m for m, b in ((target, t_blq), (ref_matrix, r_blq)) if b)
        return out(t / r, _number(t / r), False, f"{which} BLQ counted as LLOQ/2 (method policy half_lloq)")
    if t_blq and r_blq:
        return out(text="BLQ/BLQ", censored=True, note=f"{target} and {ref_matrix} BLQ: not estimable")
    if t_blq:
        bound = side["lloq"] / ref["concentration"]
        return out(
            text=f"<{_number(bound)}", censored=True, note=f"{target} BLQ: ratio below LLOQ/{ref_matrix}", bound=bound
        )
    if r_blq:
        bound = side["concentration"] / ref["lloq"]
        return out(
            text=f">{_number(bound)}", censored=True, note=f"{ref_matrix} BLQ: ratio above {target}/LLOQ", bound=bound
        )
    ratio = side["concentration"] / ref["concentration"]
    return out(ratio, _number(ratio))


def _number(value: float, digits: int = 4) -> str:
    return np.format_float_positional(value, precision=digits, unique=True, fractional=False, trim="-")


SUMMARY_COLUMNS = (
    "analyte",
    "ratio",
    "n_paired",
    "n_censored",
    "n_quantified",
    "n_plasma_reference",
    "n_outside_trough",
    "median",
    "q1",
    "q3",
    "min",
    "max",
    "geometric_mean",
    "gm_ci95_low",
    "gm_ci95_high",
    "blq_ratio_policy",
)


def penetration_summary(
    pairs: pd.DataFrame, settings: CohortSettings, analyte_order: Sequence[str] = ()
) -> pd.DataFrame:
    """Per analyte and ratio: pairs with both results valid, how many are censored, and the median,
    IQR (25th-75th percentile), range and geometric mean with its 95 % t-interval of the others."""
    rows = []
    analytes = list(dict.fromkeys([*[a for a in analyte_order if a in set(pairs["analyte"])], *pairs["analyte"]]))
    for analyte in analytes:
        sub = pairs[pairs["analyte"] == analyte]
        for target in TARGET_MATRICES:
            has_pair = sub[f"{target}_serum_ratio"].notna() | sub[f"{target}_censored"].astype(bool)
            paired = sub[has_pair]
            values = paired[f"{target}_serum_ratio"].dropna().to_numpy(dtype=float)
            row = {
                "analyte": analyte,
                "ratio": RATIO_NAMES[target],
                "n_paired": len(paired),
                "n_censored": int(paired[f"{target}_censored"].astype(bool).sum()),
                "n_quantified": len(values),
                "n_plasma_reference": int((paired["reference_matrix"] == Matrix.PLASMA).sum()),
                "n_outside_trough": int(paired["trough"].str.startswith("OUTSIDE_TROUGH").sum()),
                **dict.fromkeys(SUMMARY_COLUMNS[7:15], np.nan),
                "blq_ratio_policy": settings.blq_ratio_policy,
            }
            if len(values):
                q1, median, q3 = np.percentile(values, [25, 50, 75])
                logs = np.log(values)
                row.update(
                    median=median,
                    q1=q1,
                    q3=q3,
                    min=values.min(),
                    max=values.max(),
                    geometric_mean=float(np.exp(logs.mean())),
                )
                if len(values) >= 2:
                    half = stats.t.ppf(0.975, len(values) - 1) * logs.std(ddof=1) / np.sqrt(len(values))
                    row.update(
                        gm_ci95_low=float(np.exp(logs.mean() - half)), gm_ci95_high=float(np.exp(logs.mean() + half))
                    )
            rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Files (edge)


def cohort_tables(db: Path | str) -> tuple[MethodRecord, pd.DataFrame, pd.DataFrame]:
    """The cohort's method, every analysis, and the reported value of every study sample."""
    with closing(connect(db)) as con:
        method = cohort_method(con)
        analyses = load_analyses(con)
    return method, analyses, reported_results(analyses, method.settings, method.analytes)


def write_penetration(db: Path | str, out_dir: Path | str) -> tuple[list[Path], pd.DataFrame]:
    """penetration.csv, penetration_summary.csv and penetration.png; returns them and the summary."""
    method, _, reported = cohort_tables(db)
    pairs = penetration(reported, method.settings, method.analytes)
    summary = penetration_summary(pairs, method.settings, method.analytes)
    out_dir = Path(out_dir)
    written = [
        write_cohort_table(_rounded(pairs), out_dir / "penetration.csv"),
        write_cohort_table(_rounded(summary), out_dir / "penetration_summary.csv"),
        atomic_write(out_dir / "penetration.png", penetration_plot(pairs, summary, method.units)),
    ]
    return written, summary


def write_cohort_table(table: pd.DataFrame, path: Path) -> Path:
    """Write a cohort table as spreadsheet-safe CSV, atomically."""
    return atomic_write(path, csv_text(table))


def _rounded(table: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Floats to `digits` significant digits (hours to 0.01), so that files read well and compare."""
    table = table.copy()
    for column in table.columns:
        if column.startswith("hours"):
            table[column] = pd.to_numeric(table[column]).round(2)
        elif table[column].dtype.kind == "f":
            table[column] = table[column].map(lambda v: float(f"{v:.{digits}g}") if np.isfinite(v) else v)
    return table


def penetration_plot(pairs: pd.DataFrame, summary: pd.DataFrame, units: str = "ng/mL") -> bytes:
    """PNG: per analyte, each subject's paired concentrations (top) and the ratios (bottom).

    BLQ values are drawn open at their LLOQ, censored ratios as open triangles at their bound.
    """
    import matplotlib

    matplotlib.use("Agg")
    import io

    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D

    analytes = list(dict.fromkeys(pairs["analyte"])) or ["(none)"]
    subjects = sorted(set(pairs["subject_id"]))
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(subjects)}
    fig, axes = plt.subplots(2, len(analytes), figsize=(4.2 * len(analytes), 7.5), squeeze=False)
    for col, analyte in enumerate(analytes):
        sub = pairs[pairs["analyte"] == analyte]
        top, bottom = axes[0, col], axes[1, col]
        for _, p in sub.iterrows():
            xs, ys, blq = [], [], []
            for x, side in enumerate(("reference", "marrow", "csf")):
                status = p[f"{side}_status"]
                if status in ("value", Flag.BLQ):
                    xs.append(x)
                    ys.append(p[f"{side}_concentration"] if status == "value" else p[f"{side}_lloq"])
                    blq.append(status == Flag.BLQ)
            colour = colours[p["subject_id"]]
            top.plot(xs, ys, "-", color=colour, alpha=0.6, lw=1)
            for x, y, b in zip(xs, ys, blq):
                top.plot([x], [y], "v" if b else "o", color=colour, mfc="none" if b else colour, ms=6)
        top.set_xticks([0, 1, 2], ["serum/plasma", "marrow", "CSF"])
        top.set_yscale("log")
        top.set_xlim(-0.4, 2.4)
        top.set_title(analyte)
        top.set_ylabel(f"concentration ({units})" if col == 0 else "")
        labels = []
        for x, target in enumerate(TARGET_MATRICES):
            for i, (_, p) in enumerate(sub.iterrows()):
                jitter = x + 0.25 * ((i % 7) / 6 - 0.5)
                colour = colours[p["subject_id"]]
                value, bound = p[f"{target}_serum_ratio"], p[f"{target}_serum_ratio_bound"]
                if pd.notna(value):
                    bottom.plot([jitter], [value], "o", color=colour, ms=6)
                elif pd.notna(bound):
                    below = p[f"{target}_serum_ratio_text"].startswith("<")
                    bottom.plot([jitter], [bound], "v" if below else "^", color=colour, mfc="none", ms=7)
            stats_row = summary[(summary["analyte"] == analyte) & (summary["ratio"] == RATIO_NAMES[target])]
            label = RATIO_NAMES[target]
            if not stats_row.empty and pd.notna(stats_row["median"].iloc[0]):
                s = stats_row.iloc[0]
                bottom.plot([x - 0.22, x + 0.22], [s["median"]] * 2, "-", color="black", lw=2)
                label += f"\nmedian {_number(s['median'], 3)}\nn={s['n_quantified']}, {s['n_censored']} censored"
            labels.append(label)
        bottom.set_xticks([0, 1], labels)
        bottom.set_xlim(-0.5, 1.5)
        bottom.set_yscale("log")
        bottom.set_ylabel("ratio" if col == 0 else "")
    handles = [Line2D([], [], marker="o", color=colours[s], ls="", label=s) for s in subjects]
    handles += [Line2D([], [], marker="v", color="grey", mfc="none", ls="", label="BLQ (at LLOQ) / censored ratio")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle("Penetration: paired trough concentrations and ratios to serum (plasma where no serum)")
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.2, hspace=0.3, wspace=0.25)  # tight_layout costs 2 s
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def describe(additions: Iterable[Addition]) -> list[str]:
    """One line per addition, as `cohort add` prints them."""
    return [
        f"{a.action} run '{a.batch}' ({a.run_id[:12]}): {a.analyses} results, {a.reportable} reportable"
        + (
            f"; the {a.replaced} results it replaced are kept in the history (log entry {a.log_entry})"
            if a.replaced
            else ""
        )
        for a in additions
    ]
