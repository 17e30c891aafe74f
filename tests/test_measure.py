"""Measuring is its own stage: what the worker processes import, and the peak table it gives."""

from __future__ import annotations

import subprocess
import sys


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


def test_quantifying_does_not_load_the_compiled_peak_finder():
    """The main process of a run with workers quantifies without numba (0.3 s and ~70 MB)."""
    code = "import sys, lcmsquant.pipeline, lcmsquant.results\nprint('numba' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_run_imports_the_statistics_stack_while_its_workers_measure_not_before():
    """statsmodels and scipy.stats (about 1.4 s) are only needed to quantify: lcmsquant.runs and
    lcmsquant.results leave them out, and process_batch imports them in a thread once the
    workers are measuring (runs.import_in_background)."""
    code = (
        "import sys, lcmsquant.runs, lcmsquant.results\n"
        "print(' '.join(m for m in ('statsmodels', 'scipy.stats', 'lcmsquant.pipeline') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
