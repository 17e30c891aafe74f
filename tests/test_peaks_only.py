"""Runs without a calibration: a batch without calibrator injections has no curve and says so.
The results are written, read back and reported."""

import pandas as pd

from lcmsquant.pipeline import run_batch
from lcmsquant.report import render_report
from lcmsquant.results import write_outputs


def _section(html: str, section_id: str) -> str:
    start = html.index(f'<section id="{section_id}">')
    return html[start:html.index("</section>", start)]


# ---------------------------------------------------------------------------------------------
# A method with calibrator sets, a batch without calibrators


def test_a_batch_without_calibrator_injections_has_no_curve_and_says_why(plasma_batch):
    worklist = pd.read_csv(plasma_batch / "worklist.csv", dtype=str, keep_default_na=False)
    worklist[worklist["sample_type"] != "calibrator"].to_csv(plasma_batch / "worklist.csv", index=False)
    batch, result = run_batch(plasma_batch)

    calibration = result.calibration.set_index("analyte")
    assert list(calibration.index) == ["flumatinib", "M1", "M3"]
    assert (calibration["model"] == "").all() and not calibration["accepted"].any()
    assert calibration["problem"].str.startswith("no calibrator injection of set 'plasma' in the batch").all()
    assert all(not v["accepted"] for v in result.verdicts.values())
    unknowns = result.results[result.results["sample_type"] == "unknown"]
    assert unknowns["flags"].str.contains("REJECTED").all() and unknowns["area"].notna().any()

    out = plasma_batch / "results"
    write_outputs(batch, result, out)
    assert len((out / "calibration.csv").read_bytes()) > 100  # was a 1-byte file the report refused
    html = render_report(out)
    assert "no calibrator injection of set &#39;plasma&#39; in the batch" in _section(html, "verdict")
    assert "Run rejected for flumatinib (plasma), M1 (plasma), M3 (plasma)" in html
