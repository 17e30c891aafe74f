"""The assay definition: transitions, internal standards, calibrator sets and acceptance settings.

A method is a TOML file (format documented in the README). Loading it validates every key and
reports all problems at once, so a chemist fixes the file in one pass.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lcmsquant.files import InputError, not_a_file, parse_decimal
from lcmsquant.vocabulary import MATRICES, QC_LEVELS

MODELS = ("linear", "linear_through_zero", "quadratic")
WEIGHTINGS = ("none", "1/x", "1/x^2", "1/y", "1/y^2")
CALIBRATOR_LEVEL = re.compile(r"^CAL\d+$")

# EU 2002/657: (relative abundance of the qualifier in %, lower bound) -> tolerance in % of the ratio.
DEFAULT_ION_RATIO_TIERS: tuple[tuple[float, float], ...] = ((50.0, 20.0), (20.0, 25.0), (10.0, 30.0), (0.0, 50.0))


# What a run with a peaks-only method (see Method.peaks_only) says it is, in the run summary,
# run.json and the report.
PEAKS_ONLY = "peaks only: no calibration"


class MethodError(InputError):
    """A method or calibrator file that cannot be used; `problems` lists every reason."""

    kind = "method"


@dataclass(frozen=True)
class Transition:
    """One SRM transition Q1 -> Q3 and what it measures."""

    compound: str
    role: str  # "quantifier", "qualifier" or "internal_standard"
    q1: float
    q3: float
    index: int = 0  # qualifier number, 0 for quantifier and IS

    @property
    def name(self) -> str:
        """A readable name: 'M1 quantifier', 'M1 qualifier', 'M1 qualifier 2', 'M3-d4 internal standard'."""
        if self.role == "qualifier":
            return f"{self.compound} qualifier {self.index}" if self.index > 1 else f"{self.compound} qualifier"
        return f"{self.compound} {self.role.replace('_', ' ')}"


@dataclass(frozen=True)
class InternalStandard:
    """An internal standard: its transition and expected RT."""

    name: str
    transition: Transition
    rt: float  # expected retention time, minutes


@dataclass(frozen=True)
class Analyte:
    """An analyte: quantifier and qualifier transitions, its internal standard, expected RT and curve."""

    name: str
    quantifier: Transition
    qualifiers: tuple[Transition, ...]
    internal_standard: str
    rt: float  # expected retention time, minutes
    model: str
    weighting: str


@dataclass(frozen=True)
class CalibratorSet:
    """Nominal concentrations (method units) of calibrator and QC levels, for some matrices."""

    name: str
    matrices: tuple[str, ...]
    nominals: pd.DataFrame = field(compare=False, repr=False)  # columns level, analyte, nominal
    source: str = ""

    def nominal(self, level: str, analyte: str) -> float | None:
        """The nominal concentration of a level for an analyte, or None when the set has none."""
        return self._by_level_analyte.get((level, analyte))

    @cached_property
    def _by_level_analyte(self) -> dict[tuple[str, str], float]:
        """(level, analyte) -> nominal; looked up once per injection and analyte."""
        table = self.nominals
        return {(lv, an): float(v) for lv, an, v in zip(table["level"], table["analyte"], table["nominal"])}

    @property
    def levels(self) -> tuple[str, ...]:
        """The set's levels (CAL1.., LLOQ, LQC, ...), in file order."""
        return tuple(dict.fromkeys(self.nominals["level"]))


@dataclass(frozen=True)
class Integration:
    """Peak search settings (minutes)."""

    rt_window: float = 0.30  # half-width of the search window around the expected RT
    anchored_rt_window: float = 0.10  # half-width around the RT predicted from the found IS
    min_detection_sn: float = 3.0  # below this S/N no peak is reported (NO_PEAK)
    min_sn: float = 5.0  # a quantifier peak below this S/N is flagged LOW_SN
    no_peak_as_blq: bool = False  # report a study sample without a peak as BLQ (else NO_PEAK only)


@dataclass(frozen=True)
class Identity:
    """Peak identity checks: RT and qualifier/quantifier ion ratio."""

    rt_tolerance: float = 0.10  # minutes, against the IS-predicted RT
    rrt_tolerance_pct: float = 1.0  # relative RT (analyte / IS) against the method's
    ion_ratio_tiers: tuple[tuple[float, float], ...] = DEFAULT_ION_RATIO_TIERS

    def ion_ratio_tolerance_pct(self, reference_ratio: float) -> float:
        """Allowed deviation (% of the reference) for a qualifier of this relative abundance."""
        abundance = 100.0 * reference_ratio
        for lower, tolerance in self.ion_ratio_tiers:
            if abundance > lower:
                return tolerance
        return self.ion_ratio_tiers[-1][1]


@dataclass(frozen=True)
class Acceptance:
    """Run acceptance limits; defaults are ICH M10 (2022) section 3.3 and 4.4 numbers."""

    calibrator_tolerance_pct: float = 15.0
    lloq_tolerance_pct: float = 20.0
    min_calibrator_fraction: float = 0.75
    min_calibrator_levels: int = 6
    min_level_replicate_fraction: float = 0.5
    qc_tolerance_pct: float = 15.0
    lloq_qc_tolerance_pct: float = 20.0
    min_qc_fraction: float = 2.0 / 3.0
    min_qc_level_fraction: float = 0.5
    is_response_band_pct: tuple[float, float] = (50.0, 150.0)
    carryover_pct_of_lloq: float = 20.0
    carryover_is_pct: float = 5.0
    selectivity_pct_of_lloq: float = 20.0
    selectivity_is_pct: float = 5.0
    is_drift_pct: float = 20.0  # lab SOP: IS trend over the run, and study samples' median offset


REANALYSIS_RULES = ("first_valid", "repeat")
BLQ_RATIO_POLICIES = ("censor", "half_lloq")


# Why a reviewer changes an integration: the pick list `lcmsquant review` offers (free text may
# follow), unless the method's [review] table gives its own `reasons`.
REVIEW_REASONS = (
    "Baseline drawn incorrectly",
    "Peak split at noise",
    "Wrong peak integrated",
    "Peak not detected",
    "Interference / co-eluting peak",
    "No peak present",
    "Same window for all injections (SOP)",
    "Calibrator excluded: assignable cause",
)
MAX_REASON = 200


@dataclass(frozen=True)
class CohortSettings:
    """How results of many runs are combined ([cohort] table): which analysis of a reanalysed
    sample is reported, how a BLQ value enters a ratio, the trough window and SDTM test names."""

    reanalysis: str = "first_valid"  # first_valid: a repeat never replaces a valid original (ISR)
    blq_ratio_policy: str = "censor"  # censor: "<" bound, out of the statistics; half_lloq: LLOQ/2
    trough_window_h: tuple[float, float] = (20.0, 28.0)  # hours since the last dose
    last_dose_column: str = "last_dose_time"  # worklist column, ISO 8601 date-time
    sampling_column: str = "sampling_time"  # worklist column, ISO 8601 date-time
    sdtm_testcd: tuple[tuple[str, str], ...] = ()  # analyte -> PCTESTCD
    sdtm_test: tuple[tuple[str, str], ...] = ()  # analyte -> PCTEST


@dataclass(frozen=True)
class Method:
    """An assay: transitions, calibrator sets and the limits a run is judged against (a method TOML file)."""

    name: str
    version: str
    units: str
    mz_tolerance: float
    analytes: tuple[Analyte, ...]
    internal_standards: tuple[InternalStandard, ...]
    calibrator_sets: tuple[CalibratorSet, ...]
    integration: Integration
    identity: Identity
    acceptance: Acceptance
    path: str = ""
    sha256: str = ""
    cohort: CohortSettings = CohortSettings()
    review_reasons: tuple[str, ...] = REVIEW_REASONS  # [review] reasons: the pick list of lcmsquant review

    def analyte(self, name: str) -> Analyte:
        """The analyte of that name."""
        return next(a for a in self.analytes if a.name == name)

    def internal_standard(self, name: str) -> InternalStandard:
        """The internal standard of that name."""
        return next(i for i in self.internal_standards if i.name == name)

    def calibrator_set_for(self, matrix: str) -> CalibratorSet | None:
        """The calibrator set serving a matrix, or None."""
        return next((s for s in self.calibrator_sets if matrix in s.matrices), None)

    @property
    def peaks_only(self) -> bool:
        """No calibrator sets (a method imported from a transition list): the method integrates
        peaks but cannot quantify, so a run with it has no curve, no concentration, no verdict."""
        return not self.calibrator_sets

    def transitions(self) -> tuple[Transition, ...]:
        """Every transition the instrument must deliver, internal standards first."""
        out = [i.transition for i in self.internal_standards]
        for a in self.analytes:
            out.append(a.quantifier)
            out.extend(a.qualifiers)
        return tuple(out)

    def expected_rt(self, transition: Transition) -> float:
        """The expected RT (minutes) of a transition: its compound's."""
        if transition.role == "internal_standard":
            return self.internal_standard(transition.compound).rt
        return self.analyte(transition.compound).rt

    def with_calibrator_sets(self, sets: tuple[CalibratorSet, ...]) -> Method:
        """This method with some calibrator sets replaced (a batch's own calibrators.csv)."""
        replaced = {m for s in sets for m in s.matrices}
        kept = []
        for s in self.calibrator_sets:
            remaining = tuple(m for m in s.matrices if m not in replaced)
            if remaining:
                kept.append(CalibratorSet(s.name, remaining, s.nominals, s.source))
        return replace(self, calibrator_sets=tuple(kept) + tuple(sets))


def shipped_path(*parts: str) -> Path:
    """A file of the shipped assay (methods/, calibrators/), installed or in a source checkout."""
    installed = resources.files("lcmsquant").joinpath("assets", *parts)
    if installed.is_file():
        return Path(str(installed))
    checkout = Path(__file__).resolve().parents[2].joinpath(*parts)
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(f"shipped file {'/'.join(parts)} is missing from this installation")


def default_method_path() -> Path:
    """The shipped flumatinib method (installed with the package, or in the checkout)."""
    return shipped_path("methods", "flumatinib.toml")


# ---------------------------------------------------------------------------------------------
# Loading and validation


_TOP_KEYS = {
    "name",
    "version",
    "description",
    "units",
    "mz_tolerance",
    "calibration",
    "calibrator_sets",
    "integration",
    "identity",
    "acceptance",
    "internal_standards",
    "analytes",
    "cohort",
    "review",
}
_ANALYTE_KEYS = {"internal_standard", "rt", "quantifier", "qualifiers", "model", "weighting"}
_IS_KEYS = {"q1", "q3", "rt"}
_SET_KEYS = {"file", "matrices"}


# The range a method value can sensibly take (inclusive): a value outside it is a typing error
# (1e9 for 15, an RT in seconds), refused rather than run. Keys absent here need only be positive.
PLAUSIBLE: dict[str, tuple[float, float, str]] = {
    "mz_tolerance": (0.0001, 5.0, "Da"),
    "q1": (1.0, 5000.0, "m/z"),
    "q3": (1.0, 5000.0, "m/z"),
    "rt": (0.0, 600.0, "min"),
    "rt_window": (0.005, 10.0, "min"),
    "anchored_rt_window": (0.005, 10.0, "min"),
    "min_detection_sn": (0.1, 1000.0, ""),
    "min_sn": (0.1, 1000.0, ""),
    "rt_tolerance": (0.001, 10.0, "min"),
    "rrt_tolerance_pct": (0.01, 100.0, "%"),
    "calibrator_tolerance_pct": (0.1, 100.0, "%"),
    "lloq_tolerance_pct": (0.1, 100.0, "%"),
    "qc_tolerance_pct": (0.1, 100.0, "%"),
    "lloq_qc_tolerance_pct": (0.1, 100.0, "%"),
    "min_calibrator_fraction": (0.01, 1.0, ""),
    "min_calibrator_levels": (2, 100, "levels"),
    "min_level_replicate_fraction": (0.01, 1.0, ""),
    "min_qc_fraction": (0.01, 1.0, ""),
    "min_qc_level_fraction": (0.01, 1.0, ""),
    "carryover_pct_of_lloq": (0.1, 1000.0, "%"),
    "carryover_is_pct": (0.1, 100.0, "%"),
    "selectivity_pct_of_lloq": (0.1, 1000.0, "%"),
    "selectivity_is_pct": (0.1, 100.0, "%"),
    "is_drift_pct": (0.1, 1000.0, "%"),
}
_INTEGER_KEYS = {"min_calibrator_levels"}

# The acceptance limits in a chemist's words, as the report lists them (in this order): key ->
# (words, factor the value is multiplied by to read in the words' unit). Fractions read as %.
ACCEPTANCE_LABELS: dict[str, tuple[str, float]] = {
    "calibrator_tolerance_pct": ("calibrators, back-calculated accuracy (± % of nominal)", 1.0),
    "lloq_tolerance_pct": ("LLOQ calibrator, back-calculated accuracy (± % of nominal)", 1.0),
    "min_calibrator_fraction": ("calibrators within tolerance, minimum (% of calibrators)", 100.0),
    "min_calibrator_levels": ("calibrator levels passing, minimum (levels)", 1.0),
    "min_level_replicate_fraction": ("replicates passing per calibrator level, minimum (% of the level)", 100.0),
    "qc_tolerance_pct": ("QCs, accuracy (± % of nominal)", 1.0),
    "lloq_qc_tolerance_pct": ("LLOQ QCs, accuracy (± % of nominal)", 1.0),
    "min_qc_fraction": ("QCs within tolerance, minimum (% of all QCs)", 100.0),
    "min_qc_level_fraction": ("QCs within tolerance per level, minimum (% of the level)", 100.0),
    "is_response_band_pct": ("IS response band (% of mean calibrator/QC IS response)", 1.0),
    "is_drift_pct": ("IS response drift over the run, and study samples' median offset (± %)", 1.0),
    "carryover_pct_of_lloq": ("carry-over, analyte (% of mean LLOQ calibrator response)", 1.0),
    "carryover_is_pct": ("carry-over, IS (% of mean IS response)", 1.0),
    "selectivity_pct_of_lloq": ("selectivity, analyte in blanks and zeros (% of mean LLOQ calibrator response)", 1.0),
    "selectivity_is_pct": ("selectivity, IS in blanks (% of mean IS response)", 1.0),
}


class _Problems(list):
    def unknown_keys(self, table: dict, allowed: set[str], where: str) -> None:
        for key in sorted(set(table) - allowed):
            self.append(f"{where}: unknown key '{key}' (allowed: {', '.join(sorted(allowed))})")

    def number(self, table: dict, key: str, where: str, *, default=None, positive=True, required=False):
        if key not in table:
            if required:
                self.append(f"{where}: missing required key '{key}'")
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.append(f"{where}.{key}: expected a number, got {value!r}")
            return default
        if not math.isfinite(value):
            self.append(f"{where}.{key}: expected a finite number, got {value!r}")
            return default
        if key in _INTEGER_KEYS and value != int(value):
            self.append(f"{where}.{key}: expected a whole number, got {value!r}")
            return default
        if positive and value <= 0:
            self.append(f"{where}.{key}: must be greater than 0, got {value!r}")
            return default
        if value < 0:
            self.append(f"{where}.{key}: must not be negative, got {value!r}")
            return default
        if key in PLAUSIBLE and not PLAUSIBLE[key][0] <= value <= PLAUSIBLE[key][1]:
            low, high, unit = PLAUSIBLE[key]
            self.append(
                f"{where}.{key}: {value!r} is outside the plausible range {low:g} to {high:g}{' ' + unit if unit else ''}: check the value"
            )
            return default
        return float(value)


def load_method(path: Path | str) -> Method:
    """Read and validate a method TOML file.

    Parameters
    ----------
    path : path-like
        The method file (see the documentation's "The method file" page for every key).

    Returns
    -------
    Method
        The assay, with the file's path and SHA-256 (recorded in every run's provenance).

    Raises
    ------
    MethodError
        Listing every problem, each naming its table and key.
    """
    path = Path(path)
    if (problem := not_a_file(path)) and not problem.startswith("does not exist"):
        raise MethodError(path, [f"the method file {problem}: give a method TOML file"])
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise MethodError(path, [f"cannot read the method file: {err.strerror}"]) from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise MethodError(path, [f"not valid TOML: {err}"]) from None
    method = parse_method(doc, base_dir=path.parent, source=str(path))
    return replace(method, path=str(path), sha256=hashlib.sha256(raw).hexdigest())


def parse_method(doc: dict[str, Any], base_dir: Path, source: str = "method") -> Method:
    """Build a Method from a parsed TOML document (see load_method)."""
    p = _Problems()
    p.unknown_keys(doc, _TOP_KEYS, "top level")
    name = str(doc.get("name", ""))
    if not name:
        p.append("top level: missing required key 'name'")
    version = str(doc.get("version", "1"))
    units = str(doc.get("units", "ng/mL"))
    mz_tol = p.number(doc, "mz_tolerance", "top level", default=0.5)

    calibration = _table(doc, "calibration", p)
    p.unknown_keys(calibration, {"model", "weighting"}, "[calibration]")
    default_model = _choice(calibration, "model", MODELS, "[calibration]", p, "linear")
    default_weighting = _choice(calibration, "weighting", WEIGHTINGS, "[calibration]", p, "1/x^2")

    integration = _settings(Integration, _table(doc, "integration", p), "[integration]", p)
    identity = _identity(_table(doc, "identity", p), p)
    acceptance = _acceptance(_table(doc, "acceptance", p), p)

    internal_standards = []
    for is_name, table in _table(doc, "internal_standards", p).items():
        where = f"[internal_standards.{is_name}]"
        if not isinstance(table, dict):
            p.append(f"{where}: expected a table with q1, q3, rt")
            continue
        p.unknown_keys(table, _IS_KEYS, where)
        q1 = p.number(table, "q1", where, required=True)
        q3 = p.number(table, "q3", where, required=True)
        rt = p.number(table, "rt", where, required=True)
        if None not in (q1, q3, rt):
            internal_standards.append(InternalStandard(is_name, Transition(is_name, "internal_standard", q1, q3), rt))
    is_names = {i.name for i in internal_standards}

    analytes = []
    analyte_tables = _table(doc, "analytes", p)
    if not analyte_tables:
        p.append("[analytes]: the method defines no analyte")
    for a_name, table in analyte_tables.items():
        where = f"[analytes.{a_name}]"
        if not isinstance(table, dict):
            p.append(f"{where}: expected a table")
            continue
        p.unknown_keys(table, _ANALYTE_KEYS, where)
        is_name = table.get("internal_standard")
        if not is_name:
            p.append(f'{where}: analyte without internal standard: add internal_standard = "NAME"')
        elif not isinstance(is_name, str):
            p.append(f"{where}.internal_standard: expected the name of an internal standard, got {is_name!r}")
        elif is_name not in is_names:
            p.append(f"{where}.internal_standard: '{is_name}' is not defined under [internal_standards]")
        rt = p.number(table, "rt", where, required=True)
        quant = _transition(table.get("quantifier"), a_name, "quantifier", 0, f"{where}.quantifier", p)
        quals_raw = table.get("qualifiers", [])
        if isinstance(quals_raw, dict):
            quals_raw = [quals_raw]
        if not isinstance(quals_raw, list):
            p.append(f"{where}.qualifiers: expected a list of {{ q1 = ..., q3 = ... }}")
            quals_raw = []
        quals = [
            _transition(q, a_name, "qualifier", i + 1, f"{where}.qualifiers[{i}]", p) for i, q in enumerate(quals_raw)
        ]
        model = _choice(table, "model", MODELS, where, p, default_model)
        weighting = _choice(table, "weighting", WEIGHTINGS, where, p, default_weighting)
        if quant is not None and rt is not None and None not in quals:
            analytes.append(
                Analyte(
                    a_name, quant, tuple(q for q in quals if q is not None), str(is_name or ""), rt, model, weighting
                )
            )
    used_is = {a.internal_standard for a in analytes}
    for i in internal_standards:
        if i.name not in used_is:
            p.append(f"[internal_standards.{i.name}]: not used by any analyte")

    method_stub = Method(
        name,
        version,
        units,
        mz_tol or 0.5,
        tuple(analytes),
        tuple(internal_standards),
        (),
        integration,
        identity,
        acceptance,
    )
    _check_transitions_distinct(method_stub, p)

    sets = []
    set_tables = _table(doc, "calibrator_sets", p)  # none: the method can integrate but not quantify
    for set_name, table in set_tables.items():
        where = f"[calibrator_sets.{set_name}]"
        if not isinstance(table, dict):
            p.append(f"{where}: expected a table with file and matrices")
            continue
        p.unknown_keys(table, _SET_KEYS, where)
        matrices = table.get("matrices", [])
        if not isinstance(matrices, list) or not matrices:
            p.append(f"{where}.matrices: expected a non-empty list of matrices ({', '.join(MATRICES)})")
            matrices = []
        for m in matrices:
            if m not in MATRICES:
                p.append(f"{where}.matrices: unknown matrix '{m}' (known: {', '.join(MATRICES)})")
        if "file" not in table:
            p.append(f"{where}: missing required key 'file'")
            continue
        file = (base_dir / str(table["file"])).resolve()
        if problem := not_a_file(file):
            p.append(
                f"{where}.file: calibrator file {file} {problem} "
                f"(a relative path is taken from the method file's folder, {base_dir})"
            )
            continue
        try:
            nominals = read_calibrator_csv(file)
        except MethodError as err:
            p.extend(f"{where}.file: {e}" for e in err.problems)
            continue
        sets.append(CalibratorSet(set_name, tuple(m for m in matrices if m in MATRICES), nominals, str(file)))
    _check_matrix_coverage(sets, p)
    for s in sets:
        p.extend(check_calibrator_set(s, method_stub))

    cohort = _cohort(_table(doc, "cohort", p), [a.name for a in analytes], p)
    review_reasons = _review_reasons(_table(doc, "review", p), p)

    if p:
        raise MethodError(source, list(p))
    return replace(method_stub, calibrator_sets=tuple(sets), cohort=cohort, review_reasons=review_reasons)


def _review_reasons(table: dict, p: _Problems) -> tuple[str, ...]:
    p.unknown_keys(table, {"reasons"}, "[review]")
    if "reasons" not in table:
        return REVIEW_REASONS
    reasons = table["reasons"]
    if (
        not isinstance(reasons, list)
        or not reasons
        or not all(isinstance(r, str) and r.strip() and r.isprintable() and len(r) <= MAX_REASON for r in reasons)
    ):
        p.append(
            f"[review].reasons: expected a list of reasons (one line of text each, at most {MAX_REASON} characters), got {reasons!r}"
        )
        return REVIEW_REASONS
    return tuple(dict.fromkeys(r.strip() for r in reasons))


def _table(doc: dict, key: str, p: _Problems) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        p.append(f"[{key}]: expected a table, got {type(value).__name__}")
        return {}
    return value


def _choice(table: dict, key: str, allowed: tuple[str, ...], where: str, p: _Problems, default: str) -> str:
    value = table.get(key, default)
    if value not in allowed:
        p.append(f"{where}.{key}: unknown value {value!r} (allowed: {', '.join(allowed)})")
        return default
    return value


def _settings(cls, table: dict, where: str, p: _Problems):
    defaults = cls()
    allowed = set(cls.__dataclass_fields__)
    p.unknown_keys(table, allowed, where)
    values = {}
    for key in allowed & set(table):
        default = getattr(defaults, key)
        if isinstance(default, bool):
            if isinstance(table[key], bool):
                values[key] = table[key]
            else:
                p.append(f"{where}.{key}: expected true or false, got {table[key]!r}")
            continue
        values[key] = p.number(table, key, where, default=default)
    return cls(**values)


def _identity(table: dict, p: _Problems) -> Identity:
    where = "[identity]"
    p.unknown_keys(table, {"rt_tolerance", "rrt_tolerance_pct", "ion_ratio_tolerance"}, where)
    rt_tol = p.number(table, "rt_tolerance", where, default=Identity.rt_tolerance)
    rrt_tol = p.number(table, "rrt_tolerance_pct", where, default=Identity.rrt_tolerance_pct)
    tiers = DEFAULT_ION_RATIO_TIERS
    if "ion_ratio_tolerance" in table:
        raw = table["ion_ratio_tolerance"]
        ok = (
            isinstance(raw, list)
            and raw
            and all(
                isinstance(t, list)
                and len(t) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 100 for v in t)
                for t in raw
            )
        )
        if not ok:
            p.append(
                f"{where}.ion_ratio_tolerance: expected a list of [relative_abundance_pct, tolerance_pct] "
                "pairs of numbers from 0 to 100, e.g. [[50, 20], [20, 25], [10, 30], [0, 50]]"
            )
        else:
            tiers = tuple(sorted(((float(a), float(t)) for a, t in raw), reverse=True))
    return Identity(rt_tol, rrt_tol, tiers)


def _acceptance(table: dict, p: _Problems) -> Acceptance:
    where = "[acceptance]"
    defaults = Acceptance()
    allowed = set(Acceptance.__dataclass_fields__)
    p.unknown_keys(table, allowed, where)
    values: dict[str, Any] = {}
    for key in allowed & set(table):
        if key == "is_response_band_pct":
            band = table[key]
            if (
                not isinstance(band, list)
                or len(band) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1000 for v in band)
                or band[0] >= band[1]
            ):
                p.append(f"{where}.{key}: expected [low, high] percentages (0 to 1000) with low < high, got {band!r}")
            else:
                values[key] = (float(band[0]), float(band[1]))
            continue
        value = p.number(table, key, where, default=getattr(defaults, key))
        if key.startswith("min_") and key.endswith("fraction") and value is not None and value > 1:
            p.append(f"{where}.{key}: a fraction between 0 and 1, got {value!r}")
            continue
        values[key] = int(value) if key == "min_calibrator_levels" else value
    return Acceptance(**values)


SDTM_TESTCD = re.compile(r"^[A-Z_][A-Z0-9_]{0,7}$")


def _cohort(table: dict, analytes: list[str], p: _Problems) -> CohortSettings:
    where = "[cohort]"
    defaults = CohortSettings()
    p.unknown_keys(table, set(CohortSettings.__dataclass_fields__), where)
    values: dict[str, Any] = {}
    values["reanalysis"] = _choice(table, "reanalysis", REANALYSIS_RULES, where, p, defaults.reanalysis)
    values["blq_ratio_policy"] = _choice(
        table, "blq_ratio_policy", BLQ_RATIO_POLICIES, where, p, defaults.blq_ratio_policy
    )
    if "trough_window_h" in table:
        window = table["trough_window_h"]
        if (
            not isinstance(window, list)
            or len(window) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 24 * 365 for v in window)
            or window[0] >= window[1]
        ):
            p.append(
                f"{where}.trough_window_h: expected [earliest, latest] hours after the dose with earliest < latest, got {window!r}"
            )
        else:
            values["trough_window_h"] = (float(window[0]), float(window[1]))
    for key in ("last_dose_column", "sampling_column"):
        if key in table:
            if isinstance(table[key], str) and table[key].strip():
                values[key] = table[key].strip()
            else:
                p.append(f"{where}.{key}: expected a worklist column name, got {table[key]!r}")
    for key, limit in (("sdtm_testcd", 8), ("sdtm_test", 40)):
        names = table.get(key, {})
        if not isinstance(names, dict):
            p.append(f'{where}.{key}: expected a table analyte = "NAME", got {names!r}')
            continue
        for analyte, name in names.items():
            if analyte not in analytes:
                p.append(f"{where}.{key}: '{analyte}' is not an analyte of the method ({', '.join(analytes)})")
            elif not isinstance(name, str) or not name.strip() or len(name) > limit:
                p.append(f"{where}.{key}.{analyte}: expected text of at most {limit} characters, got {name!r}")
            elif key == "sdtm_testcd" and not SDTM_TESTCD.match(name):
                p.append(
                    f"{where}.{key}.{analyte}: {name!r} is not an SDTM test code (upper-case letters, digits "
                    "and _, not starting with a digit)"
                )
        codes = [v for v in names.values() if isinstance(v, str)]
        if key == "sdtm_testcd" and len(set(codes)) < len(codes):
            p.append(f"{where}.{key}: two analytes share a test code ({', '.join(sorted(codes))})")
        values[key] = tuple((a, str(n)) for a, n in names.items())
    return CohortSettings(**values)


def _transition(raw, compound: str, role: str, index: int, where: str, p: _Problems) -> Transition | None:
    if not isinstance(raw, dict):
        p.append(f"{where}: expected {{ q1 = <precursor m/z>, q3 = <product m/z> }}, got {raw!r}")
        return None
    p.unknown_keys(raw, {"q1", "q3"}, where)
    q1 = p.number(raw, "q1", where, required=True)
    q3 = p.number(raw, "q3", where, required=True)
    if q1 is None or q3 is None:
        return None
    return Transition(compound, role, q1, q3, index)


def _check_transitions_distinct(method: Method, p: _Problems) -> None:
    """Two transitions within the m/z tolerance can only be told apart by retention time: their
    search windows must not overlap (isomers on one Q1/Q3 pair, as in scheduled SRM)."""
    tol = method.mz_tolerance
    separation = 2 * method.integration.rt_window
    seen: list[Transition] = []
    for t in method.transitions():
        for other in seen:
            same_mz = abs(t.q1 - other.q1) <= tol and abs(t.q3 - other.q3) <= tol
            if same_mz and abs(method.expected_rt(t) - method.expected_rt(other)) < separation:
                p.append(
                    f"transition {t.q1:g}->{t.q3:g} is used twice ({other.name} and {t.name}) "
                    f"within the m/z tolerance {tol:g} and less than 2 x rt_window apart"
                )
        seen.append(t)


def _check_matrix_coverage(sets: list[CalibratorSet], p: _Problems) -> None:
    owner: dict[str, str] = {}
    for s in sets:
        for m in s.matrices:
            if m in owner:
                p.append(f"[calibrator_sets]: matrix '{m}' is served by both '{owner[m]}' and '{s.name}'")
            owner[m] = s.name


def read_calibrator_csv(path: Path | str) -> pd.DataFrame:
    """Read a `level,analyte,nominal` file (extra `matrix` column allowed); raise MethodError."""
    path = Path(path)
    if (problem := not_a_file(path)) and not problem.startswith("does not exist"):
        raise MethodError(path, [f"calibrator file {path} {problem}"])
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=True, encoding="utf-8-sig")
    except FileNotFoundError:
        raise MethodError(path, [f"calibrator file {path} does not exist"]) from None
    except pd.errors.EmptyDataError:
        raise MethodError(
            path, [f"calibrator file {path} is empty: it needs a header `level,analyte,nominal` and a line per level"]
        ) from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise MethodError(path, [f"cannot read calibrator file {path}: {err}"]) from None
    table.columns = [c.strip() for c in table.columns]
    missing = {"level", "analyte", "nominal"} - set(table.columns)
    if missing:
        raise MethodError(path, [f"{path.name}: missing column(s) {', '.join(sorted(missing))}"])
    problems = []
    nominal = pd.Series([_decimal_or_nan(v) for v in table["nominal"]], index=table.index, dtype=float)
    for i, (value, num) in enumerate(zip(table["nominal"], nominal)):
        if pd.isna(num) or num <= 0:
            problems.append(f"{path.name} line {i + 2}: nominal {value!r} is not a positive number")
    table = table.assign(level=table["level"].str.strip(), analyte=table["analyte"].str.strip(), nominal=nominal)
    for i, level in enumerate(table["level"]):
        if not (CALIBRATOR_LEVEL.match(level) or level in QC_LEVELS):
            problems.append(
                f"{path.name} line {i + 2}: level {level!r} is neither CAL<n> nor one of {', '.join(QC_LEVELS)}"
            )
    keys = ["matrix", "level", "analyte"] if "matrix" in table.columns else ["level", "analyte"]
    for i in table.index[table.duplicated(keys, keep="first")]:
        problems.append(f"{path.name} line {i + 2}: {' '.join(table.loc[i, keys])} is listed twice")
    if problems:
        raise MethodError(path, problems)
    return table


def _decimal_or_nan(text: str) -> float:
    try:
        return parse_decimal(text)
    except ValueError:
        return math.nan


def check_calibrator_set(s: CalibratorSet, method: Method, needs_qcs: bool = True) -> list[str]:
    """Every analyte needs enough calibrator levels; unknown analytes are refused.

    needs_qcs: the low, mid and high QC levels must be there (a method's own set, and a batch's
    calibrators.csv when the batch holds QCs it serves); the QC levels given are checked anyway.
    """
    where = f"calibrator set '{s.name}' ({Path(s.source).name})"
    problems = []
    known = {a.name for a in method.analytes}
    for unknown in sorted(set(s.nominals["analyte"]) - known):
        problems.append(f"{where}: analyte '{unknown}' is not in the method")
    for a in method.analytes:
        rows = s.nominals[s.nominals["analyte"] == a.name]
        cal = rows[rows["level"].str.match(CALIBRATOR_LEVEL)]
        if len(cal) < method.acceptance.min_calibrator_levels:
            problems.append(
                f"{where}: {a.name} has {len(cal)} calibrator levels, "
                f"ICH M10 needs at least {method.acceptance.min_calibrator_levels}"
            )
            continue
        low, high = cal["nominal"].min(), cal["nominal"].max()
        qcs = rows[~rows["level"].str.match(CALIBRATOR_LEVEL)]
        missing = [lvl for lvl in ("LQC", "MQC", "HQC") if lvl not in set(qcs["level"])]
        if missing and needs_qcs:
            problems.append(
                f"{where}: {a.name} has no {', '.join(missing)} level: ICH M10 3.3.1 needs low, mid and high QCs; "
                f"add the missing levels to {Path(s.source).name}"
            )
        for _, qc in qcs.iterrows():
            if qc["level"] != "DQC" and not (low <= qc["nominal"] <= high):
                problems.append(
                    f"{where}: {a.name} {qc['level']} nominal {qc['nominal']:g} lies outside the "
                    f"calibration range {low:g}-{high:g}"
                )
                continue
            problems += _qc_placement(where, a.name, qc["level"], float(qc["nominal"]), float(low), float(high))
    return problems


def _qc_placement(where: str, analyte: str, level: str, nominal: float, low: float, high: float) -> list[str]:
    """QC levels where ICH M10 3.2.5.1 puts them: LLOQ, <= 3x LLOQ, 30-50 % of the range, >= 75 % of ULOQ."""
    say = f"{where}: {analyte} {level} nominal {nominal:g}"
    if level == "LLOQ" and not np.isclose(nominal, low):
        return [f"{say} is not the lowest calibrator ({low:g})"]
    if level == "LQC" and nominal > 3 * low + 1e-12:
        return [f"{say} is above 3x the LLOQ ({3 * low:g})"]
    if level == "MQC" and not (0.3 * high - 1e-12 <= nominal <= 0.5 * high + 1e-12):
        return [f"{say} is not within 30-50 % of the ULOQ ({0.3 * high:g}-{0.5 * high:g})"]
    if level == "HQC" and nominal < 0.75 * high - 1e-12:
        return [f"{say} is below 75 % of the ULOQ ({0.75 * high:g})"]
    if level == "DQC" and nominal <= high:
        return [f"{say} is not above the ULOQ ({high:g}): a dilution QC must need diluting"]
    return []
