"""pixelvit.io: a write that fails leaves the old file untouched and no temporary behind."""

import hashlib
import os

import pytest
import torch

from pixelvit.io import (
    CHUNK_BYTES,
    NonFiniteWeights,
    atomic_write,
    atomic_write_json,
    file_digest,
    save_model,
    sha256_file,
)


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


def test_file_digests_match_published_test_vectors(tmp_path):
    """FIPS 180-2's "abc" vector and RFC 1321's; a file larger than one read block is hashed whole."""
    (tmp_path / "abc").write_bytes(b"abc")
    assert sha256_file(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert file_digest(tmp_path / "abc", "md5") == "900150983cd24fb0d6963f7d28e17f72"
    big = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)  # two blocks and a bit
    (tmp_path / "big").write_bytes(big)
    assert sha256_file(tmp_path / "big") == hashlib.sha256(big).hexdigest()


def test_save_model_refuses_non_finite_weights_and_keeps_the_old_files(tmp_path):
    from pixelvit.models import create_model

    model = create_model("vit_micro", embed_dim=16, depth=1, num_heads=2, img_size=8, patch_size=4)
    save_model(model, tmp_path / "model")
    before = {name: (tmp_path / "model" / name).read_bytes() for name in ("model.safetensors", "config.json")}
    for bad in (float("nan"), float("inf")):
        with torch.no_grad():
            next(model.parameters())[0] = bad
        with pytest.raises(NonFiniteWeights, match="NaN or inf"):
            save_model(model, tmp_path / "model")
        assert {name: (tmp_path / "model" / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(tmp_path / "model")) == ["config.json", "model.safetensors"]  # no temporaries
