"""The `lcmsquant` command: a thin shell over the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lcmsquant import __version__
from lcmsquant.files import InputError
from lcmsquant.workers import PARALLEL_MIN_INJECTIONS

app = typer.Typer(
    help="Triple-quadrupole LC-MS/MS quantitation judged by ICH M10.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Logs and pipes get a fixed width so the summary table is not squeezed to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 120)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

EXIT_BAD_INPUT = 2


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
        list[Path], typer.Argument(help="Batch folder(s), each with worklist.csv and the mzML files.", metavar="BATCH_DIR",
                                   show_default=False)
    ],
    method: Annotated[
        Path | None, typer.Option("--method", help="Method TOML (default: the batch's method.toml, else the shipped flumatinib method).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: BATCH_DIR/results; with several batches, OUT/<batch name>).")
    ] = None,
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", min=1, show_default=False,
                                 help="Processes reading and integrating injections at once (default: every core, "
                                      f"batches under {PARALLEL_MIN_INJECTIONS} injections in this process; 1: in this process).")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Dask scheduler address (tcp://host:port): one task per batch on that cluster.")
    ] = None,
) -> None:
    """Quantify batches: peaks, calibration curves, ICH M10 acceptance, results files.

    Each batch gets its own results folder; an unusable batch is reported and the others still run (exit code 2 if any batch was unusable, 1 on an unexpected error).
    """
    try:
        outcomes = _run_batches(batch_dirs, method, out, jobs, scheduler)
    except KeyboardInterrupt:
        errors.print("[bold red]interrupted:[/] the batch in progress wrote nothing; results already written are whole")
        raise typer.Exit(130) from None
    failed = [o for o in outcomes if not o.ok]
    if len(outcomes) > 1:
        console.print(f"{len(outcomes) - len(failed)} of {len(outcomes)} batches processed"
                      + (": " + ", ".join(escape(str(o.folder)) for o in failed) + " failed" if failed else ""))
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT if all(o.bad_input for o in failed) else 1)


def _run_batches(batch_dirs: list[Path], method: Path | None, out: Path | None, jobs: int | None, scheduler: str | None):
    """run_batches with a progress bar per batch and each batch's summary as it ends."""
    from lcmsquant.workers import start_early, worklist_length

    if scheduler is None and (jobs or 0) != 1 and (
        jobs is not None or max(map(worklist_length, batch_dirs)) >= PARALLEL_MIN_INJECTIONS
    ):
        start_early()  # workers come from a fork server that imports lcmsquant: let it do so while we do
    from lcmsquant.runs import run_batches

    several = len(batch_dirs) > 1
    with Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=True,
    ) as progress:
        tasks: dict[Path, int] = {}

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
            return run_batches(batch_dirs, method, out, jobs, scheduler, ["lcmsquant", *sys.argv[1:]], advance, report)
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
            f"see read_warnings in {escape(str(outcome.out_dir / 'run.json'))}", highlight=False,
        )
    table = summary_table(outcome.summary)
    if several:
        table.title = f"Run summary: {escape(str(outcome.folder))}"
    console.print(table)
    console.print(f"Results written to {escape(str(outcome.out_dir))}", highlight=False)


def summary_table(rows) -> Table:
    """Per analyte and calibrator set: the curve, QCs passed, and what became of the samples
    (rows from lcmsquant.runs.summary_rows, or a RunResult)."""
    if hasattr(rows, "calibration"):  # a RunResult
        from lcmsquant.runs import summary_rows

        rows = summary_rows(rows)
    table = Table(title="Run summary", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("analyte", "set", "curve", "r²", "QCs ok", "verdict", "quant.", "BLQ", "ALQ", "flagged"):
        table.add_column(column, justify="left" if column in ("analyte", "set", "curve", "verdict") else "right", no_wrap=True)
    for row in rows:
        curve = f"{row['model'].replace('_through_zero', '/0')} {row['weighting']}" if row["model"] else "none"
        verdict = "[green]accepted[/]" if row["accepted"] else "[bold red]rejected[/]"
        table.add_row(
            row["analyte"], row["calibrator_set"], curve,
            f"{row['r_squared']:.4f}" if row["model"] else "-",
            f"{row['qcs_passed']}/{row['qcs']}",
            verdict,
            *(str(row[k]) for k in ("quantified", "blq", "alq", "flagged")),
        )
    return table


method_app = typer.Typer(help="Method files: import a transition list.", no_args_is_help=True)
app.add_typer(method_app, name="method")


@method_app.command("import")
def method_import(
    transition_list: Annotated[Path, typer.Argument(help="OpenMS/Skyline-style transition list (CSV or TSV).")],
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
    console.print(f"Method written to {written}; add [calibrator_sets] before quantifying with it", markup=False)


@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the simulated batch to.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same files.")] = 1,
    matrix: Annotated[str, typer.Option("--matrix", help="Calibration matrix: plasma or csf.")] = "plasma",
    unknowns: Annotated[int, typer.Option("--unknowns", help="Number of study samples.")] = 24,
) -> None:
    """Write a realistic simulated batch (and its true concentrations beside the folder)."""
    from lcmsquant.method import MATRICES
    from lcmsquant.simulate import SimulationOptions, simulate_batch

    if matrix not in ("plasma", "csf"):
        _fail(ValueError(f"--matrix must be plasma or csf, got {matrix!r} (known matrices: {', '.join(MATRICES)})"))
    truth = simulate_batch(out_dir, seed=seed, matrix=matrix, options=SimulationOptions(n_unknowns=unknowns))
    console.print(f"Simulated batch written to {out_dir}; true concentrations in {truth}")
