"""The project's words, defined once: sample types, matrices, QC levels, result flags and the
ids of the acceptance rules.

Each is a `StrEnum`, so a member is the very string written into the tables (`Flag.BLQ ==
"BLQ"`) and the code, the tests and the documentation all name the same thing.
"""

from __future__ import annotations

from enum import StrEnum


class SampleType(StrEnum):
    """What an injection is (the worklist's `sample_type`)."""

    BLANK = "blank"  # matrix without analyte or IS
    ZERO = "zero"  # matrix with IS only
    CALIBRATOR = "calibrator"
    QC = "qc"
    UNKNOWN = "unknown"  # a study sample


class PeakStatus(StrEnum):
    """What measuring a transition gave (peaks.csv's `status`)."""

    OK = "OK"  # a peak was found and integrated
    NO_PEAK = "NO_PEAK"  # the trace was read, no peak passed detection
    NO_DATA = "NO_DATA"  # no usable trace: the file or the transition could not be read


class Matrix(StrEnum):
    """The biological matrices the study measures (the worklist's `matrix`)."""

    PLASMA = "plasma"
    SERUM = "serum"
    MARROW = "marrow"
    CSF = "csf"


class QCLevel(StrEnum):
    """Quality-control levels (ICH M10 3.3.1); DQC is the dilution QC."""

    LLOQ = "LLOQ"
    LQC = "LQC"
    MQC = "MQC"
    HQC = "HQC"
    DQC = "DQC"


SAMPLE_TYPES = tuple(SampleType)
MATRICES = tuple(Matrix)
QC_LEVELS = tuple(QCLevel)
# Low, mid and high QC: every run needs them, and the range must hold them (ICH M10 3.3.1, 3.3.3).
CORE_QC_LEVELS = (QCLevel.LQC, QCLevel.MQC, QCLevel.HQC)


class Flag(StrEnum):
    """A result's flags (`;`-separated in results.csv's `flags`), each with what it means."""

    meaning: str

    def __new__(cls, value: str, meaning: str):
        member = str.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    NO_DATA = "NO_DATA", "file unreadable, or the quantifier/IS transition is missing or has fewer than 5 points"
    NO_PEAK = "NO_PEAK", "no peak passed detection (min_detection_sn): not detected is not zero"
    NO_IS = "NO_IS", "the internal standard peak was not found"
    BLQ = "BLQ", "curve value below the run's LLOQ (judged before dilution)"
    ALQ = "ALQ", "curve value above the run's ULOQ (judged before dilution)"
    OFF_CURVE = "OFF_CURVE", "the response lies beyond the vertex of a quadratic curve: no concentration exists on it"
    IS_RESPONSE = (
        "IS_RESPONSE",
        "IS area outside the method's band (default 50-150 % of the mean calibrator/QC IS area)",
    )
    ION_RATIO = "ION_RATIO", "qualifier/quantifier ratio outside its tolerance tier around the calibrators' mean"
    NO_QUALIFIER = "NO_QUALIFIER", "the qualifier transition is missing from the file"
    RT_SHIFT = (
        "RT_SHIFT",
        "apex further than rt_tolerance from the IS-predicted RT, the IS from its expected RT, "
        "or the relative RT off by more than rrt_tolerance_pct",
    )
    EDGE = (
        "EDGE",
        "a peak boundary sits on the first or last point of the trace, the signal there above 1 % of the height",
    )
    SATURATED = "SATURATED", "flat top at the detector's ceiling (quantifier or IS)"
    SPLIT = "SPLIT", "the peak was cut at a valley before or after a neighbouring peak"
    SHOULDER = "SHOULDER", "an unresolved co-eluting peak (no valley) bends the signal twice: check the integration"
    LOW_SN = "LOW_SN", "quantifier S/N below the method's min_sn"
    READ_WARNING = (
        "READ_WARNING",
        "reading the quantifier or IS trace changed something (NaN dropped, times sorted; "
        "see read_warnings in peaks.csv): check the chromatogram",
    )
    MANUAL = "MANUAL", "a transition of this row was integrated by hand (see audit.csv)"
    EXCLUDED = (
        "EXCLUDED",
        "calibrator excluded from the fit, by the exclusion rule or by an analyst (reason in exclusion_reason)",
    )
    QC_FAIL = "QC_FAIL", "QC outside its accuracy limit"
    DILUTION_QC = "DILUTION_QC", "the dilution QCs failed: diluted study samples go for reanalysis"
    REJECTED = "REJECTED", "the analyte's run failed acceptance"


# Flags that make a study sample's concentration not reportable at all (no value is given).
BLOCKING_FLAGS = (Flag.NO_DATA, Flag.NO_PEAK, Flag.BLQ, Flag.ALQ, Flag.REJECTED, Flag.NO_IS, Flag.OFF_CURVE)
# Flags that keep the value but send the sample for review or reanalysis.
REVIEW_FLAGS = (
    Flag.IS_RESPONSE,
    Flag.ION_RATIO,
    Flag.NO_QUALIFIER,
    Flag.RT_SHIFT,
    Flag.DILUTION_QC,
    Flag.EDGE,
    Flag.SATURATED,
    Flag.LOW_SN,
    Flag.SPLIT,
    Flag.SHOULDER,
    Flag.READ_WARNING,
)
# Flags about the integration itself: a chemist looks at the peak before anything is reinjected.
PEAK_REVIEW_FLAGS = (Flag.EDGE, Flag.SPLIT, Flag.SHOULDER, Flag.LOW_SN, Flag.READ_WARNING)
# Flags drawn on a chromatogram in the report.
PEAK_FLAGS = (
    Flag.NO_DATA,
    Flag.NO_PEAK,
    Flag.RT_SHIFT,
    Flag.EDGE,
    Flag.SATURATED,
    Flag.LOW_SN,
    Flag.SPLIT,
    Flag.SHOULDER,
)


def flag_list(flags: str) -> list[str]:
    """The flags of a `flags` cell ("BLQ;ION_RATIO" -> ["BLQ", "ION_RATIO"])."""
    return [f for f in str(flags).split(";") if f]


class RuleCategory(StrEnum):
    """The report section an acceptance rule belongs to."""

    CALIBRATION = "calibration"
    QC = "qc"
    CARRYOVER = "carryover"
    SELECTIVITY = "selectivity"
    IS_RESPONSE = "is_response"


class RuleId(StrEnum):
    """A stable id for each ICH M10 acceptance rule (run.json's `id`), with its title, section
    and report category. Titles may be reworded; ids stay."""

    label: str  # the title run.json and the report show
    section: str
    category: RuleCategory

    def __new__(cls, value: str, title: str, section: str, category: RuleCategory):
        member = str.__new__(cls, value)
        member._value_ = value
        member.label, member.section, member.category = title, section, category
        return member

    CURVE_FITTED = "CURVE_FITTED", "calibration curve fitted", "3.2.4", RuleCategory.CALIBRATION
    CALIBRATORS_PASSING = "CALIBRATORS_PASSING", "calibrators within tolerance", "3.2.4", RuleCategory.CALIBRATION
    CALIBRATOR_LEVELS = "CALIBRATOR_LEVELS", "calibrator levels passing", "3.2.4", RuleCategory.CALIBRATION
    RANGE_COVERS_QCS = "RANGE_COVERS_QCS", "range covers QCs", "3.3.3", RuleCategory.CALIBRATION
    QCS_PASSING = "QCS_PASSING", "QCs within tolerance", "3.3.2", RuleCategory.QC
    LLOQ_QCS_PASSING = "LLOQ_QCS_PASSING", "LLOQ QCs within tolerance", "3.3.2", RuleCategory.QC
    LQC_PASSING = "LQC_PASSING", "LQC QCs within tolerance", "3.3.2", RuleCategory.QC
    MQC_PASSING = "MQC_PASSING", "MQC QCs within tolerance", "3.3.2", RuleCategory.QC
    HQC_PASSING = "HQC_PASSING", "HQC QCs within tolerance", "3.3.2", RuleCategory.QC
    QC_COUNT = "QC_COUNT", "QC count", "3.3.1", RuleCategory.QC
    DILUTION_QCS_PASSING = "DILUTION_QCS_PASSING", "dilution QCs within tolerance", "3.3.2", RuleCategory.QC
    QCS_IN_STUDY_RANGE = "QCS_IN_STUDY_RANGE", "QC levels within the study samples' range", "3.3.1", RuleCategory.QC
    CARRYOVER_ANALYTE = "CARRYOVER_ANALYTE", "carry-over (analyte)", "3.2.6", RuleCategory.CARRYOVER
    CARRYOVER_IS = "CARRYOVER_IS", "carry-over (IS)", "3.2.6", RuleCategory.CARRYOVER
    BLANK_SELECTIVITY_ANALYTE = (
        "BLANK_SELECTIVITY_ANALYTE",
        "blank selectivity (analyte)",
        "3.2.1",
        RuleCategory.SELECTIVITY,
    )
    BLANK_SELECTIVITY_IS = "BLANK_SELECTIVITY_IS", "blank selectivity (IS)", "3.2.1", RuleCategory.SELECTIVITY
    ZERO_SELECTIVITY_ANALYTE = (
        "ZERO_SELECTIVITY_ANALYTE",
        "zero sample selectivity (analyte)",
        "3.2.1",
        RuleCategory.SELECTIVITY,
    )
    IS_RESPONSE_BAND = "IS_RESPONSE_BAND", "IS response within the band", "3.3", RuleCategory.IS_RESPONSE
    IS_RESPONSE_DRIFT = "IS_RESPONSE_DRIFT", "IS response drift", "3.3", RuleCategory.IS_RESPONSE
    IS_RESPONSE_STUDY_SAMPLES = (
        "IS_RESPONSE_STUDY_SAMPLES",
        "IS response of study samples",
        "3.3",
        RuleCategory.IS_RESPONSE,
    )

    @classmethod
    def for_qc_level(cls, level: str) -> RuleId:
        """The rule that judges the QCs of one level (ICH M10 3.3.2)."""
        return cls[f"{'LLOQ_QCS' if level == QCLevel.LLOQ else level}_PASSING"]

    @classmethod
    def of_record(cls, record: dict) -> RuleId | None:
        """The id of a rule as run.json records it; by its title for results written before ids."""
        if record.get("id") in cls.__members__:
            return cls[record["id"]]
        return next((r for r in cls if r.label == record.get("rule")), None)


class TrailEvent(StrEnum):
    """What an entry of a results folder's audit trail records (audit-trail.jsonl's `event`)."""

    RUN = "run"  # a results set was written from the batch's files (lcmsquant run, or review's start)
    CHANGE = "change"  # a manual integration or calibrator exclusion made in lcmsquant review
    UNDO = "undo"  # a change taken back
    REDO = "redo"  # an undone change made again
    SIGNATURE = "signature"  # a person signed the results set
    REPORT = "report"  # report.html was drawn


class Meaning(StrEnum):
    """What a signature means (21 CFR 11.50(a)(3)), with the statement the signer makes."""

    statement: str

    def __new__(cls, value: str, statement: str):
        member = str.__new__(cls, value)
        member._value_ = value
        member.statement = statement
        return member

    REVIEWED = (
        "reviewed",
        "I reviewed the integration, the calibration and the acceptance of this run, and the manual "
        "changes recorded with it.",
    )
    APPROVED = (
        "approved",
        "I approve these results as reviewed: they may be reported.",
    )
