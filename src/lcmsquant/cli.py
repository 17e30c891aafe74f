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
from lcmsquant.batch import load_batch, resolve_method_path
from lcmsquant.files import InputError
from lcmsquant.method import MATRICES, load_method
from lcmsquant.pipeline import RunResult, measure_batch, quantify
from lcmsquant.results import sample_counts, write_outputs

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
    batch_dir: Annotated[Path, typer.Argument(help="Batch folder with worklist.csv and the mzML files.")],
    method: Annotated[
        Path | None, typer.Option("--method", help="Method TOML (default: the batch's method.toml, else the shipped flumatinib method).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: BATCH_DIR/results).")] = None,
) -> None:
    """Quantify a batch: peaks, calibration curves, ICH M10 acceptance, results files."""
    try:
        batch = load_batch(batch_dir, load_method(resolve_method_path(batch_dir, method)))
    except InputError as err:
        _fail(err)
    with Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task("Integrating injections", total=len(batch.injections))
        peaks, read_errors = measure_batch(batch, progress=lambda _: progress.advance(task))
    result = quantify(batch, peaks, read_errors)
    out_dir = out if out is not None else batch.folder / "results"
    write_outputs(batch, result, out_dir, command=["lcmsquant", *sys.argv[1:]])
    from lcmsquant.report import REPORT_HTML, write_report  # matplotlib loads only when needed

    write_report(out_dir)
    for order, message in sorted(result.injection_errors.items()):
        errors.print(f"[yellow]warning:[/] injection {order}: {escape(message)} (flagged NO_DATA)", highlight=False)
    console.print(summary_table(result))
    console.print(f"Results written to {out_dir} (open {REPORT_HTML} in a browser)")


def summary_table(result: RunResult) -> Table:
    """Per analyte and calibrator set: the curve, QCs passed, and what became of the samples."""
    table = Table(title="Run summary", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("analyte", "set", "curve", "r²", "QCs ok", "verdict", "quant.", "BLQ", "ALQ", "flagged"):
        table.add_column(column, justify="left" if column in ("analyte", "set", "curve", "verdict") else "right", no_wrap=True)
    calibration = result.calibration
    results = result.results
    for _, cal in calibration.iterrows():
        rows = results[(results["analyte"] == cal["analyte"]) & (results["calibrator_set"] == cal["calibrator_set"])]
        counts = sample_counts(rows[rows["sample_type"] == "unknown"])
        qcs = rows[(rows["sample_type"] == "qc") & (rows["level"] != "DQC")]
        curve = f"{cal['model'].replace('_through_zero', '/0')} {cal['weighting']}" if cal["model"] else "none"
        verdict = "[green]accepted[/]" if cal["accepted"] else "[bold red]rejected[/]"
        table.add_row(
            cal["analyte"], cal["calibrator_set"], curve,
            f"{cal['r_squared']:.4f}" if cal["model"] else "-",
            f"{int(qcs['qc_passed'].fillna(False).sum())}/{len(qcs)}",
            verdict,
            *(str(counts[k]) for k in ("quantified", "blq", "alq", "flagged")),
        )
    return table


@app.command()
def report(
    results_dir: Annotated[Path, typer.Argument(help="Results folder of a run (BATCH_DIR/results).")],
    pdf: Annotated[bool, typer.Option("--pdf", help="Also print report.pdf for signing (needs Chromium).")] = False,
    batch: Annotated[
        Path | None, typer.Option("--batch", help="Batch folder with the mzML files (default: the one the run recorded).")
    ] = None,
) -> None:
    """Re-render the run's report.html from its results folder, and optionally report.pdf."""
    from lcmsquant.browser import BrowserError
    from lcmsquant.report import write_pdf, write_report

    if batch is not None and not batch.is_dir():
        _fail(ValueError(f"--batch {batch}: not a folder; give the batch folder that holds the mzML files"))
    try:
        written = [write_report(results_dir, batch)]
        if pdf:
            written.append(write_pdf(results_dir))
    except (InputError, BrowserError) as err:
        _fail(err)
    for path in written:
        console.print(f"Report written to {path}", markup=False)


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
    from lcmsquant.simulate import SimulationOptions, simulate_batch

    if matrix not in ("plasma", "csf"):
        _fail(ValueError(f"--matrix must be plasma or csf, got {matrix!r} (known matrices: {', '.join(MATRICES)})"))
    truth = simulate_batch(out_dir, seed=seed, matrix=matrix, options=SimulationOptions(n_unknowns=unknowns))
    console.print(f"Simulated batch written to {out_dir}; true concentrations in {truth}")
