"""Measuring is its own stage: what the worker processes import, and the peak table it gives."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lcmsquant.chromatograms import Trace
from lcmsquant.measure import coeluting_search, run_rt_offset
from lcmsquant.method import default_method_path, load_method
from lcmsquant.peaks import PeakSearch, find_peak


@pytest.mark.subprocess
def test_the_measuring_stage_leaves_the_statistics_stack_out():
    """Workers import lcmsquant.measure and the compiled peak finder only: statsmodels, scipy.stats
    and scipy.signal would cost each run's fork server about 1.4 s of CPU and their memory."""
    code = (
        "import sys, lcmsquant.measure, lcmsquant._peak_kernels\n"
        "print(' '.join(m for m in ('statsmodels', 'scipy.stats', 'scipy.signal', 'matplotlib', 'jinja2') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


@pytest.mark.subprocess
def test_quantifying_does_not_load_the_compiled_peak_finder():
    """The main process of a run with workers quantifies without numba (0.3 s and ~70 MB)."""
    code = "import sys, lcmsquant.pipeline, lcmsquant.results\nprint('numba' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


@pytest.mark.subprocess
def test_a_run_imports_the_statistics_stack_only_once_its_fork_server_is_starting():
    """statsmodels and scipy.stats (about 1.4 s) are only needed to quantify: lcmsquant.runs and
    lcmsquant.results leave them out, and process_batch imports them once the workers' fork
    server is importing what measuring needs (both at once, on two cores)."""
    code = (
        "import sys, lcmsquant.runs, lcmsquant.results\n"
        "print(' '.join(m for m in ('statsmodels', 'scipy.stats', 'lcmsquant.pipeline') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


# ---------------------------------------------------------------------------------------------
# Which peak: the run's RT offset and the co-elution of quantifier and qualifier


def _gauss(time, rt, height, sigma_s=2.0):
    return height * np.exp(-0.5 * ((time - rt) * 60 / sigma_s) ** 2)


def _trace(transition, time, intensity):
    return Trace(f"SRM {transition.q1}>{transition.q3}", transition.q1, transition.q3, time, intensity)


def test_the_quantifier_peak_is_the_one_its_qualifier_co_elutes_with():
    """An interference taller than the analyte in the quantifier's window, absent from the
    qualifier: the peak where quantifier and qualifier co-elute is integrated, not the taller one."""
    method = load_method(default_method_path())
    analyte = method.analyte("flumatinib")
    rng = np.random.default_rng(2)
    time = np.arange(2.1, 3.1, 0.35 / 60)
    quant = 200 + _gauss(time, 2.60, 5000) + _gauss(time, 2.75, 9000) + rng.normal(0, 40, time.size)
    qual = 200 + _gauss(time, 2.60, 2200) + rng.normal(0, 40, time.size)
    traces = {
        analyte.quantifier: _trace(analyte.quantifier, time, quant),
        analyte.qualifiers[0]: _trace(analyte.qualifiers[0], time, qual),
    }
    search = coeluting_search(traces, analyte, PeakSearch(2.62, 0.3))
    peak = find_peak(time, quant, search)
    assert abs(peak.rt - 2.60) * 60 < 1.0
    assert find_peak(time, quant, PeakSearch(2.62, 0.3)).rt == pytest.approx(2.75, abs=0.01)  # by prominence alone


def test_without_a_competing_candidate_the_search_is_left_as_it_is():
    method = load_method(default_method_path())
    analyte = method.analyte("flumatinib")
    time = np.arange(2.1, 3.1, 0.35 / 60)
    quant = 200 + _gauss(time, 2.60, 5000)
    qual = 200 + _gauss(time, 2.60, 2200)
    traces = {
        analyte.quantifier: _trace(analyte.quantifier, time, quant),
        analyte.qualifiers[0]: _trace(analyte.qualifiers[0], time, qual),
    }
    search = PeakSearch(2.62, 0.3)
    assert coeluting_search(traces, analyte, search) == search


def test_the_run_offset_is_the_median_of_the_clear_internal_standards_nearest():
    """Internal standards eluting 0.4 min late move every search by 0.4 min."""
    method = load_method(default_method_path())
    time = np.arange(0.5, 4.5, 0.35 / 60)
    traces = {}
    for istd in method.internal_standards:
        traces[istd.transition] = _trace(istd.transition, time, 200 + _gauss(time, istd.rt + 0.4, 1e5))
    offset = run_rt_offset(traces, method)
    assert offset(2.6) == pytest.approx(0.4, abs=0.005)
    assert offset(1.85) == pytest.approx(0.4, abs=0.005)
    assert run_rt_offset({}, method)(2.6) == 0.0
