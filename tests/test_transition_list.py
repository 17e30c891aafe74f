"""Importing a real OpenMS/Skyline transition list (SmartPeak's traML.csv) as a method, and
measuring the real SCIEX injections with it."""

import re
import time
import tomllib

import pandas as pd
import pytest

from lcmsquant.measure import measure_injection
from lcmsquant.method import MethodError, load_method
from lcmsquant.transition_list import (
    import_transition_list,
    method_from_transition_list,
    read_transition_list,
)

SACC = "170808_Jonathan_yeast_Sacc1_1x.mzML"
RAW = "RawDataProcessor_mzML_1.mzML"


@pytest.fixture(scope="module")
def imported(sciex_dir, tmp_path_factory):
    """The real list imported once: (method file, its text, the list as pandas reads it)."""
    out = import_transition_list(sciex_dir / "traML.csv", tmp_path_factory.mktemp("method") / "yeast.toml")
    return out, out.read_text(), pd.read_csv(sciex_dir / "traML.csv", dtype={"PrecursorMz": str, "ProductMz": str})


@pytest.fixture(scope="module")
def measured(sciex_dir, imported):
    """measure_injection of both real files with the imported method: {file: (rows, error, seconds)}."""
    method = load_method(imported[0])
    out = {}
    for name in (SACC, RAW):
        start = time.perf_counter()
        rows, error = measure_injection(sciex_dir / name, method)
        out[name] = (pd.DataFrame(rows), error, time.perf_counter() - start)
    return out


# ---------------------------------------------------------------------------------------------
# The real list


def test_gsn_is_imported_as_the_list_says(imported):
    method = load_method(imported[0])
    gsn = method.analyte("gsn")
    assert (gsn.quantifier.q1, gsn.quantifier.q3) == (282, 150)
    assert [(q.q1, q.q3) for q in gsn.qualifiers] == [(282, 133)]
    assert gsn.rt == pytest.approx(1.45)  # 87 s
    istd = method.internal_standard(gsn.internal_standard)
    assert gsn.internal_standard == "gsn-IS"
    assert (istd.transition.q1, istd.transition.q3, istd.rt) == (292, 155, pytest.approx(1.45))
    assert method.calibrator_sets == ()
    assert method.integration.rt_window == 0.3 and method.integration.anchored_rt_window == 0.1


def test_every_group_is_accounted_for_and_every_analyte_is_as_the_list_says(imported):
    """118 groups: 115 analytes, 2 left out (isomers no sensible RT window separates), 1 group
    of a Heavy transition only (SmartPeak's citrate/isocitrate pool, needed by no analyte)."""
    path, text, listed = imported
    method = load_method(path)
    groups = set(listed["transition_group_id"])
    assert len(groups) == 118
    analytes = {a.name for a in method.analytes}
    left_out = set(re.findall(r"^# \[analytes\.\"?([^\]\"]+)\"?\]", text, flags=re.MULTILINE))
    assert len(analytes) == 115 and left_out == {"icit", "ditp"}
    assert groups - analytes - left_out == {"Pool_cit_icit"}
    assert "Pool_cit_icit-IS" in text and "(a group of Heavy transitions only)" in text

    dropped = {}  # analyte -> qualifiers dropped, from the summary at the top of the file
    for analyte, q1, q3 in re.findall(r"^# - (\S+): qualifier (\S+) -> (\S+) dropped", text, flags=re.MULTILINE):
        dropped.setdefault(analyte, set()).add((float(q1), float(q3)))
    for a in method.analytes:
        rows = listed[listed["transition_group_id"] == a.name]
        light = rows[rows["LabelType"] == "Light"]
        quant = light[light["quantifying_transition"]].iloc[0]
        assert (a.quantifier.q1, a.quantifier.q3) == (float(quant.PrecursorMz), float(quant.ProductMz)), a.name
        assert a.rt == pytest.approx(quant.RetentionTime / 60, abs=1e-4), a.name
        quals = [
            (float(r.PrecursorMz), float(r.ProductMz)) for r in light[~light["quantifying_transition"]].itertuples()
        ]
        kept = [(q.q1, q.q3) for q in a.qualifiers]
        assert kept == [q for q in quals if q not in dropped.get(a.name, set())], a.name
        istd = method.internal_standard(a.internal_standard)
        heavy = rows[(rows["LabelType"] == "Heavy") & rows["quantifying_transition"]].iloc[0]
        if a.name == "dgtp":  # 13C-dGTP and 13C-ATP, 516 -> 159, listed 0.1 s apart: one signal
            assert a.internal_standard == "atp-IS"
            continue
        assert a.internal_standard == f"{a.name}-IS"
        assert (istd.transition.q1, istd.transition.q3) == (float(heavy.PrecursorMz), float(heavy.ProductMz))
        assert istd.rt == pytest.approx(heavy.RetentionTime / 60, abs=1e-4), a.name
    # Qualifiers on another compound's Q1/Q3 within 2 x rt_window are dropped, each said so.
    assert sorted(dropped) == ["adp", "amp", "atp", "f6p", "g6p", "mmal", "succ"]
    light_qualifiers = ((listed["LabelType"] == "Light") & ~listed["quantifying_transition"]).sum()
    assert sum(len(a.qualifiers) for a in method.analytes) == light_qualifiers - 7 - 2  # icit's, ditp's


def test_the_toml_is_readable_and_says_where_it_came_from(imported):
    _, text, _ = imported
    head = text.split("\nname = ")[0]
    assert "traML.csv" in head and "sha256" in head
    assert "NO CALIBRATOR SETS" in head and "[calibrator_sets]" in head
    assert "rt_window = 0.3 min:" in head
    assert '[analytes."arg-L"]' in text and '[analytes."23dpg"]' in text and "[analytes.gsn]" in text
    assert "rt = 1.45   # 87 s" in text
    assert "Not imported: g6p.g6p_2.Heavy 265 -> 79 (line 109)" in text
    doc = tomllib.loads(text)
    # Internal standards and analytes appear in order of the analytes' retention time.
    analyte_rts = [t["rt"] for t in doc["analytes"].values()]
    assert analyte_rts == sorted(analyte_rts)
    assert "calibrator_sets" not in doc


def test_importing_twice_writes_the_same_bytes(sciex_dir, imported, tmp_path):
    again = import_transition_list(sciex_dir / "traML.csv", tmp_path / "yeast.toml")
    assert again.read_bytes() == imported[0].read_bytes()
    again = import_transition_list(sciex_dir / "traML.csv", tmp_path / "yeast.toml")  # over itself
    assert again.read_bytes() == imported[0].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["yeast.toml"]  # no temporary left behind


def test_the_method_is_named_after_the_file_it_is_written_to(sciex_dir, tmp_path):
    written = import_transition_list(sciex_dir / "traML.csv", tmp_path / "yeast-central-carbon.toml")
    assert tomllib.loads(written.read_text())["name"] == "yeast-central-carbon"


# ---------------------------------------------------------------------------------------------
# Measuring the real injections with it


@pytest.mark.parametrize("name", [SACC, RAW])
def test_every_quantifier_and_internal_standard_is_measured(measured, name):
    peaks, error, _ = measured[name]
    assert error == ""
    essential = peaks[peaks["role"].isin(["quantifier", "internal_standard"])]
    assert len(essential) == 115 + 114
    # Every trace is matched: NO_DATA only where the file's trace is too short to hold a peak
    # (Sacc1 has two, of 1 and 3 points).
    no_data = peaks[peaks["status"] == "NO_DATA"]
    assert len(no_data) <= 2 and no_data["read_warnings"].str.contains("usable point").all()
    # Most compounds of a yeast extract are there (Sacc1: 86/115 quantifiers, RawDataProcessor: 99/115).
    assert (essential["status"] == "OK").mean() > 0.7


@pytest.mark.parametrize(
    "name, transition, q1, q3, apex_s",
    [
        (RAW, "23dpg-IS internal standard", 268, 170, 953.67),
        (SACC, "gsn quantifier", 282, 150, 84.78),
        # actp: a small noisy peak of integer counts (~100-700 cps, S/N ~5, 13 s before the listed
        # RT); its IS is not found in this injection, so it is searched +-0.3 min around 758.9 s.
        (SACC, "actp quantifier", 139, 63, 745.61),
    ],
)
def test_reference_apexes_of_the_data_readme(measured, name, transition, q1, q3, apex_s):
    peaks = measured[name][0].set_index("transition")
    row = peaks.loc[transition]
    assert (row["q1"], row["q3"]) == (q1, q3)
    assert row["status"] == "OK"
    assert row["rt_min"] * 60 == pytest.approx(apex_s, abs=3)


# ---------------------------------------------------------------------------------------------
# Bad lists


def _set(line: str, column: str, value: str, header: str) -> str:
    fields = line.split(",")
    fields[header.split(",").index(column)] = value
    return ",".join(fields)


def _edited_list(sciex_dir, tmp_path, edit):
    """The real list with its lines (index 0 = line 1, the header) changed by `edit`."""
    lines = (sciex_dir / "traML.csv").read_text().splitlines()
    lines = edit(lines)
    path = tmp_path / "edited.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _problems(path) -> str:
    with pytest.raises(MethodError) as err:
        read_transition_list(path)
    return "\n".join(err.value.problems)


def test_missing_column_is_named_on_the_header_line(sciex_dir, tmp_path):
    def drop_label_type(lines):
        rows = [line.split(",") for line in lines]
        i = rows[0].index("LabelType")
        return [",".join(r[:i] + r[i + 1 :]) for r in rows]

    problems = _problems(_edited_list(sciex_dir, tmp_path, drop_label_type))
    assert problems == "line 1 (header): missing required column LabelType"


def test_list_without_any_compound_column_is_refused(sciex_dir, tmp_path):
    path = _edited_list(
        sciex_dir,
        tmp_path,
        lambda lines: [lines[0].replace("ProteinName", "Protein").replace("transition_group_id", "group")] + lines[1:],
    )
    assert "line 1 (header): missing required column transition_group_id (or ProteinName)" in _problems(path)


def test_non_numeric_precursor_and_unknown_label_are_named_with_line_and_column(sciex_dir, tmp_path):
    def spoil(lines):
        assert lines[3].startswith("orn,,orn,orn.orn_1.Heavy,47.47567266,,136,")
        lines[3] = _set(lines[3], "PrecursorMz", "13b", lines[0])  # line 4
        lines[52] = _set(lines[52], "LabelType", "Medium", lines[0])  # line 53: gsn.gsn_1.Heavy
        lines[20] = _set(lines[20], "RetentionTime", "1:35", lines[0])  # line 21
        return lines

    problems = _problems(_edited_list(sciex_dir, tmp_path, spoil))
    assert "line 4, column PrecursorMz: '13b' is not a number" in problems
    assert "line 53, column LabelType: unknown label 'Medium' (expected Light or Heavy)" in problems
    assert "line 21, column RetentionTime: '1:35' is not a number" in problems


def test_group_without_quantifying_light_transition_is_refused(sciex_dir, tmp_path):
    def unmark(lines):
        assert lines[53].startswith("gsn,,gsn,gsn.gsn_1.Light,")  # line 54, the quantifier
        lines[53] = _set(lines[53], "quantifying_transition", "FALSE", lines[0])
        return lines

    problems = _problems(_edited_list(sciex_dir, tmp_path, unmark))
    assert problems == (
        "lines 54, 55, column quantifying_transition: group 'gsn' (transition_group_id) has no "
        "quantifying Light transition: mark its quantifier TRUE"
    )


def test_line_numbers_count_blank_lines(sciex_dir, tmp_path):
    def spoil(lines):
        lines[3] = _set(lines[3], "PrecursorMz", "x", lines[0])
        return [lines[0], ""] + lines[1:]  # the spoiled row moves to line 5

    assert "line 5, column PrecursorMz: 'x' is not a number" in _problems(_edited_list(sciex_dir, tmp_path, spoil))


def test_tab_separated_list_reads_the_same(sciex_dir, tmp_path):
    tsv = tmp_path / "traML.tsv"
    pd.read_csv(sciex_dir / "traML.csv", dtype=str, keep_default_na=False).to_csv(tsv, sep="\t", index=False)
    a, b = read_transition_list(sciex_dir / "traML.csv"), read_transition_list(tsv)
    pd.testing.assert_frame_equal(a, b)


# ---------------------------------------------------------------------------------------------
# What the list leaves to the importer


def test_group_without_heavy_uses_the_nearest_internal_standard(sciex_dir, tmp_path):
    """Without cit's own Heavy transition, the heavy-only citrate/isocitrate pool, listed 0.2 s
    from cit, becomes its surrogate internal standard."""
    path = _edited_list(
        sciex_dir, tmp_path, lambda lines: [x for x in lines if not x.startswith("cit,,cit,cit.cit_1.Heavy")]
    )
    text = method_from_transition_list(read_transition_list(path), "yeast")
    doc = tomllib.loads(text)
    assert doc["analytes"]["cit"]["internal_standard"] == "Pool_cit_icit-IS"
    assert "cit has no Heavy transition in the list: it uses Pool_cit_icit-IS as a surrogate" in " ".join(text.split())


def test_window_narrows_to_keep_isomers_apart(sciex_dir, tmp_path):
    """Isocitrate listed 0.39 min after citrate (both 191 -> 111): the window shrinks to 0.19 min
    so that both stay, instead of leaving isocitrate out."""

    def move_icit(lines):
        return [x.replace("894.7886952", "911") if x.startswith("icit,") else x for x in lines]

    table = read_transition_list(_edited_list(sciex_dir, tmp_path, move_icit))
    text = method_from_transition_list(table, "yeast")
    doc = tomllib.loads(text)
    assert doc["integration"]["rt_window"] == 0.19
    assert {"cit", "icit"} <= set(doc["analytes"])
    assert "the widest window that keeps cit quantifier 191 -> 111" in " ".join(text.split())
