"""lcmsquant: triple-quadrupole LC-MS/MS quantitation judged by ICH M10.

The public API, in the order of the data's path (see the documentation's Architecture page)::

    method = lcmsquant.load_method("methods/flumatinib.toml")
    batch, result = lcmsquant.run_batch("examples/plasma-batch")   # measured and judged, nothing written
    lcmsquant.write_outputs(batch, result, Path("examples/plasma-batch/results"))
    outputs = lcmsquant.read_results("examples/plasma-batch/results")

Names are imported from their modules when first used, so `import lcmsquant` stays quick (the
command line reads `__version__` before anything else).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_API = {
    # the method and the batch
    "load_method": "method",
    "Method": "method",
    "import_transition_list": "transition_list",
    "load_batch": "batch",
    "Batch": "batch",
    # measuring and quantifying one batch
    "measure_injection": "measure",
    "measure_batch": "measure",
    "run_batch": "pipeline",
    "quantify": "pipeline",
    "RunResult": "pipeline",
    # a results folder: written, read back, reported; many batches
    "write_outputs": "results",
    "read_results": "results",
    "RunOutputs": "results",
    "write_report": "report",
    "write_pdf": "report",
    "process_batch": "runs",
    "run_batches": "runs",
    # reviewing, correcting and signing a run
    "open_review": "review",
    "ReviewSession": "review",
    "Correction": "review",
    "read_trail": "audit_trail",
    "sign": "audit_trail",
    # across runs and the study
    "read_runs": "validation",
    "validate_runs": "validation",
    "isr_runs": "validation",
    "compare_curves": "validation",
    "add_runs": "cohort",
    "cohort_tables": "cohort",
    "write_penetration": "cohort",
    "export_cohort": "export",
    # test data
    "simulate_batch": "simulate",
    "simulate_study": "simulate",
    "SimulationOptions": "simulate",
    # the project's words and its one error type
    "Flag": "vocabulary",
    "RuleId": "vocabulary",
    "SampleType": "vocabulary",
    "QCLevel": "vocabulary",
    "Matrix": "vocabulary",
    "PeakStatus": "vocabulary",
    "Meaning": "vocabulary",
    "InputError": "files",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'lcmsquant' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lcmsquant.{_API[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from lcmsquant.audit_trail import read_trail, sign
    from lcmsquant.batch import Batch, load_batch
    from lcmsquant.cohort import add_runs, cohort_tables, write_penetration
    from lcmsquant.export import export_cohort
    from lcmsquant.files import InputError
    from lcmsquant.measure import measure_batch, measure_injection
    from lcmsquant.method import Method, load_method
    from lcmsquant.pipeline import RunResult, quantify, run_batch
    from lcmsquant.report import write_pdf, write_report
    from lcmsquant.results import RunOutputs, read_results, write_outputs
    from lcmsquant.review import Correction, ReviewSession, open_review
    from lcmsquant.runs import process_batch, run_batches
    from lcmsquant.simulate import SimulationOptions, simulate_batch, simulate_study
    from lcmsquant.transition_list import import_transition_list
    from lcmsquant.validation import compare_curves, isr_runs, read_runs, validate_runs
    from lcmsquant.vocabulary import Flag, Matrix, Meaning, PeakStatus, QCLevel, RuleId, SampleType
