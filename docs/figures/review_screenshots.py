"""Screenshots of `lcmsquant review` for the documentation.

    PYTHONPATH=src python docs/figures/review_screenshots.py [--out DIR]

Run from the repository root. Simulates a batch (seed 7, as the review's tests), opens a review
of it, makes one manual integration (CAL4's flumatinib quantifier), signs "reviewed", changes
one more peak (so that signature no longer covers the results), signs "reviewed" and "approved"
again, and takes three screenshots in headless Chromium (Playwright, the system's Chromium):

  review-workspace.png  the grid (calibrators) beside the chromatograms of the manual integration
  review-curve.png      the Curve tab: calibrators, fit and residuals with their limits
  review-signoff.png    the Signatures & audit trail tab

Written to docs/figures/ (or --out); rerun after changing the page (review_static/).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from lcmsquant.browser import find_browser
from lcmsquant.review import Correction, open_review
from lcmsquant.review_app import new_token, running
from lcmsquant.simulate import simulate_batch

HERE = Path(__file__).resolve().parent
VIEWPORT = {"width": 1440, "height": 900}


def _between(page, top: str, bottom: str) -> dict:
    """The page area from the top of one element to the bottom of another (full width)."""
    return page.evaluate(
        """([top, bottom]) => {
          const a = document.querySelector(top).getBoundingClientRect();
          const b = document.querySelector(bottom).getBoundingClientRect();
          return {x: 0, y: a.top + window.scrollY, width: document.documentElement.clientWidth,
                  height: b.bottom - a.top + 6};
        }""",
        [top, bottom],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="review-shots-") as tmp:
        folder = Path(tmp) / "batch"
        simulate_batch(folder, seed=7)
        with open_review(folder, jobs=1, analyst="A. Chemist") as session:
            session.apply(
                [Correction("006_CAL4.mzML", "flumatinib", "integrate", 2.46, 2.80)],
                "Baseline drawn incorrectly: tail in the noise",
                "A. Chemist",
            )
            session.sign("A. Chemist", "reviewed")
            session.apply(
                [Correction("005_CAL3.mzML", "M1", "integrate", 2.36, 2.70)], "Peak split at noise", "A. Chemist"
            )
            session.sign("A. Chemist", "reviewed")
            session.sign("B. Approver", "approved")
            with running(session, new_token(), "A. Chemist") as url, sync_playwright() as p:
                browser = p.chromium.launch(executable_path=shutil.which(find_browser()), args=["--no-sandbox"])
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(url)
                page.wait_for_selector("#grid-body tr[data-id]")
                page.select_option("#f-type", "calibrator")
                page.click('#grid-body tr[data-id="6|flumatinib quantifier"]')
                page.wait_for_function(
                    "() => { const S = window.__review; return S.chrom && S.chrom.injection === 6 && !S.chromPending; }"
                )
                page.wait_for_timeout(300)
                page.screenshot(
                    path=args.out / "review-workspace.png", clip=_between(page, "#top", "#workspace"), full_page=True
                )
                page.click('#tabs button[data-tab="curve"]')
                page.wait_for_timeout(300)
                page.screenshot(
                    path=args.out / "review-curve.png", clip=_between(page, "#tabs", "#tab-curve"), full_page=True
                )
                page.click('#tabs button[data-tab="signoff"]')
                page.wait_for_timeout(200)
                page.screenshot(
                    path=args.out / "review-signoff.png", clip=_between(page, "#tabs", "#tab-signoff"), full_page=True
                )
                browser.close()
    for name in ("review-workspace.png", "review-curve.png", "review-signoff.png"):
        path = args.out / name
        print(f"{path}: {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
