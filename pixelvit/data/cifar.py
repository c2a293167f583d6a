"""CIFAR-10 and CIFAR-100 from their official source, verified, extracted atomically, decoded once.

    download  https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz    (163 MB, resumable)
    verify    the md5 published on https://www.cs.toronto.edu/~kriz/cifar.html, before every use
    extract   into a temporary folder renamed into place (never a half-extracted dataset)
    decode    the pickled batches into uint8 arrays (N, 32, 32, 3), cached as .npz beside them

The official batches are Python pickles. Unpickling can run code, so they are only opened after the
archive's md5 matched the published value.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelvit.data.arrays import ImageArrays
from pixelvit.data.folders import SHARED_CIFAR10_ARCHIVE
from pixelvit.data.locations import data_root, extract_tar, shared_data_dir
from pixelvit.io import DownloadError, download_url, file_digest


@dataclass(frozen=True)
class CifarSource:
    url: str
    md5: str  # as published by the dataset's authors
    folder: str  # the archive's top-level folder
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: bytes  # class names in the meta file
    labels_key: bytes  # labels in each batch


CIFAR = {
    "cifar10": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        names_key=b"label_names",
        labels_key=b"labels",
    ),
    "cifar100": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        names_key=b"fine_label_names",
        labels_key=b"fine_labels",
    ),
}


def md5_file(path) -> str:
    return file_digest(path, "md5")  # the CIFAR site publishes md5 sums


def download_archive(name: str, root=None, url: str | None = None, md5: str | None = None, progress=True) -> Path:
    """The verified archive of `name` ("cifar10" or "cifar100") in <root>/downloads, downloading if needed.

    `url` and `md5` replace the official ones (a mirror, or a test server). A file whose md5 does not
    match is deleted, so the next call downloads a fresh copy instead of trusting a corrupted one.
    """
    source = CIFAR[name]
    url, md5 = url or source.url, md5 or source.md5
    archive = data_root(root) / "downloads" / Path(source.url).name
    if archive.exists() and md5_file(archive) == md5:
        return archive
    if archive.exists():
        archive.unlink()  # left by an earlier run that died between download and check, or tampered with
    download_url(url, archive, sha256=None, progress=progress)  # resumes an interrupted .part
    actual = md5_file(archive)
    if actual != md5:
        archive.unlink()
        raise DownloadError(
            f"md5 mismatch for {url}: expected {md5}, got {actual}. The corrupted file was deleted; "
            f"run again to download a fresh copy, or place a good copy at {archive}."
        )
    return archive


def extracted_folder(name: str, root=None, url=None, md5=None, progress=True) -> Path:
    """<root>/<name>/<archive folder>: downloaded, verified and extracted once."""
    source = CIFAR[name]
    folder = data_root(root) / name / source.folder
    if folder.exists():
        return folder
    archive = download_archive(name, root, url, md5, progress)
    return extract_tar(archive, folder, progress=progress)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="bytes")


def read_split(folder, name: str, split: str) -> ImageArrays:
    """Decode the official pickled batches of one split into uint8 (N, 32, 32, 3) arrays."""
    source, folder = CIFAR[name], Path(folder)
    files = {"train": source.train_files, "test": source.test_files}[split]
    batches = [_unpickle(folder / file) for file in files]
    rows = np.concatenate([batch[b"data"] for batch in batches])  # (N, 3072): 1024 R, then G, then B
    images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    labels = np.concatenate([np.asarray(batch[source.labels_key]) for batch in batches])
    classes = [c.decode() for c in _unpickle(folder / source.meta_file)[source.names_key]]
    return ImageArrays(np.ascontiguousarray(images, dtype=np.uint8), labels, classes, name)


def how_to_get(name: str, root=None) -> str:
    """Where to put the archive by hand; for CIFAR-10, first the course's copy, which needs no internet."""
    source = CIFAR[name]
    course_copy = ""
    if name == "cifar10":
        archive = shared_data_dir() / SHARED_CIFAR10_ARCHIVE
        course_copy = (f"Offline, use the course's copy: --dataset cifar10_jpeg ({archive}, "
                       f"{'found' if archive.exists() else 'not found here: see PIXELVIT_SHARED_DATA'}). Or ")
    return (
        f"{course_copy}on a machine with internet download {source.url} (md5 {source.md5}) and copy it into "
        f"{data_root(root) / 'downloads'}."
    )
