"""Atomic writes: outputs appear whole or not at all (temp file, then rename)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target` to write (a file or a folder), then move it
    into place. On an error the temporary is removed and `target` is left as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(temporary)
    try:
        yield temporary
        if temporary.is_dir():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if target.exists():
                target.rename(old)
            temporary.rename(target)
            _remove(old)
        else:
            os.replace(temporary, target)
    finally:
        _remove(temporary)


def move_over(source_dir: Path, target_dir: Path) -> None:
    """Move every file and folder of `source_dir` over its namesake in `target_dir` (each
    one whole, by rename), then remove `source_dir`; what only `target_dir` holds stays."""
    target_dir.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source_dir.iterdir()):
        with atomic_path(target_dir / entry.name) as temporary:
            entry.rename(temporary)
    _remove(source_dir)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically, pretty-printed with sorted keys (stable for DVC and git diffs)."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
