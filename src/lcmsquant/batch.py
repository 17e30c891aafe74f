"""The batch folder: worklist.csv (one row per injection, in injection order), the mzML files it
names, an optional calibrators.csv replacing the method's nominal concentrations, and an
optional method.toml.

Loading checks the whole folder before any processing and reports every problem at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lcmsquant.files import InputError, not_a_file, parse_decimal, read_csv_rows
from lcmsquant.method import (
    CALIBRATOR_LEVEL,
    MATRICES,
    QC_LEVELS,
    CalibratorSet,
    Method,
    MethodError,
    check_calibrator_set,
    default_method_path,
    load_method,
    read_calibrator_csv,
)
from lcmsquant.overrides import OVERRIDES, Override, OverrideError, read_overrides
from lcmsquant.vocabulary import SAMPLE_TYPES, SampleType

WORKLIST = "worklist.csv"
CALIBRATORS = "calibrators.csv"
BATCH_METHOD = "method.toml"
COLUMNS = (
    "file",
    "sample_id",
    "sample_type",
    "level",
    "matrix",
    "subject_id",
    "visit",
    "timepoint",
    "dilution_factor",
)


class BatchError(InputError):
    """A batch folder that cannot be processed; `problems` lists every reason."""

    kind = "batch"


@dataclass(frozen=True)
class Injection:
    """One row of the worklist."""

    order: int  # 1-based position in the injection sequence
    file: Path
    sample_id: str
    sample_type: str
    level: str
    matrix: str
    dilution_factor: float

    @property
    def file_name(self) -> str:
        """The mzML file's name, without its folder."""
        return self.file.name


@dataclass(frozen=True)
class Batch:
    """A validated batch folder: its method, worklist, injections in worklist order and overrides."""

    folder: Path
    method: Method  # with the batch's calibrators.csv applied
    worklist: pd.DataFrame = field(repr=False)  # validated, one row per injection, all columns as text
    injections: tuple[Injection, ...] = field(repr=False)
    overrides: tuple[Override, ...] = ()  # manual integrations from overrides.csv

    def overrides_for(self, injection: Injection) -> dict[str, Override]:
        """This injection's manual integrations, by transition name."""
        name = str(injection.file.relative_to(self.folder))
        return {o.transition: o for o in self.overrides if o.file == name and o.action != "exclude"}

    @property
    def extra_columns(self) -> tuple[str, ...]:
        """The worklist's own columns beyond lcmsquant's (carried into results.csv)."""
        return tuple(c for c in self.worklist.columns if c not in COLUMNS and c != "line")


def resolve_method_path(folder: Path | str, method_path: Path | str | None = None) -> Path:
    """--method if given, else the batch folder's method.toml, else the shipped flumatinib method."""
    if method_path is not None:
        return Path(method_path)
    own = Path(folder) / BATCH_METHOD
    return own if own.is_file() else default_method_path()


def load_batch(folder: Path | str, method: Method | None = None) -> Batch:
    """Read and validate a batch folder: its worklist, calibrators.csv and overrides.csv.

    Parameters
    ----------
    folder : path-like
        The batch folder holding worklist.csv and the mzML files.
    method : Method, optional
        The method to use; by default the folder's method.toml, else the shipped method.

    Returns
    -------
    Batch
        The injections in worklist order, with the method (its calibrator sets replaced by a
        calibrators.csv in the folder) and the manual overrides.

    Raises
    ------
    BatchError, MethodError
        Listing every problem, each naming its file and line.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BatchError(folder, [f"{folder} is not a folder: give the batch folder that holds {WORKLIST}"])
    if method is None:
        method = load_method(resolve_method_path(folder))
    worklist_path = folder / WORKLIST
    if problem := not_a_file(worklist_path):
        if os.path.lexists(worklist_path):
            raise BatchError(folder, [f"{WORKLIST} {problem}: replace it by the batch's worklist"])
        raise BatchError(
            folder,
            [f"{WORKLIST} not found in {folder}: a batch folder needs one, with columns {', '.join(COLUMNS)}"],
        )
    table = read_worklist(worklist_path)
    problems: list[str] = [
        f"{name} {problem}: replace it by a CSV file, or remove it"
        for name in (CALIBRATORS, OVERRIDES)
        if os.path.lexists(folder / name) and (problem := not_a_file(folder / name))
    ]
    if problems:
        raise BatchError(folder, problems)
    calibrators_path = folder / CALIBRATORS
    if calibrators_path.is_file():
        try:
            qc_matrices = set(table.loc[table["sample_type"] == SampleType.QC, "matrix"])
            method = apply_batch_calibrators(method, calibrators_path, set(table.get("matrix", [])), qc_matrices)
        except MethodError as err:
            problems.extend(err.problems)
    problems.extend(check_worklist(table, folder, method))
    overrides: tuple[Override, ...] = ()
    if (folder / OVERRIDES).is_file():
        try:
            overrides = read_overrides(folder / OVERRIDES, method, dict(zip(table["file"], table["sample_type"])))
        except OverrideError as err:
            problems.extend(err.problems)
    if problems:
        raise BatchError(folder, problems)
    injections = tuple(
        Injection(
            order=i + 1,
            file=folder / row["file"],
            sample_id=row["sample_id"],
            sample_type=row["sample_type"],
            level=row["level"],
            matrix=row["matrix"],
            dilution_factor=_dilution(row["dilution_factor"]),
        )
        for i, row in table.iterrows()
    )
    return Batch(folder, method, table, injections, overrides)


def read_worklist(path: Path) -> pd.DataFrame:
    """The worklist as text columns, tolerant of a BOM, `;` or tab separators and blank lines."""
    header, rows = read_csv_rows(path, BatchError, where=path.parent)
    if not header:
        raise BatchError(path.parent, [f"{path.name} is empty: it needs a header row with {', '.join(COLUMNS)}"])
    problems = []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        problems.append(f"{path.name}: missing column(s) {', '.join(missing)} (header has: {', '.join(header)})")
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        problems.append(f"{path.name}: column(s) {', '.join(duplicated)} appear more than once")
    body = []
    for number, row in rows:
        if len(row) > len(header):
            problems.append(f"{path.name} line {number}: {len(row)} fields but the header has {len(header)}")
        body.append(row + [""] * (len(header) - len(row)))
    if problems:
        raise BatchError(path.parent, problems)
    table = pd.DataFrame([r[: len(header)] for r in body], columns=header, dtype=object)
    table.insert(0, "line", [number for number, _ in rows])
    table["sample_type"] = table["sample_type"].str.lower()
    table["matrix"] = table["matrix"].str.lower()
    return table


def check_worklist(table: pd.DataFrame, folder: Path, method: Method) -> list[str]:
    """Every problem of the worklist rows, each naming its line."""
    problems = []
    if table.empty:
        return [f"{WORKLIST}: no injections listed"]
    seen_ids: dict[str, int] = {}
    seen_files: dict[str, int] = {}
    for _, row in table.iterrows():
        where = f"{WORKLIST} line {row['line']}"
        file = row["file"]
        problem = _file_problem(folder, file)
        if problem:
            problems.append(f"{where}: {problem}")
        elif os.path.normpath(file) in seen_files:
            problems.append(
                f"{where}: file '{file}' is also on line {seen_files[os.path.normpath(file)]}: each injection has its own file"
            )
        else:
            seen_files[os.path.normpath(file)] = row["line"]
        sid = row["sample_id"]
        if not sid:
            problems.append(f"{where}: empty sample_id")
        elif sid in seen_ids:
            problems.append(f"{where}: sample_id '{sid}' is duplicated (first on line {seen_ids[sid]})")
        else:
            seen_ids[sid] = row["line"]
        stype = row["sample_type"]
        if stype not in SAMPLE_TYPES:
            problems.append(f"{where}: unknown sample_type '{stype}' (use one of {', '.join(SAMPLE_TYPES)})")
        matrix = row["matrix"]
        if matrix not in MATRICES:
            problems.append(f"{where}: unknown matrix '{matrix}' (use one of {', '.join(MATRICES)})")
        cal_set = method.calibrator_set_for(matrix) if matrix in MATRICES else None
        # A peaks-only method serves every matrix alike: nothing is quantified.
        if (
            matrix in MATRICES
            and cal_set is None
            and stype in ("calibrator", "qc", "unknown")
            and not method.peaks_only
        ):
            problems.append(f"{where}: the method has no calibrator set for matrix '{matrix}'")
        level = row["level"]
        if stype in ("calibrator", "qc"):
            expected = "CAL<n>" if stype == "calibrator" else "/".join(QC_LEVELS)
            kind_ok = bool(CALIBRATOR_LEVEL.match(level)) if stype == "calibrator" else level in QC_LEVELS
            if not level:
                problems.append(f"{where}: a {stype} needs a level ({expected})")
            elif not kind_ok:
                problems.append(f"{where}: level '{level}' is not a {stype} level ({expected})")
            elif cal_set is not None and level not in cal_set.levels:
                problems.append(
                    f"{where}: level '{level}' is not in calibrator set '{cal_set.name}' "
                    f"({Path(cal_set.source).name}); add it there or to the batch's {CALIBRATORS}"
                )
        dilution = row["dilution_factor"]
        if dilution and not np.isfinite(_dilution(dilution, strict=False)):
            problems.append(f"{where}: dilution_factor '{dilution}' is not a positive number (leave empty for 1)")
    return problems


def _file_problem(folder: Path, file: str) -> str:
    """Why a worklist file name cannot be used, or "" when it names an mzML file of the batch."""
    if not file:
        return "empty file name"
    if "\0" in file:
        return f"file {file!r} contains a NUL character"
    if os.path.isabs(file) or os.path.normpath(file).split(os.sep)[0] == os.pardir:
        return f"file '{file}' is not inside the batch folder: name it relative to {folder}"
    if problem := not_a_file(folder / file):
        return f"file '{file}' {problem}" + (f" in {folder}" if problem.startswith("does not exist") else "")
    if not file.lower().endswith((".mzml", ".mzml.gz")):
        return f"file '{file}' is not .mzML or .mzML.gz"
    return ""


def apply_batch_calibrators(
    method: Method, path: Path, batch_matrices: set[str], qc_matrices: set[str] | None = None
) -> Method:
    """The method with the batch's calibrators.csv in place of its own nominal concentrations.

    With a `matrix` column, the file replaces the calibrator set of each matrix it names (and so
    serves every matrix that set served); without one, it replaces every set the batch uses.
    A set needs low, mid and high QC levels only when it serves QCs of the batch (`qc_matrices`,
    the matrices of the worklist's QC rows; None: always).
    """
    table = read_calibrator_csv(path)
    if "matrix" in table.columns:
        groups = {m.lower(): rows.drop(columns="matrix") for m, rows in table.groupby("matrix", sort=True)}
    else:
        groups = {m: table for m in sorted(batch_matrices)}
    sets: dict[str, CalibratorSet] = {}
    problems = []
    for matrix, rows in groups.items():
        if matrix not in MATRICES:
            problems.append(f"{path.name}: unknown matrix '{matrix}' (use one of {', '.join(MATRICES)})")
            continue
        current = method.calibrator_set_for(matrix)
        name = current.name if current is not None else matrix
        matrices = current.matrices if current is not None else (matrix,)
        new = CalibratorSet(name, matrices, rows.reset_index(drop=True), str(path))
        if name in sets:  # another matrix the same set serves: checked once
            if not sets[name].nominals.equals(new.nominals):
                problems.append(
                    f"{path.name}: matrices {', '.join(sets[name].matrices)} share the method's calibrator set '{name}' "
                    "but the file gives them different nominals: give one list for the set"
                )
            continue
        sets[name] = new
        needs_qcs = qc_matrices is None or bool(set(matrices) & qc_matrices)
        problems.extend(check_calibrator_set(new, method, needs_qcs))
    if problems:
        raise MethodError(path, problems)
    return method.with_calibrator_sets(tuple(sets.values()))


def _dilution(text: str, strict: bool = True) -> float:
    if not text:
        return 1.0
    try:
        value = parse_decimal(text)
    except ValueError:
        value = np.nan
    if not np.isfinite(value) or value <= 0:
        if strict:
            raise ValueError(f"dilution factor {text!r}")
        return np.nan
    return value
