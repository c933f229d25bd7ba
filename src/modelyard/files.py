"""Atomic writes: outputs appear whole or not at all (temp file, then rename)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STALE = re.compile(r"^\..+\.(?:tmp|old)-(?P<pid>\d+)$")  # `atomic_path`'s names for its copies


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


def process_alive(pid: int) -> bool:
    """Whether a process of this host still runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal check is all there is
    return "\nState:\tZ" not in status


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove what `atomic_path` left in `folder` when its process was killed outright
    (kill -9 cannot be caught): the temporary and old copies named after a dead process."""
    removed = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        found = STALE.match(entry.name)
        if found and not process_alive(int(found["pid"])):
            _remove(entry)
            removed.append(entry)
    return removed


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
