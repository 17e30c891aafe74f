"""Manual integration: `overrides.csv` in the batch folder, applied on every run and audited.

Columns: `file` (as in the worklist), `target` (an analyte, meaning its quantifier; an internal
standard; or a transition name such as "M1 qualifier"), `action` (`integrate` between
`start_min` and `end_min`, `no_peak`, or `exclude`: leave a calibrator out of the analyte's
curve, ICH M10 3.3.2, for an assignable cause), `reason`, `analyst`. Any other column (a date, a
ticket number) is carried into audit.csv. A row that matches nothing is an error, never
silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lcmsquant.files import InputError, parse_decimal, read_csv_rows
from lcmsquant.method import Method

OVERRIDES = "overrides.csv"
COLUMNS = ("file", "target", "action", "start_min", "end_min", "reason", "analyst")
ACTIONS = ("integrate", "no_peak", "exclude")


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
    analyte: str = ""  # for `exclude`: the analyte whose curve leaves this calibrator out


class OverrideError(InputError):
    """An overrides.csv that cannot be applied; `problems` lists every line at fault."""

    kind = "overrides"


def read_overrides(path: Path, method: Method, worklist_files: Mapping[str, str]) -> tuple[Override, ...]:
    """Read and check overrides.csv; raise OverrideError naming the line of every bad row.

    `worklist_files` maps each worklist file to its sample type (exclusions need calibrators).
    """
    header, rows = read_csv_rows(path, OverrideError)
    if not header:
        return ()
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise OverrideError(path, [f"{path.name}: missing column(s) {', '.join(missing)} (needs {', '.join(COLUMNS)})"])
    targets = target_names(method)
    problems: list[str] = []
    overrides: list[Override] = []
    seen: dict[tuple, int] = {}
    for number, values in rows:
        row = dict(zip(header, values))
        where = f"{path.name} line {number}"
        bad = len(problems)
        if row.get("file", "") not in worklist_files:
            problems.append(f"{where}: file '{row.get('file', '')}' is not in the worklist")
        target = row.get("target", "")
        transition = targets.get(target)
        action = row.get("action", "").lower().replace(" ", "_")
        analyte = ""
        if action == "exclude":
            transition = None
            analyte = target if target in {a.name for a in method.analytes} else ""
            if not analyte:
                problems.append(
                    f"{where}: exclude needs an analyte as target (one of {', '.join(a.name for a in method.analytes)}), got '{target}'"
                )
            sample_type = worklist_files.get(row.get("file", ""))
            if sample_type is not None and sample_type != "calibrator":
                problems.append(
                    f"{where}: exclude applies to calibrators only; '{row.get('file', '')}' is sample type {sample_type}"
                )
        elif transition is None:
            problems.append(f"{where}: target '{target}' is no analyte, internal standard or transition of the method")
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
        key = (row.get("file", ""), transition or f"exclude {analyte}")
        if (transition is not None or analyte) and key in seen:
            problems.append(f"{where}: {target} of {key[0]} is already overridden on line {seen[key]}")
        if len(problems) == bad:
            seen[key] = number
            extra = tuple((k, v) for k, v in row.items() if k not in COLUMNS)
            overrides.append(
                Override(
                    number,
                    row["file"],
                    transition or "",
                    action,
                    start,
                    end,
                    row["reason"],
                    row["analyst"],
                    extra,
                    analyte,
                )
            )
    if problems:
        raise OverrideError(path, problems)
    return tuple(overrides)


def target_names(method: Method) -> dict[str, str]:
    """Every name an analyst may use for a transition (an analyte for its quantifier, an internal
    standard, a transition name), mapped to the transition's name."""
    names = {t.name: t.name for t in method.transitions()}
    names.update({a.name: a.quantifier.name for a in method.analytes})
    names.update({i.name: i.transition.name for i in method.internal_standards})
    return names


def _number(text: str) -> float | None:
    try:
        return parse_decimal(text)
    except ValueError:
        return None
