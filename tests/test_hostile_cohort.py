"""Hostile cohort databases and deliberate edits (issue 14, points 6 and 10).

Each --db that is not a cohort database is refused with a message naming it and saying what to
do, and is left exactly as it was (never removed, truncated or opened for writing; a FIFO never
blocks). Every `cohort add` is kept in a hash-chained, append-only log with what it replaced,
so a replaced result can always be found and a casual edit of the database is seen.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lcmsquant import __version__
from lcmsquant.cli import app
from lcmsquant.cohort import (
    CohortError,
    add_runs,
    cohort_tables,
    replaced_analyses,
    verify_log,
    write_penetration,
)
from lcmsquant.export import export_cohort


def one_line(text: str) -> str:
    return " ".join(text.split())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@contextmanager
def opened(db: Path):
    """A plain SQLite connection, as anyone with write access could use, committed on leaving."""
    con = sqlite3.connect(db)
    try:
        yield con
        con.commit()
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------
# --db that is not a regular file, or in no folder: refused from os.stat alone, left as it was


def test_a_fifo_is_refused_without_blocking_and_kept(processed_study, tmp_path, cli):
    _, results = processed_study
    fifo = tmp_path / "cohort.sqlite"
    os.mkfifo(fifo)
    done = cli("cohort", "add", results[0], "--db", fifo)  # would block for ever if opened
    assert done.returncode == 2
    assert f"{fifo} is a FIFO (named pipe), not a cohort database file, and was left untouched" in one_line(done.stderr)
    assert "give --db the cohort's database file" in one_line(done.stderr)
    assert "Traceback" not in done.stderr and "added run" not in done.stdout
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert listing(tmp_path) == ["cohort.sqlite"]


def test_a_character_device_is_refused_and_kept(processed_study, tmp_path):
    """As root, `--db /dev/null` used to remove /dev/null: here a node like it in a temporary folder."""
    _, results = processed_study
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, OSError) as err:
        pytest.skip(f"cannot make a device node here: {err}")
    with pytest.raises(CohortError, match="is a character device, not a cohort database file") as refused:
        add_runs(device, [results[0]])
    assert str(device) in refused.value.problems[0]
    info = os.lstat(device)
    assert stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(1, 3)
    assert listing(tmp_path) == ["null"]


def test_a_folder_is_refused_and_kept(processed_study, tmp_path):
    _, results = processed_study
    folder = tmp_path / "cohort.sqlite"
    folder.mkdir()
    (folder / "notes.txt").write_text("kept")
    with pytest.raises(CohortError) as refused:
        add_runs(folder, [results[0]])
    assert refused.value.problems == [
        f"{folder} is a folder, not a cohort database file, and was left untouched: "
        "give --db the cohort's database file, or the name of a new file to start a cohort"
    ]
    assert listing(folder) == ["notes.txt"] and (folder / "notes.txt").read_text() == "kept"


def test_a_symlink_to_a_fifo_is_refused_and_both_kept(processed_study, tmp_path):
    _, results = processed_study
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "cohort.sqlite"
    link.symlink_to(fifo)
    for call in (lambda: add_runs(link, [results[0]]), lambda: export_cohort(link, "csv", tmp_path / "out")):
        with pytest.raises(CohortError, match=f"{link} \\(a symbolic link to {fifo}\\) is a FIFO \\(named pipe\\)"):
            call()
    assert link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert listing(tmp_path) == ["cohort.sqlite", "pipe"]


def test_a_dangling_symlink_is_refused_and_its_target_not_created(processed_study, tmp_path):
    _, results = processed_study
    link = tmp_path / "cohort.sqlite"
    link.symlink_to(tmp_path / "elsewhere.sqlite")
    with pytest.raises(CohortError, match="which does not exist: give --db the database file itself"):
        add_runs(link, [results[0]])
    assert listing(tmp_path) == ["cohort.sqlite"]


def test_a_missing_folder_is_refused_not_created(processed_study, tmp_path):
    _, results = processed_study
    db = tmp_path / "no-such-folder" / "cohort.sqlite"
    with pytest.raises(CohortError) as refused:
        add_runs(db, [results[0]])
    assert refused.value.problems[0].startswith(f"folder {db.parent} does not exist: create it first")
    assert listing(tmp_path) == []


def test_a_journal_name_that_is_a_symlink_is_refused_and_its_target_kept(cohort, processed_study, tmp_path):
    """SQLite would take a file behind `DB-journal` for the journal of an interrupted write and
    copy it into the database, or write its journal through the link."""
    _, results = processed_study
    db = tmp_path / "cohort.sqlite"
    shutil.copy(cohort, db)
    target = tmp_path / "precious.txt"
    target.write_text("not a journal")
    journal = tmp_path / "cohort.sqlite-journal"
    journal.symlink_to(target)
    before = db.read_bytes()
    for call in (lambda: add_runs(db, [results[1]]), lambda: cohort_tables(db)):
        with pytest.raises(
            CohortError, match=f"{journal} is a symbolic link; SQLite keeps the journal of cohort.sqlite"
        ):
            call()
    assert db.read_bytes() == before and target.read_text() == "not a journal" and journal.is_symlink()


@pytest.mark.subprocess
def test_the_journal_of_an_interrupted_add_is_rolled_back_not_called_damage(logged, tmp_path):
    db = tmp_path / "cohort.sqlite"
    shutil.copy(logged, db)
    interrupted = (
        "import os, sqlite3\n"
        f"con = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "con.execute('PRAGMA cache_size = 1'); con.execute('BEGIN')\n"
        "con.execute('UPDATE analyses SET concentration = 0')\n"
        "con.executemany('INSERT INTO history VALUES (99, ?, ?)', [('x', 'y' * 500)] * 2000)\n"
        "os._exit(0)\n"  # killed before COMMIT: the journal stays beside the database
    )
    subprocess.run([sys.executable, "-c", interrupted], check=True, timeout=60)
    assert (tmp_path / "cohort.sqlite-journal").stat().st_size > 0
    check = verify_log(db)
    assert check.intact and len(check.entries) == 4
    _, analyses, _ = cohort_tables(db)
    assert analyses["concentration"].max() > 0
    assert listing(tmp_path) == ["cohort.sqlite"]


# ---------------------------------------------------------------------------------------------
# Files that are not a usable cohort database: refused by add, export and penetration, unchanged


def _damage(db: Path, kind: str) -> None:
    """Turn a copy of a real cohort database into the hostile `kind` (corrupt pages: 3 to 5 overwritten)."""
    data = bytearray(db.read_bytes())
    if kind == "text":
        db.write_text("subject,concentration\nS001,12.5\n")
    elif kind == "truncated":
        db.write_bytes(bytes(data[: len(data) // 2]))
    elif kind == "corrupt pages":
        page = int.from_bytes(data[16:18], "big")
        data[2 * page : 5 * page] = b"\xa5" * (3 * page)
        db.write_bytes(bytes(data))
    elif kind == "foreign":
        db.unlink()
        with opened(db) as con:
            con.executescript("CREATE TABLE patients (id TEXT); CREATE TABLE visits (id TEXT, day INTEGER);")
    elif kind == "newer schema":
        with opened(db) as con:
            con.execute("PRAGMA user_version = 3")


HOSTILE_FILES = {
    "text": "is not an lcmsquant cohort database (not an SQLite file): give --db the cohort's database file",
    "truncated": "is damaged: PRAGMA quick_check says",
    "corrupt pages": "is damaged: PRAGMA quick_check says",
    "foreign": "is not an lcmsquant cohort database (it holds the tables patients, visits): give --db",
    "newer schema": f"was made by a newer lcmsquant (cohort schema 3; lcmsquant {__version__} reads up to 2): use that version",
}


@pytest.mark.parametrize("command", ["add", "export", "penetration"])
@pytest.mark.parametrize("kind", HOSTILE_FILES)
def test_a_file_that_is_not_a_usable_cohort_is_refused_and_unchanged(kind, command, cohort, processed_study, tmp_path):
    _, results = processed_study
    db = tmp_path / "cohort.sqlite"
    shutil.copy(cohort, db)
    _damage(db, kind)
    before = db.read_bytes()
    out = tmp_path / "out"
    call = {
        "add": lambda: add_runs(db, [results[1]]),
        "export": lambda: export_cohort(db, "csv", out),
        "penetration": lambda: write_penetration(db, out),
    }[command]
    with pytest.raises(CohortError) as refused:
        call()
    problem = refused.value.problems[0]
    assert problem.startswith(str(db)) and HOSTILE_FILES[kind] in problem
    if "damaged" in problem:
        assert problem.endswith("; restore it from a backup")
    assert db.read_bytes() == before
    assert listing(tmp_path) == ["cohort.sqlite"]  # no journal, no output folder


def test_the_commands_on_a_damaged_database_exit_2_without_a_traceback(cohort, tmp_path, invoke):
    db = tmp_path / "cohort.sqlite"
    shutil.copy(cohort, db)
    _damage(db, "corrupt pages")
    before = db.read_bytes()
    done = invoke("cohort", "export", "--db", db, "--format", "csv")
    assert done.exit_code == 2 and "Traceback" not in done.stderr
    assert f"{db} is damaged: PRAGMA quick_check says" in one_line(done.stderr)
    assert "restore it from a backup" in one_line(done.stderr)
    for args in (["penetration", "--db", str(db)], ["log", "--db", str(db)]):
        shown = CliRunner().invoke(app, ["cohort", *args])
        assert shown.exit_code == 2 and "is damaged: PRAGMA quick_check says" in one_line(shown.output)
        assert "Traceback" not in shown.output and not isinstance(shown.exception, sqlite3.Error)
    assert db.read_bytes() == before and listing(tmp_path) == ["cohort.sqlite"]


# ---------------------------------------------------------------------------------------------
# The log: every addition chained by SHA-256, what was replaced kept


@pytest.fixture(scope="module")
def logged(cohort, processed_study, tmp_path_factory) -> Path:
    """The study's cohort with the CSF run added a second time (so the log holds a replacement)."""
    _, results = processed_study
    db = tmp_path_factory.mktemp("logged") / "cohort.sqlite"
    shutil.copy(cohort, db)
    add_runs(db, [results[1]], command=["lcmsquant", "cohort", "add", str(results[1]), "--db", str(db)])
    return db


def test_each_addition_and_replacement_is_logged_in_an_intact_chain(logged, cohort, processed_study):
    _, results = processed_study
    check = verify_log(logged)
    assert check.intact and check.problems == ()
    entries = check.entries.to_dict("records")
    assert [e["action"] for e in entries] == ["added", "added", "added", "replaced"]
    assert [e["batch"] for e in entries] == ["plasma-run", "csf-run", "reanalysis-run", "csf-run"]
    assert entries[0]["previous_sha256"] == "0" * 64
    assert all(e["previous_sha256"] == p["entry_sha256"] for p, e in zip(entries, entries[1:]))
    replaced = entries[3]
    assert replaced["number"] == 4 and replaced["run_id"] == entries[1]["run_id"]
    assert replaced["analyses_added"] == replaced["analyses_replaced"] == 18
    assert replaced["run_json_sha256"] == sha(results[1] / "run.json")
    assert json.loads(replaced["tables_sha256"])["results.csv"] == sha(results[1] / "results.csv")
    assert replaced["replaced_content_sha256"] == entries[1]["content_sha256"]  # the rows first added
    assert replaced["os_user"] == getpass.getuser() and replaced["host"] == socket.gethostname()
    assert json.loads(replaced["command"])[:3] == ["lcmsquant", "cohort", "add"]
    assert replaced["recorded_at"].endswith("+00:00")

    kept = replaced_analyses(logged)
    assert len(kept) == 18 and set(kept["log_number"]) == {4} and set(kept["replaced_by_batch"]) == {"csf-run"}
    with opened(cohort) as con:
        first = pd.read_sql_query(
            "SELECT * FROM analyses WHERE run_id = ? ORDER BY injection, analyte", con, params=(replaced["run_id"],)
        )
    pd.testing.assert_frame_equal(kept[first.columns], first, check_dtype=False)


def test_the_log_and_history_refuse_update_and_delete(logged, tmp_path):
    db = tmp_path / "cohort.sqlite"
    shutil.copy(logged, db)
    with opened(db) as con:
        for statement in (
            "UPDATE log SET batch = 'other' WHERE number = 2",
            "DELETE FROM log WHERE number = 4",
            "UPDATE history SET row = '{}'",
            "DELETE FROM history",
        ):
            with pytest.raises(
                sqlite3.IntegrityError, match="is append-only: its entries cannot be changed or removed"
            ):
                con.execute(statement)
    assert verify_log(db).intact and db.read_bytes() == logged.read_bytes()


REANALYSIS = "(SELECT run_id FROM runs WHERE batch = 'reanalysis-run')"
TAMPERING = {
    "entry edited": (
        "DROP TRIGGER log_append_only_update; UPDATE log SET analyses_added = 99 WHERE number = 2",
        [
            "log entry 2 (added run 'csf-run') does not match its SHA-256: it was edited after it was written",
            "the trigger log_append_only_update that keeps the log append-only is missing: it was removed",
        ],
    ),
    "entry removed": (
        "DROP TRIGGER log_append_only_delete; DELETE FROM log WHERE number = 3; CREATE TRIGGER log_append_only_delete "
        "BEFORE DELETE ON log BEGIN SELECT RAISE(ABORT, 'append-only'); END",
        [
            "log entry 4 comes where entry 3 should: entries were removed or renumbered",
            "log entry 4 does not follow the entry before it (previous_sha256 differs): an entry was removed, inserted or rewritten",
            "run {reanalysis} is in the database but not in the log: it was added without lcmsquant",
        ],
    ),
    "history edited": (
        "DROP TRIGGER history_append_only_update; UPDATE history SET row = replace(row, '\"concentration\":', "
        "'\"concentration\":1') WHERE table_name = 'analyses'",
        [
            "the rows kept for log entry 4 (replaced run 'csf-run') are not those it replaced: the history was edited",
            "the trigger history_append_only_update that keeps the log append-only is missing: it was removed",
        ],
    ),
    "result edited": (
        "UPDATE analyses SET concentration = concentration * 2 WHERE sample_id = 'S001-C1D15-CSF' AND analyte = 'flumatinib'",
        [
            "run 'csf-run' ({csf}): its rows are not those log entry 4 recorded: they were edited in the database after "
            "they were added"
        ],
    ),
    "run deleted": (
        f"DELETE FROM analyses WHERE run_id = {REANALYSIS}; DELETE FROM runs WHERE run_id = {REANALYSIS}",
        ["run 'reanalysis-run' ({reanalysis}) of log entry 3 is missing from the database: its rows were deleted"],
    ),
}


@pytest.mark.parametrize("kind", TAMPERING)
def test_a_tampered_database_is_seen_by_the_log_check(kind, logged, tmp_path):
    db = tmp_path / "cohort.sqlite"
    shutil.copy(logged, db)
    script, expected = TAMPERING[kind]
    with opened(db) as con:
        ids = {batch: run_id[:12] for batch, run_id in con.execute("SELECT batch, run_id FROM runs")}
        con.executescript(script)
    check = verify_log(db)
    assert not check.intact
    assert list(check.problems) == [p.format(csf=ids["csf-run"], reanalysis=ids["reanalysis-run"]) for p in expected]


def test_the_log_command_shows_the_entries_and_exits_1_when_broken(logged, tmp_path):
    shown = CliRunner().invoke(app, ["cohort", "log", "--db", str(logged)])
    assert shown.exit_code == 0, shown.output
    assert "Log intact: 4 entries, hash chain unbroken, every run's rows as logged" in one_line(shown.output)
    assert verify_log(logged).entries["entry_sha256"].iloc[-1] in shown.output
    db = tmp_path / "cohort.sqlite"
    shutil.copy(logged, db)
    with opened(db) as con:
        con.executescript(TAMPERING["result edited"][0])
    shown = CliRunner().invoke(app, ["cohort", "log", "--db", str(db)])
    assert shown.exit_code == 1 and "Traceback" not in shown.output
    assert f"log broken: {db}: 1 problem(s)" in one_line(shown.output)
    assert "they were edited in the database after they were added" in one_line(shown.output)


def test_a_run_edited_with_recomputed_hashes_is_added_but_what_it_replaced_is_kept(logged, processed_study, tmp_path):
    """The SHA-256 list in run.json cannot stop a deliberate edit: the log shows it and keeps the original."""
    _, results = processed_study
    edited = tmp_path / "csf-run" / "results"
    shutil.copytree(results[1], edited)
    with open(edited / "results.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    header = rows[0]
    target = next(
        r
        for r in rows[1:]
        if r[header.index("sample_id")] == "S001-C1D15-CSF" and r[header.index("analyte")] == "flumatinib"
    )
    original = float(target[header.index("concentration")])
    target[header.index("concentration")] = repr(original * 2)
    with open(edited / "results.csv", "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    summary = json.loads((edited / "run.json").read_text())
    summary["outputs"]["results.csv"] = sha(edited / "results.csv")
    (edited / "run.json").write_text(json.dumps(summary, indent=2))
    session = json.loads((edited / "session.json").read_text())
    session["hashes"]["run.json"] = sha(edited / "run.json")
    (edited / "session.json").write_text(json.dumps(session, indent=2))

    db = tmp_path / "cohort.sqlite"
    shutil.copy(logged, db)
    [addition] = add_runs(db, [edited])
    assert addition.action == "replaced" and addition.replaced == 18 and addition.log_entry == 5

    _, analyses, _ = cohort_tables(db)
    now = analyses[(analyses["sample_id"] == "S001-C1D15-CSF") & (analyses["analyte"] == "flumatinib")]
    assert now["concentration"].tolist() == [pytest.approx(original * 2)]
    kept = replaced_analyses(db)
    was = kept[(kept["log_number"] == 5) & (kept["sample_id"] == "S001-C1D15-CSF") & (kept["analyte"] == "flumatinib")]
    assert was["concentration"].tolist() == [pytest.approx(original)]
    check = verify_log(db)
    assert check.intact  # a deliberate edit with recomputed hashes is a valid addition: the log shows it, no more
    last, before = check.entries.iloc[-1], check.entries.iloc[-2]
    assert last["run_json_sha256"] == sha(edited / "run.json") != before["run_json_sha256"]
    assert last["results_dir"] == str(edited.resolve())


# ---------------------------------------------------------------------------------------------
# Databases of the previous version (schema 1, no log)


def test_a_database_without_a_log_is_read_and_gets_one_at_the_next_add(cohort, processed_study, tmp_path):
    _, results = processed_study
    db = tmp_path / "cohort.sqlite"
    shutil.copy(cohort, db)
    with opened(db) as con:
        con.executescript(
            "DROP TRIGGER log_append_only_update; DROP TRIGGER log_append_only_delete; "
            "DROP TRIGGER history_append_only_update; DROP TRIGGER history_append_only_delete; "
            "DROP TABLE history; DROP TABLE log; PRAGMA user_version = 1;"
        )
    _, analyses, reported = cohort_tables(db)
    assert len(analyses) == 60 and len(reported)
    assert [p.name for p in export_cohort(db, "csv", tmp_path / "out")] == ["cohort_results.csv", "cohort_analyses.csv"]
    assert verify_log(db).note == (
        f"{db} has no log: it was made by an earlier lcmsquant; the next `lcmsquant cohort add ... --db {db}` starts one"
    )

    done = CliRunner().invoke(app, ["cohort", "add", str(results[2]), "--db", str(db)])
    assert done.exit_code == 0, done.output
    assert f"note: {db} was made by an earlier lcmsquant without a log of additions" in one_line(done.output)
    check = verify_log(db)
    assert check.intact
    assert check.entries["action"].tolist() == ["already held"] * 3 + ["replaced"]
    assert check.entries["analyses_added"].tolist() == [36, 18, 6, 6]
    with opened(db) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 2
