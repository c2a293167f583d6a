"""What a new student meets in the first hour: the words match what they see, and failures point at the fix.

(issue 14) The README's count of released checkpoints is the catalog's; offline, the CIFAR-10 commands
point at the course's copy (`cifar10_jpeg`); run folders (and so progress bars) have short names.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def closed_port_url(path: str = "/cifar-10-python.tar.gz") -> str:
    """An http URL on 127.0.0.1 where nothing listens: a connection is refused at once, like offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def test_readme_counts_the_released_checkpoints_of_the_catalog():
    from pixelvit.catalog import CATALOG

    counts = re.findall(r"(\w+) released checkpoints", (REPO / "README.md").read_text())
    assert counts, "the README should say how many released checkpoints there are"
    assert set(counts) == {str(len(CATALOG))}, (counts, len(CATALOG))  # notebook 00 prints len(CATALOG)


def test_offline_cifar10_points_at_the_course_copy(tmp_path, monkeypatch):
    from pixelvit.data import load_split
    from pixelvit.data.locations import DatasetNotFoundError

    monkeypatch.setenv("PIXELVIT_SHARED_DATA", str(tmp_path / "shared"))
    with pytest.raises(DatasetNotFoundError) as raised:
        load_split("cifar10", "test", root=tmp_path / "cache", url=closed_port_url(), progress=False)
    message = str(raised.value)
    assert "--dataset cifar10_jpeg" in message and str(tmp_path / "shared") in message


def test_run_folders_of_folder_datasets_have_short_names(tmp_path):
    from pixelvit.train import TrainConfig, run_dir_of

    deep = tmp_path / "some" / "very" / "long" / "path" / "low"
    config = TrainConfig(model="vit_nano", dataset=f"folder:{deep}", img_size=8, patch_size=1, steps=10,
                         runs_dir=str(tmp_path / "runs"))
    name = run_dir_of(config).name
    assert name.startswith("vit_nano-folder-low-8px-p1-10steps-"), name
    assert str(tmp_path.name) not in name
