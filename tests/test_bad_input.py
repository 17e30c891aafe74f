"""Bad input of every kind ends in a clear message or a per-injection flag, never a traceback,
and never damages results already written.

mzML files are damaged the ways they are in a lab (cut short by a full disk, a flag or an array
edited by a tool, values missing, points out of order, traces empty or repeated); worklists come
from spreadsheets (BOM, `;` or tab, blank lines, odd cells, unicode and spaces); methods are
edited by hand (wrong types).
"""

from __future__ import annotations

import gzip
import re
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lcmsquant.batch import BatchError, load_batch
from lcmsquant.chromatograms import MIN_POINTS, clean_trace, read_traces
from lcmsquant.measure import measure_injection
from lcmsquant.method import MethodError, default_method_path, load_method, parse_method
from lcmsquant.mzml_writer import Chromatogram, write_chromatogram_mzml
from lcmsquant.pipeline import run_batch
from lcmsquant.simulate import SimulationOptions, simulate_batch

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
STATUSES = {"OK", "NO_PEAK", "NO_DATA"}


@pytest.fixture(scope="module")
def small_batch(tmp_path_factory) -> Path:
    """A simulated plasma batch of 33 injections, never modified (copy it to change it)."""
    folder = tmp_path_factory.mktemp("bad-input") / "batch"
    simulate_batch(folder, seed=3, options=SimulationOptions(n_unknowns=8))
    return folder


@pytest.fixture(scope="module")
def method():
    return load_method(default_method_path())


@pytest.fixture
def batch_copy(small_batch, tmp_path) -> Path:
    return Path(shutil.copytree(small_batch, tmp_path / "batch"))


def _calibrator(folder: Path) -> Path:
    return folder / "007_CAL5.mzML"


def _rewrite(source: Path, target: Path, edit) -> Path:
    """Write `target` with the chromatograms of `source` after `edit(list of Chromatogram)`."""
    chroms = [
        Chromatogram(t.native_id, t.q1, t.q3, t.time.copy(), t.intensity.astype(np.float32))
        for t in read_traces(source)
    ]
    write_chromatogram_mzml(target, edit(chroms))
    return target


def _by_transition(rows: list[dict]) -> dict[str, dict]:
    return {r["transition"]: r for r in rows}


def _quantifier(chroms: list[Chromatogram], q1: float = 563.3, q3: float = 463.2) -> Chromatogram:
    return next(c for c in chroms if abs(c.q1 - q1) < 0.01 and abs(c.q3 - q3) < 0.01)


def _assert_one_clean_sentence(message: str, file_name: str):
    assert message.startswith(f"{file_name}: ")
    assert "\n" not in message and "Traceback" not in message
    assert "/project/src" not in message and ".cpp" not in message  # no C++ source paths


# ---------------------------------------------------------------------------------------------
# Damaged mzML files: the injection is NO_DATA with one sentence saying why


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _bad_base64(data: bytes) -> bytes:
    return re.sub(rb"<binary>eJ", b"<binary>!!", data, count=3)


def _no_compression_flag(data: bytes) -> bytes:
    return data.replace(
        b'accession="MS:1000574" name="zlib compression"', b'accession="MS:1000576" name="no compression"'
    )


def _wrong_precision(data: bytes) -> bytes:
    return data.replace(b'MS:1000521" name="32-bit float"', b'MS:1000523" name="64-bit float"')


DAMAGE = {
    "cut in half": (_cut, "input ended before all started tags were ended"),
    "base64 that is not base64": (_bad_base64, "binary data cannot be decompressed"),
    "compressed data flagged uncompressed": (_no_compression_flag, "The length of RT and intensity values"),
    "32-bit data flagged 64-bit": (_wrong_precision, "The length of RT and intensity values"),
    "not XML at all": (lambda data: b"\x89PNG\r\n" + bytes(range(256)) * 4, "not well-formed XML"),
    "empty file": (lambda data: b"", "input ended"),
    "XML but no mzML": (lambda data: b'<?xml version="1.0"?><html><body>results</body></html>', "no SRM chromatogram"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_file_is_no_data_with_one_sentence_saying_why(damage, small_batch, method, tmp_path):
    spoil, reason = DAMAGE[damage]
    victim = tmp_path / "injection.mzML"
    victim.write_bytes(spoil(_calibrator(small_batch).read_bytes()))
    rows, error = measure_injection(victim, method)
    assert {r["status"] for r in rows} == {"NO_DATA"} and len(rows) == len(method.transitions())
    _assert_one_clean_sentence(error, "injection.mzML")
    assert reason in error


def test_a_gzip_file_cut_short_is_no_data(small_batch, method, tmp_path):
    packed = gzip.compress(_calibrator(small_batch).read_bytes())
    victim = tmp_path / "injection.mzML.gz"
    victim.write_bytes(packed[: len(packed) * 2 // 3])
    rows, error = measure_injection(victim, method)
    assert {r["status"] for r in rows} == {"NO_DATA"}
    _assert_one_clean_sentence(error, "injection.mzML.gz")


def test_a_file_without_srm_chromatograms_is_no_data(small_batch, method, tmp_path):
    only_tic = _rewrite(
        _calibrator(small_batch),
        tmp_path / "tic.mzML",
        lambda chroms: [Chromatogram("TIC", None, None, chroms[0].time_min, chroms[0].intensity)],
    )
    rows, error = measure_injection(only_tic, method)
    assert {r["status"] for r in rows} == {"NO_DATA"}
    assert "no SRM chromatogram" in error


# ---------------------------------------------------------------------------------------------
# Odd values inside a readable file: cleaned for peak finding, with a warning saying what changed


def test_missing_values_are_dropped_and_the_peak_is_still_measured(small_batch, method, tmp_path):
    clean, _ = measure_injection(_calibrator(small_batch), method)

    def punch_holes(chroms):
        quant = _quantifier(chroms)
        quant.intensity[[3, 10, 150]] = np.nan  # in the baseline, away from the peak at 2.6 min
        quant.intensity[-1] = np.inf
        return chroms

    rows, error = measure_injection(_rewrite(_calibrator(small_batch), tmp_path / "holes.mzML", punch_holes), method)
    assert error == ""
    before, after = _by_transition(clean)["flumatinib quantifier"], _by_transition(rows)["flumatinib quantifier"]
    assert after["status"] == "OK"
    assert after["area"] == pytest.approx(before["area"], rel=0.01)
    assert "4 point(s) with a missing or infinite value dropped" in after["read_warnings"]
    assert _by_transition(rows)["flumatinib qualifier"]["read_warnings"] == ""


def test_a_cleaned_trace_flags_its_result_for_review(batch_copy, tmp_path):
    worklist = pd.read_csv(batch_copy / "worklist.csv", dtype=str, keep_default_na=False)
    unknown = batch_copy / worklist[worklist["sample_type"] == "unknown"].iloc[0]["file"]

    def punch_holes(chroms):
        _quantifier(chroms).intensity[[3, 10]] = np.nan
        return chroms

    shutil.copy(_rewrite(unknown, tmp_path / "holes.mzML", punch_holes), unknown)
    _, run = run_batch(batch_copy)
    rows = run.results[run.results["file"] == unknown.name].set_index("analyte")
    assert "READ_WARNING" in rows.loc["flumatinib", "flags"] and not rows.loc["flumatinib", "reportable"]
    assert "READ_WARNING" not in rows.loc["M3", "flags"]
    listed = run.reanalysis[(run.reanalysis["file"] == unknown.name) & (run.reanalysis["analyte"] == "flumatinib")]
    assert "PEAK_REVIEW" in listed["reason"].iloc[0]


def test_negative_intensities_are_kept_as_read_and_reported(small_batch, method, tmp_path):
    def subtract_background(chroms):
        quant = _quantifier(chroms)
        quant.intensity[:20] -= float(quant.intensity.max())
        return chroms

    rows, _ = measure_injection(_rewrite(_calibrator(small_batch), tmp_path / "neg.mzML", subtract_background), method)
    row = _by_transition(rows)["flumatinib quantifier"]
    assert "20 negative intensities" in row["read_warnings"] and "kept as read" in row["read_warnings"]
    assert row["status"] in STATUSES


def test_points_out_of_order_give_the_same_peaks_as_the_ordered_file(small_batch, method, tmp_path):
    clean, _ = measure_injection(_calibrator(small_batch), method)
    rng = np.random.default_rng(1)

    def shuffle(chroms):
        out = []
        for c in chroms:
            order = rng.permutation(len(c.time_min))
            out.append(Chromatogram(c.native_id, c.q1, c.q3, c.time_min[order], c.intensity[order]))
        return out

    rows, _ = measure_injection(_rewrite(_calibrator(small_batch), tmp_path / "shuffled.mzML", shuffle), method)
    for before, after in zip(clean, rows):
        assert after["transition"] == before["transition"] and after["status"] == before["status"]
        assert after["area"] == before["area"] and after["rt_min"] == before["rt_min"]
        assert "time points out of order: sorted" in after["read_warnings"]


def test_repeated_time_points_are_merged_and_reported(small_batch, method, tmp_path):
    def repeat_points(chroms):
        quant = _quantifier(chroms)
        index = np.sort(np.r_[np.arange(len(quant.time_min)), [5, 6, 7]])
        chroms[chroms.index(quant)] = Chromatogram(
            quant.native_id, quant.q1, quant.q3, quant.time_min[index], quant.intensity[index]
        )
        return chroms

    rows, _ = measure_injection(_rewrite(_calibrator(small_batch), tmp_path / "repeats.mzML", repeat_points), method)
    row = _by_transition(rows)["flumatinib quantifier"]
    assert row["status"] == "OK"
    assert "3 repeated time point(s): intensities at the same time averaged" in row["read_warnings"]


@pytest.mark.parametrize("points", [0, 1, MIN_POINTS - 1])
def test_an_empty_or_too_short_trace_is_no_data_never_no_peak(points, small_batch, method, tmp_path):
    """NO_PEAK would let `no_peak_as_blq` report the sample BLQ; a trace without data says nothing."""

    def shorten(chroms):
        for q1, q3 in ((563.3, 463.2), (566.3, 463.2)):  # the flumatinib quantifier and its IS
            c = _quantifier(chroms, q1, q3)
            chroms[chroms.index(c)] = Chromatogram(c.native_id, c.q1, c.q3, c.time_min[:points], c.intensity[:points])
        return chroms

    rows, error = measure_injection(_rewrite(_calibrator(small_batch), tmp_path / "short.mzML", shorten), method)
    found = _by_transition(rows)
    assert error == ""
    for name in ("flumatinib quantifier", "flumatinib-d3 internal standard"):
        assert found[name]["status"] == "NO_DATA"
        assert f"only {points} usable point(s)" in found[name]["read_warnings"]
    assert found["M3 quantifier"]["status"] == "OK"  # the rest of the injection is measured


def test_two_traces_for_one_transition_are_reported_and_the_first_is_used(small_batch, method, tmp_path):
    def duplicate(chroms):
        quant = _quantifier(chroms)
        twin = Chromatogram(quant.native_id + " (copy)", quant.q1, quant.q3, quant.time_min, quant.intensity * 2)
        return [*chroms, twin]

    clean, _ = measure_injection(_calibrator(small_batch), method)
    rows, _ = measure_injection(_rewrite(_calibrator(small_batch), tmp_path / "twins.mzML", duplicate), method)
    row = _by_transition(rows)["flumatinib quantifier"]
    assert (
        "1 other trace(s) with the same Q1/Q3 also cover" in row["read_warnings"] and "(copy)" in row["read_warnings"]
    )
    assert row["area"] == _by_transition(clean)["flumatinib quantifier"]["area"]


# ---------------------------------------------------------------------------------------------
# Properties: whatever the damage, a clean result or NO_DATA


@PROPERTY
@given(data=st.data())
def test_any_cut_or_overwritten_bytes_give_a_measurement_or_no_data(data, small_batch, method, tmp_path_factory):
    original = _calibrator(small_batch).read_bytes()
    content = bytearray(original[: data.draw(st.integers(0, len(original)), label="cut at")])
    for _ in range(data.draw(st.integers(0, 8), label="patches")):
        if not content:
            break
        at = data.draw(st.integers(0, len(content) - 1))
        patch = data.draw(st.binary(min_size=1, max_size=16))
        content[at : at + len(patch)] = patch
    victim = tmp_path_factory.mktemp("fuzz") / "injection.mzML"
    victim.write_bytes(bytes(content))
    rows, error = measure_injection(victim, method)
    assert len(rows) == len(method.transitions())
    assert {r["status"] for r in rows} <= STATUSES
    if error:
        assert {r["status"] for r in rows} == {"NO_DATA"}
        _assert_one_clean_sentence(error, "injection.mzML")
    for row in rows:
        if row["status"] == "OK":
            assert np.isfinite(row["area"]) and row["start_min"] <= row["rt_min"] <= row["end_min"]


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=64)


@PROPERTY
@given(
    time=arrays(np.float64, st.integers(0, 40), elements=finite_or_not),
    intensity=arrays(np.float64, st.integers(0, 40), elements=finite_or_not),
)
@example(time=np.array([0.0, 0.0]), intensity=np.array([8.98846567e307, 8.98846567e307]))  # averaged without overflow
@example(time=np.array([1.79769313e308] * 3 + [1.0]), intensity=np.array([1.79e308, 1.7e308, 1.79e308, 1.0]))
def test_a_cleaned_trace_is_finite_ordered_and_says_what_changed(time, intensity):
    trace = clean_trace("x", 563.3, 463.2, time, intensity)
    assert len(trace.time) == len(trace.intensity)
    assert np.all(np.isfinite(trace.time)) and np.all(np.isfinite(trace.intensity))
    assert np.all(np.diff(trace.time) > 0)
    assert trace.usable == (len(trace.time) >= MIN_POINTS)
    n = min(len(time), len(intensity))
    untouched = (
        len(time) == len(intensity)
        and np.all(np.isfinite(time[:n]) & np.isfinite(intensity[:n]))
        and np.all(np.diff(time) > 0)
        and np.all(intensity >= 0)
        and n >= MIN_POINTS
    )
    assert (trace.warnings == ()) == bool(untouched)
    if untouched:
        assert np.array_equal(trace.time, time) and np.array_equal(trace.intensity, intensity)


# ---------------------------------------------------------------------------------------------
# Worklists as spreadsheets write them


def _worklist_lines(folder: Path) -> list[str]:
    return (folder / "worklist.csv").read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("variant", ["bom", "semicolons", "tabs", "crlf", "blank lines", "padded cells"])
def test_worklist_spellings_give_the_same_injections(variant, batch_copy, method):
    expected = [(i.file.name, i.sample_id, i.sample_type, i.level) for i in load_batch(batch_copy, method).injections]
    lines = _worklist_lines(batch_copy)
    text = {
        "bom": "\ufeff" + "\n".join(lines) + "\n",
        "semicolons": "\n".join(line.replace(",", ";") for line in lines) + "\n",
        "tabs": "\n".join(line.replace(",", "\t") for line in lines) + "\n",
        "crlf": "\r\n".join(lines) + "\r\n",
        "blank lines": "\n\n".join(lines) + "\n\n\n",
        "padded cells": "\n".join(", ".join(f" {cell} " for cell in line.split(",")) for line in lines) + "\n",
    }[variant]
    (batch_copy / "worklist.csv").write_bytes(text.encode("utf-8"))
    batch = load_batch(batch_copy, method)
    assert [(i.file.name, i.sample_id, i.sample_type, i.level) for i in batch.injections] == expected


def _set_cell(folder: Path, line: int, column: str, value: str) -> None:
    table = pd.read_csv(folder / "worklist.csv", dtype=str, keep_default_na=False)
    table.loc[line - 2, column] = value
    table.to_csv(folder / "worklist.csv", index=False)


@pytest.mark.parametrize("name", ["../outside.mzML", "/etc/hostname", "sub/../../outside.mzML"])
def test_a_worklist_file_outside_the_batch_folder_is_refused(name, batch_copy, method):
    (batch_copy.parent / "outside.mzML").write_bytes(_calibrator(batch_copy).read_bytes())
    _set_cell(batch_copy, 3, "file", name)
    with pytest.raises(BatchError) as err:
        load_batch(batch_copy, method)
    assert any(p.startswith("worklist.csv line 3: file") and "inside the batch folder" in p for p in err.value.problems)


def test_the_same_file_on_two_lines_is_refused(batch_copy, method):
    first = _worklist_lines(batch_copy)[1].split(",")[0]
    _set_cell(batch_copy, 5, "file", first)
    with pytest.raises(BatchError, match=f"worklist.csv line 5: file '{first}' is also on line 2"):
        load_batch(batch_copy, method)


COLUMNS = ["file", "sample_id", "sample_type", "level", "matrix", "dilution_factor", "subject_id"]


@PROPERTY
@given(line=st.integers(2, 34), column=st.sampled_from(COLUMNS), value=st.text(max_size=300))
def test_any_cell_content_gives_a_batch_or_a_message_naming_the_line(
    line, column, value, small_batch, method, tmp_path_factory
):
    folder = Path(shutil.copytree(small_batch, tmp_path_factory.mktemp("cell") / "batch"))
    _set_cell(folder, line, column, value)
    try:
        batch = load_batch(folder, method)
    except BatchError as err:
        assert err.problems and all(isinstance(p, str) and p for p in err.problems)
        assert any("worklist.csv" in p for p in err.problems)
        return
    assert len(batch.injections) == 33
    assert all(inj.file.is_file() and batch.folder in inj.file.parents for inj in batch.injections)


# ---------------------------------------------------------------------------------------------
# Methods edited by hand


def _shipped_doc() -> dict:
    return tomllib.loads(default_method_path().read_text())


WRONG_TYPES = {
    "mz_tolerance": (lambda d: d.update(mz_tolerance="0.5"), "top level.mz_tolerance: expected a number"),
    "rt_window": (lambda d: d["integration"].update(rt_window=[0.3]), "[integration].rt_window"),
    "analyte rt": (
        lambda d: d["analytes"]["flumatinib"].update(rt="2.60"),
        "[analytes.flumatinib].rt: expected a number",
    ),
    "quantifier": (lambda d: d["analytes"]["flumatinib"].update(quantifier=563.3), "[analytes.flumatinib].quantifier"),
    "qualifiers": (lambda d: d["analytes"]["M1"].update(qualifiers="549.3/271.1"), "[analytes.M1].qualifiers"),
    "internal standard": (
        lambda d: d["analytes"]["M3"].update(internal_standard=["M3-d4"]),
        "[analytes.M3].internal_standard",
    ),
    "model": (lambda d: d["calibration"].update(model=1), "[calibration].model"),
    "matrices": (lambda d: d["calibrator_sets"]["csf"].update(matrices="csf"), "[calibrator_sets.csf].matrices"),
    "a table that is a number": (lambda d: d.update(identity=3), "[identity]"),
}


@pytest.mark.parametrize("case", WRONG_TYPES)
def test_a_method_value_of_the_wrong_type_is_refused_naming_its_key(case):
    edit, key = WRONG_TYPES[case]
    doc = _shipped_doc()
    edit(doc)
    with pytest.raises(MethodError) as err:
        parse_method(doc, default_method_path().parent)
    assert any(key in p for p in err.value.problems), err.value.problems


def _leaves(doc, path=()):
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _leaves(value, (*path, i))
    yield path


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
).filter(lambda v: v is not None)
LEAVES = [p for p in _leaves(_shipped_doc()) if p]


@PROPERTY
@given(where=st.sampled_from(LEAVES), value=toml_values)
def test_any_value_anywhere_in_a_method_gives_a_method_or_a_method_error(where, value):
    doc = _shipped_doc()
    target = doc
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    try:
        parse_method(doc, default_method_path().parent)
    except MethodError as err:
        assert err.problems and all(isinstance(p, str) for p in err.problems)


# ---------------------------------------------------------------------------------------------
# Through the command line


def test_unicode_and_spaces_in_folder_and_file_names_work_end_to_end(small_batch, tmp_path, cli):
    folder = Path(shutil.copytree(small_batch, tmp_path / "Lauf 7 — Flumatinib µg" / "Charge été"))
    table = pd.read_csv(folder / "worklist.csv", dtype=str, keep_default_na=False)
    renamed = {}
    for i, name in enumerate(table["file"]):
        new = f"Injektion {i + 1:02d} – Probe ä.mzML" if i % 2 else name
        (folder / name).rename(folder / new)
        renamed[name] = new
    table["file"] = table["file"].map(renamed)
    table.to_csv(folder / "worklist.csv", index=False)
    done = cli("run", folder)
    assert done.returncode == 0, done.stderr
    results = pd.read_csv(folder / "results" / "results.csv")
    assert set(results["file"]) == set(renamed.values())
    assert results.loc[results["sample_type"] == "calibrator", "area"].notna().all()


def test_bad_input_leaves_earlier_results_byte_for_byte(batch_copy, cli):
    assert cli("run", batch_copy).returncode == 0
    out = batch_copy / "results"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    lines = _worklist_lines(batch_copy)
    (batch_copy / "worklist.csv").write_text("\n".join([lines[0].replace("sample_type", "type"), *lines[1:]]) + "\n")
    done = cli("run", batch_copy)
    assert done.returncode == 2
    assert "missing column(s) sample_type" in done.stderr and "Traceback" not in done.stderr + done.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
