"""The reanalysis list: every study sample that cannot be reported as it stands, with a reason."""

import numpy as np
import pandas as pd

from lcmsquant.method import default_method_path, load_method
from lcmsquant.reanalysis import reanalysis_list, reasons, suggested_dilution


def test_suggested_dilution_brings_the_sample_to_at_most_half_the_uloq():
    assert suggested_dilution(2671.0, 1.0, 1000.0) == 10.0  # 267 ng/mL after dilution
    assert suggested_dilution(1001.0, 1.0, 1000.0) == 5.0  # 200 after 1:5 (1:2 would leave 500.5)
    assert suggested_dilution(1200.0, 10.0, 1000.0) == 50.0  # on top of the 1:10 already made
    assert np.isnan(suggested_dilution(np.nan, 1.0, 1000.0))


def _row(**values):
    base = {"lloq": 1.0, "back_calculated": 0.5, "is_response_pct": 100.0}
    return pd.Series({**base, **values})


def test_blq_is_listed_only_when_the_run_raised_the_lloq_above_the_sample():
    assert reasons(_row(), ["BLQ"], lowest=1.0) == []  # BLQ at the method's LLOQ: a result, not a repeat
    assert reasons(_row(lloq=2.5, back_calculated=1.8), ["BLQ"], lowest=1.0) == ["BLQ_LLOQ_REVISED"]
    assert reasons(_row(lloq=2.5, back_calculated=0.4), ["BLQ"], lowest=1.0) == []


def test_the_most_decisive_reason_comes_first():
    codes = reasons(_row(), ["ION_RATIO", "IS_RESPONSE", "REJECTED", "EDGE"], lowest=1.0)
    assert codes == ["RUN_REJECTED", "IS_RESPONSE", "ION_RATIO", "PEAK_REVIEW"]
    assert reasons(_row(), ["EDGE", "MANUAL"], lowest=1.0) == []  # a manual integration is the review


def test_every_alq_sample_of_a_run_is_listed_with_a_dilution_that_fits(plasma_run):
    _, truth, _, run = plasma_run
    results, listed = run.results, run.reanalysis
    alq = results[results["flags"].str.contains("ALQ")]
    assert len(alq) > 0
    for _, row in alq.iterrows():
        entry = listed[(listed["injection"] == row["injection"]) & (listed["analyte"] == row["analyte"])].iloc[0]
        assert entry["reason"].split(";")[0] in ("ALQ", "SATURATED")
        true = truth[(truth["sample_id"] == row["sample_id"]) & (truth["analyte"] == row["analyte"])][
            "true_concentration"
        ].iloc[0]
        assert row["lloq"] <= true / entry["suggested_dilution_factor"] <= row["uloq"]


def test_reportable_samples_are_never_on_the_list(plasma_run, csf_run):
    for _, _, _, run in (plasma_run, csf_run):
        listed = set(zip(run.reanalysis["injection"], run.reanalysis["analyte"]))
        reportable = run.results[run.results["reportable"]]
        assert not listed & set(zip(reportable["injection"], reportable["analyte"]))
        assert (run.results["reanalysis"] != "").sum() == len(run.reanalysis)


def test_an_empty_run_gives_an_empty_list_with_its_columns():
    method = load_method(default_method_path())
    empty = pd.DataFrame(columns=["sample_type", "flags", "calibrator_set", "analyte"])
    assert list(reanalysis_list(empty, method).columns)[:3] == ["injection", "file", "sample_id"]
