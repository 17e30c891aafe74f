"""Manual integration: `overrides.csv` in the batch folder, applied on every run and audited.

Columns: `file` (as in the worklist), `target` (an analyte, meaning its quantifier; an internal
standard; or a transition name such as "M1 qualifier"), `action` (`integrate` between
`start_min` and `end_min`, or `no_peak`), `reason`, `analyst`. Any other column (a date, a
ticket number) is carried into audit.csv. A row that matches nothing is an error, never
silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lcmsquant.files import InputError, read_csv_rows
from lcmsquant.method import Method

OVERRIDES = "overrides.csv"
COLUMNS = ("file", "target", "action", "start_min", "end_min", "reason", "analyst")
ACTIONS = ("integrate", "no_peak")


@dataclass(frozen=True)
class Override:
    """One analyst decision about one transition of one injection."""

    line: int
    file: str
    transition: str  # transition name as in peaks.csv
    action: str
    start: float | None
    end: float | None
    reason: str
    analyst: str
    extra: tuple[tuple[str, str], ...] = field(default=())


class OverrideError(InputError):
    kind = "overrides"


def read_overrides(path: Path, method: Method, worklist_files: set[str]) -> tuple[Override, ...]:
    """Read and check overrides.csv; raise OverrideError naming the line of every bad row."""
    header, rows = read_csv_rows(path, OverrideError)
    if not header:
        return ()
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise OverrideError(path, [f"{path.name}: missing column(s) {', '.join(missing)} (needs {', '.join(COLUMNS)})"])
    targets = _targets(method)
    problems, overrides, seen = [], [], {}
    for number, values in rows:
        row = dict(zip(header, values))
        where = f"{path.name} line {number}"
        bad = len(problems)
        if row.get("file", "") not in worklist_files:
            problems.append(f"{where}: file '{row.get('file', '')}' is not in the worklist")
        target = row.get("target", "")
        transition = targets.get(target)
        if transition is None:
            problems.append(f"{where}: target '{target}' is no analyte, internal standard or transition of the method")
        action = row.get("action", "").lower().replace(" ", "_")
        start = end = None
        if action not in ACTIONS:
            problems.append(f"{where}: action '{row.get('action', '')}' is not one of {', '.join(ACTIONS)}")
        elif action == "integrate":
            start, end = _number(row.get("start_min", "")), _number(row.get("end_min", ""))
            if start is None or end is None:
                problems.append(f"{where}: integrate needs start_min and end_min in minutes")
            elif start >= end:
                problems.append(f"{where}: start_min {start:g} is not before end_min {end:g}")
        for column in ("reason", "analyst"):
            if not row.get(column, ""):
                problems.append(f"{where}: {column} is empty: every manual integration needs one")
        key = (row.get("file", ""), transition)
        if transition is not None and key in seen:
            problems.append(f"{where}: {target} of {key[0]} is already overridden on line {seen[key]}")
        if len(problems) == bad:
            seen[key] = number
            extra = tuple((k, v) for k, v in row.items() if k not in COLUMNS)
            overrides.append(Override(number, row["file"], transition, action, start, end, row["reason"], row["analyst"], extra))
    if problems:
        raise OverrideError(path, problems)
    return tuple(overrides)


def _targets(method: Method) -> dict[str, str]:
    """Every name an analyst may use for a transition, mapped to the transition's name."""
    names = {t.name: t.name for t in method.transitions()}
    names.update({a.name: a.quantifier.name for a in method.analytes})
    names.update({i.name: i.transition.name for i in method.internal_standards})
    return names


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
