"""The cohort: results of many runs in one SQLite database, the value reported for each study
sample, paired trough draws across matrices and their penetration ratios.

A run is identified by its raw data (the SHA-256 of its injection files), so adding a run again,
even reprocessed, replaces it. The cohort holds one method: a run processed with another method
file, or whose calibrators have other nominal concentrations, is refused. Every analysis of a
study sample is kept (original and repeats); which one is reported follows the method's
[cohort] `reanalysis` rule.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from lcmsquant.files import InputError, atomic_write, csv_text, sha256
from lcmsquant.method import (
    CALIBRATOR_LEVEL,
    CohortSettings,
    MethodError,
    default_method_path,
    load_method,
)
from lcmsquant.results import read_results

SCHEMA_VERSION = 1
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

# Outcome of one analysis of a study sample. "value" and "BLQ" are valid results.
VALID_OUTCOMES = ("value", "BLQ")
# A BLQ is not a valid result when one of these says the measurement itself is in doubt.
BLQ_INVALIDATING = ("REJECTED", "NO_DATA", "NO_IS", "IS_RESPONSE", "DILUTION_QC")
REFERENCE_MATRICES = ("serum", "plasma")  # serum first; plasma stands in when there is no serum
TARGET_MATRICES = ("csf", "marrow")
RATIO_NAMES = {"csf": "CSF:serum", "marrow": "marrow:serum"}
START_TIME = re.compile(rb'<run\b[^>]*\bstartTimeStamp="([^"]+)"')


class CohortError(InputError):
    """A results folder or cohort database that cannot be used; `problems` lists every reason."""

    kind = "cohort"


@dataclass(frozen=True)
class MethodRecord:
    name: str
    version: str
    file: str
    sha256: str
    units: str
    analytes: tuple[str, ...]
    settings: CohortSettings


@dataclass(frozen=True)
class RunRecord:
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


@dataclass(frozen=True)
class Addition:
    run_id: str
    batch: str
    action: str  # "added" or "replaced"
    analyses: int
    reportable: int


# ---------------------------------------------------------------------------------------------
# Reading a results folder (edge)


def read_run(results_dir: Path | str, method_path: Path | str | None = None) -> RunRecord:
    """Read what `lcmsquant run` wrote into results_dir, with the method it was processed with.

    The method file is `method_path`, else the batch folder's method.toml (results_dir's
    parent), else the shipped method; it must be the very file named in run.json (same SHA-256),
    because its [cohort] table decides how the cohort reports and pairs the results.
    """
    outputs = read_results(results_dir, error=CohortError)
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
            {"name": s["name"], "matrices": ";".join(s.get("matrices", [])), "file": s.get("file", ""),
             "sha256": s.get("sha256", "")}
            for s in provenance.get("calibrator_sets", [])
        ],
        columns=["name", "matrices", "file", "sha256"],
    )
    cal_rows = results[(results["sample_type"] == "calibrator") & results["level"].str.match(CALIBRATOR_LEVEL)]
    nominals = (
        cal_rows[["calibrator_set", "level", "analyte", "nominal"]].dropna()
        .drop_duplicates(["calibrator_set", "level", "analyte"]).reset_index(drop=True)
    )
    verdicts = pd.DataFrame({
        "analyte": calibration["analyte"],
        "calibrator_set": calibration["calibrator_set"],
        "accepted": calibration["accepted"],
        "reasons": [
            json.dumps(summary.get("analytes", {}).get(a, {}).get(s, {}).get("reasons", []))
            for a, s in zip(calibration["analyte"], calibration["calibrator_set"])
        ],
        "lloq": calibration["lloq"],
        "uloq": calibration["uloq"],
    })
    analyses = _analyses(results, inputs, method.settings, folder / "results.csv")
    return RunRecord(
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
                method.name, method.version, path.name, method.sha256, method.units,
                tuple(a.name for a in method.analytes), method.cohort,
            )
        seen.append(f"{path} (sha256 {method.sha256[:12]})")
    raise CohortError(folder, [
        f"run.json: the run was processed with {described}, but "
        + (f"{', '.join(seen)} is another file" if seen else "that file was not found")
        + ": give the method file the run was processed with (--method)"
    ])


def _with_lines(results: pd.DataFrame) -> pd.DataFrame:
    """results.csv with the line of each row, for messages; a missing dilution factor is 1."""
    table = results.copy()
    table.insert(0, "line", np.arange(len(table)) + 2)
    table["dilution_factor"] = table["dilution_factor"].fillna(1.0)
    return table


def _analyses(results: pd.DataFrame, file_sha: dict[str, str], settings: CohortSettings, path: Path) -> pd.DataFrame:
    """Study-sample rows of results.csv with their outcome, bounds and time since the last dose."""
    unknown = results[results["sample_type"] == "unknown"].copy()
    # results.csv puts the worklist's extra columns between dilution_factor and analyte
    columns = list(results.columns)
    worklist_extra = columns[columns.index("dilution_factor") + 1:columns.index("analyte")]
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
                problems.append(f"{path.name} line {row['line']} ({row['sample_id']}): one date-time has a time zone and the other not")
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
    out = pd.DataFrame({
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
    })
    return out.reset_index(drop=True)


def analysis_outcome(flags: str, reportable: bool) -> str:
    """value | BLQ | ALQ | rejected | not_reportable: what one analysis of a study sample gave."""
    f = set(flags.split(";")) - {""}
    if "REJECTED" in f:
        return "rejected"
    if reportable:
        return "value"
    if "BLQ" in f and not f & set(BLQ_INVALIDATING):
        return "BLQ"
    if "ALQ" in f:
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


def connect(db: Path | str, create: bool = False) -> sqlite3.Connection:
    """Open a cohort database; refuse a file that is not one, or a missing one unless `create`."""
    db = Path(db)
    if not create and not db.is_file():
        raise CohortError(db, [f"no cohort database at {db}: create it with `lcmsquant cohort add RESULTS_DIR --db {db}`"])
    con = sqlite3.connect(db)
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        con.close()
        raise CohortError(db, [f"{db.name} is not a cohort database ({err})"]) from None
    if tables - {"sqlite_sequence"} and version != SCHEMA_VERSION:
        con.close()
        raise CohortError(db, [f"{db.name} is not a cohort database of this lcmsquant (schema {version}, expected {SCHEMA_VERSION})"])
    if not tables:
        con.executescript(SCHEMA)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.commit()
    return con


def add_runs(
    db: Path | str, results_dirs: Sequence[Path | str], method_path: Path | str | None = None,
    command: Sequence[str] = (),
) -> list[Addition]:
    """Add (or replace) processed runs in the cohort database, all or none.

    Refused, with both sides named: a run processed with another method file than the cohort's,
    and a calibrator level whose nominal concentration differs from the cohort's.
    """
    db = Path(db)
    runs = [read_run(d, method_path) for d in results_dirs]
    existed = db.is_file()
    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        with closing(connect(db, create=True)) as con, con:
            return [_add(con, run, command) for run in runs]
    except BaseException:
        if not existed:
            db.unlink(missing_ok=True)
        raise


def _add(con: sqlite3.Connection, run: RunRecord, command: Sequence[str]) -> Addition:
    _check_conflicts(con, run)
    previous = con.execute("SELECT seq FROM runs WHERE run_id = ?", (run.run_id,)).fetchone()
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
        (run.run_id, seq, run.batch, run.results_dir, run.results_sha256, m.sha256, run.acquired,
         int(run.run_accepted), run.lcmsquant_version),
    )
    _insert(con, "calibrator_sets", run.run_id, run.calibrator_sets)
    _insert(con, "nominals", run.run_id, run.nominals)
    _insert(con, "verdicts", run.run_id, run.verdicts)
    _insert(con, "analyses", run.run_id, run.analyses)
    action = "replaced" if previous else "added"
    con.execute(
        "INSERT INTO additions (added_at, run_id, action, results_dir, command) VALUES (?, ?, ?, ?, ?)",
        (datetime.now(timezone.utc).isoformat(timespec="seconds"), run.run_id, action, run.results_dir,
         json.dumps(list(command))),
    )
    return Addition(run.run_id, run.batch, action, len(run.analyses), int(run.analyses["reportable"].sum()))


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


def _check_conflicts(con: sqlite3.Connection, run: RunRecord) -> None:
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
        con, params=(run.run_id,),
    ).drop_duplicates(["calibrator_set", "level", "analyte", "nominal"])
    merged = run.nominals.merge(cohort_nominals, on=["calibrator_set", "level", "analyte"], suffixes=("", "_cohort"))
    differ = merged[~np.isclose(merged["nominal"].astype(float), merged["nominal_cohort"].astype(float), rtol=1e-9, atol=0)]
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
    row = con.execute("SELECT name, version, file, sha256, units, analytes, settings FROM methods "
                      "WHERE sha256 IN (SELECT method_sha256 FROM runs) LIMIT 1").fetchone()
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
    return pd.read_sql_query(
        "SELECT r.run_id, r.batch, r.acquired, r.run_accepted, r.results_sha256, m.name AS method, m.version "
        "AS method_version, m.sha256 AS method_sha256 FROM runs r JOIN methods m ON m.sha256 = r.method_sha256 "
        "ORDER BY r.acquired = '', r.acquired, r.seq",
        con,
    )


# ---------------------------------------------------------------------------------------------
# The reported value of each study sample (pure)


REPORTED_COLUMNS = (
    "subject_id", "visit", "timepoint", "matrix", "analyte", "sample_id", "status", "concentration", "lloq", "uloq",
    "flags", "hours_since_dose", "trough", "last_dose_time", "sampling_time", "batch", "run_id", "injection", "file",
    "file_sha256", "n_analyses", "analyses",
)


def reported_results(analyses: pd.DataFrame, settings: CohortSettings, analyte_order: Sequence[str] = ()) -> pd.DataFrame:
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
        rows.append({
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
                for b, i, o, f, k in zip(group["batch"], group["injection"], group["outcome"], group["flags"], group["order"])
            ),
        })
    out = pd.DataFrame(rows, columns=REPORTED_COLUMNS)
    return _sorted(out, analyte_order)


MATRIX_ORDER = ("serum", "plasma", "marrow", "csf")


def _sorted(table: pd.DataFrame, analyte_order: Sequence[str], keys: Sequence[str] = ("subject_id", "visit", "timepoint")) -> pd.DataFrame:
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
            "subject_id": subject, "visit": visit, "timepoint": timepoint, "analyte": analyte,
            "reference_matrix": reference_matrix,
            **_side("reference", ref),
        }
        for target in TARGET_MATRICES:
            side = by_matrix.get(target)
            row.update(_side(target, side))
            row.update(_ratio(target, side, ref, reference_matrix, settings.blq_ratio_policy))
        row["hours_since_dose"] = ref["hours_since_dose"] if ref is not None else np.nan
        outside = [f"{m} {r['hours_since_dose']:.1f} h" for m, r in by_matrix.items() if r["trough"] == "OUTSIDE_TROUGH"]
        row["trough"] = f"OUTSIDE_TROUGH: {', '.join(outside)}" if outside else ""
        rows.append(row)
    columns = [
        "subject_id", "visit", "timepoint", "analyte", "reference_matrix",
        *(f"reference_{c}" for c in SIDE_COLUMNS),
        *(c for t in TARGET_MATRICES for c in (*(f"{t}_{s}" for s in SIDE_COLUMNS), *(f"{t}_{r}" for r in RATIO_COLUMNS))),
        "hours_since_dose", "trough",
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
        return {f"{target}_serum_ratio": ratio, f"{target}_serum_ratio_text": text, f"{target}_censored": censored,
                f"{target}_serum_ratio_bound": bound, f"{target}_note": note}

    if side is None:
        return out(note=f"no {target} sample")
    if ref is None:
        return out(note="no serum or plasma sample")
    problems = [f"{m} {r['status']}" for m, r in ((target, side), (ref_matrix, ref)) if r["status"] not in VALID_OUTCOMES]
    if problems:
        return out(note="; ".join(problems) + ": no ratio")
    t_blq, r_blq = side["status"] == "BLQ", ref["status"] == "BLQ"
    if policy == "half_lloq" and (t_blq or r_blq):
        t = side["lloq"] / 2 if t_blq else side["concentration"]
        r = ref["lloq"] / 2 if r_blq else ref["concentration"]
        which = " and ".join(m for m, b in ((target, t_blq), (ref_matrix, r_blq)) if b)
        return out(t / r, _number(t / r), False, f"{which} BLQ counted as LLOQ/2 (method policy half_lloq)")
    if t_blq and r_blq:
        return out(text="BLQ/BLQ", censored=True, note=f"{target} and {ref_matrix} BLQ: not estimable")
    if t_blq:
        bound = side["lloq"] / ref["concentration"]
        return out(text=f"<{_number(bound)}", censored=True, note=f"{target} BLQ: ratio below LLOQ/{ref_matrix}", bound=bound)
    if r_blq:
        bound = side["concentration"] / ref["lloq"]
        return out(text=f">{_number(bound)}", censored=True, note=f"{ref_matrix} BLQ: ratio above {target}/LLOQ", bound=bound)
    ratio = side["concentration"] / ref["concentration"]
    return out(ratio, _number(ratio))


def _number(value: float, digits: int = 4) -> str:
    return np.format_float_positional(value, precision=digits, unique=True, fractional=False, trim="-")


SUMMARY_COLUMNS = (
    "analyte", "ratio", "n_paired", "n_censored", "n_quantified", "n_plasma_reference", "n_outside_trough",
    "median", "q1", "q3", "min", "max", "geometric_mean", "gm_ci95_low", "gm_ci95_high", "blq_ratio_policy",
)


def penetration_summary(pairs: pd.DataFrame, settings: CohortSettings, analyte_order: Sequence[str] = ()) -> pd.DataFrame:
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
                "analyte": analyte, "ratio": RATIO_NAMES[target], "n_paired": len(paired),
                "n_censored": int(paired[f"{target}_censored"].astype(bool).sum()), "n_quantified": len(values),
                "n_plasma_reference": int((paired["reference_matrix"] == "plasma").sum()),
                "n_outside_trough": int((paired["trough"] != "").sum()),
                **dict.fromkeys(SUMMARY_COLUMNS[7:15], np.nan), "blq_ratio_policy": settings.blq_ratio_policy,
            }
            if len(values):
                q1, median, q3 = np.percentile(values, [25, 50, 75])
                logs = np.log(values)
                row.update(median=median, q1=q1, q3=q3, min=values.min(), max=values.max(),
                           geometric_mean=float(np.exp(logs.mean())))
                if len(values) >= 2:
                    half = stats.t.ppf(0.975, len(values) - 1) * logs.std(ddof=1) / np.sqrt(len(values))
                    row.update(gm_ci95_low=float(np.exp(logs.mean() - half)), gm_ci95_high=float(np.exp(logs.mean() + half)))
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
        write_table(_rounded(pairs), out_dir / "penetration.csv"),
        write_table(_rounded(summary), out_dir / "penetration_summary.csv"),
        atomic_write(out_dir / "penetration.png", penetration_plot(pairs, summary, method.units)),
    ]
    return written, summary


def write_table(table: pd.DataFrame, path: Path) -> Path:
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
                if status == "value":
                    xs.append(x), ys.append(p[f"{side}_concentration"]), blq.append(False)
                elif status == "BLQ":
                    xs.append(x), ys.append(p[f"{side}_lloq"]), blq.append(True)
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
    return [f"{a.action} run '{a.batch}' ({a.run_id[:12]}): {a.analyses} results, {a.reportable} reportable" for a in additions]
