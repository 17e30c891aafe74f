"""Reviewing a run (lcmsquant.review): every change lands in overrides.csv as a hand-written row
would, the results are those a fresh `lcmsquant run` gives, undo and redo restore them, the
audit trail records each step, and the results folder is held for the whole review."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lcmsquant import measure, review
from lcmsquant.audit_trail import TRAIL, SignatureError, read_trail, signatures
from lcmsquant.overrides import read_overrides
from lcmsquant.pipeline import run_batch
from lcmsquant.results import output_set
from lcmsquant.review import Correction, ReviewConflict, ReviewError, open_review
from lcmsquant.runs import process_batch
from lcmsquant.simulate import simulate_batch
from lcmsquant.vocabulary import Flag, Meaning, TrailEvent

REASON = "Baseline drawn incorrectly"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("review") / "batch"
    simulate_batch(folder, seed=7)
    return folder


@pytest.fixture
def batch(simulated, tmp_path) -> Path:
    """A fresh copy of the simulated batch, without results."""
    return Path(shutil.copytree(simulated, tmp_path / "batch"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fresh_run_json(folder: Path) -> bytes:
    """run.json as `lcmsquant run` would write it now."""
    batch, result = run_batch(folder)
    out = folder / "results"
    return output_set(batch, result, out)[out / "run.json"]


def _peak(session, file: str, transition: str) -> pd.Series:
    peaks = session.result.peaks
    order = next(inj.order for inj in session.batch.injections if session.file_of(inj) == file)
    return peaks[(peaks["injection"] == order) & (peaks["transition"] == transition)].iloc[0]


def _unknown_file(session, n: int = 0) -> str:
    unknowns = [inj for inj in session.batch.injections if inj.sample_type == "unknown"]
    return session.file_of(unknowns[n])


def test_a_review_writes_results_when_there_are_none_and_records_it_as_a_run(batch):
    with open_review(batch, jobs=1, analyst="A. Chemist") as session:
        assert session.results_sha256 == _sha(batch / "results" / "run.json")
    trail = read_trail(batch / "results")
    assert [(e.event, e.by) for e in trail.entries] == [(TrailEvent.RUN, "A. Chemist")]
    assert trail.intact
    assert (batch / "results" / "run.json").read_bytes() == _fresh_run_json(batch)


def test_a_review_of_current_results_rewrites_nothing(batch):
    assert process_batch(batch, report=False).ok
    before = (batch / "results" / "run.json").stat().st_mtime_ns
    with open_review(batch, jobs=1):
        pass
    assert (batch / "results" / "run.json").stat().st_mtime_ns == before
    assert [e.event for e in read_trail(batch / "results").entries] == [TrailEvent.RUN]  # the run's, not the review's


def test_results_written_before_the_trail_existed_are_recorded_once_so_they_can_be_signed(batch):
    assert process_batch(batch, report=False).ok
    (batch / "results" / TRAIL).unlink()  # as an earlier lcmsquant left them
    with open_review(batch, jobs=1) as session:
        session.sign("A. Chemist", Meaning.REVIEWED)
    with open_review(batch, jobs=1):
        pass
    assert [e.event for e in read_trail(batch / "results").entries] == [TrailEvent.RUN, TrailEvent.SIGNATURE]


def test_results_the_trail_does_not_record_cannot_be_signed(batch):
    with open_review(batch, jobs=1) as session:
        (batch / "results" / "run.json").write_text((batch / "results" / "run.json").read_text() + " ")  # edited
        with pytest.raises(SignatureError, match="not written by a run or review the audit trail records"):
            session.sign("A. Chemist", Meaning.REVIEWED)


def test_moved_boundaries_become_an_overrides_row_and_the_results_of_a_fresh_run(batch, monkeypatch):
    with open_review(batch, jobs=1) as session:
        file = _unknown_file(session, 2)
        auto = _peak(session, file, "flumatinib quantifier")
        end = auto["rt_min"] + 0.25 * (auto["end_min"] - auto["rt_min"])  # the tail cut
        measured = []
        monkeypatch.setattr(
            review, "measure_injection", lambda *a: measured.append(a[0]) or measure.measure_injection(*a)
        )
        session.apply(
            [Correction(file, "flumatinib", "integrate", auto["start_min"], end)],
            REASON,
            "A. Chemist",
        )
        after = _peak(session, file, "flumatinib quantifier")
        shown = session.result.results
    assert measured == [batch / file]  # only the changed injection is read and integrated again
    assert after["manual"] and 0 < after["area"] < 0.95 * auto["area"]
    assert after["auto_area"] == pytest.approx(auto["area"])
    row = shown[(shown["file"] == file) & (shown["analyte"] == "flumatinib")].iloc[0]
    assert Flag.MANUAL in row["flags"].split(";")

    text = (batch / "overrides.csv").read_text()
    assert text.splitlines()[0] == "file,target,action,start_min,end_min,reason,analyst,changed_at_utc"
    assert text.splitlines()[1].startswith(
        f"{file},flumatinib,integrate,{auto['start_min']:.4f},{end:.4f},{REASON},A. Chemist,20"
    )
    worklist = {r["file"]: r["sample_type"] for _, r in pd.read_csv(batch / "worklist.csv", dtype=str).iterrows()}
    (override,) = read_overrides(batch / "overrides.csv", session.method, worklist)  # as a hand-written row
    assert (override.transition, override.analyst, override.reason) == ("flumatinib quantifier", "A. Chemist", REASON)

    audit = pd.read_csv(batch / "results" / "audit.csv")
    assert list(audit["file"]) == [file] and list(audit["analyst"]) == ["A. Chemist"]
    assert "changed_at_utc" in audit.columns
    entry = read_trail(batch / "results").entries[-1]
    assert (entry.event, entry.by, entry.details["reason"]) == (TrailEvent.CHANGE, "A. Chemist", REASON)
    assert entry.results_sha256 == _sha(batch / "results" / "run.json")
    assert (batch / "results" / "run.json").read_bytes() == _fresh_run_json(batch)


def test_undo_and_redo_give_back_the_files_and_results_they_had(batch):
    with open_review(batch, jobs=1) as session:
        original = session.results_sha256
        file = _unknown_file(session)
        session.apply([Correction(file, "M1", "no_peak")], "No peak present", "A. Chemist")
        changed, overrides = session.results_sha256, (batch / "overrides.csv").read_bytes()
        assert Flag.NO_PEAK in session.result.results.query("file == @file and analyte == 'M1'")["flags"].iloc[0]
        session.undo("A. Chemist")
        assert session.results_sha256 == original and not (batch / "overrides.csv").exists()
        session.redo("A. Chemist")
        assert session.results_sha256 == changed and (batch / "overrides.csv").read_bytes() == overrides
        session.undo("A. Chemist")
        session.apply([Correction(file, "M3", "no_peak")], "No peak present", "A. Chemist")  # a new change ends redo
        with pytest.raises(ReviewError, match="nothing to redo"):
            session.redo("A. Chemist")
    events = [e.event for e in read_trail(batch / "results").entries]
    assert events == [
        TrailEvent.RUN,
        TrailEvent.CHANGE,
        TrailEvent.UNDO,
        TrailEvent.REDO,
        TrailEvent.UNDO,
        TrailEvent.CHANGE,
    ]


def test_one_window_for_every_injection_of_an_analyte_is_one_change(batch):
    with open_review(batch, jobs=1) as session:
        rt = session.result.peaks.query("transition == 'M1 quantifier'")["rt_min"].median()
        files = [session.file_of(inj) for inj in session.batch.injections]
        session.apply(
            [Correction(f, "M1", "integrate", rt - 0.15, rt + 0.15) for f in files],
            "Same window for all injections (SOP)",
            "A. Chemist",
        )
        m1 = session.result.peaks.query("transition == 'M1 quantifier' and status == 'OK'")
        assert m1["manual"].all() and m1["start_min"].between(rt - 0.16, rt - 0.14).all()
        assert "in 49 injections" in session.undo_steps[-1].summary
        session.undo("A. Chemist")
        assert not session.result.peaks["manual"].any()
    assert len(read_trail(batch / "results").entries) == 3


def test_excluding_a_calibrator_takes_it_out_of_the_curve_and_including_it_puts_it_back(batch):
    with open_review(batch, jobs=1) as session:
        calibrator = next(inj for inj in session.batch.injections if inj.sample_type == "calibrator")
        file = session.file_of(calibrator)

        def used() -> int:
            cal = session.result.calibration
            return int(cal.loc[cal["analyte"] == "M3", "n_used"].iloc[0])

        before = used()
        session.apply([Correction(file, "M3", "exclude")], "Calibrator excluded: assignable cause", "A. Chemist")
        assert used() == before - 1
        session.apply([Correction(file, "M3", "include")], "Excluded by mistake", "A. Chemist")
        assert used() == before and not (batch / "overrides.csv").read_text().count("exclude")


@pytest.mark.parametrize(
    ("correction", "reason", "analyst", "expected"),
    [
        (Correction("nope.mzML", "M1", "no_peak"), REASON, "A. Chemist", "is not in the worklist"),
        (Correction("{file}", "M9", "no_peak"), REASON, "A. Chemist", "no analyte, internal standard or transition"),
        (Correction("{file}", "M1", "integrate", 2.5, 2.4), REASON, "A. Chemist", "needs a start before the end"),
        (Correction("{file}", "M1", "integrate", 20.0, 21.0), REASON, "A. Chemist", r"  - no data of M1 quantifier"),
        (Correction("{file}", "M1", "exclude"), REASON, "A. Chemist", "only a calibrator"),
        (Correction("{file}", "M1", "no_peak"), "  ", "A. Chemist", "needs a reason"),
        (Correction("{file}", "M1", "no_peak"), "a bell\x07", "A. Chemist", "one line of printable text"),
        (Correction("{file}", "M1", "no_peak"), REASON, "", "analyst's name is empty"),
    ],
)
def test_a_change_that_cannot_be_made_is_refused_and_changes_nothing(batch, correction, reason, analyst, expected):
    with open_review(batch, jobs=1) as session:
        correction = Correction(
            **{**vars(correction), "file": correction.file.replace("{file}", _unknown_file(session))}
        )
        before = {p.name: p.read_bytes() for p in (batch / "results").iterdir() if p.name != ".lcmsquant.lock"}
        with pytest.raises(ReviewError, match=expected):
            session.apply([correction], reason, analyst)
        assert not (batch / "overrides.csv").exists()
        after = {p.name: p.read_bytes() for p in (batch / "results").iterdir() if p.name != ".lcmsquant.lock"}
        assert after == before and session.version == 1 and not session.undo_steps


def test_a_run_into_the_folder_under_review_is_refused_with_a_message(batch):
    with open_review(batch, jobs=1):
        outcome = process_batch(batch, report=False)
    assert not outcome.ok and "another lcmsquant process is writing into it" in outcome.error
    assert f"lcmsquant review {batch}" in outcome.error  # the holder names the review
    assert "end it with Ctrl-C in the window where it runs" in outcome.error  # waiting would not end it
    assert process_batch(batch, report=False).ok  # once the review has ended


def test_overrides_edited_by_hand_during_a_review_are_taken_in_before_any_change(batch):
    with open_review(batch, jobs=1) as session:
        file = _unknown_file(session)
        (batch / "overrides.csv").write_text(
            f"file,target,action,start_min,end_min,reason,analyst\n{file},M3,no_peak,,,interference,JD\n"
        )
        with pytest.raises(ReviewConflict, match="changed outside this review"):
            session.apply([Correction(file, "M1", "no_peak")], REASON, "A. Chemist")
        assert Flag.NO_PEAK in session.result.results.query("file == @file and analyte == 'M3'")["flags"].iloc[0]
        session.apply([Correction(file, "M1", "no_peak")], REASON, "A. Chemist")
    assert (batch / "results" / "run.json").read_bytes() == _fresh_run_json(batch)
    assert len(pd.read_csv(batch / "overrides.csv")) == 2


def test_a_signature_covers_the_results_it_signed_until_they_change(batch):
    with open_review(batch, jobs=1) as session:
        signed = session.sign("A. Chemist", Meaning.REVIEWED)
        assert signed.details["account"] and signed.details["host"]  # the login beside the declared name
        with pytest.raises(SignatureError, match="a second person approves"):
            session.sign("A. Chemist", Meaning.APPROVED)
        session.sign("B. Manager", Meaning.APPROVED)
        signed = session.results_sha256
        assert all(s.current for s in signatures(session.trail, signed))
        session.apply([Correction(_unknown_file(session), "M1", "no_peak")], REASON, "A. Chemist")
        now = signatures(session.trail, session.results_sha256)
        assert [(s.name, s.meaning, s.current) for s in now] == [
            ("A. Chemist", Meaning.REVIEWED, False),
            ("B. Manager", Meaning.APPROVED, False),
        ]
        assert {s.results_sha256 for s in now} == {signed}


@pytest.mark.subprocess
def test_a_killed_review_loses_no_confirmed_change(batch):
    """The server killed at once after a change: overrides.csv, the results and the trail agree."""
    pytest.importorskip("httpx")
    import httpx

    server = subprocess.Popen(
        [sys.executable, "-m", "lcmsquant", "review", str(batch), "--no-browser", "--analyst", "A. Chemist"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
    )
    try:
        url = ""
        deadline = time.monotonic() + 120
        while not url and time.monotonic() < deadline:
            line = server.stdout.readline()
            url = line.split(" at ", 1)[1].strip() if " at http" in line else ""
        assert url, server.stderr.read() if server.poll() is not None else "no address printed"
        base, token = url.split("/?token=")
        state = httpx.get(f"{base}/api/state", params={"token": token}, timeout=60).json()
        file = next(r["file"] for r in state["rows"] if r["sample_type"] == "unknown")
        assert httpx.get(f"{base}/api/state", timeout=60).status_code == 403  # no token, no answer
        answer = httpx.post(
            f"{base}/api/change",
            params={"token": token},
            json={
                "corrections": [{"file": file, "target": "M1", "action": "no_peak"}],
                "reason": REASON,
                "analyst": "A. Chemist",
            },
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        server.send_signal(signal.SIGKILL)
    finally:
        server.kill()
        server.wait()
    assert "no_peak" in (batch / "overrides.csv").read_text()
    trail = read_trail(batch / "results")
    assert trail.intact and trail.entries[-1].event == TrailEvent.CHANGE
    assert trail.entries[-1].results_sha256 == _sha(batch / "results" / "run.json")
    assert (batch / "results" / "run.json").read_bytes() == _fresh_run_json(batch)
    assert process_batch(batch, report=False).ok  # the killed review's lock does not block the next run
    assert (batch / "results" / TRAIL).is_file()
