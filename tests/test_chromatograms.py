"""Reading real SCIEX mzML and matching traces to transitions by Q1/Q3."""

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

from lcmsquant.chromatograms import ChromatogramReadError, Trace, match_transitions, read_injection, read_traces
from lcmsquant.method import Transition, load_method
from lcmsquant.peaks import PeakSearch, find_peak
from lcmsquant.transition_list import import_transition_list

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


def _flat(name, q1, q3, start, end, points=50):
    return Trace(name, q1, q3, np.linspace(start, end, points), np.ones(points))


def test_exact_q1_wins_over_a_trace_only_within_the_tolerance_even_centred_nearer():
    """SCIEX tells transitions apart by 0.001 in Q1: 117.001 and 117 are two compounds."""
    offset = _flat("Q1=117", 117.0, 73.0, 11.5, 12.5)  # centred on the expected RT
    own = _flat("Q1=117.001", 117.001, 73.0, 11.9, 14.0)  # covers it, centred far off
    succ, mmal = Transition("succ", "qualifier", 117.001, 73.0), Transition("mmal", "qualifier", 117.0, 73.0)
    matched = match_transitions([offset, own], [succ, mmal], {succ: 12.0, mmal: 12.0}, 0.5)
    assert matched[succ] is own and matched[mmal] is offset
    assert not any("also cover" in w for w in matched[succ].warnings + matched[mmal].warnings)  # not twins


def test_a_list_written_to_4_decimals_matches_a_file_rounded_to_3():
    """traML.csv lists 212.0235 -> 130.0168, Sacc1 writes 212.023 -> 130.017: the same transition."""
    rounded = _flat("Q1=212.023", 212.023, 130.017, 12.0, 16.0)
    neighbour = _flat("Q1=212.022", 212.022, 130.017, 13.0, 15.0)  # 0.001 further off, centred nearer
    t = Transition("2mcit-IS", "internal_standard", 212.0235, 130.0168)
    assert match_transitions([neighbour, rounded], [t], {t: 14.0}, 0.5)[t] is rounded


def test_an_exact_trace_too_short_to_use_is_still_the_transitions_own():
    """Another compound's trace would be read as this one: better no data (NO_DATA) than wrong data."""
    short = _flat("Q1=346.002", 346.002, 79.0, 11.0, 11.1, points=3)
    amp = _flat("Q1=346", 346.0, 79.0, 10.6, 11.9)
    t = Transition("dgmp", "quantifier", 346.002, 79.0)
    trace = match_transitions([amp, short], [t], {t: 11.28}, 0.5)[t]
    assert trace is short and not trace.usable


def test_twins_are_only_traces_that_match_as_well():
    own = _flat("own", 346.002, 79.0, 10.2, 14.2)
    copy = _flat("copy", 346.002, 79.0, 10.5, 14.5)
    amp = _flat("amp", 346.0, 79.0, 10.6, 11.9)
    t = Transition("dgmp", "quantifier", 346.002, 79.0)
    (warning,) = [w for w in match_transitions([amp, copy, own], [t], {t: 11.28}, 0.5)[t].warnings]
    assert "1 other trace(s) with the same Q1/Q3 also cover 11.28 min (copy)" in warning
    # Without an exact match, traces within the tolerance are twins, and not said to share Q1/Q3.
    near = Transition("x", "quantifier", 346.3, 79.0)
    (warning,) = match_transitions([amp, own], [near], {near: 11.28}, 0.5)[near].warnings
    assert "1 other trace(s) with Q1/Q3 within 0.5 of the method's also cover" in warning


def test_sacc1_dgmp_is_read_from_its_own_trace_not_from_amps(sciex_dir, tmp_path):
    """dgmp's quantifier is Q1 346.002 -> 79 at 11.28 min; amp's 346 -> 79 trace also lies within
    the method's 0.5 Da, also covers 11.28 min and is centred nearer to it (10.63-11.94 min
    against 10.24-14.23): only the exact Q1 tells them apart."""
    method = load_method(import_transition_list(sciex_dir / "traML.csv", tmp_path / "yeast.toml"))
    dgmp = method.analyte("dgmp").quantifier
    assert (dgmp.q1, dgmp.q3) == (346.002, 79)
    assert (346, 79) not in [(q.q1, q.q3) for q in method.analyte("amp").qualifiers]  # the import drops it
    rt = method.expected_rt(dgmp)
    amps = [tr for tr in read_traces(sciex_dir / "170808_Jonathan_yeast_Sacc1_1x.mzML") if (tr.q1, tr.q3) == (346, 79)]
    assert len(amps) == 1 and amps[0].covers(rt)  # the decoy is there to be taken
    trace = read_injection(sciex_dir / "170808_Jonathan_yeast_Sacc1_1x.mzML", method)[dgmp]
    assert (trace.q1, trace.q3) == (346.002, 79)
    assert "SRM SIC Q1=346.002 Q3=79 " in trace.native_id


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
