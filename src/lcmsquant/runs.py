"""Many batches at once: each is loaded, measured, quantified and written to its own results
folder on its own, so that one unusable batch reports its problem and the others finish.

Locally the batches run one after the other, each measured by the same worker processes (one
WorkerPool for the whole call); given the address of a Dask distributed scheduler, one task per
batch runs on that cluster (its workers must see the batch folders at the same paths). Dask is
imported only then.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lcmsquant.batch import load_batch, resolve_method_path
from lcmsquant.files import InputError, file_kind
from lcmsquant.measure import default_jobs, measure_batch, resolve_jobs
from lcmsquant.method import load_method
from lcmsquant.results import RESULTS_FOLDER, peak_counts, results_lock, sample_counts, write_outputs
from lcmsquant.vocabulary import QCLevel, SampleType
from lcmsquant.workers import WorkerPool, interrupt_deferred

if TYPE_CHECKING:
    from lcmsquant.pipeline import RunResult

RESULTS = RESULTS_FOLDER


class RunRequestError(InputError):
    """Batches and options that cannot be run together (two batches writing to one folder, an
    unreachable scheduler, ...)."""

    kind = "request"


@dataclass(frozen=True)
class BatchOutcome:
    """What became of one batch: where its results went, or why there are none."""

    folder: Path
    out_dir: Path | None = None  # None when nothing was written
    error: str = ""  # why the batch was not processed; "" when it was
    bad_input: bool = False  # the error is the batch's input (exit 2), not a fault of lcmsquant
    summary: tuple[dict, ...] = ()  # one row per analyte x calibrator set, see summary_rows
    injection_errors: dict = field(default_factory=dict)  # injection order -> message (NO_DATA)
    read_warnings: int = 0  # injections whose reading changed or doubted something
    report_problem: str = ""  # why report.html could not be written; the results stand
    report_warnings: tuple[str, ...] = ()  # what the report could not show (an mzML file changed since it was read)
    peaks_only: str = ""  # why the run has no calibration (pipeline.peaks_only_reason); "" when calibrated
    peak_counts: dict = field(default_factory=dict)  # a peaks-only run's summary (results.peak_counts)
    rule_warnings: tuple[str, ...] = ()  # failing rules that do not reject the analyte (see rule_warnings)

    @property
    def ok(self) -> bool:
        return not self.error


def summary_rows(result: RunResult) -> tuple[dict, ...]:
    """Per analyte and calibrator set: the curve, QCs passed, and what became of the samples."""
    rows = []
    results = result.results
    for _, cal in result.calibration.iterrows():
        mine = results[(results["analyte"] == cal["analyte"]) & (results["calibrator_set"] == cal["calibrator_set"])]
        qcs = mine[(mine["sample_type"] == SampleType.QC) & (mine["level"] != QCLevel.DQC)]
        rows.append(
            {
                "analyte": cal["analyte"],
                "calibrator_set": cal["calibrator_set"],
                "model": cal["model"],
                "weighting": cal["weighting"],
                "r_squared": float(cal["r_squared"]),
                "qcs_passed": int(qcs["qc_passed"].fillna(False).sum()),
                "qcs": len(qcs),
                "accepted": bool(cal["accepted"]),
                **sample_counts(mine[mine["sample_type"] == SampleType.UNKNOWN]),
            }
        )
    return tuple(rows)


def rule_warnings(result: RunResult) -> tuple[str, ...]:
    """Each failing rule that does not reject its analyte (IS drift, QCs outside the study
    samples' range, ...): "analyte (set): rule, measured (limit)"."""
    return tuple(
        f"{r.analyte} ({r.calibrator_set}): {r.rule}, {r.measured} (limit {r.limit})"
        for r in result.rules
        if not r.passed and not r.critical
    )


def process_batch(
    folder: Path | str,
    method_path: Path | str | None = None,
    out_dir: Path | str | None = None,
    jobs: int | None = 1,
    command: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    report: bool = True,
    workers: WorkerPool | None = None,
    release_workers: bool = False,
) -> BatchOutcome:
    """Run one batch and write its results (default BATCH/results); never raises for the batch's
    own problems, so that a list of batches always finishes.

    workers: the pool that measures the batch when more than one process does (run_batches
    keeps one for all its batches); without it one is started for this batch and stopped once
    the batch is measured. release_workers: stop the given pool's workers once the batch is
    measured (the last batch of a run): their memory is not needed to quantify and draw the report.

    progress(done, total) is called once the batch is loaded (done = 0) and after each injection.
    report.html is drawn from the new results before they are written and written with them;
    report=False leaves it out (re-render it later with `lcmsquant report`). Either way a
    previous report.html or report.pdf is removed with the same step (results.write_outputs).
    A results folder that another process is writing into is refused at once (results.results_lock).
    """
    folder = Path(folder)
    try:
        batch = load_batch(folder, load_method(resolve_method_path(folder, method_path)))
        out = Path(out_dir) if out_dir is not None else batch.folder / RESULTS
        with results_lock(out, command):  # from before measuring until the report is written
            total, done = len(batch.injections), 0
            if progress is not None:
                progress(0, total)

            def advance(_injection) -> None:
                nonlocal done
                done += 1
                if progress is not None:
                    progress(done, total)

            jobs = resolve_jobs(jobs, total)
            with ExitStack() as owned:
                pool = None
                if jobs > 1:
                    pool = workers if workers is not None else owned.enter_context(WorkerPool(jobs))
                    pool.start()
                # Imported before measuring: with workers, while the fork server imports what
                # measuring needs (statsmodels and scipy.stats take about 1 s).
                with interrupt_deferred():
                    from lcmsquant.pipeline import quantify

                peaks, errors = measure_batch(batch, advance if progress is not None else None, jobs, pool)
                if release_workers and pool is not None:
                    pool.close()
            result = quantify(batch, peaks, errors)
            drawn = ReportDrawing(out) if report else None
            write_outputs(batch, result, out, command=command, report=drawn)
    except InputError as err:
        return BatchOutcome(folder, error=str(err), bad_input=True)
    except OSError as err:  # e.g. the results folder cannot be written
        return BatchOutcome(folder, error=f"{folder}: {err.strerror or err}: {err.filename or ''}", bad_input=True)
    except Exception as err:  # a fault of ours must not stop the other batches; it is reported by name
        return BatchOutcome(folder, error=f"{folder}: unexpected {type(err).__name__}: {err} (please report this)")
    warned = (
        set(result.peaks.loc[result.peaks["read_warnings"] != "", "injection"])
        if "read_warnings" in result.peaks
        else set()
    )
    return BatchOutcome(
        folder,
        out,
        summary=summary_rows(result),
        injection_errors=dict(result.injection_errors),
        read_warnings=len(warned),
        report_problem=drawn.problem if drawn else "",
        report_warnings=tuple(drawn.warnings) if drawn else (),
        peaks_only=result.peaks_only,
        peak_counts=peak_counts(result.results) if result.peaks_only else {},
        rule_warnings=rule_warnings(result),
    )


class ReportDrawing:
    """Draws report.html from the set write_outputs is about to write (results.ReportRenderer),
    and keeps why it could not: a failure never loses the results, and write_outputs then
    removes the previous report, which would describe other results."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.problem = ""  # why there is no report.html; "" when it was drawn
        self.warnings: list[str] = []  # what the report could not show

    def __call__(self, data: Mapping[str, bytes]) -> str | None:
        try:
            with interrupt_deferred():  # a Ctrl-C during the import would leave half a module
                from lcmsquant.report import render_set  # matplotlib loads only when a report is made

            return render_set(self.out, data, self.warnings)
        except Exception as err:  # noqa: BLE001  the tables are valid; the report can be re-rendered
            self.warnings.clear()  # of a report that is not written
            self.problem = (
                f"{type(err).__name__}: {err} (the results are complete and the previous report was removed; "
                f"write the report with `lcmsquant report {self.out}`)"
            )
            return None


def output_folders(folders: Sequence[Path], out: Path | None) -> list[Path | None]:
    """Where each batch writes: BATCH/results (None: decided when loaded); with --out, that folder
    for a single batch, or out/<batch folder name> for several (names must then differ)."""
    if out is None:
        return [None] * len(folders)
    if os.path.lexists(out) and not Path(out).is_dir():
        kind = "a broken symbolic link" if file_kind(out) == "nothing" else file_kind(out)
        raise RunRequestError(out, [f"--out {out} is {kind}, not a folder: give a folder (it is created if missing)"])
    if len(folders) == 1:
        return [Path(out)]
    names: dict[str, Path] = {}
    problems = []
    for folder in folders:
        name = Path(folder).resolve().name
        if name in names:
            problems.append(
                f"batches {names[name]} and {folder} would both write to {Path(out) / name}: "
                f"run them separately or rename one folder"
            )
        names.setdefault(name, Path(folder))
    if problems:
        raise RunRequestError(out, problems)
    return [Path(out) / Path(folder).resolve().name for folder in folders]


def run_batches(
    folders: Iterable[Path | str],
    method_path: Path | str | None = None,
    out: Path | str | None = None,
    jobs: int | None = None,
    scheduler: str | None = None,
    command: list[str] | None = None,
    progress: Callable[[Path, int, int], None] | None = None,
    on_done: Callable[[BatchOutcome], None] | None = None,
    report: bool = True,
) -> list[BatchOutcome]:
    """Process every batch (see process_batch); outcomes in the order the folders were given.

    scheduler: address of a Dask distributed scheduler (tcp://host:port): one task per batch on
    that cluster, each measured in its worker (jobs is then not used). progress(folder, done,
    total) follows the injections of local runs; on_done(outcome) is called as each batch ends.
    """
    paths = [Path(f) for f in folders]
    outs = output_folders(paths, Path(out) if out is not None else None)
    if scheduler is not None:
        return _on_cluster(scheduler, paths, method_path, outs, command, on_done, report)
    outcomes = []
    # Started only if a batch is measured in workers; stopped once the last one is measured.
    with WorkerPool(jobs or default_jobs()) as workers:
        for position, (folder, out_dir) in enumerate(zip(paths, outs)):
            advance = (lambda done, total, folder=folder: progress(folder, done, total)) if progress else None
            outcome = process_batch(
                folder,
                method_path,
                out_dir,
                jobs,
                command,
                advance,
                report,
                workers=workers,
                release_workers=position == len(paths) - 1,
            )
            if on_done is not None:
                on_done(outcome)
            outcomes.append(outcome)
    return outcomes


def _on_cluster(
    address: str,
    folders: list[Path],
    method_path,
    outs: list[Path | None],
    command,
    on_done,
    report: bool = True,
) -> list[BatchOutcome]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise RunRequestError(
            "--scheduler",
            [
                "--scheduler needs Dask's distributed package: pip install distributed (or the dask extra, "
                "pip install '.[dask]' in a checkout)"
            ],
        ) from None
    # Workers run elsewhere: they get absolute paths, valid wherever the folders are mounted alike.
    method = str(Path(method_path).resolve()) if method_path is not None else None
    try:
        client = Client(address)  # waits distributed.comm.timeouts.connect (Dask config, 30 s)
    except (OSError, TimeoutError) as err:
        raise RunRequestError("--scheduler", [f"cannot reach the Dask scheduler at {address}: {err}"]) from None
    outcomes: dict[int, BatchOutcome] = {}
    try:
        futures = {
            client.submit(
                process_batch,
                str(folder.resolve()),
                method,
                str(out.resolve()) if out is not None else None,
                1,
                command,
                report=report,
                key=f"lcmsquant-batch-{i}-{folder.name}",
                pure=False,
            ): i
            for i, (folder, out) in enumerate(zip(folders, outs))
        }
        for future in as_completed(futures):
            i = futures[future]
            try:
                outcome = future.result()
            except Exception as err:  # the worker died or the cluster lost the task
                outcome = BatchOutcome(
                    folders[i], error=f"{folders[i]}: the Dask cluster could not run it: {type(err).__name__}: {err}"
                )
            outcome = _as_given(outcome, folders[i])
            outcomes[i] = outcome
            if on_done is not None:
                on_done(outcome)
    finally:
        client.close()
    return [outcomes[i] for i in range(len(folders))]


def _as_given(outcome: BatchOutcome, folder: Path) -> BatchOutcome:
    """The outcome with the folder as the user named it (the worker saw the absolute path)."""
    return replace(outcome, folder=folder)
