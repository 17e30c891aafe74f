"""Headless Chromium at the edge: print the report to PDF (what was reviewed is what is signed),
take a screenshot or read the rendered page back.

Every launch gets an empty profile and no network services, so it behaves the same on a
laptop, in CI and offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from lcmsquant.files import atomic_write

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)
TIMEOUT_S = 300


class BrowserError(RuntimeError):
    """Chromium is missing or failed; the message says what to do."""


def find_browser() -> str:
    """The Chromium executable: $LCMSQUANT_CHROMIUM, else the first of BROWSERS on the PATH."""
    chosen = os.environ.get("LCMSQUANT_CHROMIUM")
    if chosen:
        if shutil.which(chosen) is None:
            raise BrowserError(f"LCMSQUANT_CHROMIUM={chosen} is not an executable")
        return chosen
    for name in BROWSERS:
        if shutil.which(name):
            return name
    raise BrowserError(
        "no Chromium found (looked for " + ", ".join(BROWSERS) + " on the PATH): install it, e.g. "
        "`apt-get install chromium` on Debian, or set LCMSQUANT_CHROMIUM to its path"
    )


def _run(page: Path | str, *args: str) -> subprocess.CompletedProcess:
    """Open `page` (a local HTML file, or a file:// URL with a #fragment) in a fresh headless Chromium."""
    url = page if isinstance(page, str) else Path(page).resolve().as_uri()
    browser = find_browser()
    with tempfile.TemporaryDirectory(prefix="lcmsquant-chromium-") as profile:
        command = [browser, *FLAGS, f"--user-data-dir={profile}", *args, url]
        try:
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"{browser} did not finish {url} within {TIMEOUT_S} s") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise BrowserError(f"{browser} failed on {url} (exit {done.returncode}):\n{tail}")
    return done


def print_pdf(html: Path, pdf: Path) -> Path:
    """Print the HTML report to PDF, every collapsed section opened (the page's #print mode)."""
    html, pdf = Path(html), Path(pdf)
    with tempfile.TemporaryDirectory(prefix="lcmsquant-pdf-") as tmp:
        target = Path(tmp) / "print.pdf"
        _run(
            html.resolve().as_uri() + "#print",
            f"--print-to-pdf={target}",
            "--no-pdf-header-footer",
            "--virtual-time-budget=10000",
        )
        if not target.is_file() or target.stat().st_size == 0:
            raise BrowserError(f"Chromium wrote no PDF for {html}")
        return atomic_write(pdf, target.read_bytes())


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 900) -> Path:
    """A PNG of the first screen of the page, as a reviewer's browser window shows it."""
    html, png = Path(html), Path(png)
    with tempfile.TemporaryDirectory(prefix="lcmsquant-shot-") as tmp:
        target = Path(tmp) / "shot.png"
        _run(html, f"--screenshot={target}", f"--window-size={width},{height}", "--virtual-time-budget=5000")
        if not target.is_file():
            raise BrowserError(f"Chromium wrote no screenshot for {html}")
        return atomic_write(png, target.read_bytes())


def dump_dom(html: Path) -> str:
    """The page's DOM after its scripts ran, as HTML text."""
    return _run(Path(html), "--dump-dom", "--virtual-time-budget=5000").stdout
