"""JSON-lines files that are only ever appended to (metrics, result records).

A writer killed mid-line leaves a torn last line; readers skip it, so appending never loses
what was written before. A torn line anywhere else means the file was edited and is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pretrain.errors import CheckpointError


def append_jsonl(path: str | Path, record: Mapping[str, object]) -> None:
    """Append one JSON line to ``path`` (flushed and fsynced before returning)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=False, default=str)
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file; a torn last line (killed writer) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise CheckpointError(f"{path}: line {i + 1} is not valid JSON") from None
    return records
