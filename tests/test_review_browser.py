"""`lcmsquant review` in a real browser (headless Chromium driven by Playwright): a chemist's
session on a simulated batch, from the grid to the signatures, then what it left on disk."""

from __future__ import annotations

import csv
import math
import shutil
import urllib.error
import urllib.request

import pytest

from lcmsquant.audit_trail import read_trail
from lcmsquant.pipeline import run_batch
from lcmsquant.results import output_set
from lcmsquant.review import open_review
from lcmsquant.review_app import new_token, running
from lcmsquant.simulate import simulate_batch

ANALYST, APPROVER = "A. Chemist", "B. Approver"
CAL4 = "6|flumatinib quantifier"  # an included calibrator: its area moves the curve
CAL3_M1 = "5|M1 quantifier"


@pytest.fixture(scope="module")
def review(tmp_path_factory):
    """A simulated batch under review, served in a thread: (folder, address with the token)."""
    folder = tmp_path_factory.mktemp("review-browser") / "batch"
    simulate_batch(folder, seed=7)
    with open_review(folder, jobs=1, analyst=ANALYST) as session, running(session, new_token(), ANALYST) as url:
        yield folder, url


@pytest.fixture(scope="module")
def browser(chromium):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=shutil.which(chromium) or chromium, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1500, "height": 950})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    page.wait_for_selector("#grid-body tr[data-id]")
    page.wait_for_selector("#chart .main-svg")
    page.errors = errors  # type: ignore[attr-defined]
    return page


def _area(page, row_id):
    return page.inner_text(f'#grid-body tr[data-id="{row_id}"] td.area')


def _wait_area_not(page, row_id, text, timeout=10_000):
    page.wait_for_function(
        '([id, text]) => { const td = document.querySelector(`#grid-body tr[data-id="${id}"] td.area`);'
        " return td && td.textContent !== text; }",
        arg=[row_id, text],
        timeout=timeout,
    )
    return _area(page, row_id)


def _wait_chart(page, injection, transition):
    page.wait_for_function(
        "([inj, t]) => { const c = window.__review.chrom; return c && c.injection === inj && c.transition === t"
        " && window.__review.boundaryShapes; }",
        arg=[injection, transition],
    )


def _settled(page):
    """Wait until the chromatogram asked for last has been drawn."""
    page.wait_for_function("() => !window.__review.chromPending && !window.__review.busy")


def _boundary_pixel(page, which):
    """Where the start or end boundary of the selected transition is drawn, in page pixels, and
    how many pixels a minute is on its axis (from plotly's own axis: l2p and the plot offset)."""
    return page.evaluate(
        """(which) => {
          const gd = document.getElementById('chart');
          const b = window.__review.boundaryShapes;
          const shape = gd._fullLayout.shapes[b[which]];
          const suffix = (ref) => ref.split(' ')[0].slice(1);
          const xa = gd._fullLayout['xaxis' + suffix(shape.xref)];
          const ya = gd._fullLayout['yaxis' + suffix(shape.yref)];
          const box = gd.getBoundingClientRect();
          return {x: box.left + xa._offset + xa.l2p(shape.x0), y: box.top + ya._offset + ya._length * 0.6,
                  per_min: xa._length / (xa.range[1] - xa.range[0]), at: shape.x0};
        }""",
        which,
    )


def _drag(page, which, minutes):
    """Drag a boundary with the mouse by about `minutes` along the time axis."""
    start = _boundary_pixel(page, which)
    dx = minutes * start["per_min"]
    page.mouse.move(start["x"], start["y"])
    page.mouse.down()
    for step in range(1, 9):
        page.mouse.move(start["x"] + dx * step / 8, start["y"])
    page.mouse.up()
    return start["at"]


def _give_reason(page, pick=None, text=None, analyst=None):
    page.wait_for_selector("#reason-dialog[open]")
    if pick is not None:
        page.select_option("#reason-pick", pick)
    if text is not None:
        page.fill("#reason-text", text)
    if analyst is not None:
        page.fill("#reason-analyst", analyst)
    page.click("#reason-ok")
    page.wait_for_selector("#reason-dialog:not([open])", state="attached")


def _sign(page, name, meaning):
    page.click('#tabs button[data-tab="signoff"]')
    page.click("#sign")
    page.wait_for_selector("#sign-dialog[open]")
    page.fill("#sign-name", name)
    page.select_option("#sign-meaning", meaning)
    assert page.input_value("#sign-meaning") == meaning
    assert page.inner_text("#sign-statement")  # the meaning's statement is shown before signing
    assert page.is_disabled("#sign-ok")  # ... and nothing is signed before it is confirmed
    page.check("#sign-confirm")
    page.click("#sign-ok")
    page.wait_for_function(
        "([name, meaning]) => window.__review.state.signatures.some(s => s.name === name && s.meaning === meaning)",
        arg=[name, meaning],
    )


def test_a_review_from_the_grid_to_the_signatures(review, browser):
    folder, url = review
    page = _open(browser, url)

    # the grid: flagged rows only, then one calibrator's quantifier picked by filters and keys
    shown = "() => window.__review.filtered.length"  # the grid draws only the rows in view
    total = page.evaluate(shown)
    assert total == 49 * 8 and f"{total} of {total} rows" in page.inner_text("#row-count")
    page.check("#f-flagged")
    flagged = page.evaluate(shown)
    assert 0 < flagged < total and f"{flagged} of {total} rows" in page.inner_text("#row-count")
    assert page.evaluate("() => window.__review.filtered.every(r => r.flags.some(f => f !== 'MANUAL'))")
    badge = page.locator("#grid-body .badge").first
    assert badge.get_attribute("title") not in (None, "", badge.inner_text())  # the flag's meaning
    page.uncheck("#f-flagged")
    page.select_option("#f-type", "calibrator")
    page.select_option("#f-analyte", "flumatinib")
    page.select_option("#f-role", "quantifier")
    assert page.locator("#grid-body tr[data-id]").count() == 8
    page.click('#grid-body tr[data-id="5|flumatinib quantifier"]')
    page.keyboard.press("ArrowDown")
    assert page.get_attribute("#grid-body tr.sel", "data-id") == CAL4
    page.keyboard.press("j")
    page.keyboard.press("k")
    assert page.get_attribute("#grid-body tr.sel", "data-id") == CAL4
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "chart"
    _wait_chart(page, 6, "flumatinib quantifier")

    # drag the end boundary towards the apex with the mouse, give a reason: the area shrinks
    area_before = _area(page, CAL4)
    curve_before = page.inner_text("#curve-params")
    deviation_before = page.inner_text("#cal-table tbody tr:nth-child(4)")
    # into the peak's tail (apex ~2.60, automatic end ~2.94): 0.06 min stayed in the flat baseline,
    # where the area went up or down with the noise at the pixel the drag ended on
    end_before = _drag(page, "end", -0.2)
    moved_to = float(page.input_value("#end"))
    assert moved_to < end_before - 0.03  # the numeric input follows the line
    assert not page.is_disabled("#apply")
    page.click("#apply")
    _give_reason(page, pick="Baseline drawn incorrectly", text="tail in the noise", analyst=ANALYST)
    area_after = _wait_area_not(page, CAL4, area_before)
    assert float(area_after.replace(",", "")) < float(area_before.replace(",", ""))
    assert "MANUAL" in page.inner_text(f'#grid-body tr[data-id="{CAL4}"]')
    page.wait_for_function(f"() => document.querySelector('#curve-params').textContent !== {curve_before!r}")
    assert page.inner_text("#cal-table tbody tr:nth-child(4)") != deviation_before
    page.wait_for_function("() => window.__review.chrom.panels[0].peak.manual === true")
    # integrated to the data point nearest the line (points are ~0.35 s = 0.006 min apart)
    assert abs(page.evaluate("() => window.__review.chrom.panels[0].peak.end_min") - moved_to) < 0.01
    assert "Undo: integrated flumatinib" in page.inner_text("#undo-what")

    # undo: the area as it was; redo: as changed
    page.click("#undo")
    assert _wait_area_not(page, CAL4, area_after) == area_before
    assert page.inner_text("#curve-params") == curve_before
    page.click("#redo")
    assert _wait_area_not(page, CAL4, area_before) == area_after
    _settled(page)

    # a window typed in, applied to all injections of the flumatinib quantifier: off the peaks,
    # it leaves no curve, and the verdict says so at once; undo brings it back
    assert "flumatinib ✓" in page.inner_text("#verdict-chips")
    page.fill("#start", "3")
    page.fill("#end", "2")
    page.press("#end", "Tab")
    assert page.is_disabled("#apply-all") and "start must be" in page.inner_text("#message.error")
    page.fill("#start", "2.35")
    page.fill("#end", "2.55")
    page.press("#end", "Tab")
    assert not page.is_disabled("#apply-all")
    page.select_option("#apply-scope", "all")
    page.click("#apply-all")
    page.wait_for_selector("#reason-dialog[open]")
    assert "all 49 injections" in page.inner_text("#reason-summary")
    assert page.input_value("#reason-pick") == "Same window for all injections (SOP)"
    _give_reason(page)
    page.wait_for_function("() => document.querySelector('#verdict-chips').textContent.includes('flumatinib ✗')")
    page.click('#tabs button[data-tab="verdicts"]')
    assert "REJECTED" in page.inner_text("#verdict-table")
    assert page.locator("#grid-body tr.manual").count() == 8  # every calibrator of the filter
    page.click("#undo")
    page.wait_for_function("() => document.querySelector('#verdict-chips').textContent.includes('flumatinib ✓')")
    assert _area(page, CAL4) == area_after  # the change before it stays

    # a QC row leads to its quantifier
    page.click('#tabs button[data-tab="qcs"]')
    page.click('#qc-table tr[data-inj="13"][data-analyte="M1"]')
    assert page.get_attribute("#grid-body tr.sel", "data-id") == "13|M1 quantifier"
    page.select_option("#f-analyte", "flumatinib")
    page.select_option("#f-type", "calibrator")
    page.select_option("#f-role", "quantifier")
    page.click(f'#grid-body tr[data-id="{CAL4}"]')
    _settled(page)

    # a calibrator out of its curve and back in
    page.click('#tabs button[data-tab="curve"]')
    assert "8 of 8 calibrators" in page.inner_text("#curve-params")
    assert page.is_hidden("#include")
    page.click("#exclude")
    page.wait_for_selector("#reason-dialog[open]")
    assert page.input_value("#reason-pick") == "Calibrator excluded: assignable cause"
    _give_reason(page, text="pipetting error")
    page.wait_for_function("() => document.querySelector('#curve-params').textContent.includes('7 of 8 calibrators')")
    assert "EXCLUDED by analyst" in page.inner_text("#cal-table")
    page.click("#include")
    _give_reason(page, pick="Calibrator excluded: assignable cause", text="included again: no error found")
    page.wait_for_function("() => document.querySelector('#curve-params').textContent.includes('8 of 8 calibrators')")

    # what the server refuses is shown, not swallowed: an approval before any review
    page.click('#tabs button[data-tab="signoff"]')
    page.click("#sign")
    page.fill("#sign-name", APPROVER)
    page.select_option("#sign-meaning", "approved")
    page.check("#sign-confirm")
    page.click("#sign-ok")
    page.wait_for_selector("#message.error")
    assert page.inner_text("#sign-error") and page.is_visible("#sign-dialog")
    page.click("#sign-cancel")
    assert page.locator("#signature-table td.covers").count() == 0

    # sign reviewed and approved (two people), then a change leaves both no longer covering
    _sign(page, ANALYST, "reviewed")
    _sign(page, APPROVER, "approved")
    assert page.locator("#signature-table td.covers").count() == 2
    second = _open(browser, url)  # a second tab, to follow the first one's change
    second.select_option("#f-analyte", "M1")
    second.select_option("#f-type", "calibrator")
    page.select_option("#f-analyte", "M1")
    page.click(f'#grid-body tr[data-id="{CAL3_M1}"]')
    _wait_chart(page, 5, "M1 quantifier")
    m1_before = _area(page, CAL3_M1)
    start = page.evaluate("() => window.__review.window.start")
    page.fill("#start", f"{start + 0.04:.3f}")
    page.press("#start", "Tab")
    page.click("#apply")
    _give_reason(page, pick="Peak split at noise", analyst=ANALYST)
    m1_after = _wait_area_not(page, CAL3_M1, m1_before)
    page.wait_for_selector("#signature-table td.stale")
    assert page.locator("#signature-table td.stale").count() == 2
    assert "no longer covers the current results" in page.inner_text("#signature-table")
    assert _wait_area_not(second, CAL3_M1, m1_before, timeout=8_000) == m1_after
    second.click('#tabs button[data-tab="signoff"]')
    assert second.locator("#signature-table td.stale").count() == 2
    page.click('#tabs button[data-tab="signoff"]')
    assert page.is_hidden("#trail-banner")
    assert "change" in page.inner_text("#trail-table")
    assert page.errors == [] and second.errors == []  # type: ignore[attr-defined]

    # on disk: the overrides as a person would write them, audit.csv, the trail, and results a
    # fresh `lcmsquant run` reproduces byte for byte
    with open(folder / "overrides.csv", newline="") as handle:
        overrides = list(csv.DictReader(handle))
    assert [(o["file"], o["target"], o["action"]) for o in overrides] == [
        ("006_CAL4.mzML", "flumatinib", "integrate"),
        ("005_CAL3.mzML", "M1", "integrate"),
    ]
    assert overrides[0]["reason"] == "Baseline drawn incorrectly: tail in the noise"
    assert overrides[1]["reason"] == "Peak split at noise"
    assert all(o["analyst"] == ANALYST and o["changed_at_utc"].endswith("Z") for o in overrides)
    assert abs(float(overrides[0]["end_min"]) - moved_to) < 0.001  # where the line was let go
    with open(folder / "results" / "audit.csv", newline="") as handle:
        audit = list(csv.DictReader(handle))
    assert {(a["file"], a["transition"]) for a in audit} == {
        ("006_CAL4.mzML", "flumatinib quantifier"),
        ("005_CAL3.mzML", "M1 quantifier"),
    }
    assert all(a["analyst"] == ANALYST and a["reason"] for a in audit)
    trail = read_trail(folder / "results")
    assert trail.intact
    events = [str(e.event) for e in trail.entries]
    assert events.count("signature") == 2 and events[-1] == "change"
    batch, result = run_batch(folder)
    out = folder / "results"
    assert output_set(batch, result, out)[out / "run.json"] == (out / "run.json").read_bytes()
    second.close()
    page.close()


def _headings(page):
    """The chromatogram panels' headings (plotly annotations), by transition."""
    return page.evaluate(
        """() => Object.fromEntries(document.getElementById('chart').layout.annotations
             .filter(a => a.text.startsWith('<b>')).map(a => [a.text.split('</b>')[0].slice(3), a.text]))"""
    )


def test_what_a_first_time_user_missed(review, browser):
    """Where the page opens, the flag filter's counts, the Curve tab following the row, the ion
    ratio's numbers, neighbours kept on the panel, S/N that fits, a window beyond the trace, the
    boundaries actually integrated, and the redo shortcuts."""
    _, url = review
    page = _open(browser, url)
    _settled(page)

    # opens on the first flagged row of a measured sample, not on a blank's noise; the Curve tab
    # shows its analyte
    opened = page.evaluate("() => window.__review.selected")
    assert page.evaluate(
        "(id) => { const rows = window.__review.filtered; const i = rows.findIndex(r => r.id === id);"
        " const measured = r => !['blank', 'zero'].includes(r.sample_type);"
        " return i > 0 && measured(rows[i]) && isFlagged(rows[i])"
        " && rows.slice(0, i).every(r => !(isFlagged(r) && measured(r))); }",
        opened,
    )
    opened_analyte = page.evaluate("(id) => window.__review.filtered.find(r => r.id === id).analyte", opened)
    assert page.evaluate("() => window.__review.curveKey") == f"{opened_analyte}|plasma"
    page.click('#grid-body tr[data-id="11|M3 quantifier"]')  # a flagged blank, reviewed next
    assert page.evaluate("() => window.__review.curveKey") == "M3|plasma"

    # a curve picked by hand stays while rows of the same analyte are reviewed, until another analyte
    page.click('#curve-choices button[data-key="flumatinib|plasma"]')
    page.click('#grid-body tr[data-id="11|M3 qualifier"]')
    assert page.evaluate("() => window.__review.curveKey") == "flumatinib|plasma"
    page.click('#grid-body tr[data-id="11|M1 quantifier"]')
    assert page.evaluate("() => window.__review.curveKey") == "M1|plasma"
    assert "M1 · plasma" in page.inner_text("#curve-choices button.active")
    # ... its log axes labelled at the decades only ("0.01, 0.1, 1, 10", not "2, 10, 5, 2, 1")
    page.wait_for_selector("#curve-plot g.x2tick text")
    ticks = page.evaluate(
        "() => [...document.querySelectorAll('#curve-plot g.ytick text, #curve-plot g.x2tick text')]"
        ".map(t => t.textContent)"
    )
    assert len(ticks) >= 4 and all(math.log10(float(t)).is_integer() for t in ticks), ticks

    # the flag filter: only the flags the rows carry, with their counts under the other filters
    options = page.evaluate("() => [...document.querySelectorAll('#f-flag option')].map(o => o.textContent)")
    assert options[0] == "Any flag" and "ION_RATIO (6)" in options and len(options) < 21
    assert all(o.endswith(")") and not o.endswith("(0)") for o in options[1:])
    page.select_option("#f-analyte", "M1")
    assert "ION_RATIO (2)" in page.evaluate("() => [...document.querySelectorAll('#f-flag option')].map(o => o.text)")
    page.select_option("#f-analyte", "")

    # S/N of millions fits its cell
    shown = page.evaluate("() => window.__review.state.rows.map(r => fmtSn(r.sn))")
    assert ">9999" in shown and max(len(c) for c in shown) <= 5

    # an ION_RATIO row: the ratio, its reference and tolerance in the qualifier's and the quantifier's heading
    page.select_option("#f-flag", "ION_RATIO")
    page.click('#grid-body tr[data-id="23|M3 quantifier"]')
    _wait_chart(page, 23, "M3 quantifier")
    _settled(page)
    ratio = page.evaluate("() => window.__review.chrom.ion_ratio")
    headings = _headings(page)
    for transition in ("M3 quantifier", "M3 qualifier"):
        assert f"ion ratio {ratio['ratio']:.3f}" in headings[transition]
        assert f"reference {ratio['reference']:.3f} ± {ratio['tolerance_pct']:g} %" in headings[transition]
    assert "ion ratio" not in headings["M3-d4 internal standard"]
    # ... and its tall neighbours are scaled to its apex, as said, rather than flattening it
    assert "scaled to this trace's apex" in page.evaluate(
        "() => document.getElementById('chart').layout.annotations.map(a => a.text).join(' ')"
    )
    assert page.evaluate(
        """() => { const gd = document.getElementById('chart'); const top = gd.layout.yaxis.range[1];
             const [lo, hi] = gd.layout.xaxis.range;
             return gd.data.filter(t => t.yaxis === 'y' && t.name && t.name.startsWith('#'))
               .every(t => t.y.every((y, k) => t.x[k] < lo || t.x[k] > hi || y <= top)); }"""
    )
    page.select_option("#f-flag", "")

    # a window beyond the trace is said and cannot be applied; one inside it can
    page.select_option("#f-type", "calibrator")
    page.select_option("#f-analyte", "M3")
    page.select_option("#f-role", "quantifier")
    page.click('#grid-body tr[data-id="7|M3 quantifier"]')
    _wait_chart(page, 7, "M3 quantifier")
    _settled(page)
    page.fill("#start", "0")
    page.fill("#end", "99")
    page.press("#end", "Tab")
    assert "The chromatogram covers" in page.inner_text("#window-note")
    assert page.is_disabled("#apply") and page.is_disabled("#apply-all")
    page.click("#reset-window")
    assert page.is_hidden("#window-note") and not page.is_disabled("#apply")

    # after Apply, the boundaries integrated (on the data points) are said
    start = page.evaluate("() => window.__review.window.start")
    page.fill("#start", f"{start + 0.0123:.4f}")
    page.press("#start", "Tab")
    page.click("#apply")
    _give_reason(page, pick="Baseline drawn incorrectly", analyst=ANALYST)
    page.wait_for_selector("#message.info")
    row = page.evaluate("() => window.__review.byId.get('7|M3 quantifier')")
    assert row["manual"]
    assert f"integrated {row['start_min']:.4f}–{row['end_min']:.4f} min" in page.inner_text("#message")

    # Ctrl-Z undoes, Ctrl-Shift-Z and Ctrl-Y redo; not while typing in a field
    manual = "(m) => window.__review.byId.get('7|M3 quantifier').manual === m && !window.__review.busy"
    page.focus("#grid-scroll")
    for keys, now in (("Control+z", False), ("Control+Shift+Z", True), ("Control+z", False), ("Control+y", True)):
        page.keyboard.press(keys)
        page.wait_for_function(manual, arg=now)
    page.keyboard.press("Control+z")
    page.wait_for_function(manual, arg=False)
    page.focus("#start")
    page.keyboard.press("Control+y")
    page.wait_for_timeout(300)
    assert page.evaluate(manual, False)
    assert page.errors == []  # type: ignore[attr-defined]
    page.close()


def test_a_request_without_the_token_is_refused(review, browser):
    _, url = review
    bare = url.split("?")[0]
    for address in (bare, bare + "api/state", bare + "api/state?token=wrong"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(address, timeout=10)
        assert refused.value.code == 403
    page = browser.new_page()
    response = page.goto(bare)
    assert response is not None and response.status == 403
    assert "forbidden" in page.inner_text("body")
    page.close()


def test_the_report_and_a_broken_trail(review, browser):
    folder, url = review
    page = _open(browser, url)
    page.click('#tabs button[data-tab="signoff"]')
    assert page.is_hidden("#trail-banner")
    page.click("#report2")
    page.wait_for_selector("#message.info", timeout=60_000)
    assert "report.html" in page.inner_text("#message")
    assert (folder / "results" / "report.html").is_file()
    assert "report" in page.inner_text("#trail-table tbody tr:first-child")

    # someone edits the trail behind the review's back: the page says so at its next load
    trail = folder / "results" / "audit-trail.jsonl"
    lines = trail.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = lines[1].replace("A. Chemist", "Someone Else", 1)
    trail.write_text("".join(lines), encoding="utf-8")
    page.reload()
    page.wait_for_selector("#grid-body tr[data-id]")
    page.click('#tabs button[data-tab="signoff"]')
    assert page.is_visible("#trail-banner")
    assert "not intact" in page.inner_text("#trail-banner")
    page.close()


def test_a_change_refused_for_an_outside_edit_stays_said_after_the_page_reloads(tmp_path, browser):
    """overrides.csv edited in a text editor while the reason dialog is open: the change is
    refused and the page reloads; the refusal ("make the change again") must not be replaced by
    the other-tab note a moment later, or the chemist believes the change was made."""
    folder = tmp_path / "batch"
    simulate_batch(folder, seed=7)
    with open_review(folder, jobs=1, analyst=ANALYST) as session, running(session, new_token(), ANALYST) as url:
        page = _open(browser, url)
        page.select_option("#f-type", "calibrator")
        page.select_option("#f-analyte", "flumatinib")
        page.select_option("#f-role", "quantifier")
        page.click(f'#grid-body tr[data-id="{CAL4}"]')
        _wait_chart(page, 6, "flumatinib quantifier")
        version = page.evaluate("() => window.__review.state.version")
        page.click("#no-peak")
        page.wait_for_selector("#reason-dialog[open]")
        (folder / "overrides.csv").write_text(
            "file,target,action,start_min,end_min,reason,analyst\n005_CAL3.mzML,flumatinib,exclude,,,by hand,Bob\n"
        )
        _give_reason(page, pick="No peak present", analyst=ANALYST)
        page.wait_for_selector("#message.error")
        page.wait_for_function(f"() => window.__review.state.version !== {version}")  # reloaded from the file
        page.wait_for_timeout(2500)  # a poll later
        assert "make the change again" in page.inner_text("#message.error")
        assert "Not applied, nothing was changed" in page.inner_text("#message.error")
        assert "EXCLUDED by analyst" in page.inner_text("#cal-table")  # the page shows the file as it is
        page.close()
