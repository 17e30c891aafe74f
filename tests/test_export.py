"""Exports of the cohort: CSV, Parquet and the SDTM PC domain as CSV and SAS transport (XPT v5)."""

from __future__ import annotations

import re
from datetime import datetime

import numpy as np
import pandas as pd
import pyreadstat
import pytest

from lcmsquant.cohort import cohort_tables
from lcmsquant.export import PC_LABELS, export_cohort

STUDY = "FLU-201"


@pytest.fixture(scope="module")
def sdtm(cohort, tmp_path_factory, invoke):
    out = tmp_path_factory.mktemp("sdtm")
    done = invoke(
        "cohort",
        "export",
        "--db",
        cohort,
        "--format",
        "sdtm",
        "--study",
        STUDY,
        "--lab",
        "Example Bioanalytical Laboratory",
        "--out",
        out,
    )
    assert done.exit_code == 0, done.stderr
    pc_csv = pd.read_csv(out / "pc.csv", dtype=str, keep_default_na=False)
    return out, pc_csv


def test_the_xpt_file_reads_back_with_the_same_values(sdtm):
    out, pc_csv = sdtm
    xpt, meta = pyreadstat.read_xport(out / "pc.xpt")
    assert meta.table_name == "PC"
    assert list(xpt.columns) == list(pc_csv.columns) == list(PC_LABELS)
    for column in xpt.columns:
        if xpt[column].dtype.kind == "f":
            expected = pd.to_numeric(pc_csv[column].replace("", np.nan))
            assert np.allclose(xpt[column], expected, equal_nan=True, rtol=1e-12), column
        else:
            assert xpt[column].tolist() == pc_csv[column].tolist(), column
    by_pandas = pd.read_sas(out / "pc.xpt", format="xport", encoding="utf-8")
    assert by_pandas["USUBJID"].tolist() == pc_csv["USUBJID"].tolist()
    assert np.allclose(by_pandas["PCSTRESN"], xpt["PCSTRESN"], equal_nan=True)


def test_variable_names_labels_and_lengths_obey_the_sdtm_and_xpt_limits(sdtm):
    out, pc_csv = sdtm
    _, meta = pyreadstat.read_xport(out / "pc.xpt", metadataonly=True)
    assert all(len(name) <= 8 for name in meta.column_names)
    assert all(label and len(label) <= 40 for label in meta.column_labels)
    assert all(width <= 200 for width in meta.variable_storage_width.values())
    assert pc_csv["PCTESTCD"].str.fullmatch(r"[A-Z_][A-Z0-9_]{0,7}").all()
    assert set(pc_csv["PCTESTCD"]) == {"FLUMAT", "FLUMM1", "FLUMM3"}
    assert (pc_csv["PCTEST"].str.len() <= 40).all()


def test_the_pc_domain_codes_the_results_as_sdtm_expects(sdtm, cohort):
    _, pc = sdtm
    _, _, reported = cohort_tables(cohort)
    assert len(pc) == len(reported) == 18 * 3
    assert (pc["STUDYID"] == STUDY).all() and (pc["DOMAIN"] == "PC").all()
    assert (pc["USUBJID"] == STUDY + "-" + pc["PCREFID"].str[:4]).all()
    assert not pc.duplicated(["USUBJID", "PCSEQ"]).any()
    assert all(seq.astype(int).tolist() == list(range(1, len(seq) + 1)) for _, seq in pc.groupby("USUBJID")["PCSEQ"])
    spec = dict(zip(pc["PCREFID"].str.split("-").str[-1], pc["PCSPEC"]))
    assert spec == {"SER": "SERUM", "PL": "PLASMA", "BM": "BONE MARROW", "CSF": "CEREBROSPINAL FLUID"}

    blq = pc[pc["PCSTRESC"] == "BLQ"]
    assert len(blq) >= 2
    assert (blq["PCORRES"] == "BLQ").all() and (blq["PCSTRESN"] == "").all()
    assert (blq["PCLLOQ"].astype(float) > 0).all()
    values = pc[pc["PCSTRESN"] != ""]
    assert (values["PCSTRESN"].astype(float) > 0).all()
    assert (values["PCSTRESC"].astype(float) == values["PCSTRESN"].astype(float)).all()
    assert (values["PCSTRESU"] == "ng/mL").all() and (values["PCSTAT"] == "").all()
    assert (pc["PCLLOQ"] != "").all()
    not_done = pc[pc["PCSTAT"] == "NOT DONE"]
    assert (not_done["PCSTRESC"] == "").all() and (not_done["PCREASND"] != "").all()
    # the diluted repeat of the ALQ marrow sample is reported with its diluted LLOQ
    alq = pc[(pc["PCREFID"] == "S002-C1D15-BM") & (pc["PCTESTCD"] == "FLUMAT")].iloc[0]
    assert float(alq["PCSTRESN"]) > 1000 and float(alq["PCLLOQ"]) == pytest.approx(10.0)
    assert (pc["PCDTC"].str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d$")).all() and (pc["PCTPTREF"] == "PREVIOUS DOSE").all()


def test_every_export_is_byte_identical_on_rerun(cohort, processed_study, tmp_path):
    for fmt in ("csv", "parquet", "sdtm"):
        first = export_cohort(cohort, fmt, tmp_path / "a", study=STUDY)
        second = export_cohort(cohort, fmt, tmp_path / "b", study=STUDY)
        assert [p.name for p in first] == [p.name for p in second]
        for a, b in zip(first, second):
            assert a.read_bytes() == b.read_bytes(), a.name
    # the header's created/modified times are the start of the latest run, not the clock
    study, _ = processed_study
    latest = sorted(study.runs[2].glob("*.mzML"))[0].read_text()
    started = datetime.fromisoformat(re.search(r'startTimeStamp="([^"]+)"', latest).group(1).rstrip("Z"))
    data = (tmp_path / "a" / "pc.xpt").read_bytes()
    header = data[: data.index(b"HEADER RECORD*******OBS")]
    stamps = re.findall(rb"\d\d[A-Z]{3}\d\d:\d\d:\d\d:\d\d", header)
    assert stamps == [started.strftime("%d%b%y:%H:%M:%S").upper().encode()] * 4


def test_parquet_and_csv_hold_the_same_tables(cohort, tmp_path):
    csv_files = export_cohort(cohort, "csv", tmp_path, study=STUDY)
    parquet_files = export_cohort(cohort, "parquet", tmp_path, study=STUDY)
    assert [p.name for p in csv_files] == ["cohort_results.csv", "cohort_analyses.csv"]
    for c, p in zip(csv_files, parquet_files):
        from_csv = pd.read_csv(c, keep_default_na=False, na_values=[""])
        from_parquet = pd.read_parquet(p)
        assert list(from_parquet.columns) == list(from_csv.columns)
        assert len(from_parquet) == len(from_csv)
        assert np.allclose(from_parquet["concentration"], from_csv["concentration"], equal_nan=True)
    analyses = pd.read_parquet(parquet_files[1])
    assert (analyses["study_id"] == STUDY).all() and len(analyses) == 60
    assert analyses["file_sha256"].str.len().eq(64).all()


def test_sdtm_needs_a_study_identifier(cohort, tmp_path, invoke):
    done = invoke("cohort", "export", "--db", cohort, "--format", "sdtm", "--out", tmp_path)
    assert done.exit_code == 2 and "--study STUDYID" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())
