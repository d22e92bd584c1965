"""Atomic writes: readers see the old file or the new one, never half of one, and no temp files linger."""

import json

import pytest

from data.io import atomic_write_json, atomic_write_jsonl, atomic_write_text


class Unserialisable:
    def __str__(self):
        raise RuntimeError("cannot serialise")


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        atomic_write_json(path, {"a": Unserialisable()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_writes_create_parents_and_replace(tmp_path):
    path = tmp_path / "deep" / "dir" / "x.jsonl"
    atomic_write_jsonl(path, [{"i": 1}, {"i": 2}])
    assert [json.loads(line)["i"] for line in path.read_text().splitlines()] == [1, 2]
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
