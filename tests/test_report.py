"""The validation report as a reviewer meets it: opened in a real browser, printed to PDF, and
holding what is needed to accept or reject the run, in the order a reviewer works."""

import json
import re
import shutil
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from lcmsquant import browser
from lcmsquant.audit_trail import account, read_trail, results_sha256
from lcmsquant.cli import app
from lcmsquant.files import sha256
from lcmsquant.pipeline import run_batch
from lcmsquant.report import (
    REPORT_HTML,
    ReportError,
    fmt,
    fmt_factor,
    fmt_nominal,
    read_run_files,
    reanalysis_list,
    render_report,
    rule_category,
    write_pdf,
    write_report,
)
from lcmsquant.report_figures import MIN_TEXT_PX, THUMB_W, decimate
from lcmsquant.results import write_outputs
from lcmsquant.review import Correction, open_review
from lcmsquant.runs import process_batch
from lcmsquant.simulate import SimulationOptions, simulate_batch
from lcmsquant.vocabulary import Meaning, TrailEvent

SECTIONS = [
    "Signatures",
    "1. Verdict",
    "2. Calibration",
    "3. QCs",
    "4. Carry-over, blanks and IS response",
    "5. Samples",
    "6. Chromatograms",
    "7. Audit and provenance",
    "8. Audit trail",
]
PRINT_WIDTH_PX = 703  # A4 (210 mm) less the report's 12 mm print margins, at 96 px per inch
REJECTED_RED = (198, 40, 40)  # the rejected banner's background, #c62828
ACCEPTED_GREEN = (27, 127, 59)  # #1b7f3b


def _write_run(folder, out):
    batch, result = run_batch(folder)
    write_outputs(batch, result, out, command=["lcmsquant", "run", str(folder)])
    write_report(out)
    return batch, result


@pytest.fixture(scope="module")
def accepted(plasma_run, tmp_path_factory):
    """Results folder (with report.html) of the clean simulated plasma run."""
    folder, _, batch, result = plasma_run
    out = tmp_path_factory.mktemp("accepted") / "results"
    write_outputs(batch, result, out, command=["lcmsquant", "run", str(folder)])
    write_report(out)
    return out


@pytest.fixture(scope="module")
def troubled(tmp_path_factory):
    """A run a reviewer must reject for M1 (QCs biased +30 %), with a spoiled flumatinib CAL5,
    a QC whose IS response dropped to 20 % and a manual integration."""
    folder = tmp_path_factory.mktemp("troubled") / "batch"
    options = SimulationOptions(
        qc_bias_pct={"M1": 30}, spoil_calibrator=("flumatinib", "CAL5"), is_dropout=("QC-MQC-2",)
    )
    simulate_batch(folder, seed=31, options=options)
    worklist = pd.read_csv(folder / "worklist.csv")
    unknown = worklist[worklist["sample_type"] == "unknown"].iloc[2]
    (folder / "overrides.csv").write_text(
        "file,target,action,start_min,end_min,reason,analyst\n"
        f"{unknown['file']},M3-d4,integrate,1.70,2.00,baseline drawn under the tail,JD\n"
    )
    batch, result = _write_run(folder, folder / "results")
    return folder / "results", unknown["sample_id"], batch, result


def _section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S)
    assert match, section_id
    return match.group(1)


def _pixels_near(image: np.ndarray, colour, tolerance=8) -> int:
    return int((np.abs(image[..., :3].astype(int) - np.array(colour)).max(axis=-1) <= tolerance).sum())


def _not_blank(image: np.ndarray) -> bool:
    grey = image[..., :3].mean(axis=-1)
    return (grey < 200).mean() > 0.01 and grey.std() > 10


def test_report_opens_in_headless_chromium_with_every_section_in_order(accepted, chromium, tmp_path):
    html = accepted / REPORT_HTML
    shot = browser.screenshot(html, tmp_path / "first-screen.png", 1280, 900)
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (900, 1280)
    assert _not_blank(image)
    dom = browser.dump_dom(html)
    headings = [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<h2[^>]*>(.*?)</h2>", dom, re.S)]
    assert headings == SECTIONS
    assert dom.count('<details class="inj"') == len(pd.read_csv(accepted / "results.csv")["injection"].unique())


def test_report_is_self_contained(accepted):
    html = (accepted / REPORT_HTML).read_text()
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)  # nothing fetched from a network
    assert "<link" not in html and "<script src" not in html and "@import" not in html
    assert html.count("<svg") > 100  # plots and chromatograms are inline


class _Ids(HTMLParser):
    """Every id attribute of a page, and every in-page reference (href="#x", xlink:href, url(#x))."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: Counter = Counter()
        self.references: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name == "id":
                self.ids[value] += 1
            elif name in ("href", "xlink:href") and value and value.startswith("#") and len(value) > 1:
                self.references.add(value[1:])
            elif value and "url(#" in value:
                self.references.update(re.findall(r"url\(#([^)]+)\)", value))

    handle_startendtag = handle_starttag


def test_every_id_in_the_report_is_unique_and_every_reference_resolves(troubled, accepted):
    for results in (troubled[0], accepted):
        page = _Ids()
        page.feed((results / REPORT_HTML).read_text())
        repeated = {name: n for name, n in page.ids.items() if n > 1}
        assert not repeated, f"ids repeated in {results}: {sorted(repeated)[:10]}"
        assert sum(page.ids.values()) > 500  # the inline figures' ids are there, each once
        assert page.references and page.references <= set(page.ids), page.references - set(page.ids)
        assert any(ref.startswith("cal1-") for ref in page.references)  # a figure's clip paths and markers are its own


def test_a_rejected_analyte_is_shown_in_the_first_screen(troubled, accepted, chromium, tmp_path):
    results, *_ = troubled
    bad = np.asarray(Image.open(browser.screenshot(results / REPORT_HTML, tmp_path / "bad.png")).convert("RGB"))
    good = np.asarray(Image.open(browser.screenshot(accepted / REPORT_HTML, tmp_path / "good.png")).convert("RGB"))
    assert _pixels_near(bad, REJECTED_RED) > 20_000  # the red banner fills part of the first screen
    assert _pixels_near(good, REJECTED_RED) < 500
    assert _pixels_near(good, ACCEPTED_GREEN) > 20_000
    dom = browser.dump_dom(results / REPORT_HTML)
    banner = re.search(r'id="verdict-banner">(.*?)</div>', dom, re.S).group(1)
    assert "Run rejected for M1 (plasma)" in banner
    assert "QCs within tolerance: 0/11" in banner


def test_pdf_renders_and_its_first_pages_are_not_blank(troubled, chromium):
    import pypdfium2 as pdfium

    results, *_ = troubled
    pdf_path = write_pdf(results)
    assert pdf_path.read_bytes()[:5] == b"%PDF-"
    pdf = pdfium.PdfDocument(pdf_path)
    try:
        assert len(pdf) >= 7  # one page at least per section; chromatograms opened for print
        for index in range(3):
            page = pdf[index].render(scale=1).to_numpy()
            assert _not_blank(page), f"page {index + 1} is blank"
        assert "Run rejected for M1" in pdf[0].get_textpage().get_text_range()
        # Printed at its size, not shrunk to fit something too wide: the title is its 20 px, and
        # every text of the figures is at least 11 px on paper too (tables are 10 px in print).
        title = _pdf_text_sizes(pdf[0])
        assert max(size for size, _ in title) == pytest.approx(20, abs=0.2)
        found = dict.fromkeys(FIGURE_PHRASES, 0)
        for index in range(len(pdf)):
            chars = _pdf_text_sizes(pdf[index])
            assert min(size for size, ch in chars if ch != " ") >= 10 - 0.1, f"page {index + 1}"
            words = _pdf_words(chars)
            for phrase in FIGURE_PHRASES:  # words only the figures print (axis labels, thumbnail titles)
                n = len(phrase)
                for i in range(len(words) - n + 1):
                    if tuple(w for _, w in words[i : i + n]) == phrase:
                        found[phrase] += 1
                        assert min(size for size, _ in words[i : i + n]) >= MIN_TEXT_PX - 0.1, (index, phrase)
        assert all(found.values()), found
    finally:
        pdf.close()


# Words only the figures print, in pdfium's reading order: axis labels, the QC plot's title and
# legend, thumbnail titles.
FIGURE_PHRASES = (
    ("nominal", "concentration", "(ng/mL)"),
    ("area", "ratio", "(analyte", "/", "IS)"),
    ("IS", "area", "(counts)"),
    ("QC", "accuracy", "by", "injection"),
    ("LLOQ", "LQC", "MQC", "HQC", "DQC"),
    ("quant",),
    ("qual",),
)


def _pdf_text_sizes(page) -> list[tuple[float, str]]:
    """(font size in CSS px as printed, character) of every character of a PDF page; spaces and
    line ends, which pdfium makes up between words, have no size and are (0, " ")."""
    import ctypes
    import math

    import pypdfium2.raw as raw

    text = page.get_textpage()
    out = []
    for k in range(raw.FPDFText_CountChars(text)):
        matrix = raw.FS_MATRIX()
        raw.FPDFText_GetMatrix(text, k, ctypes.byref(matrix))
        size = raw.FPDFText_GetFontSize(text, k) * math.hypot(matrix.c, matrix.d) * 96 / 72
        char = chr(raw.FPDFText_GetUnicode(text, k))
        out.append((0.0, " ") if char.isspace() else (size, char))
    return out


def _pdf_words(chars: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Words of one size each, from _pdf_text_sizes."""
    words, word, size = [], "", 0.0
    for s, ch in chars + [(0.0, " ")]:
        if ch.isspace() or (word and abs(s - size) > 0.5):
            if word:
                words.append((size, word))
            word, size = ("" if ch.isspace() else ch), s
        else:
            word, size = word + ch, s
    return words


def test_verdict_counts_match_the_results(troubled):
    results, *_ = troubled
    html = (results / REPORT_HTML).read_text()
    verdict = _section(html, "verdict")
    table = pd.read_csv(results / "results.csv", keep_default_na=False, na_values=[""])
    m1 = table[(table["analyte"] == "M1") & (table["sample_type"] == "unknown")]
    row = re.search(r'#cal-M1-plasma">M1</a>.*?</tr>', verdict, re.S).group(0)
    numbers = [int(n) for n in re.findall(r'<td class="n">(\d+)</td>', row)]
    blq = m1["flags"].str.contains("BLQ").sum()
    alq = m1["flags"].str.contains("ALQ").sum()
    # study samples, reported, BLQ, ALQ, flagged, to reanalyse: M1 rejected, so nothing reported
    assert numbers == [len(m1), 0, blq, alq, len(m1), len(m1)]
    assert "REJECTED" in row and "accepted" in re.search(r'#cal-flumatinib-plasma">.*?</tr>', verdict, re.S).group(0)


def _verdict_cells(html: str, analyte: str) -> tuple[str, str]:
    """The failing-rules and warnings cells of an analyte's row in the verdict table."""
    row = re.search(rf'#cal-{analyte}-plasma">{analyte}</a>.*?</tr>', _section(html, "verdict"), re.S).group(0)
    failing = re.search(r'<td class="failing">(.*?)</td>', row, re.S).group(1)
    warnings = re.search(r'<td class="warnings">(.*?)</td>', row, re.S).group(1)
    return failing, warnings


def test_a_failing_warning_is_shown_as_a_warning_apart_from_the_failing_rules(troubled, tmp_path):
    copy = shutil.copytree(troubled[0], tmp_path / "results")
    run = json.loads((copy / "run.json").read_text())
    drift = next(r for r in run["rules"] if r["analyte"] == "M1" and r["id"] == "IS_RESPONSE_DRIFT")
    assert drift["critical"] is False
    drift.update(passed=False, measured="-27.5 % over 46 injections")
    _as_if_the_run_wrote_it(copy, run)
    html = render_report(copy)
    failing, warnings = _verdict_cells(html, "M1")
    failing_rules = re.findall(r'<div class="fail">([^:<]*):', failing)
    warning_rules = re.findall(r'<div class="warn">([^:<]*):', warnings)
    critical = {r["rule"] for r in run["rules"] if r["analyte"] == "M1" and not r["passed"] and r["critical"]}
    assert sorted(failing_rules) == sorted(critical) and "QCs within tolerance" in critical
    assert "IS response drift" in warning_rules and "dilution QCs within tolerance" in warning_rules
    assert not set(warning_rules) & critical and "warn" not in failing
    assert '<div class="warn">IS response drift: -27.5 % over 46 injections (limit within +-20 %)</div>' in warnings
    assert _verdict_cells(html, "flumatinib")[0] == "none"
    banner = re.search(r'id="verdict-banner">(.*?)</div>', html, re.S).group(1)
    assert "QCs within tolerance" in banner and "drift" not in banner  # the banner gives why the run is rejected
    checks = _section(html, "checks")
    assert re.search(r'<tr class="warn"><td>M1</td>.*?IS response drift.*?>warning</td></tr>', checks, re.S)


def test_calibration_shows_the_excluded_calibrator_with_its_reason(troubled):
    results, *_ = troubled
    calibration = _section((results / REPORT_HTML).read_text(), "calibration")
    flumatinib = calibration[calibration.index('id="cal-flumatinib-plasma"') : calibration.index('id="cal-M1-plasma"')]
    excluded = re.findall(r'<tr class="excluded">(.*?)</tr>', flumatinib, re.S)
    assert len(excluded) == 1 and "CAL5" in excluded[0]
    assert "excluded: back-calculated +" in excluded[0] and "(limit +-15 %)" in excluded[0]
    assert flumatinib.count("<svg") == 2  # curve and residual plot
    assert ">excluded<" in flumatinib  # the legend of the curve names the excluded point
    assert "±20 % (LLOQ)" in flumatinib and "±15 %" in flumatinib


def _matplotlib_svgs(html: str) -> list[str]:
    return re.findall(r'<div class="plots">(.*?)</div>', html, re.S)


def test_figures_fit_a_printed_page_and_their_text_is_at_least_11_px(troubled):
    results, *_ = troubled
    html = (results / REPORT_HTML).read_text()
    plots = _matplotlib_svgs(html)
    assert len(plots) == 3 + 1 + 2  # calibration (a pair each), QC, IS response
    for block in plots:
        svgs = re.findall(r"<svg .*?</svg>", block, re.S)
        widths = []
        for svg in svgs:
            width_pt, height_pt = (
                float(v) for v in re.search(r'<svg [^>]*width="([\d.]+)pt" height="([\d.]+)pt"', svg).groups()
            )
            view_width = float(re.search(r'viewBox="0 0 ([\d.]+) ', svg).group(1))
            px_per_unit = width_pt * 96 / 72 / view_width  # drawn at its size: the SVG's width is in points
            sizes = [float(v) * px_per_unit for v in re.findall(r'<text style="font-size: ([\d.]+)px', svg)]
            assert len(sizes) >= 10 and min(sizes) >= MIN_TEXT_PX, min(sizes)
            tick_labels = re.findall(r'<g id="[^"]*-[xy]tick_\d+">.*?<text style="font-size: ([\d.]+)px', svg, re.S)
            assert tick_labels and min(float(v) * px_per_unit for v in tick_labels) >= 12 - 1e-6
            widths.append(width_pt * 96 / 72)
        assert sum(widths) + 10 * (len(widths) - 1) <= PRINT_WIDTH_PX  # side by side within an A4 page
        assert max(widths) <= 0.7 * 1280  # no longer most of a laptop screen
    thumbs = re.findall(r'<svg class="thumb[^"]*" [^>]*width="(\d+)"', html)
    assert thumbs and {int(w) for w in thumbs} == {THUMB_W}
    assert 80 + 3 * (THUMB_W + 2 * 2 + 6) + 2 * 8 + 2 <= PRINT_WIDTH_PX  # name and 3 framed thumbnails a row
    for css_class in ("tt", "tn", "tf", "tm"):
        size = re.search(rf"svg.thumb .{css_class} {{ font: (?:\d+ )?(\d+)px", html).group(1)
        assert int(size) >= MIN_TEXT_PX


def test_figures_are_drawn_at_their_size_on_the_screen_and_in_print(troubled, chromium, tmp_path):
    results, *_ = troubled
    html = (results / REPORT_HTML).read_text()
    figure_text = """
    window.measured = [];
    document.querySelectorAll(".plots svg text, svg.thumb text").forEach(function (t) {
      var m = t.getScreenCTM();
      window.measured.push(parseFloat(getComputedStyle(t).fontSize) * Math.hypot(m.a, m.b));
    });"""
    printed = _measured(html, tmp_path, figure_text, width=PRINT_WIDTH_PX, print_css=True)  # as on A4
    assert len(printed) > 1000 and min(printed) >= MIN_TEXT_PX - 0.01
    screen = _measured(html, tmp_path, figure_text, width=1280)  # a laptop screen at 100 %
    assert min(screen) >= MIN_TEXT_PX - 0.01


def _qc_frame(results):
    from lcmsquant.report import qc_table

    files = read_run_files(results)
    qcs = qc_table(files)
    return files, qcs[qcs["calibrator_set"] == "plasma"]


def test_the_qc_plot_tells_levels_apart_and_draws_the_lloq_band_only_at_lloq_qcs(troubled):
    from lcmsquant.report_figures import qc_accuracy_figure

    results, *_ = troubled
    files, qcs = _qc_frame(results)
    analytes = ["flumatinib", "M1", "M3"]
    fig = qc_accuracy_figure(qcs, analytes, 15.0, 20.0, "QC accuracy")
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [
        "100 ± 15 %",
        "100 ± 20 % (LLOQ)",
        "LLOQ",
        "LQC",
        "MQC",
        "HQC",
        "DQC",
        *analytes,
        "failing",
        "off scale",
    ]
    markers = {h.get_label(): h.get_marker() for h in ax.get_legend().legend_handles if hasattr(h, "get_marker")}
    assert len({markers[level] for level in ("LLOQ", "LQC", "MQC", "HQC", "DQC")}) == 5  # a shape per level
    assert all(t.get_fontsize() * 96 / 72 >= MIN_TEXT_PX for t in ax.get_legend().get_texts())
    assert all(t.get_fontsize() * 96 / 72 >= 12 for t in ax.get_xticklabels() + ax.get_yticklabels())
    lloq_band = next(a for a in ax.get_children() if a.get_gid() == "lloq-band")
    strips = [p.vertices for p in lloq_band.get_paths()]
    lloq_injections = sorted(set(qcs.loc[qcs["level"] == "LLOQ", "injection"]))
    assert [round((v[:, 0].min() + v[:, 0].max()) / 2) for v in strips] == lloq_injections
    assert all(v[:, 0].max() - v[:, 0].min() < 1 and v[:, 1].min() == 80 and v[:, 1].max() == 120 for v in strips)
    off_scale = [t for t in ax.texts if t.get_text().endswith(" %")]  # QC-MQC-2's IS drop-out, each analyte
    assert len(off_scale) == 3 and len({t.xyann for t in off_scale}) == 3  # one label under another
    band = next(a for a in ax.get_children() if a.get_gid() == "band")  # +-15 % across the run
    assert band.get_path().transformed(band.get_patch_transform()).get_extents().y0 == pytest.approx(85)
    # the report's QC plot carries the same legend, as text
    svg = _matplotlib_svgs((results / REPORT_HTML).read_text())[3]
    legend_svg = re.search(r'<g id="qc1-plasma-legend_1">.*', svg, re.S).group(0)
    assert [
        level
        for level in ("LLOQ", "LQC", "MQC", "HQC", "DQC")
        if f"> {level}</text>" in legend_svg or f">{level}</text>" in legend_svg
    ] == ["LLOQ", "LQC", "MQC", "HQC", "DQC"]
    assert "qc1-plasma-lloq-band" in svg


def test_the_residual_plot_draws_the_lloq_limit_only_at_the_lloq(troubled):
    from lcmsquant.report import calibrator_table
    from lcmsquant.report_figures import residuals_figure

    results, *_ = troubled
    files = read_run_files(results)
    cals = calibrator_table(files, "M1", "plasma")
    nominals = sorted(set(cals["nominal"]))
    ax = residuals_figure(cals, 15.0, 20.0, "M1", "ng/mL").axes[0]
    lloq = next(a for a in ax.get_children() if a.get_gid() == "lloq-band").get_paths()[0].vertices
    rest = next(a for a in ax.get_children() if a.get_gid() == "band").get_paths()[0].vertices
    assert lloq[:, 0].min() < nominals[0] < lloq[:, 0].max() < nominals[1]  # around the LLOQ only
    assert lloq[:, 1].max() == pytest.approx(20) and rest[:, 1].max() == pytest.approx(15)
    assert rest[:, 0].min() == pytest.approx(lloq[:, 0].max()) and rest[:, 0].max() > nominals[-1]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "±20 % (LLOQ)" in legend and "±15 %" in legend


def test_numbers_have_no_thousands_separator_and_factors_no_trailing_zeros():
    assert [fmt(v) for v in (1000, 12345.6, 0.98956, 925.34, 1.0)] == ["1000", "12346", "0.9896", "925.3", "1.000"]
    assert [fmt_nominal(v) for v in (1.0, 0.5, 1000.0, 2500.0, 0.025)] == ["1", "0.5", "1000", "2500", "0.025"]
    assert [fmt_factor(v) for v in (10.0, 2.5, 1.0, 100.0, float("nan"))] == ["10", "2.5", "1", "100", "–"]


def test_the_report_writes_no_thousands_separator_and_dilutions_as_plain_factors(troubled):
    results, *_ = troubled
    html = (results / REPORT_HTML).read_text()
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", html)
    assert len(cells) > 1000
    assert not [c for c in cells if re.search(r"\d,\d{3}(?!\d)", c)]  # "1,000" would read as 1.0 in many locales
    assert "<td>run range</td><td>1 – 1000 ng/mL</td>" in _section(html, "calibration")  # not "1.000 – 1,000"
    qcs = _section(html, "qcs")
    dilutions = re.findall(r'<td class="n">\d+</td><td>[^<]*</td><td class="n">([^<]*)</td>', qcs)
    assert dilutions and "10" in dilutions and all(re.fullmatch(r"\d+|\d+\.\d*[1-9]", d) for d in dilutions)
    samples = re.search(r'id="samples-table">(.*?)</table>', _section(html, "samples"), re.S).group(1)
    rows = re.findall(r"<tr><td class=\"n\">\d+</td>(?:<td>[^<]*</td>){5}<td class=\"n\">([^<]*)</td>", samples)
    assert rows and set(rows) > {"1"} and all(re.fullmatch(r"\d+|\d+\.\d*[1-9]", d) for d in rows)
    assert "BLQ (&lt; 0.5)" in samples or "BLQ (&lt; 1)" in samples
    reanalysis = re.search(r'id="reanalysis-table">(.*?)</table>', _section(html, "samples"), re.S).group(1)
    factors = re.findall(r"<td>([^<]*)</td></tr>", reanalysis)  # suggested dilution factor, the last column
    assert any(factors) and all(re.fullmatch(r"|\d+|\d+\.\d*[1-9]", f) for f in factors)


def test_qc_section_counts_each_level_and_all_qcs(troubled):
    results, *_ = troubled
    qcs = _section((results / REPORT_HTML).read_text(), "qcs")
    assert 'M1, plasma QCs: <span class="fail">0/11 within tolerance' in qcs
    assert "LQC: 0/3 within ±15 %" in qcs and "LLOQ: 0/2 within ±20 %" in qcs
    assert "QC accuracy by injection" in qcs


def test_is_response_plot_labels_the_flagged_injection(troubled):
    results, *_ = troubled
    checks = _section((results / REPORT_HTML).read_text(), "checks")
    plot = re.search(r"<svg.*?flumatinib-d3 response by injection.*?</svg>", checks, re.S).group(0)
    assert "QC-MQC-2" in plot  # the labelled point
    table = checks[checks.index("flumatinib-d3 area") :]
    assert "QC-MQC-2" in table.split("</table>")[0]
    assert "carry-over" in checks and "selectivity" in checks


def test_samples_table_sorts_in_the_browser_and_lists_reanalysis(troubled):
    results, *_ = troubled
    samples = _section((results / REPORT_HTML).read_text(), "samples")
    assert '<table class="sortable" id="samples-table">' in samples
    assert "RUN_REJECTED" in samples  # every M1 study sample goes back
    reanalysis = reanalysis_list(read_run_files(results))
    alq = reanalysis[reanalysis["reason"].str.contains("ALQ")]
    assert len(alq) >= 2 and (alq["suggested_dilution_factor"].astype(int) >= 2).all()
    assert not reanalysis["reason"].str.fullmatch("").any()


def test_chromatograms_mark_manual_and_flagged_peaks(troubled):
    results, manual_sample, *_ = troubled
    chromatograms = _section((results / REPORT_HTML).read_text(), "chromatograms")
    blocks = re.findall(r'<details class="inj".*?</details>', chromatograms, re.S)
    assert len(blocks) == len(pd.read_csv(results / "results.csv")["injection"].unique())
    manual = [b for b in blocks if f"</b> {manual_sample} " in b]
    assert len(manual) == 1 and 'class="thumb manual"' in manual[0] and 'data-flagged="1"' in manual[0]
    dropout = next(b for b in blocks if "</b> QC-MQC-2 " in b)
    assert 'class="thumb flagged"' in dropout and "IS_RESPONSE" in dropout
    assert all(b.count('<polyline class="tr"') == 9 for b in blocks)  # 3 analytes x quant, qual, IS
    assert chromatograms.count('<polygon class="ta"') > len(blocks)  # integrated areas drawn


def test_audit_and_provenance_hold_overrides_hashes_and_session(troubled):
    results, manual_sample, *_ = troubled
    provenance = _section((results / REPORT_HTML).read_text(), "provenance")
    assert "baseline drawn under the tail" in provenance and "JD" in provenance and manual_sample in provenance
    run = json.loads((results / "run.json").read_text())
    for item in run["provenance"]["inputs"]:
        assert item["sha256"] in provenance
    assert run["provenance"]["method"]["sha256"] in provenance
    session = json.loads((results / "session.json").read_text())
    assert session["finished_at"] in provenance and "lcmsquant run" in provenance
    assert "CAL5" in provenance  # the automatic exclusion is in the audit trail too


def test_acceptance_limits_are_named_in_words_from_one_mapping(troubled):
    from dataclasses import fields

    from lcmsquant.method import ACCEPTANCE_LABELS, Acceptance

    assert [f.name for f in fields(Acceptance)] and {f.name for f in fields(Acceptance)} == set(ACCEPTANCE_LABELS)
    results, *_ = troubled
    provenance = _section((results / REPORT_HTML).read_text(), "provenance")
    limits = re.search(r'<table class="kv" id="acceptance-limits">(.*?)</table>', provenance, re.S).group(1)
    rows = dict(re.findall(r"<tr><td>([^<]*)</td><td class=\"n\">([^<]*)</td></tr>", limits))
    assert [words for words, _ in ACCEPTANCE_LABELS.values()] == [w.replace("&#39;", "'") for w in rows]
    assert rows["carry-over, IS (% of mean IS response)"] == "5"
    assert rows["QCs within tolerance, minimum (% of all QCs)"] == "66.7"  # 2/3, as a percentage
    assert rows["IS response band (% of mean calibrator/QC IS response)"] == "50–150"
    for key in ACCEPTANCE_LABELS:  # no raw key, nor one with its underscores replaced
        assert key not in limits and key.replace("_", " ") not in limits


def _measured(html: str, tmp_path, script: str, width: int, print_css: bool = False) -> dict:
    """Run `script` (which sets `window.measured` to a JSON-able value) in the page laid out at
    `width` CSS px, every chromatogram opened; with `print_css`, the page's print rules apply
    (as when Chromium prints it)."""
    if print_css:
        html = html.replace("@media print", "@media all")
    probe = f"""<script>
    document.querySelectorAll("details.inj").forEach(function (d) {{ d.open = true; }});
    {script}
    var pre = document.createElement("pre"); pre.id = "measured";
    pre.textContent = JSON.stringify(window.measured); document.body.appendChild(pre);
    </script></body>"""
    page = tmp_path / f"measured-{width}.html"
    page.write_text(html.replace("</body>", probe))
    dom = browser._run(page, "--dump-dom", f"--window-size={width},900", "--virtual-time-budget=5000").stdout
    import html as html_module

    return json.loads(html_module.unescape(re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S).group(1)))


def test_file_names_are_never_broken_inside_a_name(troubled, chromium, tmp_path):
    results, *_ = troubled
    html = (results / REPORT_HTML).read_text()
    names = set(pd.read_csv(results / "results.csv")["file"])
    chromatograms, provenance = _section(html, "chromatograms"), _section(html, "provenance")
    for name in names:  # each name one unbreakable part: no <wbr>, no break inside it
        assert f'<span class="file"><span>{name}</span></span>' in chromatograms
        assert f'<td><span class="file"><span>{name}</span></span></td>' in provenance
    assert ".file > span, .nb { white-space: nowrap; }" in html
    folder = re.search(r'<td>batch folder</td><td class="code">(.*?)</td>', provenance).group(1)
    assert "<wbr>" in folder and re.search(r"<span>[^<]*batch</span>", folder)  # a path breaks only after a "/"
    # In the browser, on a narrow screen: every name is on one line (one box), none wider than its text
    measured = _measured(
        html,
        tmp_path,
        """
    window.measured = Array.prototype.map.call(document.querySelectorAll(".file > span"), function (s) {
      return [s.textContent, s.getClientRects().length];
    });""",
        width=420,
    )
    assert len(measured) > 2 * len(names)
    broken = [name for name, boxes in measured if boxes != 1]
    assert not broken, broken


def test_the_report_fits_the_printed_page(troubled, chromium, tmp_path):
    """Chromium shrinks a whole printed page to the widest thing on it: one table wider than A4's
    printing width made every text of the PDF two thirds of its size."""
    results, *_ = troubled
    html = (results / REPORT_HTML).read_text()
    printed = _measured(
        html, tmp_path, "window.measured = document.documentElement.scrollWidth;", width=PRINT_WIDTH_PX, print_css=True
    )
    assert printed <= PRINT_WIDTH_PX


def test_report_is_identical_for_the_same_results_and_reruns_differ_only_in_the_session_and_trail(troubled, tmp_path):
    """The same results and trail give the same bytes. A rerun differs in its session (when, how)
    and in its audit trail, whose entry records the time it was written; nothing else."""
    results, _, batch, result = troubled
    assert render_report(results) == (results / REPORT_HTML).read_text()  # same results, same bytes
    write_outputs(batch, result, tmp_path / "rerun", command=["lcmsquant", "run", "--again", str(batch.folder)])
    rerun = write_report(tmp_path / "rerun").read_text()
    first = (results / REPORT_HTML).read_text()
    assert rerun != first

    def strip(html: str) -> str:
        for table in ('<table class="kv" id="session">', '<table class="wide" id="trail-table">'):
            html = re.sub(re.escape(table) + r".*?</table>", "", html, flags=re.S)
        return html

    assert strip(rerun) == strip(first)


def test_without_the_mzml_files_the_chromatogram_section_says_so(accepted, tmp_path):
    copy = shutil.copytree(accepted, tmp_path / "results")
    html = render_report(copy, batch_dir=tmp_path / "gone")
    chromatograms = _section(html, "chromatograms")
    assert "was not found, so the chromatograms are not drawn" in chromatograms
    assert "--batch BATCH_DIR" in chromatograms and "<details" not in chromatograms
    assert "1. Verdict" in html and "Run accepted" in html


def _as_if_the_run_wrote_it(folder, run: dict) -> None:
    """Write run.json with the SHA-256 of the tables as they now are: the reader refuses tables
    edited after the run, and these tests make up a run's outputs by editing a real one."""
    run["outputs"] = {name: sha256(folder / name) for name in run["outputs"]}
    (folder / "run.json").write_text(json.dumps(run))


def test_reanalysis_csv_and_rule_categories_are_used_when_the_run_wrote_them(accepted, tmp_path):
    copy = shutil.copytree(accepted, tmp_path / "results")
    pd.DataFrame(
        [
            {
                "injection": 20,
                "file": "020_X.mzML",
                "sample_id": "S-REPEAT",
                "matrix": "plasma",
                "subject_id": "S001",
                "visit": "C1D15",
                "timepoint": "trough",
                "analyte": "M3",
                "reason": "carry-over suspected",
                "action": "reanalyse",
                "detail": "after ULOQ",
                "suggested_dilution_factor": "",
            }
        ]
    ).to_csv(copy / "reanalysis.csv", index=False)
    run = json.loads((copy / "run.json").read_text())
    run["rules"].append(
        {
            "analyte": "M3",
            "calibrator_set": "plasma",
            "rule": "carry-over (analyte)",
            "category": "carryover",
            "section": "3.2.6",
            "measured": "3.1 % of LLOQ",
            "limit": "<= 20 %",
            "passed": True,
            "critical": True,
            "detail": "",
        }
    )
    _as_if_the_run_wrote_it(copy, run)
    html = render_report(copy)
    samples = _section(html, "samples")
    assert "S-REPEAT" in samples and "carry-over suspected" in samples and "From reanalysis.csv" in samples
    assert "3.1 % of LLOQ" in _section(html, "checks")
    assert "3.1 % of LLOQ" not in _section(html, "calibration")


def test_rule_category_comes_from_the_rule_id_or_the_title_of_older_results():
    assert rule_category({"rule": "anything", "category": "selectivity"}) == "selectivity"
    assert rule_category({"rule": "reworded title", "id": "CARRYOVER_IS"}) == "carryover"
    assert rule_category({"rule": "carry-over (IS)"}) == "carryover"
    assert rule_category({"rule": "zero sample selectivity (analyte)"}) == "selectivity"
    assert rule_category({"rule": "IS response drift"}) == "is_response"
    assert rule_category({"rule": "LQC QCs within tolerance"}) == "qc"
    assert rule_category({"rule": "range covers QCs"}) == "calibration"
    assert rule_category({"rule": "calibrators within tolerance"}) == "calibration"


def test_decimation_keeps_a_narrow_peak():
    time = np.linspace(0, 10, 20_000)
    intensity = np.random.default_rng(1).normal(100, 5, time.size)
    intensity[12_345] = 50_000  # one-point spike: a bucket's maximum must survive
    t, y = decimate(time, intensity, 240)
    assert len(t) <= 240 and y.max() == 50_000 and np.all(np.diff(t) > 0)


def test_a_results_folder_without_its_files_is_refused_with_their_names(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.csv").write_text("injection\n1\n")
    with pytest.raises(ReportError) as err:
        render_report(tmp_path / "results")
    assert "peaks.csv is missing" in str(err.value) and "run.json is missing" in str(err.value)


def test_report_command_rerenders_and_prints_the_pdf(accepted, chromium, tmp_path, cli):
    copy = shutil.copytree(accepted, tmp_path / "results")
    (copy / REPORT_HTML).unlink()
    done = cli("report", copy, "--pdf")
    assert done.returncode == 0, done.stderr
    assert (copy / REPORT_HTML).read_bytes() == (accepted / REPORT_HTML).read_bytes()
    assert (copy / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert not list(copy.glob(".*tmp"))


def test_report_command_errors_are_clear_without_traceback(accepted, tmp_path, monkeypatch):
    runner = CliRunner()
    done = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert done.exit_code == 2 and "is not a folder" in done.output and "Traceback" not in done.output
    done = runner.invoke(app, ["report", str(accepted), "--batch", str(tmp_path / "nowhere")])
    assert done.exit_code == 2 and "--batch" in done.output
    copy = shutil.copytree(accepted, tmp_path / "results")
    monkeypatch.setenv("LCMSQUANT_CHROMIUM", str(tmp_path / "no-chromium"))
    done = runner.invoke(app, ["report", str(copy), "--pdf"])
    assert done.exit_code == 2 and "LCMSQUANT_CHROMIUM" in done.output and "Traceback" not in done.output
    assert (copy / REPORT_HTML).is_file() and not (copy / "report.pdf").exists()


def test_a_run_without_a_curve_or_qcs_still_renders_and_says_so(accepted, tmp_path):
    copy = shutil.copytree(accepted, tmp_path / "results")
    results = pd.read_csv(copy / "results.csv", dtype=str, keep_default_na=False)
    results = results[~results["sample_type"].isin(["qc"])]
    results.to_csv(copy / "results.csv", index=False)
    calibration = pd.read_csv(copy / "calibration.csv", dtype=str, keep_default_na=False)
    flumatinib = calibration["analyte"] == "flumatinib"
    calibration.loc[flumatinib, ["model", "weighting", "intercept", "slope", "r_squared", "lloq", "uloq"]] = ""
    calibration.loc[flumatinib, ["accepted", "problem"]] = [
        "False",
        "only 2 usable calibrators: a linear curve needs 3",
    ]
    calibration.to_csv(copy / "calibration.csv", index=False)
    _as_if_the_run_wrote_it(copy, json.loads((copy / "run.json").read_text()))
    html = render_report(copy)
    calibration_html = _section(html, "calibration")
    assert "no curve" in calibration_html and "only 2 usable calibrators" in calibration_html
    assert "0/0 within tolerance" in _section(html, "qcs")


def test_thumbnails_of_every_real_sciex_trace_stay_inside_their_frame(sciex_dir):
    import xml.etree.ElementTree as ET

    from lcmsquant.chromatograms import read_traces
    from lcmsquant.peaks import PeakSearch, find_peak
    from lcmsquant.report_figures import THUMB_H, THUMB_W, Integration, chromatogram_thumbnail

    traces = read_traces(sciex_dir / "RawDataProcessor_mzML_1.mzML")
    assert len(traces) == 324
    for trace in traces:
        svg = ET.fromstring(chromatogram_thumbnail(trace.native_id, trace.time, trace.intensity, Integration()))
        line = svg.find("{http://www.w3.org/2000/svg}polyline")
        xy = np.array([p.split(",") for p in line.get("points").split()], dtype=float)
        assert 2 <= len(xy) <= 240 and xy[:, 0].min() >= 0 and xy[:, 0].max() <= THUMB_W
        assert xy[:, 1].min() >= 0 and xy[:, 1].max() <= THUMB_H
    # 23dpg heavy (Q1 268, Q3 170), apex near 953.67 s in SmartPeak: drawn with its integration
    trace = next(t for t in traces if abs(t.q1 - 268) < 0.5 and abs(t.q3 - 170) < 0.5 and t.covers(953.67 / 60))
    peak = find_peak(trace.time, trace.intensity, PeakSearch(953.67 / 60, 0.3))
    drawn = chromatogram_thumbnail(
        "23dpg",
        trace.time,
        trace.intensity,
        Integration(peak.start, peak.end, peak.baseline_start, peak.baseline_end, peak.rt, 953.67 / 60),
    )
    assert '<polygon class="ta"' in drawn and drawn.count('<line class="tk"') == 2


def test_sorting_and_opening_work_in_the_browser(troubled, chromium, tmp_path):
    results, *_ = troubled
    html = (results / REPORT_HTML).read_text()
    clicks = """<script>
    document.querySelectorAll('#samples-table th')[9].click();            // concentration, ascending
    document.querySelector('button[data-open="flagged"]').click();
    </script></body>"""
    page = tmp_path / "clicked.html"
    page.write_text(html.replace("</body>", clicks))
    dom = browser.dump_dom(page)
    table = re.search(r'<table class="sortable" id="samples-table">(.*?)</table>', dom, re.DOTALL).group(1)
    keys = re.findall(r'<td class="n" data-sort="([^"]*)">[^<]*</td><td>(?:<span|</td>)', table)
    numbers = [float(k) for k in keys if k]
    assert len(numbers) > 50 and numbers == sorted(numbers)
    assert all(k == "" for k in keys[len(numbers) :])  # rows without a value go last
    details = re.findall(r'<details class="inj"([^>]*)>', dom)
    opened = [d for d in details if " open" in d]
    assert opened and all('data-flagged="1"' in d for d in opened)
    assert len(opened) == sum('data-flagged="1"' in d for d in details)


# ---------------------------------------------------------------------------------------------
# Signatures and the audit trail


@pytest.fixture(scope="module")
def processed_seed7(tmp_path_factory):
    """A simulated plasma batch run as `lcmsquant run` runs it (results and report written)."""
    folder = tmp_path_factory.mktemp("signed") / "batch"
    simulate_batch(folder, seed=7)
    assert process_batch(folder, command=["lcmsquant", "run", str(folder)]).ok
    return folder


@pytest.fixture
def signed(processed_seed7, tmp_path):
    """A copy of that batch reviewed in lcmsquant review: Ada Lovelace excluded flumatinib's CAL1
    and signed "reviewed"; then integrated a QC by hand (her signature no longer covers the
    results), signed again, and Grace Hopper approved. Returns the batch folder."""
    batch = shutil.copytree(processed_seed7, tmp_path / "batch")
    with open_review(batch) as review:
        review.apply([Correction("003_CAL1.mzML", "flumatinib", "exclude")], "spoiled in preparation", "Ada Lovelace")
        review.sign("Ada Lovelace", "reviewed")
        review.apply(
            [Correction("012_QC-LLOQ-1.mzML", "M1", "integrate", 1.50, 2.10)], "baseline under the tail", "Ada Lovelace"
        )
        review.sign("Ada Lovelace", "reviewed")
        review.sign("Grace Hopper", "approved")
    return batch


def _rows(section: str, table_id: str) -> list[list[str]]:
    table = re.search(rf'<table[^>]*id="{table_id}">(.*?)</table>', section, re.S).group(1)
    body = table.split("<tbody>")[1]
    return [
        [
            re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", cell)).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        ]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    ]


def test_the_report_lists_each_signature_and_whether_it_covers_these_results(signed):
    results = signed / "results"
    html = write_report(results).read_text()
    current = results_sha256(results)
    section = _section(html, "signatures")
    assert html.index('<section id="signatures">') < html.index('<section id="verdict">')  # read first
    rows = _rows(section, "signature-table")
    first_sha = rows[0][3]
    assert first_sha != current and rows[1][3] == rows[2][3] == current
    assert [[r[0], r[1], r[4]] for r in rows] == [
        [
            "Ada Lovelace",
            f"reviewed {Meaning.REVIEWED.statement}",
            "no longer covers these results: the results changed after signing",
        ],
        ["Ada Lovelace", f"reviewed {Meaning.REVIEWED.statement}", "covers these results"],
        ["Grace Hopper", f"approved {Meaning.APPROVED.statement}", "covers these results"],
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r[2]) for r in rows)  # UTC, to the second
    assert f'<span class="mono">{current}</span>' in section  # the run.json the report is drawn from


def test_the_report_lists_every_trail_entry_with_the_results_each_concerns(signed):
    results = signed / "results"
    html = write_report(results).read_text()
    trail = _section(html, "audit-trail")
    rows = _rows(trail, "trail-table")
    assert [r[:4:2] + [r[3]] for r in rows] == [
        ["1", "run", rows[0][3]],
        ["2", "change", "Ada Lovelace"],
        ["3", "signature", "Ada Lovelace"],
        ["4", "change", "Ada Lovelace"],
        ["5", "signature", "Ada Lovelace"],
        ["6", "signature", "Grace Hopper"],
    ]
    assert rows[1][4] == "excluded calibrator from the flumatinib curve in 003_CAL1.mzML: spoiled in preparation"
    short = results_sha256(results)[:12]
    assert [r[5] for r in rows[3:]] == [f"{short} these results"] * 3
    assert "trail-broken" not in trail and "trail-mismatch" not in trail
    assert "Entries appended after this report was drawn" in trail
    manual = [e for e in _section(html, "provenance").split("<h3>") if e.startswith("Calibrator exclusions")][0]
    assert "excluded by Ada Lovelace: spoiled in preparation" in manual and "analyst (overrides.csv)" in manual


def test_a_report_drawn_by_run_says_the_entry_of_its_results_comes_after_it(processed_seed7):
    results = processed_seed7 / "results"
    trail = _section((results / REPORT_HTML).read_text(), "audit-trail")
    assert 'id="no-trail"' in trail  # drawn before the first entry was written
    assert (
        f"This report was drawn while these results (SHA-256 {results_sha256(results)[:12]}...) were being written: "
        "the entry recording them is appended to audit-trail.jsonl just after, so it is not listed here."
    ) in trail
    assert [e.event for e in read_trail(results).entries] == [TrailEvent.RUN]


def test_a_broken_trail_is_shown_in_red_and_its_signatures_are_not_trusted(signed):
    results = signed / "results"
    lines = (results / "audit-trail.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("spoiled in preparation", "as agreed")
    (results / "audit-trail.jsonl").write_text("".join(lines))
    warnings: list[str] = []
    html = render_report(results, warnings=warnings)
    assert "these signatures cannot be trusted" in _section(html, "signatures")
    broken = _section(html, "audit-trail")
    assert "The audit trail's chain is broken</b>" in broken
    assert "entry 2 does not match its SHA-256 (edited after it was written)" in broken
    assert warnings == [
        "the audit trail's chain is broken: audit-trail.jsonl line 2: entry 2 does not match its SHA-256 "
        "(edited after it was written)"
    ]


def test_entries_cut_from_the_end_of_the_trail_are_named_by_the_report(signed):
    """The chain cannot see its last entries removed; the report can: the last entry that wrote
    results no longer names the results in place."""
    results = signed / "results"
    lines = (results / "audit-trail.jsonl").read_text().splitlines(keepends=True)
    (results / "audit-trail.jsonl").write_text("".join(lines[:3]))  # the second change and its signatures gone
    assert read_trail(results).intact
    warnings: list[str] = []
    html = render_report(results, warnings=warnings)
    assert "trail-mismatch" in _section(html, "audit-trail") and len(warnings) == 1
    assert "entries were removed from the end of audit-trail.jsonl" in warnings[0]
    assert "covers these results</td>" not in _section(html, "signatures")  # the remaining one is stale


def test_lcmsquant_report_records_the_report_it_drew_in_the_trail(signed):
    results = signed / "results"
    before = read_trail(results).entries
    done = CliRunner().invoke(app, ["report", str(signed)])
    assert done.exit_code == 0, done.output
    trail = read_trail(results)
    assert trail.intact and trail.entries[:-1] == before
    entry = trail.entries[-1]
    assert (entry.event, entry.by, entry.summary) == (TrailEvent.REPORT, account(), "report.html drawn")
    assert entry.results_sha256 == results_sha256(results)
    assert entry.details["files"] == {"report.html": sha256(results / REPORT_HTML)}
    assert entry.details["command"] == ["lcmsquant", *entry.details["command"][1:]]
    drawn = _rows(_section((results / REPORT_HTML).read_text(), "audit-trail"), "trail-table")
    assert len(drawn) == len(before)  # the report lists the entries before its own


def test_lcmsquant_report_is_refused_while_a_review_holds_the_results(signed):
    with open_review(signed):
        before = (signed / "results" / "audit-trail.jsonl").read_bytes()
        done = CliRunner().invoke(app, ["report", str(signed)])
        assert done.exit_code == 2 and "another lcmsquant process is writing into it" in " ".join(done.output.split())
        assert (signed / "results" / "audit-trail.jsonl").read_bytes() == before
