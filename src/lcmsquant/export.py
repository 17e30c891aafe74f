"""Exports of the cohort for the study dataset: CSV, Parquet, and the CDISC SDTM PC domain as
CSV and SAS transport (XPT version 5, the format regulators accept).

Every file is built in memory and written atomically; the same cohort gives the same bytes (the
XPT header's creation time is the start of the cohort's latest run, not the clock).
"""

from __future__ import annotations

import io
import re
import tempfile
from contextlib import closing
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from lcmsquant.cohort import (
    CohortError,
    MethodRecord,
    cohort_tables,
    connect,
    load_runs,
)
from lcmsquant.files import atomic_write, csv_text
from lcmsquant.method import SDTM_TESTCD
from lcmsquant.vocabulary import Flag, Matrix

FORMATS = ("csv", "parquet", "sdtm")
PCSPEC = {
    Matrix.PLASMA: "PLASMA",
    Matrix.SERUM: "SERUM",
    Matrix.CSF: "CEREBROSPINAL FLUID",
    Matrix.MARROW: "BONE MARROW",
}
PC_LABELS = {
    "STUDYID": "Study Identifier",
    "DOMAIN": "Domain Abbreviation",
    "USUBJID": "Unique Subject Identifier",
    "PCSEQ": "Sequence Number",
    "PCREFID": "Reference ID",
    "PCTESTCD": "Pharmacokinetic Test Short Name",
    "PCTEST": "Pharmacokinetic Test Name",
    "PCORRES": "Result or Finding in Original Units",
    "PCORRESU": "Original Units",
    "PCSTRESC": "Character Result/Finding in Std Format",
    "PCSTRESN": "Numeric Result/Finding in Standard Units",
    "PCSTRESU": "Standard Units",
    "PCSTAT": "Completion Status",
    "PCREASND": "Reason Test Not Done",
    "PCNAM": "Vendor Name",
    "PCSPEC": "Specimen Material Type",
    "PCMETHOD": "Method of Test or Examination",
    "PCLLOQ": "Lower Limit of Quantitation",
    "PCULOQ": "Upper Limit of Quantitation",
    "VISIT": "Visit Name",
    "PCTPT": "Planned Time Point Name",
    "PCDTC": "Date/Time of Specimen Collection",
    "PCTPTREF": "Time Point Reference",
    "PCRFTDTC": "Date/Time of Reference Time Point",
}
NUMERIC = ("PCSEQ", "PCSTRESN", "PCLLOQ", "PCULOQ")
XPT_NAME, XPT_LABEL, XPT_CHAR = 8, 40, 200  # SAS transport version 5 limits
STUDYID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NOT_DONE_REASON = {
    "ALQ": "ABOVE ULOQ, NOT REANALYSED",
    "rejected": "RUN REJECTED",
    "not_reportable": "NOT REPORTABLE",
}


class ExportError(CohortError):
    """An export that cannot be written as asked (format, study id, SDTM rules)."""

    kind = "export"


def export_cohort(
    db: Path | str,
    fmt: str,
    out_dir: Path | str,
    study: str | None = None,
    lab: str = "",
) -> list[Path]:
    """Write the cohort's results for the study dataset.

    Parameters
    ----------
    db : path-like
        The cohort database (`lcmsquant cohort add`).
    fmt : {"csv", "parquet", "sdtm"}
        The format.
    out_dir : path-like
        Where the files go (created if missing).
    study : str, optional
        STUDYID; required for sdtm, added as a first column to csv and parquet.
    lab : str
        PCNAM, the laboratory's name (sdtm).

    Returns
    -------
    list of Path
        The files written.

    csv / parquet: cohort_results (the reported value of every study sample and analyte) and
    cohort_analyses (every analysis, originals and repeats). sdtm: pc.csv and pc.xpt.
    """
    if fmt not in FORMATS:
        raise ExportError(db, [f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}"])
    if study is not None and not STUDYID.match(study):
        raise ExportError(
            db, [f"--study {study!r}: use letters, digits, '_', '-' or '.', starting with a letter or digit"]
        )
    if fmt == "sdtm" and not study:
        raise ExportError(db, ["the SDTM export needs the study identifier: --study STUDYID"])
    method, analyses, reported = cohort_tables(db)
    out_dir = Path(out_dir)
    if fmt == "sdtm":
        with closing(connect(db)) as con:
            runs = load_runs(con)
        pc = sdtm_pc(reported, method, study or "", lab)
        problems = check_sdtm(pc)
        if problems:
            raise ExportError(db, problems)
        return [
            atomic_write(out_dir / "pc.csv", csv_text(pc)),
            atomic_write(
                out_dir / "pc.xpt", xpt_bytes(pc, PC_LABELS, "PC", "Pharmacokinetic Concentrations", _created(runs))
            ),
        ]
    tables = {"cohort_results": reported, "cohort_analyses": analyses.drop(columns=["seq"], errors="ignore")}
    if study:
        tables = {k: v.assign(study_id=study)[["study_id", *v.columns]] for k, v in tables.items()}
    if fmt == "csv":
        return [atomic_write(out_dir / f"{k}.csv", csv_text(v)) for k, v in tables.items()]
    return [atomic_write(out_dir / f"{k}.parquet", parquet_bytes(v)) for k, v in tables.items()]


def parquet_bytes(table: pd.DataFrame) -> bytes:
    """A table as Parquet (zstd), in memory."""
    buffer = io.BytesIO()
    table.to_parquet(buffer, engine="pyarrow", index=False, compression="zstd")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# SDTM PC (pure)


def test_codes(method: MethodRecord) -> dict[str, tuple[str, str]]:
    """Analyte -> (PCTESTCD, PCTEST): the method's [cohort] sdtm_testcd / sdtm_test, else derived
    from the name (upper case letters and digits, at most 8, an X before a leading digit)."""
    codes, names = dict(method.settings.sdtm_testcd), dict(method.settings.sdtm_test)
    out = {}
    for analyte in method.analytes:
        code = codes.get(analyte) or re.sub(r"[^A-Z0-9_]", "", analyte.upper())[:8]
        if code[:1].isdigit():
            code = ("X" + code)[:8]
        out[analyte] = (code, names.get(analyte) or analyte)
    return out


def sdtm_pc(reported: pd.DataFrame, method: MethodRecord, study: str, lab: str = "") -> pd.DataFrame:
    """The PC domain: one record per study sample and analyte, the reported value.

    BLQ: PCORRES and PCSTRESC "BLQ", PCSTRESN empty (never 0), PCLLOQ the sample's LLOQ (after
    dilution). No valid result: PCSTAT "NOT DONE" with the reason. PCSEQ numbers each subject's
    records 1, 2, ... by visit, sampling time, specimen and test.
    """
    codes = test_codes(method)
    units = method.units
    rows = []
    for _, r in reported[reported["subject_id"] != ""].iterrows():
        code, name = codes.get(r["analyte"], (r["analyte"][:8].upper(), r["analyte"]))
        status = r["status"]
        if status == "value":
            text = _result_text(r["concentration"])
            orres, stresc, stresn, stat, reason = text, text, float(text), "", ""
        elif status == Flag.BLQ:
            orres, stresc, stresn, stat, reason = "BLQ", "BLQ", np.nan, "", ""
        else:
            flags = r["flags"].replace(";", ", ")
            reason = NOT_DONE_REASON.get(status, "NOT REPORTABLE")
            if status == "not_reportable" and flags:
                reason = f"{reason}: {flags}"
            orres, stresc, stresn, stat = "", "", np.nan, "NOT DONE"
        rows.append(
            {
                "STUDYID": study,
                "DOMAIN": "PC",
                "USUBJID": f"{study}-{r['subject_id']}",
                "PCSEQ": 0,
                "PCREFID": r["sample_id"],
                "PCTESTCD": code,
                "PCTEST": name,
                "PCORRES": orres,
                "PCORRESU": units if orres else "",
                "PCSTRESC": stresc,
                "PCSTRESN": stresn,
                "PCSTRESU": units if stresc else "",
                "PCSTAT": stat,
                "PCREASND": reason,
                "PCNAM": lab,
                "PCSPEC": PCSPEC.get(r["matrix"], r["matrix"].upper()),
                "PCMETHOD": "LC-MS/MS",
                "PCLLOQ": _significant(r["lloq"]),
                "PCULOQ": _significant(r["uloq"]),
                "VISIT": r["visit"],
                "PCTPT": r["timepoint"].upper(),
                "PCDTC": r["sampling_time"],
                "PCTPTREF": "PREVIOUS DOSE" if r["last_dose_time"] else "",
                "PCRFTDTC": r["last_dose_time"],
                "_spec_rank": list(PCSPEC).index(r["matrix"]) if r["matrix"] in PCSPEC else len(PCSPEC),
                "_test_rank": list(codes).index(r["analyte"]) if r["analyte"] in codes else len(codes),
            }
        )
    pc = pd.DataFrame(rows, columns=[*PC_LABELS, "_spec_rank", "_test_rank"])
    pc = pc.sort_values(["USUBJID", "PCDTC", "VISIT", "_spec_rank", "_test_rank"], kind="stable").reset_index(drop=True)
    pc["PCSEQ"] = pc.groupby("USUBJID").cumcount() + 1
    return pc.drop(columns=["_spec_rank", "_test_rank"])


def _result_text(value: float) -> str:
    return np.format_float_positional(value, precision=4, unique=True, fractional=False, trim="-")


def _significant(value: float, digits: int = 6) -> float:
    return float(f"{value:.{digits}g}") if pd.notna(value) else np.nan


def check_sdtm(pc: pd.DataFrame) -> list[str]:
    """Problems against the SDTM PC rules and the XPT version 5 limits, each naming the record."""
    problems = []
    for name in pc.columns:
        if len(name) > XPT_NAME:
            problems.append(f"variable {name}: name longer than {XPT_NAME} characters")
        if len(PC_LABELS.get(name, "")) > XPT_LABEL:
            problems.append(f"variable {name}: label longer than {XPT_LABEL} characters")
    for name in pc.columns:
        if name in NUMERIC:
            continue
        text = pc[name].astype(str)
        too_long = pc[text.str.len() > XPT_CHAR]
        for _, r in too_long.head(3).iterrows():
            problems.append(f"{r['USUBJID']} PCSEQ {int(r['PCSEQ'])}: {name} longer than {XPT_CHAR} characters")
        not_ascii = pc[~text.map(lambda v: v.isascii() and v.isprintable())]
        for _, r in not_ascii.head(3).iterrows():
            problems.append(
                f"{r['USUBJID']} PCSEQ {int(r['PCSEQ'])}: {name} {r[name]!r} holds characters SAS transport "
                "version 5 cannot (printable ASCII only): correct it where it was typed (worklist, method or --lab), "
                "or export --format csv/parquet"
            )
    for code in sorted(set(pc["PCTESTCD"])):
        if not SDTM_TESTCD.match(code):
            problems.append(f"PCTESTCD {code!r}: at most 8 upper-case letters, digits or _, not starting with a digit")
    for test in sorted(set(pc["PCTEST"])):
        if len(test) > 40:
            problems.append(f"PCTEST {test!r}: longer than 40 characters (set [cohort] sdtm_test in the method)")
    if pc.duplicated(["USUBJID", "PCSEQ"]).any():
        problems.append("PCSEQ is not unique within a subject")
    if ((pc["PCSTRESC"] == "BLQ") & pc["PCSTRESN"].notna()).any():
        problems.append("a BLQ record carries a PCSTRESN")
    return problems


# ---------------------------------------------------------------------------------------------
# SAS transport (edge)


def xpt_bytes(table: pd.DataFrame, labels: dict[str, str], name: str, label: str, created: datetime | None) -> bytes:
    """A SAS transport version 5 file (pyreadstat), its header time set to `created`."""
    import pyreadstat

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name.lower()}.xpt"
        pyreadstat.write_xport(
            table,
            path,
            file_label=label,
            column_labels={c: labels.get(c) for c in table.columns},
            table_name=name,
            file_format_version=5,
        )
        data = path.read_bytes()
    return _set_header_time(data, created)


HEADER_TIME = re.compile(rb"\d{2}[A-Z]{3}\d{2}:\d{2}:\d{2}:\d{2}")


def _set_header_time(data: bytes, created: datetime | None) -> bytes:
    """Replace the writer's clock time in the XPT headers (library and member header records,
    16 characters ddMONyy:hh:mm:ss each, before the first observation) by `created`, so that
    the same cohort gives the same file."""
    stamp = (created or datetime(1960, 1, 1)).strftime("%d%b%y:%H:%M:%S").upper().encode("ascii")
    end = data.find(b"HEADER RECORD*******OBS")
    head = HEADER_TIME.sub(stamp, data[:end])
    return head + data[end:]


def _created(runs: pd.DataFrame) -> datetime | None:
    """The start of the cohort's latest run, the time the data set describes."""
    times = []
    for text in runs["acquired"]:
        try:
            times.append(datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None))
        except ValueError:
            continue
    return max(times) if times else None
