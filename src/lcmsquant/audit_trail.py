"""A results folder's audit trail: every run, manual change, undo and signature, appended to
audit-trail.jsonl one JSON line each and chained by SHA-256, and the signatures it holds.

Each entry records when (UTC), who (the name declared, or the account that ran the command),
what, and the SHA-256 of the results set it produced or signed (`results_sha256`: that of
run.json, which records the hash of every table and input). Each entry's `entry_sha256` covers its
content and the previous entry's hash, so removing, inserting or editing an entry breaks the
chain that `read_trail` checks. A signature covers the results set whose hash it records; once the
results change, it no longer covers the current set (docs/security.md says what this gives
towards 21 CFR Part 11 and what it does not).

Writers hold the results folder's lock (results.results_lock) while appending.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import platform
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lcmsquant.files import InputError, not_a_file, sha256
from lcmsquant.vocabulary import Meaning, TrailEvent

TRAIL = "audit-trail.jsonl"
RUN_JSON = "run.json"
FIRST_PREVIOUS = "0" * 64
MAX_NAME = 100
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
MEANINGS = {str(m): m for m in Meaning}


class TrailError(InputError):
    """The audit trail cannot be written (a link, FIFO or folder in its place)."""

    kind = "audit trail"


class SignatureError(InputError):
    """A signature that cannot be given (no name, approval before review, nothing to sign)."""

    kind = "signature"


@dataclass(frozen=True)
class TrailEntry:
    """One line of the audit trail."""

    number: int
    at: str  # UTC, ISO 8601 with Z
    event: TrailEvent
    by: str
    summary: str
    results_sha256: str
    details: Mapping = field(default_factory=dict)
    previous_sha256: str = FIRST_PREVIOUS
    entry_sha256: str = ""

    def listed(self) -> dict:
        """What a list of entries shows of this one (the page, the report)."""
        return {
            "number": self.number,
            "at": self.at,
            "event": str(self.event),
            "by": self.by,
            "summary": self.summary,
            "results_sha256": self.results_sha256,
        }

    def content(self) -> dict:
        """The entry as written, without its own hash."""
        return {**self.listed(), "details": dict(self.details), "previous_sha256": self.previous_sha256}


@dataclass(frozen=True)
class TrailNote:
    """What a writer of a results set records about it in the trail (see results.write_outputs)."""

    event: TrailEvent
    by: str
    summary: str
    details: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Trail:
    """The entries of a results folder's trail and what checking its chain found."""

    entries: tuple[TrailEntry, ...]
    problems: tuple[str, ...] = ()

    @property
    def intact(self) -> bool:
        """Whether every entry matches its hash and follows the one before it."""
        return not self.problems


@dataclass(frozen=True)
class Signature:
    """A signature as the trail records it, and whether it covers the current results."""

    name: str
    meaning: Meaning
    at: str
    results_sha256: str
    entry: int
    current: bool


def results_sha256(results_dir: Path | str) -> str:
    """The SHA-256 that names a results set: that of its run.json ("" when there is none)."""
    path = Path(results_dir) / RUN_JSON
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return ""


def utc_now() -> str:
    """Now in UTC to the second, as the trail writes times."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def account() -> str:
    """The account running this process, for entries that no person declared a name for."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _digest(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def read_trail(results_dir: Path | str) -> Trail:
    """The trail of a results folder (empty when there is none), with every break of its chain."""
    path = Path(results_dir) / TRAIL
    if not path.exists() and not path.is_symlink():
        return Trail(())
    if path.is_symlink() or (problem := not_a_file(path)):  # checked first: a FIFO would block the read
        what = "is a symbolic link" if path.is_symlink() else problem
        return Trail((), (f"{TRAIL} {what}: not the trail lcmsquant writes",))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return Trail((), (f"{TRAIL} cannot be read ({err})",))
    entries: list[TrailEntry] = []
    problems: list[str] = []
    previous = FIRST_PREVIOUS
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            entry = TrailEntry(
                number=int(raw["number"]),
                at=str(raw["at"]),
                event=TrailEvent(raw["event"]),
                by=str(raw["by"]),
                summary=str(raw["summary"]),
                results_sha256=str(raw["results_sha256"]),
                details=dict(raw.get("details") or {}),
                previous_sha256=str(raw["previous_sha256"]),
                entry_sha256=str(raw["entry_sha256"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            problems.append(f"{TRAIL} line {line_number} is not a trail entry ({type(err).__name__}: {err})")
            continue
        if entry.number != len(entries) + 1:
            problems.append(
                f"{TRAIL} line {line_number}: entry {entry.number} where entry {len(entries) + 1} should be"
            )
        if entry.previous_sha256 != previous:
            problems.append(
                f"{TRAIL} line {line_number}: entry {entry.number} does not follow the entry before it "
                "(an entry was removed, inserted or rewritten)"
            )
        if _digest(entry.content()) != entry.entry_sha256:
            problems.append(
                f"{TRAIL} line {line_number}: entry {entry.number} does not match its SHA-256 (edited after it was written)"
            )
        entries.append(entry)
        previous = entry.entry_sha256
    if text and not text.endswith("\n"):
        problems.append(f"{TRAIL} ends inside an entry (a write was cut short)")
    return Trail(tuple(entries), tuple(problems))


def append_entry(
    results_dir: Path | str,
    event: TrailEvent,
    by: str,
    summary: str,
    details: Mapping | None = None,
    results_sha: str | None = None,
) -> TrailEntry:
    """Append one entry, chained to the last, and flush it to disk before returning.

    `results_sha`: the results set the entry concerns (default: the folder's current run.json).
    The caller holds the folder's lock.
    """
    results_dir = Path(results_dir)
    last = read_trail(results_dir).entries
    entry = TrailEntry(
        number=len(last) + 1,
        at=utc_now(),
        event=event,
        by=by,
        summary=summary,
        results_sha256=results_sha if results_sha is not None else results_sha256(results_dir),
        details=dict(details or {}),
        previous_sha256=last[-1].entry_sha256 if last else FIRST_PREVIOUS,
    )
    content = entry.content()
    line = json.dumps({**content, "entry_sha256": _digest(content)}, sort_keys=True, separators=(",", ":")) + "\n"
    try:  # never through a link, never blocking on a FIFO put in its place
        fd = os.open(results_dir / TRAIL, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _NONBLOCK, 0o644)
    except OSError as err:
        raise TrailError(
            results_dir, [f"{TRAIL} cannot be appended to ({err.strerror}): remove it if lcmsquant did not write it"]
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TrailError(results_dir, [f"{TRAIL} is not a regular file: remove it if lcmsquant did not write it"])
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return TrailEntry(**{**content, "event": event, "entry_sha256": _digest(content)})


def record_report(results_dir: Path | str, written: Sequence[Path], by: str, command: Sequence[str]) -> TrailEntry:
    """Record a report drawn (report.html, report.pdf) with the SHA-256 of each file written."""
    return append_entry(
        results_dir,
        TrailEvent.REPORT,
        by,
        " and ".join(path.name for path in written) + " drawn",
        {"command": list(map(str, command)), "files": {path.name: sha256(path) for path in written}},
    )


def signatures(trail: Trail, current_sha: str) -> tuple[Signature, ...]:
    """Every signature of the trail, each marked whether it covers the results set `current_sha`."""
    return tuple(
        Signature(
            name=e.by,
            meaning=MEANINGS[e.details["meaning"]],
            at=e.at,
            results_sha256=e.results_sha256,
            entry=e.number,
            current=bool(current_sha) and e.results_sha256 == current_sha,
        )
        for e in trail.entries
        if e.event == TrailEvent.SIGNATURE and e.details.get("meaning") in MEANINGS
    )


def recorded(trail: Trail, results_sha: str) -> bool:
    """Whether an entry of the trail records writing the results set `results_sha`."""
    return any(e.results_sha256 == results_sha for e in trail.entries if e.event != TrailEvent.SIGNATURE)


def check_name(name: str, what: str = "name") -> str:
    """A declared name as the trail keeps it; raise ValueError for one that cannot be printed."""
    name = " ".join(str(name).split())
    if not name:
        raise ValueError(f"the {what} is empty: type your full name")
    if len(name) > MAX_NAME:
        raise ValueError(f"the {what} is longer than {MAX_NAME} characters")
    if not name.isprintable():
        raise ValueError(f"the {what} holds characters that cannot be printed")
    return name


def sign(results_dir: Path | str, name: str, meaning: Meaning | str) -> TrailEntry:
    """Sign the folder's current results set with a printed name and a meaning (21 CFR 11.50).

    An approval needs a review of the same results by someone else; one person signs a meaning
    once per results set. The caller holds the folder's lock.
    """
    results_dir = Path(results_dir)
    try:
        name = check_name(name)
    except ValueError as err:
        raise SignatureError(results_dir, [str(err)]) from None
    if meaning not in MEANINGS:
        raise SignatureError(results_dir, [f"meaning '{meaning}' is not one of {', '.join(Meaning)}"])
    meaning = MEANINGS[meaning]
    current = results_sha256(results_dir)
    if not current:
        raise SignatureError(results_dir, ["there are no results to sign: run the batch first"])
    trail = read_trail(results_dir)
    if not trail.intact:
        raise SignatureError(
            results_dir, ["the audit trail is broken, so a signature would not be trustworthy:", *trail.problems]
        )
    if not recorded(trail, current):
        raise SignatureError(
            results_dir,
            [
                "the results on disk were not written by a run or review the audit trail records (edited, or a "
                "writer stopped before recording them): run the batch again, then sign"
            ],
        )
    valid = [s for s in signatures(trail, current) if s.current]
    # one person, however the name's case is typed: "ada lovelace" may not approve Ada Lovelace's review
    person = name.casefold()
    if any(s.name.casefold() == person and s.meaning == meaning for s in valid):
        raise SignatureError(results_dir, [f"{name} has already signed these results as {meaning}"])
    if meaning == Meaning.APPROVED:
        reviewers = {s.name.casefold() for s in valid if s.meaning == Meaning.REVIEWED}
        if not reviewers:
            raise SignatureError(
                results_dir, ["approval needs a review of these results first (a 'reviewed' signature)"]
            )
        if reviewers == {person}:
            raise SignatureError(results_dir, [f"{name} reviewed these results; a second person approves them"])
    return append_entry(
        results_dir,
        TrailEvent.SIGNATURE,
        name,
        f"{meaning.capitalize()} by {name}",
        # The account and computer beside the declared name: identity is declared, not
        # authenticated, but an inspector can see which login a signature came from.
        {"meaning": str(meaning), "statement": meaning.statement, "account": account(), "host": platform.node()},
        results_sha=current,
    )
