"""Reading real SCIEX mzML and matching traces to transitions by Q1/Q3."""

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

from lcmsquant.chromatograms import ChromatogramReadError, Trace, match_transitions, read_traces
from lcmsquant.method import Transition
from lcmsquant.peaks import PeakSearch, find_peak

FILES = {"170808_Jonathan_yeast_Sacc1_1x.mzML": 339, "RawDataProcessor_mzML_1.mzML": 324}


def _transition_list(sciex_dir):
    table = pd.read_csv(sciex_dir / "traML.csv")
    transitions = [
        Transition(row.transition_name, "quantifier", float(row.PrecursorMz), float(row.ProductMz))
        for row in table.itertuples()
    ]
    expected = {t: row.RetentionTime / 60 for t, row in zip(transitions, table.itertuples())}
    return transitions, expected


@pytest.mark.parametrize("name, n_srm", FILES.items())
def test_every_srm_chromatogram_of_the_real_files_is_read(sciex_dir, name, n_srm):
    traces = read_traces(sciex_dir / name)
    assert len(traces) == n_srm  # the TIC is left out
    for trace in traces:
        assert trace.q1 > 0 and trace.q3 > 0
        assert len(trace.time) == len(trace.intensity) > 0
        assert np.all(np.diff(trace.time) > 0)
        assert 0 <= trace.start <= trace.end < 25  # minutes, not seconds


@pytest.mark.parametrize("name", FILES)
def test_every_transition_of_the_list_is_matched_and_unused_traces_are_explained(sciex_dir, name):
    traces = read_traces(sciex_dir / name)
    transitions, expected = _transition_list(sciex_dir)
    matched = match_transitions(traces, transitions, expected, mz_tolerance=0.5)
    assert all(trace is not None for trace in matched.values())
    used = {id(trace) for trace in matched.values()}
    for trace in traces:
        if id(trace) in used:
            continue
        # A trace nobody chose either has no transition in the list, or shares its Q1/Q3
        # with a chosen trace (scheduled SRM: same pair, another time window).
        twins = [t for t in transitions if abs(t.q1 - trace.q1) <= 0.5 and abs(t.q3 - trace.q3) <= 0.5]
        assert all(abs(matched[t].q1 - trace.q1) <= 0.5 for t in twins)


@pytest.mark.parametrize(
    "name, q1, q3, apex_s",
    [("170808_Jonathan_yeast_Sacc1_1x.mzML", 282, 150, 84.78), ("RawDataProcessor_mzML_1.mzML", 268, 170, 953.67)],
)
def test_reference_peaks_of_the_data_readme_are_found_where_smartpeak_saw_them(sciex_dir, name, q1, q3, apex_s):
    """gsn (282 -> 150) near 84.78 s in Sacc1, 23dpg heavy (268 -> 170) near 953.67 s."""
    traces = read_traces(sciex_dir / name)
    t = Transition("x", "quantifier", q1, q3)
    trace = match_transitions(traces, [t], {t: apex_s / 60}, 0.5)[t]
    assert trace.covers(apex_s / 60)
    peak = find_peak(trace.time, trace.intensity, PeakSearch(apex_s / 60, 0.2))
    assert peak.rt * 60 == pytest.approx(apex_s, abs=3)
    assert peak.sn > 100 and peak.start < peak.rt < peak.end


def test_trace_covering_the_expected_rt_wins_over_a_twin():
    early = Trace("a", 259.0, 79.0, np.linspace(1, 2, 50), np.ones(50))
    late = Trace("b", 259.0, 79.0, np.linspace(6, 7, 50), np.ones(50))
    other = Trace("c", 260.0, 79.0, np.linspace(6, 7, 50), np.ones(50))
    t = Transition("g6p", "quantifier", 259.001, 79.0)
    assert match_transitions([early, late, other], [t], {t: 6.6}, 0.5)[t] is late
    assert match_transitions([early, late, other], [t], {t: 1.5}, 0.5)[t] is early


def test_missing_transition_gives_none():
    t = Transition("x", "quantifier", 500.0, 100.0)
    trace = Trace("a", 501.0, 100.0, np.linspace(1, 2, 5), np.ones(5))
    assert match_transitions([trace], [t], {t: 1.5}, 0.5)[t] is None


def test_gzipped_mzml_is_read(sciex_dir, tmp_path):
    packed = tmp_path / "injection.mzML.gz"
    with open(sciex_dir / "RawDataProcessor_mzML_1.mzML", "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert len(read_traces(packed)) == 324


def test_truncated_file_gives_one_clear_sentence(sciex_dir, tmp_path, capfd):
    broken = tmp_path / "broken.mzML"
    broken.write_bytes((sciex_dir / "RawDataProcessor_mzML_1.mzML").read_bytes()[:200_000])
    with pytest.raises(ChromatogramReadError, match=r"broken.mzML: not a readable mzML file \(input ended"):
        read_traces(broken)
    assert "XMLHandler" not in capfd.readouterr().err  # OpenMS' C++ trace does not leak to the terminal
