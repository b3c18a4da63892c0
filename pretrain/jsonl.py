"""JSON-lines files that are only ever appended to (metrics, result records).

Guarantees, for every writer and reader of ``metrics.jsonl``, ``results.jsonl`` and the like:

* **Appends are whole and locked.** :func:`append_jsonl` holds an exclusive advisory lock on
  the file (``fcntl.flock`` on POSIX; ``msvcrt.locking`` on a byte far past the data on
  Windows) and writes each record, newline included, with a single ``write`` call. Two
  evaluators appending at once (a suite's parallel cells, two terminals) lose no record and
  tear no line, also where ``O_APPEND`` alone is not atomic (NFS). The lock is advisory: a
  writer that does not take it (an editor) is not held back; on a file system without locks
  the append goes ahead unlocked.
* **A fresh line after a torn one.** A writer killed mid-line leaves a last line without its
  newline; the next append starts on a new line, so the torn line costs only itself and the
  new record is not glued onto it.
* **Bad lines are skipped with a warning, never an error.** :func:`read_jsonl` returns every
  line that is a JSON object and skips the rest (torn, edited, not UTF-8, not an object)
  wherever they are, with one warning per file on the ``simclr_transfer.jsonl`` logger
  (stderr unless logging is configured otherwise) naming the file and the line numbers.
  Blank lines are skipped silently. On POSIX a reader takes a shared lock, so it never sees
  half of a record being appended.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("simclr_transfer.jsonl")
SHOWN_LINES = 10  # line numbers named in a warning; the rest are counted

if sys.platform == "win32":
    import msvcrt

    # msvcrt locks are mandatory for the locked bytes, so lock one byte no reader reads.
    _LOCK_OFFSET = 0x7FFFFFFE

    @contextmanager
    def _locked(fd: int, exclusive: bool) -> Iterator[None]:
        """Exclusive lock of the lock byte for appends; readers do not lock on Windows."""
        if not exclusive:
            yield
            return
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # tries for 10 s, then raises EDEADLOCK
                break
            except OSError as exc:
                if exc.errno != errno.EDEADLOCK:
                    raise
        try:
            yield
        finally:
            os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    _NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)

    @contextmanager
    def _locked(fd: int, exclusive: bool) -> Iterator[None]:
        """``flock`` for the block; unlocked on a file system without locks."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            locked = True
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)


def append_jsonl(path: str | Path, record: Mapping[str, object]) -> None:
    """Append one JSON line to ``path`` under the file's lock, on a fresh line, in one write
    (flushed and fsynced before returning)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, sort_keys=False, default=str) + "\n").encode()
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, 0o666)
    try:
        with _locked(fd, exclusive=True):
            size = os.fstat(fd).st_size
            if size:
                os.lseek(fd, size - 1, os.SEEK_SET)
                if os.read(fd, 1) != b"\n":  # a torn last line: do not glue onto it
                    data = b"\n" + data
            view = memoryview(data)
            while view:  # one write; a short one (full disk, signal) is finished under the lock
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _warn_bad_lines(path: Path, bad: list[int]) -> None:
    if len(bad) == 1:
        log.warning("warning: %s: line %d is not a JSON object; skipped", path, bad[0])
    elif len(bad) <= SHOWN_LINES:
        log.warning("warning: %s: lines %s are not JSON objects; skipped",
                    path, ", ".join(map(str, bad)))
    else:
        log.warning("warning: %s: %d lines are not JSON objects (lines %s and %d more); skipped",
                    path, len(bad), ", ".join(map(str, bad[:SHOWN_LINES])), len(bad) - SHOWN_LINES)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every JSON object of a JSON-lines file, in file order; [] when the file is missing.

    A line that is not a JSON object (torn by a killed writer, edited, garbage) is skipped
    wherever it is, with one warning naming ``path`` and the line numbers.
    """
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, "rb") as f, _locked(f.fileno(), exclusive=False):
        raw = f.read()
    records, bad = [], []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        rec = _parse(line)
        if rec is None:
            bad.append(number)
        else:
            records.append(rec)
    if bad:
        _warn_bad_lines(path, bad)
    return records
