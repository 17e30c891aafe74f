"""The audit trail of a results folder, as a reviewer and an inspector rely on it: every run,
change and signature is one entry chained to the one before, a broken chain is named, and a
signature binds a name and a meaning to one results set."""

import hashlib
import json
import platform
import shutil

import pytest

from lcmsquant.audit_trail import (
    TRAIL,
    SignatureError,
    account,
    read_trail,
    results_sha256,
    sign,
    signatures,
)
from lcmsquant.review import Correction, open_review
from lcmsquant.runs import process_batch
from lcmsquant.simulate import simulate_batch
from lcmsquant.vocabulary import Meaning, TrailEvent

EXCLUDE_CAL1 = Correction("003_CAL1.mzML", "flumatinib", "exclude")
INTEGRATE_QC = Correction("012_QC-LLOQ-1.mzML", "M1", "integrate", 1.50, 2.10)


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """A simulated plasma batch run as `lcmsquant run` runs it (results and report written)."""
    folder = tmp_path_factory.mktemp("trail") / "batch"
    simulate_batch(folder, seed=7)
    outcome = process_batch(folder, command=["lcmsquant", "run", str(folder)])
    assert outcome.ok, outcome.error
    return folder


@pytest.fixture
def batch(processed, tmp_path):
    """A copy of the processed batch that a test may review, sign and spoil."""
    return shutil.copytree(processed, tmp_path / "batch")


def _lines(batch) -> list[str]:
    return (batch / "results" / TRAIL).read_text().splitlines(keepends=True)


def _write_lines(batch, lines) -> None:
    (batch / "results" / TRAIL).write_text("".join(lines))


def _reviewed(batch):
    """One change (calibrator 1 out of the flumatinib curve) and its review signature."""
    with open_review(batch, analyst="Ada Lovelace") as review:
        review.apply([EXCLUDE_CAL1], "spoiled in preparation", "Ada Lovelace")
        review.sign("Ada Lovelace", Meaning.REVIEWED)
    return batch / "results"


def test_each_run_change_and_signature_is_one_entry_chained_to_the_one_before(batch):
    results = _reviewed(batch)
    trail = read_trail(results)
    assert trail.intact and trail.problems == ()
    assert [(e.number, e.event, e.by) for e in trail.entries] == [
        (1, TrailEvent.RUN, trail.entries[0].by),  # the account that ran `lcmsquant run`
        (2, TrailEvent.CHANGE, "Ada Lovelace"),
        (3, TrailEvent.SIGNATURE, "Ada Lovelace"),
    ]
    run, change, signature = trail.entries
    assert run.details["command"][:2] == ["lcmsquant", "run"]
    assert change.summary == "excluded calibrator from the flumatinib curve in 003_CAL1.mzML: spoiled in preparation"
    assert change.details["reason"] == "spoiled in preparation"
    assert run.results_sha256 != change.results_sha256 == signature.results_sha256 == results_sha256(results)
    assert [e.previous_sha256 for e in trail.entries[1:]] == [e.entry_sha256 for e in trail.entries[:-1]]
    assert all(e.at.endswith("Z") and len(e.at) == len("2026-01-31T12:00:00Z") for e in trail.entries)


def _edited(lines):
    entry = json.loads(lines[1])
    entry["summary"] = entry["summary"].replace("spoiled in preparation", "as agreed")
    return [lines[0], json.dumps(entry) + "\n", *lines[2:]]


def _inserted(lines):
    forged = json.loads(lines[0])
    forged.update(number=2, summary="results written again")  # a plausible entry, slipped in
    return [lines[0], json.dumps(forged) + "\n", *lines[1:]]


SPOILED = {
    "an edited entry": (_edited, ["entry 2 does not match its SHA-256 (edited after it was written)"]),
    "a removed entry": (
        lambda lines: [lines[0], *lines[2:]],
        [
            "entry 3 where entry 2 should be",
            "entry 3 does not follow the entry before it (an entry was removed, inserted or rewritten)",
        ],
    ),
    "an inserted entry": (
        _inserted,
        [
            "line 2: entry 2 does not follow the entry before it",
            "line 2: entry 2 does not match its SHA-256",
            "line 3: entry 2 where entry 3 should be",
        ],
    ),
    "a truncated entry": (
        lambda lines: [*lines[:-1], lines[-1][: len(lines[-1]) // 2]],
        ["line 3 is not a trail entry", "ends inside an entry (a write was cut short)"],
    ),
}


@pytest.mark.parametrize("spoil, named", SPOILED.values(), ids=SPOILED.keys())
def test_the_chain_names_an_edited_removed_inserted_or_truncated_entry(batch, spoil, named):
    results = _reviewed(batch)
    _write_lines(batch, spoil(_lines(batch)))
    trail = read_trail(results)
    assert not trail.intact
    for words in named:
        assert any(words in problem for problem in trail.problems), (words, trail.problems)
    with pytest.raises(SignatureError) as err:  # nothing is signed on a trail that cannot be trusted
        sign(results, "Grace Hopper", Meaning.APPROVED)
    assert "the audit trail is broken" in str(err.value)


def test_the_chain_does_not_stop_someone_who_can_write_the_folder_from_rewriting_it_whole(batch):
    """What docs/security.md says: the chain shows an edit, not a forger who recomputes every
    hash. Only storage the writer cannot change (WORM, a server) prevents that."""
    results = _reviewed(batch)
    previous, rewritten = "0" * 64, []
    for line in _lines(batch):
        entry = json.loads(line)
        entry.pop("entry_sha256")
        entry.update(previous_sha256=previous, by=entry["by"].replace("Ada Lovelace", "Someone Else"))
        previous = hashlib.sha256(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        rewritten.append(json.dumps({**entry, "entry_sha256": previous}) + "\n")
    _write_lines(batch, rewritten)
    trail = read_trail(results)
    assert trail.intact and trail.entries[-1].by == "Someone Else"


def test_a_signature_covers_the_results_it_signed_and_no_longer_covers_them_once_they_change(batch):
    results = _reviewed(batch)
    signed = results_sha256(results)
    (review_signature,) = signatures(read_trail(results), signed)
    assert (review_signature.name, review_signature.meaning, review_signature.current) == (
        "Ada Lovelace",
        Meaning.REVIEWED,
        True,
    )
    assert review_signature.results_sha256 == signed and review_signature.entry == 3

    with open_review(batch) as review:
        review.apply([INTEGRATE_QC], "baseline drawn under the tail", "Ada Lovelace")
        changed = results_sha256(results)
        assert changed != signed
        (stale,) = signatures(read_trail(results), changed)
        assert stale.results_sha256 == signed and not stale.current

        review.undo("Ada Lovelace")  # the very results signed are back: the signature covers them again
    assert results_sha256(results) == signed
    assert [s.current for s in signatures(read_trail(results), signed)] == [True]


def test_approval_needs_a_review_of_these_results_by_someone_else(batch):
    with open_review(batch) as review:
        with pytest.raises(SignatureError, match=r"approval needs a review of these results first"):
            review.sign("Grace Hopper", Meaning.APPROVED)
        review.sign("Ada Lovelace", Meaning.REVIEWED)
        with pytest.raises(SignatureError, match=r"Ada Lovelace reviewed these results; a second person approves them"):
            review.sign("Ada Lovelace", Meaning.APPROVED)
        review.apply([EXCLUDE_CAL1], "spoiled in preparation", "Ada Lovelace")
        with pytest.raises(SignatureError, match=r"approval needs a review of these results first"):
            review.sign("Grace Hopper", Meaning.APPROVED)  # the review was of the results before the change
        review.sign("Ada Lovelace", Meaning.REVIEWED)
        approval = review.sign("Grace Hopper", Meaning.APPROVED)
    assert approval.summary == "Approved by Grace Hopper"
    assert approval.details == {
        "meaning": "approved",
        "statement": Meaning.APPROVED.statement,
        "account": account(),  # the login it came from, beside the declared name
        "host": platform.node(),
    }
    current = results_sha256(batch / "results")
    assert [(s.name, s.meaning, s.current) for s in signatures(read_trail(batch / "results"), current)] == [
        ("Ada Lovelace", Meaning.REVIEWED, False),
        ("Ada Lovelace", Meaning.REVIEWED, True),
        ("Grace Hopper", Meaning.APPROVED, True),
    ]


def test_one_person_signs_one_meaning_of_one_results_set_once(batch):
    results = _reviewed(batch)
    with pytest.raises(SignatureError, match="Ada Lovelace has already signed these results as reviewed"):
        sign(results, "  Ada   Lovelace ", Meaning.REVIEWED)  # the same name, however spaced
    with pytest.raises(SignatureError, match="ADA LOVELACE has already signed these results as reviewed"):
        sign(results, "ADA LOVELACE", Meaning.REVIEWED)  # or however its case is typed
    assert len(read_trail(results).entries) == 3


def test_the_reviewer_cannot_approve_by_typing_the_name_in_another_case(batch):
    results = _reviewed(batch)  # reviewed by Ada Lovelace
    with pytest.raises(SignatureError, match="a second person approves them"):
        sign(results, "ada lovelace", Meaning.APPROVED)
    assert sign(results, "Grace Hopper", Meaning.APPROVED).by == "Grace Hopper"


@pytest.mark.parametrize(
    "name, problem",
    [
        ("Ada\x07Lovelace", "holds characters that cannot be printed"),
        ("\x1b[31mAda Lovelace", "holds characters that cannot be printed"),
        ("Ada Lovelace\u202e", "holds characters that cannot be printed"),  # right-to-left override
        ("   ", "is empty: type your full name"),
        ("A" * 101, "is longer than 100 characters"),
    ],
    ids=["bell", "terminal escape", "bidi override", "blank", "too long"],
)
def test_a_name_that_cannot_be_printed_as_it_was_typed_is_refused(batch, name, problem):
    before = _lines(batch)
    with pytest.raises(SignatureError) as err:
        sign(batch / "results", name, Meaning.REVIEWED)
    assert problem in str(err.value)
    assert _lines(batch) == before  # nothing was appended


def test_a_meaning_outside_the_vocabulary_and_a_folder_without_results_are_refused(batch, tmp_path):
    with pytest.raises(SignatureError, match="meaning 'checked' is not one of reviewed, approved"):
        sign(batch / "results", "Ada Lovelace", "checked")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SignatureError, match="there are no results to sign: run the batch first"):
        sign(tmp_path / "empty", "Ada Lovelace", Meaning.REVIEWED)


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_fifo_or_link_in_place_of_the_trail_is_named_and_never_waited_on(batch, tmp_path, kind):
    import os

    from lcmsquant.audit_trail import TrailError, append_entry

    trail = batch / "results" / TRAIL
    trail.unlink()
    if kind == "fifo":
        os.mkfifo(trail)
    else:
        (tmp_path / "elsewhere.jsonl").write_text("")
        trail.symlink_to(tmp_path / "elsewhere.jsonl")
    checked = read_trail(batch / "results")
    assert not checked.intact and "not the trail lcmsquant writes" in checked.problems[0]
    with pytest.raises(TrailError, match="remove it if lcmsquant did not write it"):
        append_entry(batch / "results", TrailEvent.RUN, "A. Chemist", "a run")
    with pytest.raises(SignatureError, match="audit trail is broken"):
        sign(batch / "results", "A. Chemist", Meaning.REVIEWED)
    assert (tmp_path / "elsewhere.jsonl").read_text() == "" if kind == "symlink" else trail.exists()
