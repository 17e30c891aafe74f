"""The batch folder contract: worklist.csv, the files it names, optional calibrators.csv."""

import pytest

from lcmsquant.batch import BatchError, load_batch, read_worklist


def _rewrite(folder, edit):
    path = folder / "worklist.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def _problems(folder) -> str:
    with pytest.raises(BatchError) as err:
        load_batch(folder)
    return "\n".join(err.value.problems)


def test_simulated_batch_loads_in_injection_order(plasma_batch):
    batch = load_batch(plasma_batch)
    assert [inj.order for inj in batch.injections] == list(range(1, len(batch.injections) + 1))
    assert batch.injections[0].sample_type == "blank"
    assert {inj.sample_type for inj in batch.injections} == {"blank", "zero", "calibrator", "qc", "unknown"}
    diluted = [inj for inj in batch.injections if inj.dilution_factor == 10]
    assert diluted and all(inj.file.is_file() for inj in batch.injections)
    assert batch.method.name == "flumatinib"


def test_every_bad_row_is_reported_at_once_with_its_line(plasma_batch):
    def spoil(lines):
        header = lines[0].split(",")
        rows = [line.split(",") for line in lines[1:]]
        col = {name: i for i, name in enumerate(header)}
        rows[2][col["file"]] = "missing.mzML"  # line 4
        rows[3][col["sample_id"]] = rows[4][col["sample_id"]]  # line 5 duplicates line 6
        rows[6][col["sample_type"]] = "standard"  # line 8
        rows[7][col["level"]] = "CAL9"  # line 9: a calibrator level the set does not have
        rows[-3][col["dilution_factor"]] = "ten"  # a non-numeric dilution
        return [lines[0]] + [",".join(r) for r in rows]

    _rewrite(plasma_batch, spoil)
    problems = _problems(plasma_batch)
    assert "worklist.csv line 4: file 'missing.mzML' does not exist" in problems
    assert "is duplicated (first on line 6)" in problems or "is duplicated (first on line 5)" in problems
    assert "worklist.csv line 8: unknown sample_type 'standard'" in problems
    assert "worklist.csv line 9: level 'CAL9' is not in calibrator set 'plasma'" in problems
    assert "dilution_factor 'ten' is not a positive number" in problems


def test_missing_worklist_and_missing_columns_are_clear(tmp_path, plasma_batch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "worklist.csv not found" in _problems(empty)
    _rewrite(
        plasma_batch,
        lambda lines: [lines[0].replace(",dilution_factor", "")] + [line.rsplit(",", 1)[0] for line in lines[1:]],
    )
    assert "missing column(s) dilution_factor" in _problems(plasma_batch)


def test_worklist_with_bom_semicolons_and_blank_lines_is_read(plasma_batch):
    path = plasma_batch / "worklist.csv"
    text = path.read_text().replace(",", ";")
    path.write_text("\ufeff" + text.replace("\n", "\n\n", 3), encoding="utf-8")
    batch = load_batch(plasma_batch)
    assert batch.worklist.columns[1] == "file"
    assert len(batch.injections) == len(text.strip().splitlines()) - 1


def test_extra_columns_are_carried_through(plasma_batch):
    _rewrite(
        plasma_batch,
        lambda lines: [lines[0] + ",tray_position"] + [line + f",A{i}" for i, line in enumerate(lines[1:])],
    )
    batch = load_batch(plasma_batch)
    assert batch.extra_columns == ("tray_position",)
    assert batch.worklist["tray_position"].iloc[2] == "A2"


def test_batch_calibrators_csv_replaces_the_method_set(plasma_batch):
    shipped = load_batch(plasma_batch).method.calibrator_set_for("plasma")
    table = shipped.nominals.copy()
    table.loc[table["level"] == "CAL8", "nominal"] *= 1.05
    table.insert(0, "matrix", "plasma")
    table.to_csv(plasma_batch / "calibrators.csv", index=False)
    batch = load_batch(plasma_batch)
    cal_set = batch.method.calibrator_set_for("serum")
    assert cal_set.nominal("CAL8", "flumatinib") == pytest.approx(1050.0)
    assert cal_set.source.endswith("calibrators.csv")


def test_batch_method_toml_is_used_when_present(plasma_batch):
    from lcmsquant.method import default_method_path

    text = default_method_path().read_text().replace('name = "flumatinib"', 'name = "flumatinib-lab7"')
    text = text.replace('file = "../calibrators/', f'file = "{default_method_path().parents[1]}/calibrators/')
    (plasma_batch / "method.toml").write_text(text)
    assert load_batch(plasma_batch).method.name == "flumatinib-lab7"


def test_read_worklist_refuses_rows_longer_than_the_header(tmp_path):
    (tmp_path / "worklist.csv").write_text("file,sample_id\na.mzML,S1,extra\n")
    with pytest.raises(BatchError, match="line 2: 3 fields but the header has 2"):
        read_worklist(tmp_path / "worklist.csv")


def test_reported_line_numbers_count_blank_lines_as_an_editor_does(plasma_batch):
    path = plasma_batch / "worklist.csv"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace("calibrator", "standard")  # line 5 before the blank line
    path.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")  # now on line 6
    assert "worklist.csv line 6: unknown sample_type 'standard'" in _problems(plasma_batch)


def _calibrators_without_qc_levels(folder):
    shipped = load_batch(folder).method.calibrator_set_for("plasma").nominals
    shipped[shipped["level"].str.startswith("CAL")].to_csv(folder / "calibrators.csv", index=False)


def test_batch_calibrators_csv_needs_qc_levels_only_when_the_batch_has_qcs(plasma_batch):
    _calibrators_without_qc_levels(plasma_batch)
    problems = _problems(plasma_batch)  # the batch has QCs: ICH M10 needs low, mid and high ones
    assert (
        "calibrator set 'plasma' (calibrators.csv): flumatinib has no LQC, MQC, HQC level: ICH M10 3.3.1 needs low, "
        "mid and high QCs; add the missing levels to calibrators.csv"
    ) in problems
    _rewrite(plasma_batch, lambda lines: [line for line in lines if ",qc," not in line])
    batch = load_batch(plasma_batch)
    assert batch.method.calibrator_set_for("plasma").levels == tuple(f"CAL{i}" for i in range(1, 9))


def test_a_method_without_calibrator_sets_takes_any_matrix(plasma_batch, tmp_path):
    """A peaks-only method (no [calibrator_sets]) quantifies nothing, so no matrix needs a set."""
    import re

    from lcmsquant.method import default_method_path, load_method

    text = re.sub(r"\[calibrator_sets\.\w+\]\nfile = .*\nmatrices = .*\n\n", "", default_method_path().read_text())
    (tmp_path / "peaks-only.toml").write_text(text)
    method = load_method(tmp_path / "peaks-only.toml")
    assert method.peaks_only
    batch = load_batch(plasma_batch, method)
    assert {inj.matrix for inj in batch.injections} == {"plasma", "serum", "marrow"}
    _rewrite(plasma_batch, lambda lines: [lines[0]] + [line.replace(",CAL3,", ",CAL33,") for line in lines[1:]])
    assert load_batch(plasma_batch, method)  # a calibrator level no set lists: there is no set to list it
