"""Import an OpenMS/Skyline-style transition list (CSV or TSV) as a method TOML.

A transition list names, for every compound (`transition_group_id`, else `ProteinName`), its
transitions with precursor and product m/z, the expected retention time in SECONDS, the label
(`Light`: the compound, `Heavy`: its stable-isotope-labelled internal standard) and which
transition quantifies (`quantifying_transition`). The method made from it has:

- one analyte per group with a quantifying Light transition, named after the group: its
  quantifier is that transition, the group's other Light transitions are its qualifiers, its RT
  the quantifier's RT converted to minutes;
- one internal standard "<group>-IS" per group with a quantifying Heavy transition, at the Heavy
  transition's own RT; Heavy transitions not marked quantifying are left out (said in a comment);
- for a group without a Heavy transition, the internal standard eluting nearest in RT as a
  surrogate (said in a comment). A group of Heavy transitions only (SmartPeak's pools) is an
  internal standard without analyte: kept only if some analyte needs it as a surrogate;
- no [calibrator_sets]: a transition list carries no concentrations.

Transitions within the m/z tolerance (isomers, or a Heavy standard that weighs what another
compound weighs) are told apart only by retention time, so the method loader refuses two of them
whose expected RTs are less than 2 x rt_window apart. `choose_rt_window` takes the widest window
(at most 0.30 min) that keeps every quantifier and internal standard apart, but never less than
the identity RT tolerance (0.10 min); what is closer than that is resolved openly (see
`method_from_transition_list`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import tempfile
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lcmsquant.files import atomic_write, parse_decimal
from lcmsquant.method import Identity, MethodError, load_method, parse_method

GROUP_COLUMNS = ("transition_group_id", "ProteinName")  # the first one present names the compound
REQUIRED_COLUMNS = ("PrecursorMz", "ProductMz", "RetentionTime", "LabelType", "quantifying_transition")
OPTIONAL_COLUMNS = ("transition_name", "decoy")
LABELS = {"light": "Light", "heavy": "Heavy"}
_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}

MAX_RT_WINDOW = 0.30  # min: the widest search window the importer writes (the shipped method's)
# min: the narrowest window it chooses by itself. A search window narrower than the identity RT
# tolerance (SANTE: +-0.1 min) would refuse peaks the RT check still accepts, and real runs drift
# more than that (the SmartPeak example files: IS apexes up to ~0.5 min from the listed RT).
MIN_RT_WINDOW = Identity.rt_tolerance
DEFAULT_ANCHORED_RT_WINDOW = 0.10  # min, as in the shipped method (never wider than rt_window)
RT_DECIMALS = 4  # minutes: 0.006 s, far below the spacing of the data points


class TransitionListError(MethodError):
    """A transition list that cannot be imported; `problems` names the line and column of each."""

    kind = "transition list"


COLUMNS = [
    "line",
    "group",
    "transition",
    "label",
    "quantifying",
    "q1",
    "q3",
    "rt_s",
    "rt_min",
    "q1_text",
    "q3_text",
    "rt_text",
    "decoy",
]


# ---------------------------------------------------------------------------------------------
# Reading


def read_transition_list(path: Path | str) -> pd.DataFrame:
    """Read and validate a transition list: one row per transition, columns normalised.

    Columns: line (line number in the file, header = 1), group, transition (transition_name),
    label ("Light" or "Heavy"), quantifying (bool), q1, q3 (m/z), rt_s (seconds, as listed),
    rt_min (minutes, 4 decimals), q1_text, q3_text, rt_text (as written), decoy (bool).
    The delimiter (comma, tab or semicolon) is taken from the header line; column names are
    matched exactly, else ignoring case. Raises MethodError naming the line and column of every
    problem; a group of Heavy transitions only is allowed (an internal standard without analyte).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TransitionListError(path, [f"cannot read the transition list: {err.strerror}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise TransitionListError(path, [f"not UTF-8 text (undecodable byte at offset {err.start})"]) from None

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    header: list[str] | None = None
    header_line = 0
    records: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank lines are allowed anywhere
            if header is None:
                header, header_line = [c.strip() for c in row], reader.line_num
            else:
                records.append((reader.line_num, row))
    except csv.Error as err:
        raise TransitionListError(path, [f"line {reader.line_num}: not readable as CSV ({err})"]) from None
    if header is None:
        raise TransitionListError(path, ["line 1: the file is empty (expected a header line with the column names)"])

    columns, problems = _columns(header, header_line)
    if problems:
        raise TransitionListError(path, problems)
    rows = []
    for line, row in records:
        if len(row) != len(header):
            problems.append(f"line {line}: {len(row)} fields, but the header (line {header_line}) has {len(header)}")
            continue
        rows.append(_row(line, row, columns, problems))
    table = pd.DataFrame(rows, columns=COLUMNS)
    if table.empty and not problems:
        problems.append(f"line {header_line + 1}: the list has a header but no transition")
    problems.extend(_check_groups(table, columns))
    if problems:
        raise TransitionListError(path, problems)
    table.attrs["source"] = str(path)
    table.attrs["sha256"] = hashlib.sha256(raw).hexdigest()
    return table


def _delimiter(text: str) -> str:
    first = next((line for line in text.splitlines() if line.strip()), "")
    if "\t" in first:
        return "\t"  # OpenMS' TargetedFileConverter writes TSV
    if first.count(";") > first.count(","):
        return ";"  # a spreadsheet export in a decimal-comma locale
    return ","


def _columns(header: list[str], header_line: int) -> tuple[dict, list[str]]:
    """Field index of each known column, and the header's problems."""
    where = f"line {header_line} (header)"
    problems = []
    exact: dict[str, int] = {}
    for i, name in enumerate(header):
        if name and name in exact:
            problems.append(f"{where}, column {name}: appears twice (fields {exact[name] + 1} and {i + 1})")
        exact.setdefault(name, i)
    folded: dict[str, int] = {}
    for name, i in exact.items():
        folded.setdefault(name.lower(), i)

    def find(name: str) -> int | None:
        return exact.get(name, folded.get(name.lower()))

    columns: dict = {}
    group = next((c for c in GROUP_COLUMNS if find(c) is not None), None)
    if group is None:
        problems.append(
            f"{where}: missing required column transition_group_id (or ProteinName), the compound "
            "each transition belongs to"
        )
    else:
        columns[group] = find(group)
        columns["<group>"] = group
    for name in REQUIRED_COLUMNS:
        if find(name) is None:
            problems.append(f"{where}: missing required column {name}")
        else:
            columns[name] = find(name)
    for name in OPTIONAL_COLUMNS:
        if find(name) is not None:
            columns[name] = find(name)
    return columns, problems


def _row(line: int, row: list[str], columns: dict, problems: list[str]) -> dict:
    def cell(name: str) -> str:
        return row[columns[name]].strip() if name in columns else ""

    def number(name: str, *, positive: bool) -> float:
        value = cell(name)
        try:
            x = parse_decimal(value)
        except ValueError:
            problems.append(f"line {line}, column {name}: {value!r} is not a number")
            return math.nan
        if not math.isfinite(x) or (x <= 0 if positive else x < 0):
            need = "a positive m/z" if positive else "a retention time in seconds >= 0"
            problems.append(f"line {line}, column {name}: {value!r} is not {need}")
            return math.nan
        return x

    group_column = columns["<group>"]
    group = cell(group_column)
    if not group:
        problems.append(f"line {line}, column {group_column}: empty (every transition needs its compound)")
    q1 = number("PrecursorMz", positive=True)
    q3 = number("ProductMz", positive=True)
    rt_s = number("RetentionTime", positive=False)
    label_text = cell("LabelType")
    label = LABELS.get(label_text.lower())
    if label is None:
        problems.append(f"line {line}, column LabelType: unknown label {label_text!r} (expected Light or Heavy)")
    quant_text = cell("quantifying_transition")
    quantifying = _boolean(quant_text)
    if quantifying is None:
        problems.append(f"line {line}, column quantifying_transition: {quant_text!r} is neither TRUE nor FALSE")
    decoy = _boolean(cell("decoy")) if cell("decoy") else False
    if decoy is None:
        problems.append(f"line {line}, column decoy: {cell('decoy')!r} is neither 1/TRUE nor 0/FALSE")
    name = cell("transition_name") or f"{group} {label or label_text} {cell('PrecursorMz')}->{cell('ProductMz')}"
    return {
        "line": line,
        "group": group,
        "transition": name,
        "label": label or label_text,
        "quantifying": bool(quantifying),
        "q1": q1,
        "q3": q3,
        "rt_s": rt_s,
        "rt_min": round(rt_s / 60.0, RT_DECIMALS) if math.isfinite(rt_s) else math.nan,
        "q1_text": cell("PrecursorMz"),
        "q3_text": cell("ProductMz"),
        "rt_text": cell("RetentionTime"),
        "decoy": bool(decoy),
    }


def _boolean(text: str) -> bool | None:
    low = text.strip().lower()
    return True if low in _TRUE else False if low in _FALSE else None


def _lines(lines) -> str:
    lines = sorted(int(x) for x in lines)
    return f"line {lines[0]}" if len(lines) == 1 else "lines " + ", ".join(map(str, lines))


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by group, groups and rows in the order of the list."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    return groups


def _check_groups(table: pd.DataFrame, columns: dict) -> list[str]:
    """Every group: exactly one quantifying Light transition (or no Light one at all), at most
    one quantifying Heavy one; no transition listed twice."""
    problems: list[str] = []
    rows = table.to_dict("records")
    if "transition_name" in columns:
        by_name: dict[str, list[int]] = {}
        for r in rows:
            by_name.setdefault(r["transition"], []).append(r["line"])
        for name, lines in by_name.items():
            if len(lines) > 1:
                problems.append(f"{_lines(lines)}, column transition_name: {name!r} is listed {len(lines)} times")
    by_key: dict[tuple, list[int]] = {}
    for r in rows:
        if r["group"] and not r["decoy"] and not (math.isnan(r["q1"]) or math.isnan(r["q3"])):
            by_key.setdefault((r["group"], r["label"], r["q1"], r["q3"]), []).append(r["line"])
    for (group, label, q1, q3), lines in by_key.items():
        if len(lines) > 1:
            problems.append(f"{_lines(lines)}: {group} {label} {q1:g} -> {q3:g} is listed {len(lines)} times")
    group_column = columns["<group>"]
    for group, members in _groups([r for r in rows if r["group"] and not r["decoy"]]).items():
        light = [r for r in members if r["label"] == "Light"]
        light_quant = [r for r in light if r["quantifying"]]
        heavy_quant = [r for r in members if r["label"] == "Heavy" and r["quantifying"]]
        if light and not light_quant:
            problems.append(
                f"{_lines(r['line'] for r in light)}, column quantifying_transition: group {group!r} "
                f"({group_column}) has no quantifying Light transition: mark its quantifier TRUE"
            )
        if len(light_quant) > 1:
            problems.append(
                f"{_lines(r['line'] for r in light_quant)}, column quantifying_transition: group {group!r} "
                f"has {len(light_quant)} quantifying Light transitions; exactly one may be TRUE"
            )
        if not light and not heavy_quant:
            problems.append(
                f"{_lines(r['line'] for r in members)}, column quantifying_transition: group {group!r} has "
                "neither a Light transition nor a quantifying Heavy one"
            )
        if len(heavy_quant) > 1:
            problems.append(
                f"{_lines(r['line'] for r in heavy_quant)}, column quantifying_transition: group {group!r} "
                f"has {len(heavy_quant)} quantifying Heavy transitions; its internal standard must be one"
            )
    return problems


# ---------------------------------------------------------------------------------------------
# Converting


@dataclass
class _Transition:
    q1: float
    q3: float
    name: str  # transition_name in the list
    line: int

    def pair(self) -> str:
        return f"{_number(self.q1)} -> {_number(self.q3)}"


@dataclass
class _Standard:
    name: str
    transition: _Transition
    rt: float  # minutes
    rt_text: str  # seconds, as listed
    heavy_only: bool = False  # a group without Light transitions
    notes: list[str] = field(default_factory=list)


@dataclass
class _Analyte:
    name: str
    quantifier: _Transition
    qualifiers: list[_Transition]
    rt: float
    rt_text: str
    internal_standard: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Item:
    """One transition of the method, for the RT-separation check."""

    role: str  # quantifier | qualifier | internal_standard
    owner: str  # analyte or internal standard name
    q1: float
    q3: float
    rt: float

    def label(self) -> str:
        role = self.role.replace("_", " ")
        return f"{self.owner} {role} {_number(self.q1)} -> {_number(self.q3)} at {_number(self.rt)} min"


@dataclass
class _Outcome:
    """What the conversion did besides the obvious, for the comments of the TOML."""

    rt_window: float = 0.0
    why: str = ""
    left_out: list[tuple[_Analyte, str, float]] = field(default_factory=list)
    unused: dict[str, _Standard] = field(default_factory=dict)  # internal standards not written
    summary: list[str] = field(default_factory=list)


def method_from_transition_list(
    table: pd.DataFrame,
    name: str,
    *,
    rt_window: float | None = None,
    anchored_rt_window: float | None = None,
    mz_tolerance: float = 0.5,
    max_rt_window: float = MAX_RT_WINDOW,
    min_rt_window: float = MIN_RT_WINDOW,
    source: str | None = None,
) -> str:
    """The method TOML (text) for a table from read_transition_list.

    rt_window None: chosen by `choose_rt_window`; anchored_rt_window None: min(0.10, rt_window).
    Transitions within mz_tolerance that rt_window cannot keep apart are resolved like this, each
    said in a comment:
    - a qualifier colliding with any other transition is dropped (it could confirm a peak that
      is not its compound's); two colliding qualifiers of different analytes are both dropped;
    - two colliding internal standards are one signal: the later one's analytes use the
      earlier one (e.g. 13C-ATP and 13C-dGTP, 516 -> 159, listed 0.1 s apart);
    - an analyte whose quantifier collides with another quantifier (the later-eluting one) or
      with an internal standard is left out, written as a commented-out table to add back by
      hand if the chromatography separates them.
    The result is checked with the method loader before it is returned.
    """
    source = source or str(table.attrs.get("source", "transition list"))
    analytes, standards, outcome = _compounds(table)
    if rt_window is None:
        rt_window, outcome.why = choose_rt_window(
            analytes, standards, mz_tolerance, max_rt_window=max_rt_window, min_rt_window=min_rt_window
        )
    else:
        outcome.why = "given by the caller"
    outcome.rt_window = rt_window
    if anchored_rt_window is None:
        anchored_rt_window = min(DEFAULT_ANCHORED_RT_WINDOW, rt_window)
    _separate(analytes, standards, mz_tolerance, rt_window, outcome)
    _drop_unused_standards(analytes, standards, outcome)
    text = _render(name, source, table, analytes, standards, outcome, mz_tolerance, anchored_rt_window)
    parse_method(tomllib.loads(text), base_dir=Path("."), source=f"method generated from {Path(source).name}")
    return text


def _compounds(table: pd.DataFrame) -> tuple[list[_Analyte], dict[str, _Standard], _Outcome]:
    outcome = _Outcome()
    rows = table.to_dict("records")
    decoys = [r["line"] for r in rows if r["decoy"]]
    if decoys:
        outcome.summary.append(f"{len(decoys)} decoy transition(s) not imported ({_lines(decoys)}).")
    standards: dict[str, _Standard] = {}
    analytes: list[_Analyte] = []
    for group, members in _groups([r for r in rows if not r["decoy"]]).items():
        heavy = [r for r in members if r["label"] == "Heavy"]
        light = [r for r in members if r["label"] == "Light"]
        heavy_quant = [r for r in heavy if r["quantifying"]]
        light_quant = [r for r in light if r["quantifying"]]
        is_name = ""
        if heavy_quant:
            h = heavy_quant[0]
            is_name = f"{group}-IS"
            standards[is_name] = _Standard(is_name, _tr(h), float(h["rt_min"]), h["rt_text"], not light)
        ignored = [
            f"Not imported: {r['transition']} {_number(r['q1'])} -> {_number(r['q3'])} "
            f"(line {r['line']}), a Heavy transition not marked quantifying."
            for r in heavy
            if not r["quantifying"]
        ]
        outcome.summary.extend(ignored)
        if is_name:
            standards[is_name].notes.extend(ignored)
        if not light_quant:
            continue  # a group of Heavy transitions only
        q = light_quant[0]
        analytes.append(
            _Analyte(
                name=str(group),
                quantifier=_tr(q),
                qualifiers=[_tr(r) for r in light if not r["quantifying"]],
                rt=float(q["rt_min"]),
                rt_text=q["rt_text"],
                internal_standard=is_name,
                notes=[] if is_name else list(ignored),
            )
        )
    for a in analytes:
        if a.internal_standard:
            continue
        if not standards:
            raise TransitionListError(
                table.attrs.get("source", "transition list"),
                [
                    (
                        f"line {a.quantifier.line}: group {a.name!r} has no Heavy transition, and no group of "
                        "the list has one to serve as a surrogate internal standard"
                    )
                ],
            )
        nearest = min(standards.values(), key=lambda s: (abs(s.rt - a.rt), s.rt, s.name))
        a.internal_standard = nearest.name
        note = (
            f"{a.name} has no Heavy transition in the list: it uses {nearest.name} as a surrogate "
            f"internal standard (the one eluting nearest, {abs(nearest.rt - a.rt):.2f} min away)."
        )
        a.notes.append(note)
        outcome.summary.append(note)
    analytes.sort(key=lambda a: (a.rt, a.name))
    return analytes, standards, outcome


def _tr(row) -> _Transition:
    return _Transition(float(row["q1"]), float(row["q3"]), str(row["transition"]), int(row["line"]))


def _items(analytes: list[_Analyte], standards: dict[str, _Standard]) -> list[_Item]:
    """The method's transitions in the loader's order: internal standards, then analytes."""
    used = {a.internal_standard for a in analytes}
    items = [
        _Item("internal_standard", s.name, s.transition.q1, s.transition.q3, s.rt)
        for s in standards.values()
        if s.name in used
    ]
    for a in analytes:
        items.append(_Item("quantifier", a.name, a.quantifier.q1, a.quantifier.q3, a.rt))
        items.extend(_Item("qualifier", a.name, q.q1, q.q3, a.rt) for q in a.qualifiers)
    return items


def _collisions(items: list[_Item], mz_tolerance: float, rt_window: float) -> list[tuple[_Item, _Item]]:
    """Pairs the method loader would refuse (the same test, with the same arithmetic)."""
    out = []
    for i, b in enumerate(items):
        for a in items[:i]:
            same_mz = abs(a.q1 - b.q1) <= mz_tolerance and abs(a.q3 - b.q3) <= mz_tolerance
            if same_mz and abs(a.rt - b.rt) < 2 * rt_window:
                out.append((a, b))
    return out


def choose_rt_window(
    analytes: list[_Analyte],
    standards: dict[str, _Standard],
    mz_tolerance: float = 0.5,
    *,
    max_rt_window: float = MAX_RT_WINDOW,
    min_rt_window: float = MIN_RT_WINDOW,
) -> tuple[float, str]:
    """The widest rt_window, in 0.01 min steps from max_rt_window down to min_rt_window, that
    keeps apart every quantifier and internal standard sharing a Q1/Q3 pair with another one,
    and a sentence saying why. Qualifiers do not narrow the window (a colliding qualifier is
    dropped), nor do pairs closer than 2 x min_rt_window (no sensible window separates them)."""
    items = [i for i in _items(analytes, standards) if i.role != "qualifier"]
    pairs = [
        (a, b) for a, b in _collisions(items, mz_tolerance, max_rt_window) if abs(a.rt - b.rt) >= 2 * min_rt_window
    ]
    top, bottom = round(max_rt_window * 100), math.ceil(min_rt_window * 100 - 1e-9)
    window = bottom / 100
    for step in range(top, bottom - 1, -1):
        if not _collisions_among(pairs, step / 100):
            window = step / 100
            break
    too_close = [
        (a, b) for a, b in _collisions(items, mz_tolerance, max_rt_window) if abs(a.rt - b.rt) < 2 * min_rt_window
    ]
    if window >= max_rt_window:
        why = (
            "the widest window the importer writes: no quantifier or internal standard shares a Q1/Q3 "
            f"pair with another one {2 * min_rt_window:g}-{2 * max_rt_window:g} min from it"
        )
    else:
        a, b = min(_collisions_among(pairs, (round(window * 100) + 1) / 100), key=lambda p: abs(p[0].rt - p[1].rt))
        why = f"the widest window that keeps {a.label()} and {b.label()} ({abs(a.rt - b.rt):.4f} min apart) apart"
    if too_close:
        why += (
            f"; {len(too_close)} pair(s) of quantifiers/internal standards are less than "
            f"2 x {min_rt_window:g} min apart, too close for any sensible window to separate; they are "
            "resolved as listed below"
        )
    return window, why


def _collisions_among(pairs, rt_window: float):
    return [(a, b) for a, b in pairs if abs(a.rt - b.rt) < 2 * rt_window]


def _separate(analytes, standards, mz_tolerance: float, rt_window: float, outcome: _Outcome) -> None:
    """Resolve, one pair at a time, what rt_window cannot keep apart (see method_from_transition_list)."""
    by_name = {a.name: a for a in analytes}
    while True:
        pairs = _collisions(_items(analytes, standards), mz_tolerance, rt_window)
        if not pairs:
            return
        a, b = pairs[0]
        why = (
            f"{a.label()} and {b.label()} are within the m/z tolerance {mz_tolerance:g} and "
            f"{abs(a.rt - b.rt):.4f} min apart, less than 2 x rt_window = {2 * rt_window:g} min"
        )
        if "qualifier" in (a.role, b.role):
            dropped = [i for i in (a, b) if i.role == "qualifier"]
            if len(dropped) == 2 and a.owner == b.owner:
                dropped = [b]  # one analyte's qualifier listed twice: keep the first
            for item in dropped:
                analyte = by_name[item.owner]
                q = next(q for q in analyte.qualifiers if (q.q1, q.q3) == (item.q1, item.q3))
                analyte.qualifiers.remove(q)
                analyte.notes.append(f"Qualifier {q.pair()} ({q.name}, line {q.line}) dropped: {why}.")
                outcome.summary.append(
                    f"{analyte.name}: qualifier {q.pair()} dropped (collides with {(b if item is a else a).label()})."
                )
            continue
        if a.role == b.role == "internal_standard":
            keep, gone = sorted((standards[a.owner], standards[b.owner]), key=lambda s: (s.rt, s.name))
            for x in analytes:
                if x.internal_standard == gone.name:
                    x.internal_standard = keep.name
                    x.notes.append(
                        f"Uses {keep.name} as its internal standard: its own {gone.name} "
                        f"({gone.transition.name}, line {gone.transition.line}) is the same signal: {why}."
                    )
                    outcome.summary.append(
                        f"{x.name}: uses {keep.name}, the same signal as its own {gone.name} "
                        f"({abs(keep.rt - gone.rt):.4f} min apart)."
                    )
            continue
        if a.role == b.role == "quantifier":
            victim = max(a, b, key=lambda i: (i.rt, i.owner))
        else:
            victim = a if a.role == "quantifier" else b
        analyte = by_name[victim.owner]
        analytes.remove(analyte)
        outcome.left_out.append((analyte, why, abs(a.rt - b.rt)))
        outcome.summary.append(
            f"{analyte.name} LEFT OUT (commented out below): its quantifier collides with "
            f"{(b if victim is a else a).label()}, {abs(a.rt - b.rt):.4f} min apart."
        )


def _drop_unused_standards(analytes, standards, outcome: _Outcome) -> None:
    used = {a.internal_standard for a in analytes}
    for s in list(standards.values()):
        if s.name in used:
            continue
        del standards[s.name]
        outcome.unused[s.name] = s
        why = "a group of Heavy transitions only" if s.heavy_only else "its analyte uses another one or is left out"
        outcome.summary.append(
            f"Internal standard {s.name} ({s.transition.name} {s.transition.pair()}, line {s.transition.line}) "
            f"not imported: used by no analyte ({why})."
        )


# ---------------------------------------------------------------------------------------------
# Writing


_BARE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _key(name: str) -> str:
    """A TOML key: bare when plainly safe, quoted otherwise ("arg-L", "23dpg")."""
    return name if _BARE_KEY.match(name) else _string(name)


def _string(text: str) -> str:
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    out = "".join(c if (" " <= c and c != "\x7f") else f"\\u{ord(c):04x}" for c in out)
    return f'"{out}"'


def _number(x: float) -> str:
    """As the list writes it: 282, 259.001, 516.0336 (shortest repr; valid TOML)."""
    text = repr(float(x))
    return text.removesuffix(".0")


def _comment(text: str, indent: str = "# ", width: int = 100) -> list[str]:
    return textwrap.wrap(
        " ".join(text.split()),
        width=width,
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_on_hyphens=False,
        break_long_words=False,
    )


def _render(name, source, table, analytes, standards, outcome: _Outcome, mz_tol, anchored) -> str:
    src = Path(source).name
    real = table[~table["decoy"]]
    out = [
        f"# Method imported from the transition list {src} by lcmsquant.transition_list",
        f"# (sha256 {table.attrs.get('sha256', 'unknown')}):",
        (
            f"# {len(real)} transitions in {real['group'].nunique()} groups -> {len(analytes)} analyte(s), "
            f"{len(standards)} internal standard(s)."
        ),
        "# Light quantifying transition -> quantifier; other Light transitions -> qualifiers;",
        '# quantifying Heavy transition -> the group\'s internal standard "<group>-IS".',
        "# Retention times: seconds in the list, minutes here (each rt line notes the listed seconds).",
        "#",
        "# NO CALIBRATOR SETS: a transition list carries no concentrations. Add [calibrator_sets] (and",
        "# their calibrator files) before this method can quantify; until then it integrates peaks only.",
        "#",
    ]
    out += _comment(f"rt_window = {_number(outcome.rt_window)} min: {outcome.why}.")
    if outcome.summary:
        out.append("#")
        out.append("# Changes to the list (details at each table):")
        for note in outcome.summary:
            out += _comment(f"- {note}")
    out += [
        f"name = {_string(name)}",
        'version = "1"',
        f"description = {_string(f'Imported from the transition list {src}')}",
        'units = "ng/mL"             # set to the units of the calibrator files you add',
        f"mz_tolerance = {_number(mz_tol)}          # Da, applied to Q1 and Q3 when matching chromatograms",
        "",
        "[calibration]",
        'model = "linear"            # linear | linear_through_zero | quadratic',
        'weighting = "1/x^2"         # none | 1/x | 1/x^2 | 1/y | 1/y^2',
        "",
        "[integration]",
        f"rt_window = {_number(outcome.rt_window)}             # min, half-width of the search window around the expected RT",
        f"anchored_rt_window = {_number(anchored)}    # min, half-width around the RT predicted from the found IS",
        "min_detection_sn = 3.0      # no peak is reported below this S/N",
        "",
        "# [identity] and [acceptance] are not written: their defaults apply (0.10 min RT tolerance,",
        "# EU 2002/657 ion ratio tiers, ICH M10 acceptance); see the README to set them.",
        "",
        "# In order of the analytes' retention times; an internal standard comes before its first analyte.",
    ]
    blocks = []  # (rt, name, lines): an analyte with its internal standard before it, the first time
    written: set[str] = set()
    for a in analytes:
        lines = [""]
        s = standards[a.internal_standard]
        if s.name not in written:
            written.add(s.name)
            lines += _standard_table(s) + [""]
        lines += _analyte_table(a)
        blocks.append((a.rt, a.name, lines))
    for a, why, gap in outcome.left_out:
        lines = [""]
        lines += _comment(
            f"LEFT OUT: {why}. Add it back (uncomment) only if the chromatography "
            f"separates them, with rt_window at most {math.floor(gap / 2 * 1e4) / 1e4:g} min."
        )
        if a.internal_standard not in standards and a.internal_standard in outcome.unused:
            lines += ["# " + x for x in _standard_table(outcome.unused[a.internal_standard])] + ["#"]
        lines += ["# " + x for x in _analyte_table(a)]
        blocks.append((a.rt, a.name, lines))
    for _, _, lines in sorted(blocks, key=lambda b: (b[0], b[1])):
        out.extend(lines)
    return "\n".join(out) + "\n"


def _standard_table(s: _Standard) -> list[str]:
    t = s.transition
    lines = [f"[internal_standards.{_key(s.name)}]   # {t.name}, line {t.line}"]
    for note in s.notes:
        lines += _comment(note)
    return lines + [f"q1 = {_number(t.q1)}", f"q3 = {_number(t.q3)}", f"rt = {_number(s.rt)}   # {s.rt_text} s"]


def _analyte_table(a: _Analyte) -> list[str]:
    t = a.quantifier
    lines = [f"[analytes.{_key(a.name)}]   # {t.name}, line {t.line}"]
    for note in a.notes:
        lines += _comment(note)
    lines += [
        f"internal_standard = {_string(a.internal_standard)}",
        f"rt = {_number(a.rt)}   # {a.rt_text} s",
        f"quantifier = {{ q1 = {_number(t.q1)}, q3 = {_number(t.q3)} }}",
    ]
    if a.qualifiers:
        lines.append("qualifiers = [")
        for q in a.qualifiers:
            lines.append(f"    {{ q1 = {_number(q.q1)}, q3 = {_number(q.q3)} }},   # {q.name}, line {q.line}")
        lines.append("]")
    return lines


# ---------------------------------------------------------------------------------------------
# The whole import


def import_transition_list(path: Path | str, out_path: Path | str, name: str | None = None, **options) -> Path:
    """Read a transition list, convert it (options go to method_from_transition_list), check
    that load_method accepts the very bytes, and write them atomically to out_path."""
    path, out_path = Path(path), Path(out_path)
    table = read_transition_list(path)
    text = method_from_transition_list(table, name or out_path.stem, source=str(path), **options)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".import-") as tmp:
        probe = Path(tmp) / out_path.name  # beside the target: relative paths resolve alike
        probe.write_text(text, encoding="utf-8")
        load_method(probe)
    return atomic_write(out_path, text)
