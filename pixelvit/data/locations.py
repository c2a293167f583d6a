"""Where datasets live on disk, and how an archive becomes a folder without ever looking complete too early.

    cache root      PIXELVIT_DATA, or the `root` argument, or ~/.cache/pixelvit
      downloads/    archives as downloaded (verified before every use)
      <dataset>/    archives extracted, each renamed into place only once fully written
      arrays/       decoded uint8 arrays (.npz), so a second run starts in seconds

The shared course data (`../shared/data` beside the repository, or PIXELVIT_SHARED_DATA) is read
where it exists and never copied into the repository.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from pixelvit.cli import UserError

DEFAULT_ROOT = "~/.cache/pixelvit"
REPO_ROOT = Path(__file__).resolve().parents[2]  # pixelvit/data/locations.py -> repository root


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset is not where pixelvit looked; the message says where it looked and how to get it."""


def data_root(root=None) -> Path:
    """The cache root: the `root` argument, else $PIXELVIT_DATA, else ~/.cache/pixelvit (created)."""
    path = Path(root or os.environ.get("PIXELVIT_DATA") or DEFAULT_ROOT).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data_dir() -> Path:
    """The shared course data folder: $PIXELVIT_SHARED_DATA, else `../shared/data` beside the repo.

    It may not exist (it is absent on a student's laptop); callers check.
    """
    override = os.environ.get("PIXELVIT_SHARED_DATA")
    return Path(override).expanduser() if override else REPO_ROOT.parent / "shared" / "data"


def extract_tar(archive, destination, progress: bool = True) -> Path:
    """Extract `archive` so that its contents appear as `destination`, all at once or not at all.

    The members land in a temporary folder beside `destination`, which is renamed into place only
    after the last member is written; an interrupted extraction leaves no `destination` (only a
    `.tmp-*` folder that the next call ignores and a later cleanup may delete).
    If the archive has a single top-level folder, that folder becomes `destination`.
    """
    destination = Path(destination)
    if destination.exists():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".tmp-{destination.name}-"))
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in tqdm(members, desc=f"extract {Path(archive).name}", unit="file", disable=not progress):
                tar.extract(member, tmp, filter="data")  # "data": no absolute paths, links out, devices
        top_level = [p for p in tmp.iterdir()]
        source = top_level[0] if len(top_level) == 1 and top_level[0].is_dir() else tmp
        try:
            os.replace(source, destination)
        except OSError:
            if not destination.exists():  # another process finished the same extraction first: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return destination
