"""File helpers used at the edges: atomic writes, content hashes, and the error every reader
raises for unusable input."""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
from pathlib import Path


class InputError(ValueError):
    """Input that cannot be used; `problems` lists every reason, each naming its file, line or key."""

    kind = "input"

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = Path(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{self.path}: {len(problems)} problem(s) in the {self.kind}:\n{lines}")


def read_csv_rows(path: Path, error: type[InputError], where: Path | None = None) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, stripped fields) of every non-blank line of a CSV a person edits.

    Accepts a UTF-8 BOM and `,`, `;` or tab separators (whichever the header uses most); line
    numbers are those an editor shows, blank lines included. Empty files give an empty header.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(where or path, [f"{path.name}: not UTF-8 text ({err.reason} at byte {err.start}): save it as UTF-8 CSV"]) from None
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not numbered:
        return [], []
    delimiter = max(",;\t", key=lambda d: numbered[0][1].count(d))
    parsed = csv.reader((line for _, line in numbered), delimiter=delimiter)
    rows = [(n, [v.strip() for v in fields]) for (n, _), fields in zip(numbered, parsed)]
    return rows[0][1], rows[1:]


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write to a temporary file beside `path`, then rename it into place.

    A reader never sees half a file, and an interrupted write leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
