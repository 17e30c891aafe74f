"""The cohort: runs pooled safely in one database, the reported value of reanalysed samples,
paired trough draws and penetration ratios checked against a simulated study's truth."""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lcmsquant.cohort import CohortError, add_runs, cohort_tables, penetration, penetration_summary, reported_results
from lcmsquant.method import MethodError, default_method_path, load_method, parse_method
from lcmsquant.pipeline import run_batch
from lcmsquant.results import write_outputs
from lcmsquant.simulate import SimulationOptions, simulate_batch

SHIPPED = Path(__file__).resolve().parents[1] / "methods" / "flumatinib.toml"


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as con:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def _process(folder: Path, out: Path, method_path: Path | None = None) -> Path:
    batch, result = run_batch(folder, method_path)
    write_outputs(batch, result, out, command=["lcmsquant", "run", str(folder)])
    return out


# ---------------------------------------------------------------------------------------------
# End to end: run -> cohort add -> cohort penetration


def test_ratios_of_quantifiable_pairs_are_within_20_percent_and_blq_csf_is_censored(processed_study, tmp_path, invoke):
    study, results = processed_study
    db = tmp_path / "cohort.sqlite"
    done = invoke("cohort", "add", *results, "--db", db)
    assert done.exit_code == 0, done.stderr
    assert "added run 'plasma-run'" in done.stdout and "added run 'csf-run'" in done.stdout
    done = invoke("cohort", "penetration", "--db", db, "--out", tmp_path / "out")
    assert done.exit_code == 0, done.stderr
    assert "CSF:serum" in done.stdout and "marrow:serum" in done.stdout

    pairs = pd.read_csv(tmp_path / "out" / "penetration.csv", keep_default_na=False, na_values=[""])
    truth = pd.read_csv(study.truth).rename(
        columns={"reference_matrix": "true_reference_matrix", "csf_lloq": "nominal_csf_lloq"}
    )
    table = pairs.merge(truth, on=["subject_id", "visit", "timepoint", "analyte"], validate="one_to_one")
    assert len(table) == len(truth) == 6 * 3
    assert (table["reference_matrix"] == table["true_reference_matrix"]).all()
    assert set(table.loc[table["subject_id"] == "S003", "reference_matrix"]) == {"plasma"}  # no serum drawn

    checked = 0
    for target in ("csf", "marrow"):
        both = table[(table["reference_status"] == "value") & (table[f"{target}_status"] == "value")]
        error = both[f"{target}_serum_ratio"] / both[f"true_{target}_ratio"] - 1
        assert error.abs().max() <= 0.20, both[
            ["subject_id", "analyte", f"{target}_serum_ratio", f"true_{target}_ratio"]
        ]
        checked += len(both)
    assert checked >= 30

    below = table[table["true_csf"] < table["nominal_csf_lloq"]]
    assert len(below) >= 2
    assert below["csf_censored"].astype(str).str.lower().eq("true").all()
    assert below["csf_serum_ratio"].isna().all()  # never a number, never 0
    assert below["csf_serum_ratio_text"].str.startswith("<").all()
    bound = below["csf_lloq"] / below["reference_concentration"]
    assert np.allclose(below["csf_serum_ratio_text"].str[1:].astype(float), bound, rtol=1e-3)

    summary = pd.read_csv(tmp_path / "out" / "penetration_summary.csv")
    for (analyte, ratio), s in summary.set_index(["analyte", "ratio"]).iterrows():
        target = "csf" if ratio == "CSF:serum" else "marrow"
        rows = pairs[pairs["analyte"] == analyte]
        quantified = rows[f"{target}_serum_ratio"].dropna()
        assert s["n_quantified"] == len(quantified)
        assert s["n_censored"] == rows[f"{target}_censored"].astype(str).str.lower().eq("true").sum()
        assert s["median"] == pytest.approx(np.median(quantified), rel=1e-3)
        if len(quantified) >= 2:
            assert s["gm_ci95_low"] < s["geometric_mean"] < s["gm_ci95_high"]
    assert (tmp_path / "out" / "penetration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_penetration_files_are_byte_identical_on_rerun(cohort, tmp_path):
    from lcmsquant.cohort import write_penetration

    first, _ = write_penetration(cohort, tmp_path / "a")
    second, _ = write_penetration(cohort, tmp_path / "b")
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


# ---------------------------------------------------------------------------------------------
# The store: replace, refuse, keep


def test_adding_a_run_twice_replaces_it_and_a_batch_folder_stands_for_its_results(cohort, processed_study):
    _, results = processed_study
    before = {t: count(cohort, t) for t in ("runs", "analyses", "nominals", "verdicts")}
    assert before["runs"] == 3 and before["analyses"] == (12 + 6 + 2) * 3
    additions = add_runs(cohort, [results[1].parent])  # the batch folder, as a user may give it
    assert [a.action for a in additions] == ["replaced"]
    assert {t: count(cohort, t) for t in before} == before
    with sqlite3.connect(cohort) as con:
        actions = [r[0] for r in con.execute("SELECT action FROM additions ORDER BY number")]
        hashes = con.execute(
            "SELECT COUNT(*) FROM analyses WHERE length(file_sha256) = 64 AND length(run_id) = 64"
        ).fetchone()[0]
    assert actions[-1] == "replaced" and actions.count("added") == 3
    assert hashes == before["analyses"]  # every row keeps its run and file hashes


def test_a_run_processed_with_another_method_file_is_refused(cohort, processed_study, tmp_path, invoke):
    study, _ = processed_study
    method = tmp_path / "methods" / "flumatinib-v2.toml"
    method.parent.mkdir()
    shutil.copytree(SHIPPED.parents[1] / "calibrators", tmp_path / "calibrators")
    method.write_text(
        SHIPPED.read_text().replace('version = "1"', 'version = "2"').replace("min_sn = 5.0 ", "min_sn = 4.0 ")
    )
    results = _process(study.runs[1], tmp_path / "csf-results-v2", method)
    before = count(cohort, "analyses")

    done = invoke("cohort", "add", results, "--db", cohort, "--method", method)
    assert done.exit_code == 2
    message = " ".join(done.stderr.split())
    assert "method 'flumatinib' version 2 (flumatinib-v2.toml" in message
    assert "the cohort with method 'flumatinib' version 1 (flumatinib.toml" in message
    assert "Traceback" not in done.stderr
    # without --method, the file named in run.json is looked for and not found
    with pytest.raises(CohortError, match="give the method file the run was processed with"):
        add_runs(cohort, [results])
    assert count(cohort, "analyses") == before


def test_a_run_on_other_calibrator_nominals_is_refused(cohort, processed_study, tmp_path):
    study, _ = processed_study
    batch = tmp_path / "reanalysis-run"
    shutil.copytree(study.runs[2], batch, ignore=shutil.ignore_patterns("results"))
    nominals = pd.read_csv(SHIPPED.parents[1] / "calibrators" / "flumatinib_plasma.csv")
    nominals.loc[(nominals["level"] == "CAL3") & (nominals["analyte"] == "flumatinib"), "nominal"] = 5.5
    nominals.to_csv(batch / "calibrators.csv", index=False)
    results = _process(batch, batch / "results")

    with pytest.raises(CohortError) as refused:
        add_runs(cohort, [results])
    message = str(refused.value)
    assert "calibrator set 'plasma' CAL3 flumatinib: nominal 5.5 in run 'reanalysis-run' (calibrators.csv" in message
    assert "but 5 in the cohort's run 'plasma-run' (flumatinib_plasma.csv" in message
    assert count(cohort, "runs") == 3


def test_a_failed_addition_leaves_no_new_database(processed_study, tmp_path, invoke):
    _, results = processed_study
    db = tmp_path / "new.sqlite"
    with pytest.raises(CohortError, match="results.csv is missing"):
        add_runs(db, [results[0], tmp_path])
    assert not db.exists()
    done = invoke("cohort", "penetration", "--db", db)
    assert done.exit_code == 2 and "no cohort database" in done.stderr


def test_results_of_a_rejected_analyte_are_kept_but_not_reported(tmp_path):
    folder = tmp_path / "batch"
    simulate_batch(folder, seed=31, options=SimulationOptions(n_unknowns=6, qc_bias_pct={"M1": 30.0}))
    results = _process(folder, folder / "results")
    db = tmp_path / "cohort.sqlite"
    add_runs(db, [results])
    _, analyses, reported = cohort_tables(db)
    m1 = reported[reported["analyte"] == "M1"]
    assert len(m1) == 6 and (m1["status"] == "rejected").all() and m1["concentration"].isna().all()
    assert analyses.loc[analyses["analyte"] == "M1", "flags"].str.contains("REJECTED").all()
    assert (reported.loc[reported["analyte"] == "flumatinib", "status"] == "value").sum() >= 2


# ---------------------------------------------------------------------------------------------
# Reanalysis: original and repeat kept, the method's rule decides


def test_repeats_replace_only_an_original_that_was_not_valid(cohort):
    method, analyses, reported = cohort_tables(cohort)
    assert method.settings.reanalysis == "first_valid"
    by = reported.set_index(["sample_id", "analyte"])
    # IS anomaly in the original: the repeat is reported for every analyte
    for analyte in ("flumatinib", "M1", "M3"):
        row = by.loc[("S001-C1D15-SER", analyte)]
        assert row["batch"] == "reanalysis-run" and row["status"] == "value" and row["n_analyses"] == 2
        original = row["analyses"].split("; ")[0]
        assert original.startswith("plasma-run:16 ") and "IS_RESPONSE" in original
    # ALQ in the original: the 1:10 diluted repeat is reported; the valid M1/M3 originals stay
    alq = by.loc[("S002-C1D15-BM", "flumatinib")]
    assert alq["batch"] == "reanalysis-run" and alq["lloq"] == pytest.approx(10.0) and "ALQ" in alq["analyses"]
    assert by.loc[("S002-C1D15-BM", "M1"), "batch"] == "plasma-run"
    assert len(analyses[analyses["sample_id"] == "S002-C1D15-BM"]) == 6  # original and repeat both kept

    last = reported_results(analyses, replace(method.settings, reanalysis="repeat"), method.analytes)
    assert last.set_index(["sample_id", "analyte"]).loc[("S002-C1D15-BM", "M1"), "batch"] == "reanalysis-run"


def test_a_draw_outside_the_trough_window_is_flagged_not_dropped(cohort, processed_study):
    study, _ = processed_study
    method, _, reported = cohort_tables(cohort)
    late = pd.read_csv(study.truth).query("late_draw")["subject_id"].unique()
    assert list(late) == ["S006"]
    flagged = reported[reported["trough"] == "OUTSIDE_TROUGH"]
    assert set(flagged["subject_id"]) == {"S006"} and len(flagged) == 9
    assert (flagged["hours_since_dose"] > method.settings.trough_window_h[1]).all()
    assert (reported.loc[reported["subject_id"] != "S006", "trough"] == "in window").all()
    pairs = penetration(reported, method.settings, method.analytes)
    s006 = pairs[pairs["subject_id"] == "S006"]
    assert len(s006) == 3 and s006["trough"].str.startswith("OUTSIDE_TROUGH: serum 31.0 h").all()
    assert (pairs.loc[pairs["subject_id"] != "S006", "trough"] == "in window").all()  # as cohort_results says
    summary = penetration_summary(pairs, method.settings)
    assert (summary.loc[summary["ratio"] == "marrow:serum", "n_outside_trough"] == 1).all()


def test_unreadable_dose_times_are_refused_with_their_line(processed_study, tmp_path):
    study, _ = processed_study
    batch = tmp_path / "csf-run"
    shutil.copytree(study.runs[1], batch, ignore=shutil.ignore_patterns("results"))
    worklist = pd.read_csv(batch / "worklist.csv", dtype=str, keep_default_na=False)
    first, second = worklist.index[worklist["sample_type"] == "unknown"][:2]
    worklist.loc[first, "sampling_time"] = "19/03/2024 08:00"
    worklist.loc[second, "sampling_time"] = "2024-03-01T08:00"  # before the last dose
    worklist.to_csv(batch / "worklist.csv", index=False)
    results = _process(batch, batch / "results")
    with pytest.raises(CohortError) as refused:
        add_runs(tmp_path / "c.sqlite", [results])
    problems = refused.value.problems
    assert any("sampling_time '19/03/2024 08:00' is not an ISO 8601 date-time" in p for p in problems)
    assert any("sampled at 2024-03-01T08:00, before the last dose" in p for p in problems)
    assert all("results.csv line" in p for p in problems)


# ---------------------------------------------------------------------------------------------
# Ratio rules on their own


def _reported(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    """Reported results of one subject's draw: (matrix, status, concentration, lloq) for M1."""
    return pd.DataFrame(
        [
            {
                "subject_id": "S101",
                "visit": "C1D15",
                "timepoint": "trough",
                "matrix": m,
                "analyte": "M1",
                "sample_id": f"S101-{m}",
                "status": st,
                "concentration": c,
                "lloq": lloq,
                "flags": "BLQ" if st == "BLQ" else "",
                "hours_since_dose": 24.0,
                "trough": "in window",
            }
            for m, st, c, lloq in rows
        ]
    )


def test_blq_ratio_policies():
    censor = load_method(default_method_path()).cohort
    draw = _reported([("serum", "value", 20.0, 0.5), ("csf", "BLQ", np.nan, 0.1), ("marrow", "value", 30.0, 0.5)])
    row = penetration(draw, censor).iloc[0]
    assert row["reference_matrix"] == "serum" and row["csf_censored"] and pd.isna(row["csf_serum_ratio"])
    assert row["csf_serum_ratio_text"] == "<0.005" and row["marrow_serum_ratio"] == pytest.approx(1.5)
    half = penetration(draw, replace(censor, blq_ratio_policy="half_lloq")).iloc[0]
    assert half["csf_serum_ratio"] == pytest.approx(0.0025) and not half["csf_censored"]
    assert "LLOQ/2" in half["csf_note"]

    reference_blq = _reported([("plasma", "BLQ", np.nan, 0.5), ("csf", "value", 0.2, 0.1)])
    row = penetration(reference_blq, censor).iloc[0]
    assert row["reference_matrix"] == "plasma" and row["csf_serum_ratio_text"] == ">0.4" and row["csf_censored"]
    both = penetration(_reported([("serum", "BLQ", np.nan, 0.5), ("csf", "BLQ", np.nan, 0.1)]), censor).iloc[0]
    assert both["csf_serum_ratio_text"] == "BLQ/BLQ" and pd.isna(both["csf_serum_ratio_bound"])
    summary = penetration_summary(penetration(draw, censor), censor)
    csf = summary[summary["ratio"] == "CSF:serum"].iloc[0]
    assert (csf["n_paired"], csf["n_censored"], csf["n_quantified"]) == (1, 1, 0) and pd.isna(csf["median"])


def test_the_cohort_table_of_the_method_is_validated_like_the_others():
    import tomllib

    doc = tomllib.loads(SHIPPED.read_text())
    doc["cohort"].update(
        reanalysis="latest",
        blq_ratio_policy="zero",
        trough_window_h=[28, 20],
        sdtm_testcd={"M1": "1M"},
        colour="red",
    )
    with pytest.raises(MethodError) as err:
        parse_method(doc, base_dir=SHIPPED.parent)
    text = "\n".join(err.value.problems)
    assert "[cohort]: unknown key 'colour'" in text
    assert "[cohort].reanalysis: unknown value 'latest'" in text
    assert "[cohort].blq_ratio_policy: unknown value 'zero'" in text
    assert "[cohort].trough_window_h: expected [earliest, latest]" in text
    assert "[cohort].sdtm_testcd.M1: '1M' is not an SDTM test code" in text
    shipped = load_method(SHIPPED).cohort
    assert shipped.trough_window_h == (20.0, 28.0) and dict(shipped.sdtm_testcd)["M1"] == "FLUMM1"
