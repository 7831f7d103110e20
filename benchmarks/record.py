"""Results files that several benchmark processes (or sessions) add to: a locked
read-modify-write, so two runs in parallel never drop each other's entries, and an
atomic write, so a reader never sees half a file."""
from __future__ import annotations

import fcntl
import json
from collections.abc import Callable
from pathlib import Path

from genattn.fileio import write_json_atomic, write_text_atomic


def update_results(path: str | Path, mutate: Callable[[dict], None], render: Callable[[dict], str] | None = None) -> dict:
    """Load `path` (.json; {} when absent), apply `mutate` in place, write it back and, with
    `render`, the markdown beside it, all under an exclusive lock. Returns the new document."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(path.read_text()) if path.is_file() else {}
        mutate(doc)
        write_json_atomic(path, doc)
        if render is not None:
            write_text_atomic(path.with_suffix(".md"), render(doc))
    return doc
