"""The method file: the shipped assay loads, and every kind of mistake is named with its key."""

from pathlib import Path

import pytest

from lcmsquant.method import MethodError, default_method_path, load_method

SHIPPED = Path(__file__).resolve().parents[1] / "methods" / "flumatinib.toml"


def test_shipped_method_describes_the_flumatinib_assay():
    method = load_method(default_method_path())
    assert [a.name for a in method.analytes] == ["flumatinib", "M1", "M3"]
    flumatinib = method.analyte("flumatinib")
    assert (flumatinib.quantifier.q1, flumatinib.quantifier.q3) == (563.3, 463.2)
    assert [(q.q1, q.q3) for q in flumatinib.qualifiers] == [(563.3, 285.1)]
    assert flumatinib.internal_standard == "flumatinib-d3"
    assert method.analyte("M3").internal_standard == "M3-d4"
    assert (flumatinib.model, flumatinib.weighting) == ("linear", "1/x^2")
    assert len(method.transitions()) == 8
    assert len(method.sha256) == 64


def test_plasma_serum_and_marrow_share_the_plasma_set_and_csf_has_its_own():
    method = load_method(default_method_path())
    assert {m: method.calibrator_set_for(m).name for m in ("plasma", "serum", "marrow", "csf")} == {
        "plasma": "plasma",
        "serum": "plasma",
        "marrow": "plasma",
        "csf": "csf",
    }
    plasma, csf = method.calibrator_set_for("plasma"), method.calibrator_set_for("csf")
    assert (plasma.nominal("CAL1", "flumatinib"), plasma.nominal("CAL8", "flumatinib")) == (1.0, 1000.0)
    assert (plasma.nominal("CAL1", "M1"), plasma.nominal("CAL8", "M3")) == (0.5, 500.0)
    assert (csf.nominal("CAL1", "M3"), csf.nominal("CAL8", "flumatinib")) == (0.1, 100.0)
    assert set(plasma.levels) == {f"CAL{i}" for i in range(1, 9)} | {"LLOQ", "LQC", "MQC", "HQC", "DQC"}


def test_defaults_are_the_ich_m10_numbers():
    acc = load_method(default_method_path()).acceptance
    assert (acc.calibrator_tolerance_pct, acc.lloq_tolerance_pct) == (15, 20)
    assert acc.min_calibrator_fraction == 0.75 and acc.min_calibrator_levels == 6
    assert acc.min_qc_fraction == pytest.approx(2 / 3) and acc.min_qc_level_fraction == 0.5


@pytest.mark.parametrize("reference, tolerance", [(0.6, 20), (0.45, 25), (0.15, 30), (0.05, 50)])
def test_ion_ratio_tolerance_follows_the_relative_abundance_tiers(reference, tolerance):
    assert load_method(default_method_path()).identity.ion_ratio_tolerance_pct(reference) == tolerance


def _edited(tmp_path, replace: dict[str, str], append: str = "") -> Path:
    """A copy of the shipped method with some text replaced, beside copies of its calibrators."""
    text = SHIPPED.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "methods").mkdir()
    (tmp_path / "calibrators").mkdir()
    for csv in (SHIPPED.parents[1] / "calibrators").glob("*.csv"):
        (tmp_path / "calibrators" / csv.name).write_text(csv.read_text())
    path = tmp_path / "methods" / "edited.toml"
    path.write_text(text + append)
    return path


def _problems(path) -> str:
    with pytest.raises(MethodError) as err:
        load_method(path)
    return "\n".join(err.value.problems)


def test_unknown_key_is_named(tmp_path):
    path = _edited(tmp_path, {"rt = 2.60\n": "rt = 2.60\nretention = 2.6\n"})
    assert "[analytes.flumatinib]: unknown key 'retention'" in _problems(path)


def test_analyte_without_internal_standard_is_refused(tmp_path):
    path = _edited(tmp_path, {'internal_standard = "M3-d4"\n': ""})
    problems = _problems(path)
    assert "[analytes.M3]: analyte without internal standard" in problems
    assert "[internal_standards.M3-d4]: not used by any analyte" in problems


def test_internal_standard_must_be_defined(tmp_path):
    path = _edited(tmp_path, {'internal_standard = "M3-d4"': 'internal_standard = "M3-d5"'})
    assert "'M3-d5' is not defined under [internal_standards]" in _problems(path)


def test_transition_used_twice_is_refused(tmp_path):
    path = _edited(tmp_path, {"qualifiers = [{ q1 = 549.3, q3 = 271.1 }]": "qualifiers = [{ q1 = 549.3, q3 = 463.2 }]"})
    assert "transition 549.3->463.2 is used twice (M1 quantifier and M1 qualifier)" in _problems(path)


def test_bad_settings_are_all_reported_at_once(tmp_path):
    path = _edited(
        tmp_path,
        {
            'weighting = "1/x^2"         #': 'weighting = "1/x3"         #',
            "rt_tolerance = 0.10": "rt_tolerance = -0.1",
            "is_response_band_pct = [50, 150]": "is_response_band_pct = [150, 50]",
            "mz_tolerance = 0.5": 'mz_tolerance = "half"',
        },
    )
    problems = _problems(path)
    assert "[calibration].weighting: unknown value '1/x3'" in problems
    assert "[identity].rt_tolerance: must be greater than 0, got -0.1" in problems
    assert "[acceptance].is_response_band_pct: expected [low, high]" in problems
    assert "top level.mz_tolerance: expected a number, got 'half'" in problems


def test_qc_level_outside_the_calibrated_range_is_refused(tmp_path):
    path = _edited(tmp_path, {})
    csv = tmp_path / "calibrators" / "flumatinib_csf.csv"
    csv.write_text(csv.read_text().replace("HQC,M1,80", "HQC,M1,800"))
    assert "M1 HQC nominal 800 lies outside the calibration range 0.1-100" in _problems(path)


def test_too_few_calibrator_levels_are_refused(tmp_path):
    path = _edited(tmp_path, {})
    csv = tmp_path / "calibrators" / "flumatinib_plasma.csv"
    lines = [line for line in csv.read_text().splitlines() if not line.startswith(("CAL7,M3", "CAL8,M3", "CAL6,M3"))]
    csv.write_text("\n".join(lines) + "\n")
    assert "M3 has 5 calibrator levels, ICH M10 needs at least 6" in _problems(path)


def test_missing_calibrator_file_and_broken_toml_are_clear(tmp_path):
    path = _edited(tmp_path, {"flumatinib_csf.csv": "nowhere.csv"})
    assert "nowhere.csv does not exist" in _problems(path)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = 'x'\n[analytes\n")
    assert "not valid TOML" in _problems(broken)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (("MQC,M3,200\n", ""), "M3 has no MQC level: ICH M10 3.3.1 needs low, mid and high QCs"),
        (("LQC,M1,1.5", "LQC,M1,2"), "M1 LQC nominal 2 is above 3x the LLOQ (1.5)"),
        (("HQC,flumatinib,800", "HQC,flumatinib,700"), "flumatinib HQC nominal 700 is below 75 % of the ULOQ (750)"),
        (("MQC,flumatinib,400", "MQC,flumatinib,100"), "flumatinib MQC nominal 100 is not within 30-50 % of the ULOQ"),
        (("DQC,M1,2000", "DQC,M1,400"), "M1 DQC nominal 400 is not above the ULOQ (500)"),
    ],
)
def test_qc_levels_missing_or_misplaced_in_the_calibrator_set_are_refused(tmp_path, edit, problem):
    path = _edited(tmp_path, {})
    csv = tmp_path / "calibrators" / "flumatinib_plasma.csv"
    assert edit[0] in csv.read_text()
    csv.write_text(csv.read_text().replace(*edit))
    assert problem in _problems(path)
