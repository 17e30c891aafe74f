"""File helpers used at the edges: atomic writes, content hashes, and the error every reader
raises for unusable input."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path


class InputError(ValueError):
    """Input that cannot be used; `problems` lists every reason, each naming its file, line or key."""

    kind = "input"

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = Path(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{self.path}: {len(problems)} problem(s) in the {self.kind}:\n{lines}")


def not_a_file(path: Path | str) -> str:
    """Why `path` cannot be read as a file ("does not exist", "is a folder", "is a FIFO ..."), or
    "" for a regular file (a symbolic link counts as what it points to).

    Checked before opening: reading a FIFO or a device waits forever or never ends.
    """
    kind = file_kind(path)
    if kind == "a regular file":
        return ""
    if kind == "a folder":
        return "is a folder, not a file"
    if kind.startswith(("nothing", "unreadable")):
        return "does not exist" if kind == "nothing" else f"cannot be read ({kind.removeprefix('unreadable: ')})"
    return f"is {kind}, not a regular file"


def file_kind(path: Path | str) -> str:
    """What is at `path`, in words: "a regular file", "a folder", "a FIFO (named pipe)", "a
    character device", ..., "nothing", or "unreadable: <reason>" (links are followed)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "nothing"
    except (OSError, ValueError) as err:
        return f"unreadable: {getattr(err, 'strerror', None) or err}"
    return mode_kind(mode)


def mode_kind(mode: int) -> str:
    """The kind of file an st_mode describes, in words ("a regular file", "a FIFO (named pipe)", ...)."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    )
    return next((word for test, word in kinds if test(mode)), "a special file")


_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_decimal(text: str) -> float:
    """A number written the way a spreadsheet or an instrument writes one (`12`, `-0.5`, `1e3`);
    ValueError for anything else, including what Python's float() also takes (`1_000`, `nan`,
    `inf`, `infinity`), which no person means in a results table."""
    text = text.strip()
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"{text!r} is not a decimal number")
    return float(text)


def read_csv_rows(
    path: Path, error: type[InputError], where: Path | None = None
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, stripped fields) of every non-blank record of a CSV a person edits.

    Accepts a UTF-8 BOM and `,`, `;` or tab separators (whichever the header uses most); line
    numbers are those an editor shows where the record starts, blank lines included. Empty files
    give an empty header. A line break, NUL or other control character inside a field is refused
    with its line: it would break every table and export written from it.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(
            where or path, [f"{path.name}: not UTF-8 text ({err.reason} at byte {err.start}): save it as UTF-8 CSV"]
        ) from None
    lines = text.splitlines(keepends=True)
    first = next((line for line in lines if line.strip()), "")
    if not first:
        return [], []
    delimiter = max(",;\t", key=first.count)
    reader = csv.reader(lines, delimiter=delimiter)
    records, problems, start = [], [], 1
    for fields in reader:
        if any(f.strip() for f in fields):
            records.append((start, [v.strip() for v in fields]))
            for column, value in enumerate(fields, start=1):
                if bad := _CONTROL.search(value.strip()):
                    what = "a line break" if bad[0] in "\r\n" else f"the control character U+{ord(bad[0]):04X}"
                    problems.append(f"{path.name} line {start}, field {column}: {what} inside the value: remove it")
        start = reader.line_num + 1
    if problems:
        raise error(where or path, problems)
    return records[0][1], records[1:]


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# A cell starting with one of these is run as a formula by spreadsheets (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: str) -> str:
    """`value` as a spreadsheet shows it and never runs it: text that would start a formula
    (`=HYPERLINK(...)`, `@SUM(...)`, `-2+3`) gets a leading apostrophe; numbers stay numbers.

    An apostrophe that already leads such text is doubled, so restore_text gives back every value.
    """
    if not value:
        return value
    opens_formula = value[0] in FORMULA_START and not _DECIMAL.fullmatch(value)
    quoted = value[0] == "'" and value[1:2] != "" and value[1] in (*FORMULA_START, "'")
    return "'" + value if opens_formula or quoted else value


def restore_text(value: str) -> str:
    """The value spreadsheet_safe was given."""
    if value[:1] == "'" and value[1:2] != "" and value[1] in (*FORMULA_START, "'"):
        return value[1:]
    return value


def csv_text(table, **options) -> str:
    """A DataFrame as the CSV every lcmsquant table is written as: no index, \\n line ends, and
    text cells made spreadsheet-safe (see spreadsheet_safe); `options` go to DataFrame.to_csv."""
    from pandas.api.types import is_datetime64_any_dtype, is_numeric_dtype  # pandas loads only where tables are written

    text_columns = [c for c in table.columns if not (is_numeric_dtype(table[c]) or is_datetime64_any_dtype(table[c]))]
    if text_columns:
        table = table.assign(
            **{c: table[c].map(lambda v: spreadsheet_safe(v) if isinstance(v, str) else v) for c in text_columns}
        )
    return table.to_csv(index=False, lineterminator="\n", **options)


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write to a temporary file beside `path`, then rename it into place.

    A reader never sees half a file, and an interrupted write leaves the old file intact.
    """
    return atomic_write_all({Path(path): data})[0]


def atomic_write_all(files: Mapping[Path, bytes | str], remove: Iterable[Path] = ()) -> list[Path]:
    """Write several files as one set: each is written and flushed under a temporary name first,
    then all are renamed into place one after the other.

    A run killed while writing leaves the previous set whole; the renames take microseconds,
    so a reader sees old and new files mixed only if the process dies between two of them.
    `remove`: files of the previous set that have no place in the new one (a report drawn from
    other results), deleted once every new file is staged, just before the renames.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            staged.append((_stage(Path(path), data), Path(path)))
        for path in remove:
            Path(path).unlink(missing_ok=True)
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    for folder in {path.parent for _, path in staged}:
        _fsync_folder(folder)
    return [path for _, path in staged]


def read_set(folder: Path, names: Iterable[str], attempts: int = 20, pause_s: float = 0.05) -> dict[str, bytes]:
    """The bytes of the named files of a set written by atomic_write_all (those missing are left
    out), all of one set: read again while they disagree with the SHA-256 that run.json (the
    tables) and session.json (run.json) record and files are still being replaced.

    A reader racing a run's renames so gets the old set or the new one, never a mix. Files that
    disagree but stay in place (edited by hand, or a run killed between two renames) are
    returned as they are.
    """
    folder = Path(folder)
    names = list(dict.fromkeys(names))
    previous = None
    for _ in range(attempts):
        snapshot, identity = {}, []
        for name in names:
            try:
                with open(folder / name, "rb") as handle:
                    info = os.fstat(handle.fileno())
                    snapshot[name] = handle.read()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
            identity.append((name, info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size))
        if _set_agrees(snapshot) or identity == previous:  # every write renames new files into place
            return snapshot
        previous = identity
        time.sleep(pause_s)
    return snapshot


def _set_agrees(snapshot: Mapping[str, bytes]) -> bool:
    """Whether the files read agree with the hashes recorded in run.json and session.json, and
    report.html (when read) with the run.json it names."""
    recorded: dict[str, str] = {}
    for manifest, key in (("run.json", "outputs"), ("session.json", "hashes")):
        try:
            recorded.update(json.loads(snapshot[manifest]).get(key) or {})
        except (KeyError, ValueError, AttributeError, TypeError):  # not read, or not a manifest
            continue
    if REPORT_HTML in snapshot and "run.json" in snapshot:  # the report names run.json, not the other way round
        if report_run_json_sha256(snapshot[REPORT_HTML]) != hashlib.sha256(snapshot["run.json"]).hexdigest():
            return False
    return all(
        hashlib.sha256(snapshot[name]).hexdigest() == digest for name, digest in recorded.items() if name in snapshot
    )


# report.html names the SHA-256 of the run.json it was drawn from in a <meta> of its head, so
# that a report can be told apart from one of other results (see report_run_json_sha256).
REPORT_HTML = "report.html"
REPORT_PDF = "report.pdf"
REPORT_HASH_META = "lcmsquant-run-json-sha256"
_REPORT_HASH = re.compile(rb'<meta name="' + REPORT_HASH_META.encode() + rb'" content="([0-9a-f]{64})">')
_REPORT_HEAD = 4096  # the <meta> comes right after the charset, at the top of the file


def report_run_json_sha256(html: bytes | str) -> str:
    """The SHA-256 of the run.json a report.html was drawn from, as the report names it ("" when
    it names none: a report of an older lcmsquant, or not a report)."""
    head = html[:_REPORT_HEAD]
    match = _REPORT_HASH.search(head.encode("utf-8") if isinstance(head, str) else head)
    return match.group(1).decode("ascii") if match else ""


def _stage(path: Path, data: bytes | str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}~{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by others
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _fsync_folder(folder: Path) -> None:
    """Make the renames themselves durable (where the system allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Temporary files are named `.NAME.<host>~<pid>.<random>.tmp`: hidden, never taken for an output,
# and traceable to the process that wrote them.
TEMP_SUFFIX = ".tmp"
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_TEMP_NAME = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)~(?P<pid>\d+)\.[^.]+" + re.escape(TEMP_SUFFIX) + "$")
STALE_AFTER_S = 24 * 3600


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files a killed write left in `folder`: those of a process of this
    host that no longer runs, and any more than a day old. Returns what was removed."""
    removed: list[Path] = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).iterdir():
        match = _TEMP_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue
        dead = match["host"] == _HOST and not _process_alive(int(match["pid"]))
        if dead or age > STALE_AFTER_S:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
