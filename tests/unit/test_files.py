"""Atomic writes: an output appears whole, or the previous one stays as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard.files import atomic_path, read_json, write_json


class Boom(Exception):
    pass


def listing(directory: Path) -> list[str]:
    """Every path under a folder, hidden ones included, relative and sorted."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_write_json_lands_whole_with_sorted_keys(tmp_path: Path) -> None:
    path = tmp_path / "metrics" / "test.json"  # the parent folder does not exist yet
    write_json(path, {"test_roc_auc": 0.9, "test_accuracy": 0.8, "path": Path("a/b")})
    assert path.read_text() == '{\n  "path": "a/b",\n  "test_accuracy": 0.8,\n  "test_roc_auc": 0.9\n}\n'
    assert read_json(path) == {"path": "a/b", "test_accuracy": 0.8, "test_roc_auc": 0.9}
    assert listing(tmp_path) == ["metrics", "metrics/test.json"]


def test_write_json_replaces_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "scores.json"
    write_json(path, {"a": 1, "b": 2})
    write_json(path, {"c": 3})
    assert read_json(path) == {"c": 3}
    assert listing(tmp_path) == ["scores.json"]


def test_failed_write_json_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "scores.json"
    write_json(path, {"a": 1})
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        write_json(path, circular)
    assert read_json(path) == {"a": 1}
    assert listing(tmp_path) == ["scores.json"]


def test_error_inside_the_block_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(b"old model")
    with pytest.raises(Boom), atomic_path(path) as temporary:
        temporary.write_bytes(b"half a new mod")
        raise Boom
    assert path.read_bytes() == b"old model"
    assert listing(tmp_path) == ["model.pkl"]


def test_error_inside_the_block_writes_nothing_when_there_was_no_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    with pytest.raises(Boom), atomic_path(path) as temporary:
        temporary.write_bytes(b"half")
        raise Boom
    assert listing(tmp_path) == []


def test_file_is_invisible_until_the_block_ends(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    with atomic_path(path) as temporary:
        assert temporary != path and temporary.parent == path.parent
        temporary.write_text("new")
        assert path.read_text() == "old"
    assert path.read_text() == "new"
    assert listing(tmp_path) == ["out.txt"]


def write_folder(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)


def test_folder_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    write_folder(target, {"network.pt": "old weights", "stale.txt": "from an older version"})
    with atomic_path(target) as temporary:
        write_folder(temporary, {"network.pt": "new weights", "meta.json": "{}"})
    assert listing(tmp_path) == ["bundle", "bundle/meta.json", "bundle/network.pt"]
    assert (target / "network.pt").read_text() == "new weights"


def test_error_while_writing_a_folder_keeps_the_previous_folder(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    write_folder(target, {"network.pt": "old weights", "meta.json": "old meta"})
    with pytest.raises(Boom), atomic_path(target) as temporary:
        write_folder(temporary, {"network.pt": "new weights"})
        raise Boom
    assert listing(tmp_path) == ["bundle", "bundle/meta.json", "bundle/network.pt"]
    assert (target / "network.pt").read_text() == "old weights"
    assert (target / "meta.json").read_text() == "old meta"


def test_leftover_temporary_from_a_killed_run_is_cleared(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    with atomic_path(path) as temporary:
        temporary.write_text("[]")
        leftover = temporary
    leftover.mkdir()  # as if a previous process with this pid died mid-write
    (leftover / "junk").write_text("junk")
    write_json(path, [1, 2])
    assert json.loads(path.read_text()) == [1, 2]
    assert listing(tmp_path) == ["out.json"]
