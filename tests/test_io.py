"""pixelvit.io: a write that fails leaves the old file untouched and no temporary behind."""

import hashlib
import os

import pytest

from pixelvit.io import atomic_write, atomic_write_json, sha256_file


def test_failed_write_keeps_the_old_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as handle:
        handle.write("half of the new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["table.csv"]


def test_successful_write_replaces_with_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "meta.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sha256_file(target) == hashlib.sha256(target.read_bytes()).hexdigest()
    assert sha256_file(tmp_path / "sub" / "meta.json") != sha256_file(_write(tmp_path / "other", b"x"))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
