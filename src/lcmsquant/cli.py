"""The `lcmsquant` command: a thin shell over the library."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from lcmsquant import __version__
from lcmsquant.files import InputError
from lcmsquant.workers import PARALLEL_MIN_INJECTIONS

# Plain (click) help: typer's rich help shows `<bool>` beside every flag.
PLAIN_HELP: dict[str, Any] = {"rich_markup_mode": None}
app = typer.Typer(
    help="Triple-quadrupole LC-MS/MS quantitation judged by ICH M10.",
    no_args_is_help=True,
    **PLAIN_HELP,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Logs and pipes get a fixed width so the summary table is not squeezed to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 120)
errors = Console(stderr=True, soft_wrap=True)  # a message stays one line in logs; terminals wrap it themselves

EXIT_BAD_INPUT = 2


def command_line() -> None:
    """The `lcmsquant` program: runs the command, then leaves without the interpreter's teardown.

    When a command returns, everything it opened is closed: outputs are written atomically, the
    results lock is released, worker pools are stopped by their `with` blocks, and the fork
    server ends by itself once this process is gone. An ordinary exit would then free every
    object one by one; with pandas, scipy and statsmodels loaded its last garbage collections
    took 0.25-0.5 s after every run (7-17 % of `lcmsquant run` on a 384-injection batch, 2
    cores), more than the plain worker pool may cost. So the command leaves with os._exit, after
    what an ordinary exit would do that matters here: flushing its output, and removing
    multiprocessing's temporary folder (the fork server's socket), as multiprocessing's exit
    handler would. os._exit also keeps Ctrl-C's exit code 130: CPython ends a process by SIGINT
    when a KeyboardInterrupt has passed through C code (some imports), whatever exit code the
    program asks for. An exception other than an exit leaves the ordinary way, with its traceback.
    """
    try:
        app(prog_name="lcmsquant")
        code: str | int | None = 0
    except SystemExit as done:
        code = done.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    if "multiprocessing.util" in sys.modules:  # workers may have been started
        from multiprocessing import util

        shutil.rmtree(util.get_temp_dir(), ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _version(value: bool) -> None:
    if value:
        console.print(f"lcmsquant {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Triple-quadrupole LC-MS/MS quantitation judged by ICH M10."""


def _fail(err: Exception) -> None:
    errors.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
    raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def run(
    batch_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Batch folder(s), each with worklist.csv and the mzML files.", metavar="BATCH_DIR", show_default=False
        ),
    ],
    method: Annotated[
        Path | None,
        typer.Option(
            "--method", help="Method TOML (default: the batch's method.toml, else the shipped flumatinib method)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Output folder (default: BATCH_DIR/results; with several batches, OUT/<batch name>)."
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            show_default=False,
            help="Processes reading and integrating injections at once (default: every core, "
            f"batches under {PARALLEL_MIN_INJECTIONS} injections in this process; 1: in this process).",
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler", help="Dask scheduler address (tcp://host:port): one task per batch on that cluster."
        ),
    ] = None,
    no_report: Annotated[
        bool,
        typer.Option(
            "--no-report", help="Leave out report.html (bulk reprocessing; `lcmsquant report` writes it later)."
        ),
    ] = False,
) -> None:
    """Quantify batches: peaks, calibration curves, ICH M10 acceptance, results files.

    Each batch gets its own results folder; an unusable batch is reported and the others still
    run (exit code 2 if any batch was unusable, 1 on an unexpected error).
    """
    try:
        outcomes = _run_batches(batch_dirs, method, out, jobs, scheduler, with_report=not no_report)
    except KeyboardInterrupt:
        errors.print("[bold red]interrupted:[/] the batch in progress wrote nothing; results already written are whole")
        raise typer.Exit(130) from None
    failed = [o for o in outcomes if not o.ok]
    if len(outcomes) > 1:
        console.print(
            f"{len(outcomes) - len(failed)} of {len(outcomes)} batches processed"
            + (": " + ", ".join(escape(str(o.folder)) for o in failed) + " failed" if failed else "")
        )
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT if all(o.bad_input for o in failed) else 1)


def _run_batches(
    batch_dirs: list[Path],
    method: Path | None,
    out: Path | None,
    jobs: int | None,
    scheduler: str | None,
    with_report: bool = True,
):
    """run_batches with a progress bar per batch and each batch's summary as it ends."""
    from lcmsquant.workers import interrupt_deferred, start_server, worklist_length

    if (
        scheduler is None
        and (jobs or 0) != 1
        and (jobs is not None or max(map(worklist_length, batch_dirs)) >= PARALLEL_MIN_INJECTIONS)
    ):
        start_server()  # workers come from a fork server that imports lcmsquant: let it do so while we do
    with interrupt_deferred():
        from lcmsquant.runs import run_batches

    several = len(batch_dirs) > 1
    from lcmsquant.peaks import peak_finder_compiled

    if not peak_finder_compiled():  # said on stderr: seen in a terminal and in a log alike
        errors.print(
            "note: compiling the peak finder, once after installing: this first run takes 30-45 s longer",
            highlight=False,
        )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        tasks: dict[Path, TaskID] = {}

        def advance(folder: Path, done: int, total: int) -> None:
            if folder not in tasks:
                console.print(f"{escape(str(folder))}: {total} injections", highlight=False)
                tasks[folder] = progress.add_task(f"Integrating {escape(folder.name)}", total=total)
            progress.update(tasks[folder], completed=done)

        def report(outcome) -> None:
            if outcome.folder in tasks:
                progress.remove_task(tasks[outcome.folder])
            _print_outcome(outcome, several)

        try:
            return run_batches(
                batch_dirs,
                method,
                out,
                jobs,
                scheduler,
                ["lcmsquant", *sys.argv[1:]],
                advance,
                report,
                report=with_report,
            )
        except InputError as err:
            _fail(err)


def _print_outcome(outcome, several: bool) -> None:
    if not outcome.ok:
        errors.print(f"[bold red]error:[/] {escape(outcome.error)}", highlight=False)
        return
    for order, message in sorted(outcome.injection_errors.items()):
        errors.print(f"[yellow]warning:[/] injection {order}: {escape(message)} (flagged NO_DATA)", highlight=False)
    if outcome.read_warnings:
        errors.print(
            f"[yellow]warning:[/] reading changed or doubted something in {outcome.read_warnings} injection(s): "
            f"see read_warnings in {escape(str(outcome.out_dir / 'run.json'))}",
            highlight=False,
        )
    if outcome.peaks_only:
        _print_peaks_only(outcome, several)
    else:
        table = summary_table(outcome.summary)
        if several:  # a line of its own: a long path would wrap inside the table's width
            table.title = None
            console.print(f"Run summary: {escape(str(outcome.folder))}", highlight=False, soft_wrap=True)
        console.print(table)
        _warn(f"{warning}: does not reject the analyte; see report.html" for warning in outcome.rule_warnings)
    if outcome.report_problem:
        errors.print(f"[yellow]warning:[/] report.html not written: {escape(outcome.report_problem)}", highlight=False)
    _warn(f"report.html: {warning}" for warning in outcome.report_warnings)
    has_report = (outcome.out_dir / "report.html").is_file()
    console.print(
        f"Results written to {escape(str(outcome.out_dir))}"
        + (" (open report.html in a browser)" if has_report else ""),
        highlight=False,
    )


def _print_peaks_only(outcome, several: bool) -> None:
    """A peaks-only run has no curve and no verdict: say so and why, and what was found."""
    from lcmsquant.method import PEAKS_ONLY

    c = outcome.peak_counts
    console.print(
        f"Run summary{f' of {escape(str(outcome.folder))}' if several else ''}: [bold]{PEAKS_ONLY}[/]\n"
        f"{escape(outcome.peaks_only[:1].upper() + outcome.peaks_only[1:])}.\n"
        f"{c['injections']} injection(s) x {c['analytes']} analyte(s): quantifier peak found {c['found']}, "
        f"no peak {c['no_peak']}, no data {c['no_data']}, no IS peak {c['no_is']}; flagged {c['flagged']}.",
        highlight=False,
    )


SUMMARY_COLUMNS: tuple[tuple[str, Literal["left", "right"]], ...] = (  # header, justification; fits 80 columns
    ("analyte", "left"),
    ("set", "left"),
    ("curve", "left"),
    ("r²", "right"),
    ("QCs ok", "right"),
    ("verdict", "left"),
    ("quant", "right"),
    ("BLQ", "right"),
    ("ALQ", "right"),
    ("flag", "right"),
    ("redo", "right"),
)
CURVE_WORDS = {"linear": "lin", "quadratic": "quad", "linear_through_zero": "lin/0"}


def summary_table(rows) -> Table:
    """Per analyte and calibrator set: the curve, QCs passed, and what became of the study
    samples (rows from lcmsquant.runs.summary_rows, or a RunResult). One space between columns,
    short headers and curve names keep it within 80 columns: a terminal's default width."""
    if hasattr(rows, "calibration"):  # a RunResult
        from lcmsquant.runs import summary_rows

        rows = summary_rows(rows)
    table = Table(
        title="Run summary",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
        show_edge=False,
        caption="study samples: quant = with a value, flag = any flag (BLQ, ALQ too), redo = to reanalyse",
        caption_justify="left",
    )
    for header, justify in SUMMARY_COLUMNS:
        table.add_column(header, justify=justify, no_wrap=True)
    for row in rows:
        curve = (
            f"{CURVE_WORDS.get(row['model'], row['model'])} {row['weighting'].replace('^2', '²')}"
            if row["model"]
            else "none"
        )
        verdict = "[green]accepted[/]" if row["accepted"] else "[bold red]rejected[/]"
        table.add_row(
            row["analyte"],
            row["calibrator_set"],
            curve,
            f"{row['r_squared']:.4f}" if row["model"] else "-",
            f"{row['qcs_passed']}/{row['qcs']}",
            verdict,
            *(str(row[k]) for k in ("quantified", "blq", "alq", "flagged", "reanalyse")),
        )
    return table


@app.command()
def report(
    results_dir: Annotated[
        Path, typer.Argument(help="Results folder of a run (BATCH_DIR/results).", metavar="RESULTS_DIR")
    ],
    pdf: Annotated[bool, typer.Option("--pdf", help="Also print report.pdf for signing (needs Chromium).")] = False,
    batch: Annotated[
        Path | None,
        typer.Option("--batch", help="Batch folder with the mzML files (default: the one the run recorded)."),
    ] = None,
) -> None:
    """Re-render the run's report.html from its results folder, and optionally report.pdf.

    The results folder's audit trail records each report drawn (a `report` entry naming the
    SHA-256 of the files written), after the report: a report lists the entries before its own.
    """
    from contextlib import nullcontext

    from lcmsquant.audit_trail import account, record_report
    from lcmsquant.browser import BrowserError
    from lcmsquant.report import write_pdf, write_report
    from lcmsquant.results import results_dir_of, results_lock

    results_dir = results_dir_of(results_dir)  # a batch folder stands for its results
    if batch is not None and not batch.is_dir():
        _fail(ValueError(f"--batch {batch}: not a folder; give the batch folder that holds the mzML files"))
    warnings: list[str] = []
    command = ["lcmsquant", *sys.argv[1:]]
    written: list[Path] = []
    try:
        # A run writing into the folder would replace the report; its lock refuses us meanwhile.
        with results_lock(results_dir, command) if results_dir.is_dir() else nullcontext():
            written.append(write_report(results_dir, batch, warnings))
            _warn(warnings)
            try:
                if pdf:
                    written.append(write_pdf(results_dir))
            finally:  # report.html was written even when printing the PDF failed
                record_report(results_dir, written, account(), command)
    except (InputError, BrowserError) as err:
        _fail(err)
    for path in written:
        console.print(f"Report written to {path}", markup=False)


@app.command()
def review(
    batch_dir: Annotated[Path, typer.Argument(help="Batch folder to review.", metavar="BATCH_DIR", show_default=False)],
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port on 127.0.0.1 (default 0: a free one).")
    ] = 0,
    analyst: Annotated[
        str, typer.Option("--analyst", help="Your name, filled in for each change and signature (you can change it).")
    ] = "",
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Only print the address; open no browser.")] = False,
    method: Annotated[
        Path | None, typer.Option("--method", help="Method TOML (default: as for `lcmsquant run`).")
    ] = None,
) -> None:
    """Review, correct and sign a run in the browser: drag peak boundaries, exclude calibrators,
    see curves and verdicts change, sign "reviewed" and "approved".

    Holds BATCH_DIR/results while it runs (a `run` into it is refused meanwhile); every change
    is written to overrides.csv, the results and the audit trail at once. Ctrl-C ends it.
    """
    import webbrowser

    from lcmsquant.review import open_review
    from lcmsquant.review_app import bind, new_token, serve

    if not batch_dir.is_dir():
        _fail(ValueError(f"{batch_dir}: not a folder; give the batch folder that holds worklist.csv"))
    command = ["lcmsquant", *sys.argv[1:]]
    try:
        sock = bind(port)
        errors.print(f"Measuring {batch_dir} ...", highlight=False)
        with open_review(batch_dir, method, analyst=analyst or None, command=command) as session:

            def ready(url: str) -> None:
                console.print(f"Review of {session.folder.name} at {url}", markup=False, soft_wrap=True)
                console.print("Keep this window open while you review; Ctrl-C ends the review.", markup=False)
                if not no_browser:
                    webbrowser.open(url)

            serve(session, sock, new_token(), analyst, ready)
            if not (session.out_dir / "report.html").is_file():  # a change removed the report of the old results
                console.print(f"Report written to {session.write_report(analyst or None)}", markup=False)
            overrides = session.folder / "overrides.csv"
            console.print(
                f"Review ended. Results in {session.out_dir}, every change and signature in its audit-trail.jsonl"
                + (f", the manual integrations in {overrides}" if overrides.is_file() else "")
                + "; undo and redo end with the review.",
                markup=False,
                soft_wrap=True,
            )
    except (InputError, OSError) as err:
        _fail(err)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


method_app = typer.Typer(help="Method files: import a transition list.", no_args_is_help=True, **PLAIN_HELP)
app.add_typer(method_app, name="method")


@method_app.command("import")
def method_import(
    transition_list: Annotated[
        Path, typer.Argument(help="OpenMS/Skyline-style transition list (CSV or TSV).", metavar="TRANSITION_LIST")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Method TOML to write, e.g. methods/NAME.toml.")],
    name: Annotated[str | None, typer.Option("--name", help="Method name (default: the output file's stem).")] = None,
) -> None:
    """Turn a transition list into a method file (IS from Light/Heavy, RT seconds -> minutes)."""
    from lcmsquant.transition_list import import_transition_list

    try:
        written = import_transition_list(transition_list, out, name=name)
    except InputError as err:
        _fail(err)
    except OSError as err:
        _fail(ValueError(f"{transition_list}: {err.strerror}"))
    console.print(
        f"Method written to {written}; without [calibrator_sets] it runs peaks only (areas, retention times, "
        f"flags): add them, or a calibrators.csv to a batch, to quantify with it",
        markup=False,
    )


@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the simulated batch to.", metavar="OUT_DIR")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same files.")] = 1,
    matrix: Annotated[
        Literal["plasma", "csf"], typer.Option("--matrix", help="Matrix of the calibrators and QCs.")
    ] = "plasma",
    unknowns: Annotated[int, typer.Option("--unknowns", help="Number of study samples.")] = 24,
    matrix_peak: Annotated[
        bool,
        typer.Option(
            "--matrix-peak", help="Add a baseline-resolved plasma peak 0.3-0.4 min after each analyte, in every sample."
        ),
    ] = False,
    neighbour_peak: Annotated[
        bool, typer.Option("--neighbour-peak", help="Add a partly resolved neighbour 1.25-1.5 FWHM from each analyte.")
    ] = False,
    rt_offset: Annotated[
        float,
        typer.Option(
            "--rt-offset", help="Minutes the whole run elutes from the method's RTs (windows widened to match)."
        ),
    ] = 0.0,
    acquisition: Annotated[
        Literal["instrument", "smooth"],
        typer.Option(
            "--acquisition",
            help="instrument: counting noise and jagged tops, as measured on real files; smooth: ideal peaks.",
        ),
    ] = "instrument",
) -> None:
    """Write a realistic simulated batch (and its true concentrations beside the folder)."""
    from lcmsquant.results import RESULTS_FOLDER
    from lcmsquant.simulate import SimulationOptions, simulate_batch

    try:
        options = SimulationOptions(
            n_unknowns=unknowns,
            matrix_peak=matrix_peak,
            neighbour_peak=neighbour_peak,
            rt_offset_min=rt_offset,
            acquisition=acquisition,
        )
    except ValueError as err:
        _fail(
            ValueError(
                str(err)
                .replace("rt_offset_min", "--rt-offset")
                .replace("acquisition", "--acquisition")
                .replace("n_unknowns", "--unknowns")
            )
        )
    if (out_dir / RESULTS_FOLDER).exists():  # results of another batch would stay beside the new files
        _fail(
            ValueError(f"{out_dir} holds the results of an earlier run: simulate into a new folder, or remove it first")
        )
    truth = simulate_batch(out_dir, seed=seed, matrix=matrix, options=options)
    console.print(f"Simulated batch written to {out_dir}; true concentrations in {truth}")


# --- Across runs: calibration model comparison, accuracy and precision, ISR (lcmsquant.validation) ---

calibration_app = typer.Typer(
    help="Calibration across runs: choose the model and weighting once.", no_args_is_help=True, **PLAIN_HELP
)
app.add_typer(calibration_app, name="calibration")


def _read_runs(paths: list[Path]):
    from lcmsquant.validation import read_runs

    try:
        return read_runs(paths)
    except InputError as err:
        _fail(err)


def _pct(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def _warn(warnings) -> None:
    for message in warnings:
        errors.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


@calibration_app.command("compare")
def calibration_compare(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Results folders of `lcmsquant run` (or batch folders holding results/).", metavar="RUN_DIR..."
        ),
    ],
    out: Annotated[Path | None, typer.Option("--out", help="Also write the table to this CSV file.")] = None,
) -> None:
    """Sum of |%RE| of the calibrators for every model x weighting, best first (ICH M10 3.2.4)."""
    from lcmsquant.validation import compare_curves, current_choice, pooled_calibrators, write_validation_table

    runs = _read_runs(run_dirs)
    table = compare_curves(pooled_calibrators(runs), current_choice(runs))
    if out is not None:
        write_validation_table(table, out)
    for (analyte, cal_set), rows in table.groupby(["analyte", "calibrator_set"], sort=False):
        view = Table(title=f"{analyte} ({cal_set}): {len(runs)} run(s)", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("rank", "model", "weighting", "sum |%RE|", "max |%RE|", "within", "passing", "runs ok", ""):
            view.add_column(column, justify="left" if column in ("model", "weighting", "") else "right", no_wrap=True)
        for r in rows.itertuples():
            view.add_row(
                str(r.rank),
                r.model,
                r.weighting,
                _pct(r.sum_abs_re_pct),
                _pct(r.max_abs_re_pct),
                f"{r.n_within}/{r.n_calibrators}",
                f"{r.n_passing}/{r.n_calibrators}",
                f"{r.runs_accepted}/{r.n_runs}",
                ("[bold]<- method[/] " if r.current else "") + escape(r.note),
            )
        console.print(view)
    if out is not None:
        console.print(f"Comparison written to {out}")


@app.command()
def validate(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="Results folders of the validation runs (or their batch folders).", metavar="RUN_DIR..."),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for validation.csv, validation_runs.csv, validation.json.")
    ] = Path("."),
) -> None:
    """Accuracy and precision over validation runs: per QC level, within- and between-run (ICH M10 3.2.5)."""
    from lcmsquant.validation import validate_runs, write_validation

    runs = _read_runs(run_dirs)
    try:
        result = validate_runs(runs)
    except InputError as err:
        _fail(err)
    write_validation(result, runs, out)
    view = Table(
        title=f"Accuracy and precision: {len(runs)} run(s), values in %",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption="worst run: the run mean furthest from nominal; run CV: the largest CV of one run; within and "
        "between CV from a one-way ANOVA over runs",
        caption_justify="left",
    )
    for column in (
        "analyte",
        "level",
        "nominal",
        "runs",
        "n",
        "accuracy",
        "worst run",
        "run CV",
        "within CV",
        "between CV",
        "limit",
        "verdict",
    ):
        view.add_column(column, justify="left" if column in ("analyte", "level", "verdict") else "right", no_wrap=True)
    several_sets = result.levels["calibrator_set"].nunique() > 1
    for r in result.levels.itertuples():
        view.add_row(
            f"{r.analyte} ({r.calibrator_set})" if several_sets else r.analyte,
            r.level,
            f"{r.nominal:g}",
            str(r.n_runs),
            str(r.n_replicates),
            _pct(r.mean_accuracy_pct),
            _pct(r.worst_run_accuracy_pct),
            _pct(r.max_run_cv_pct),
            _pct(r.within_run_cv_pct),
            _pct(r.between_run_cv_pct),
            f"{r.limit_pct:g}",
            "[green]pass[/]" if r.passed else "[bold red]fail[/]",
        )
    console.print(view)
    for r in result.levels[~result.levels["passed"]].itertuples():
        console.print(f"{r.analyte} {r.level} fails: {r.failing}", markup=False, highlight=False)
    _warn(result.warnings)
    console.print(f"Validation {'passed' if result.passed else 'FAILED'}; written to {out}")


@app.command()
def isr(
    original: Annotated[Path, typer.Argument(help="Results folder of the original analysis.", metavar="ORIGINAL")],
    repeat: Annotated[Path, typer.Argument(help="Results folder of the reanalysis.", metavar="REPEAT")],
    out: Annotated[Path, typer.Option("--out", help="Folder for isr.csv and isr.json.")] = Path("."),
    study_samples: Annotated[
        int | None,
        typer.Option("--study-samples", min=0, help="Study samples in the whole study (default: those in ORIGINAL)."),
    ] = None,
) -> None:
    """Incurred sample reanalysis: % difference to the mean, 2/3 within +-20 % (ICH M10 5)."""
    from lcmsquant.validation import isr_runs, read_validation_run, write_isr

    try:
        original_run, repeat_run = read_validation_run(original), read_validation_run(repeat)
        result = isr_runs([original_run], [repeat_run], study_samples)
    except InputError as err:
        _fail(err)
    write_isr(result, [original_run], [repeat_run], out)
    view = Table(title="Incurred sample reanalysis", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("analyte", "pairs", "within +-20 %", "%", "verdict"):
        view.add_column(column, justify="left" if column in ("analyte", "verdict") else "right", no_wrap=True)
    for r in result.summary.itertuples():
        view.add_row(
            r.analyte,
            str(r.n_evaluated),
            str(r.n_within),
            _pct(100 * r.fraction_within),
            "[green]pass[/]" if r.passed else "[bold red]fail[/]",
        )
    console.print(view)
    console.print(f"ISR samples: {result.done} done, {result.needed} needed for {result.n_study_samples} study samples")
    _warn(result.warnings)
    console.print(f"ISR {'passed' if result.passed else 'FAILED'}; written to {out}")


cohort_app = typer.Typer(
    help="Cohort: results of many runs in one database, penetration ratios, exports.",
    no_args_is_help=True,
    **PLAIN_HELP,
)
app.add_typer(cohort_app, name="cohort")
DbOption = Annotated[Path, typer.Option("--db", help="Cohort database file (SQLite).")]


@cohort_app.command("add")
def cohort_add(
    results_dirs: Annotated[
        list[Path], typer.Argument(help="Results folders written by `lcmsquant run`.", metavar="RESULTS_DIR...")
    ],
    db: DbOption,
    method: Annotated[
        Path | None,
        typer.Option(
            "--method",
            help="Method file the runs were processed with (default: the batch's method.toml, else the shipped one).",
        ),
    ] = None,
) -> None:
    """Add processed runs to the cohort (a run added again replaces itself; the log keeps what it replaced)."""
    from lcmsquant.cohort import add_runs, check_database, describe

    try:
        without_log = check_database(db, create=True) == 1
        additions = add_runs(db, results_dirs, method, command=["lcmsquant", *sys.argv[1:]])
    except InputError as err:
        _fail(err)
    if without_log:
        console.print(
            f"note: {db} was made by an earlier lcmsquant without a log of additions; it now keeps one, starting with "
            "an 'already held' entry for each run it held (see `lcmsquant cohort log`)",
            markup=False,
            highlight=False,
        )
    for line in describe(additions):
        console.print(line, markup=False, highlight=False)
    console.print(f"Cohort database: {db}", markup=False, highlight=False)


@cohort_app.command("log")
def cohort_log(db: DbOption) -> None:
    """Every `cohort add` as logged, and whether the hash chain and the data agree with the log (exit 1 if not)."""
    from lcmsquant.cohort import verify_log

    try:
        check = verify_log(db)
    except InputError as err:
        _fail(err)
    if check.note:
        console.print(check.note, markup=False, highlight=False)
        return
    table = Table(title=f"Log of {escape(str(db))}", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("#", "recorded (UTC)", "action", "run", "run id", "analyses", "replaced", "by", "run.json", "entry"):
        wraps = column in ("action", "run", "by")
        table.add_column(
            column,
            justify="right" if column in ("#", "analyses", "replaced") else "left",
            no_wrap=not wraps,
            overflow="fold" if wraps else "ellipsis",
        )
    for e in check.entries.to_dict("records"):
        cells = (
            e["number"],
            str(e["recorded_at"]).replace("T", " ").removesuffix("+00:00"),
            e["action"],
            e["batch"],
            str(e["run_id"])[:8],
            e["analyses_added"],
            e["analyses_replaced"],
            f"{e['os_user']}@{e['host']}",
            str(e["run_json_sha256"])[:8] or "-",
            str(e["entry_sha256"])[:8],
        )
        table.add_row(*(escape(str(c)) for c in cells))
    console.print(table)
    if not check.intact:
        errors.print(f"[bold red]log broken:[/] {escape(str(db))}: {len(check.problems)} problem(s):", highlight=False)
        for problem in check.problems:
            errors.print(f"  - {escape(problem)}", highlight=False)
        raise typer.Exit(1)
    last = check.entries["entry_sha256"].iloc[-1] if len(check.entries) else "-"
    console.print(
        f"Log intact: {len(check.entries)} entries, hash chain unbroken, every run's rows as logged; "
        f"last entry SHA-256 {last} (note it outside the database to anchor the log)",
        markup=False,
        highlight=False,
    )


@cohort_app.command("penetration")
def cohort_penetration(
    db: DbOption,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: the database's folder).")] = None,
) -> None:
    """Pair serum (or plasma), marrow and CSF by subject, visit and timepoint; ratios, summary, plot."""
    from lcmsquant.cohort import write_penetration

    try:
        written, summary = write_penetration(db, out if out is not None else db.parent)
    except InputError as err:
        _fail(err)
    table = Table(
        title="Penetration (ratio to serum, or plasma where no serum)", title_justify="left", box=box.SIMPLE_HEAD
    )
    for column in ("analyte", "ratio", "paired", "censored", "median", "IQR", "range", "geo. mean (95 % CI)"):
        table.add_column(column, justify="left" if column in ("analyte", "ratio") else "right", no_wrap=True)

    def g(v) -> str:
        return "-" if v != v else f"{v:.3g}"

    for _, s in summary.iterrows():
        table.add_row(
            s["analyte"],
            s["ratio"],
            str(s["n_paired"]),
            str(s["n_censored"]),
            g(s["median"]),
            f"{g(s['q1'])}-{g(s['q3'])}",
            f"{g(s['min'])}-{g(s['max'])}",
            f"{g(s['geometric_mean'])} ({g(s['gm_ci95_low'])}-{g(s['gm_ci95_high'])})",
        )
    console.print(table)
    console.print("Written: " + ", ".join(str(p) for p in written), markup=False, highlight=False)


@cohort_app.command("export")
def cohort_export(
    db: DbOption,
    fmt: Annotated[
        Literal["csv", "parquet", "sdtm"],
        typer.Option(
            "--format", help="csv or parquet: every result and analysis; sdtm: the PC domain as CSV and SAS XPT v5."
        ),
    ] = "csv",
    study: Annotated[str | None, typer.Option("--study", help="Study identifier (STUDYID; required for sdtm).")] = None,
    lab: Annotated[str, typer.Option("--lab", help="Laboratory name for PCNAM (sdtm).")] = "",
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: the database's folder).")] = None,
) -> None:
    """Export the cohort's reported results (and every analysis) for the study dataset."""
    from lcmsquant.export import export_cohort

    try:
        written = export_cohort(db, fmt, out if out is not None else db.parent, study=study, lab=lab)
    except InputError as err:
        _fail(err)
    console.print("Written: " + ", ".join(str(p) for p in written), markup=False, highlight=False)
