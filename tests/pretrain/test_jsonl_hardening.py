"""JSON-lines files (issue 13): fresh line after a torn one, bad lines skipped with a warning,
appends locked and whole under concurrent writers."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from subprocesses import child_env

from pretrain.jsonl import append_jsonl, read_jsonl


def bad_line_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_append_after_torn_last_line_starts_a_fresh_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\n{"b": 2, "metr')  # a writer killed mid-line
    append_jsonl(path, {"c": 3})
    append_jsonl(path, {"d": 4})
    assert path.read_text() == '{"a": 1}\n{"b": 2, "metr\n{"c": 3}\n{"d": 4}\n'
    assert read_jsonl(path) == [{"a": 1}, {"c": 3}, {"d": 4}]
    assert bad_line_warnings(caplog) == [f"warning: {path}: line 2 is not a JSON object; skipped"]


def test_append_after_complete_line_without_newline_keeps_both(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}')  # written by another tool that ends without a newline
    append_jsonl(path, {"epoch": 2})
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]


def test_bad_lines_anywhere_are_skipped_with_a_warning_naming_file_and_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"a": 1}\ngarbage\n\n{"b": 2}\n[1, 2]\n\xff\xfe{"c"\n{"c": 3}\n{"tor')
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert bad_line_warnings(caplog) == [
        f"warning: {path}: lines 2, 5, 6, 8 are not JSON objects; skipped"
    ]
    # appending after the bad lines keeps every good record readable
    append_jsonl(path, {"d": 4})
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}, {"c": 3}, {"d": 4}]


def test_many_bad_lines_give_one_short_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text("x\n" * 50 + '{"a": 1}\n')
    assert read_jsonl(path) == [{"a": 1}]
    (msg,) = bad_line_warnings(caplog)
    assert msg == (f"warning: {path}: 50 lines are not JSON objects "
                   "(lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 40 more); skipped")
    assert len(msg) < 200


def test_clean_file_reads_without_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "results.jsonl"
    for i in range(3):
        append_jsonl(path, {"i": i})
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []
    assert bad_line_warnings(caplog) == []


WRITER = """
import sys, time
from pathlib import Path
from pretrain.jsonl import append_jsonl
path, writer, count, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
while not go.exists():
    time.sleep(0.001)
pad = chr(ord("a") + writer) * 6000
for i in range(count):
    append_jsonl(path, {"writer": writer, "i": i, "pad": pad})
"""


def test_concurrent_writers_lose_no_record_and_tear_no_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Four processes append 300 records of 6 KB each at once; every line is one whole record,
    and a reader meanwhile never sees half of one."""
    path, go = tmp_path / "results.jsonl", tmp_path / "go"
    writers, count = 4, 300
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), str(count), str(go)],
                              env=child_env()) for w in range(writers)]
    time.sleep(0.5)  # let every child import and wait at the start line
    go.touch()
    seen_by_reader = 0
    while any(p.poll() is None for p in procs):
        now = len(read_jsonl(path))
        assert now >= seen_by_reader
        seen_by_reader = now
    assert [p.wait(timeout=120) for p in procs] == [0] * writers
    assert bad_line_warnings(caplog) == []
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a newline
    seen = set()
    for line in lines[:-1]:
        rec = json.loads(line)  # every line parses: nothing torn, nothing glued
        assert rec["pad"] == chr(ord("a") + rec["writer"]) * 6000
        seen.add((rec["writer"], rec["i"]))
    assert len(lines) - 1 == writers * count
    assert seen == {(w, i) for w in range(writers) for i in range(count)}


LOCKED_WRITER = """
import sys
from pretrain.jsonl import append_jsonl
print("ready", flush=True)
append_jsonl(sys.argv[1], {"from": "child"})
print("done", flush=True)
"""


def test_append_waits_for_the_lock(tmp_path: Path) -> None:
    """An appender waits while another process holds the file's lock (the guarantee that keeps
    records whole where O_APPEND alone does not, e.g. on NFS)."""
    fcntl = pytest.importorskip("fcntl")
    path = tmp_path / "results.jsonl"
    path.write_text('{"from": "parent"}\n')
    with open(path, "rb+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        child = subprocess.Popen([sys.executable, "-c", LOCKED_WRITER, str(path)],
                                 stdout=subprocess.PIPE, text=True, env=child_env())
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        assert path.read_text() == '{"from": "parent"}\n', "append did not wait for the lock"
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and out.strip() == "done"
    assert read_jsonl(path) == [{"from": "parent"}, {"from": "child"}]
