"""pixelvit.data: the specks generator, CIFAR downloads against a local server, class folders, loaders.

No test touches the internet: the CIFAR tests serve a tiny archive in the official format (pickled
batches this file writes) from an http.server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelvit.data import (
    ArrayImageDataset,
    DatasetNotFoundError,
    EpochBatchSampler,
    EvalBatchSampler,
    ImageArrays,
    cifar,
    load_split,
    make_loader,
    shared_data_dir,
    specks,
    train_transform,
)
from pixelvit.data.locations import extract_tar
from pixelvit.io import DownloadError

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("PIXELVIT_DATA", str(root))
    return root


# ---------------------------------------------------------------------------------------------
# specks
# ---------------------------------------------------------------------------------------------
def test_specks_is_deterministic_and_balanced():
    a = specks.generate(400, img_size=8, seed=3)
    b = specks.generate(400, img_size=8, seed=3)
    c = specks.generate(400, img_size=8, seed=4)
    assert a.images.shape == (400, 8, 8, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.classes == specks.CLASSES
    assert np.bincount(a.labels, minlength=len(specks.CLASSES)).min() > 20  # every class present


def test_specks_train_and_test_differ():
    train = specks.generate(50, 8, seed=0, stream=specks.SPLIT_STREAMS["train"])
    test = specks.generate(50, 8, seed=0, stream=specks.SPLIT_STREAMS["test"])
    assert not np.array_equal(train.images, test.images)


def test_specks_patch_means_carry_little_class_information():
    """The point of the dataset: averaging pixels (what a coarse patch sees first) washes the class out.

    A nearest-class-mean classifier on 8x8 patch averages should be far below what per-pixel features give.
    """
    data = specks.generate(2000, img_size=16, seed=1)
    x = data.images.astype(np.float32) / 255
    patch_means = x.reshape(len(x), 2, 8, 2, 8, 3).mean(axis=(2, 4)).reshape(len(x), -1)
    centroids = np.stack([patch_means[data.labels == c].mean(0) for c in range(len(data.classes))])
    predicted = ((patch_means[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == data.labels).mean() < 0.35  # chance is 1/8; pixel-level ViTs reach > 90 %


def test_load_split_caches_arrays(cache_root):
    first = load_split("specks", "test", img_size=8)
    cached = list((cache_root / "arrays").glob("specks-*8px-test.npz"))
    assert len(cached) == 1
    again = load_split("specks", "test", img_size=8)
    assert np.array_equal(first.images, again.images) and first.classes == again.classes


def test_unknown_dataset_names_the_known_ones(cache_root):
    with pytest.raises(DatasetNotFoundError, match="cifar10"):
        load_split("imagenet-21k", "train")


# ---------------------------------------------------------------------------------------------
# CIFAR from a local HTTP server
# ---------------------------------------------------------------------------------------------
def fake_cifar10_archive(path: Path, per_batch: int = 4) -> ImageArrays:
    """A cifar-10-python.tar.gz in the official layout with `per_batch` images per batch file."""
    rng = np.random.default_rng(0)
    names = [f"class{i}" for i in range(10)]
    members = {"batches.meta": {b"label_names": [n.encode() for n in names]}}
    all_images, all_labels = [], []
    for name in [*cifar.CIFAR["cifar10"].train_files, "test_batch"]:
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        rows = images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # official: R plane, G plane, B plane
        members[name] = {b"data": rows, b"labels": labels, b"batch_label": name.encode()}
        if name == "test_batch":
            test = ImageArrays(images, np.array(labels), names)
        else:
            all_images.append(images)
            all_labels += labels
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            data = pickle.dumps(content)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return test


class Server:
    """An http.server on 127.0.0.1 in a thread. `files` maps URL path -> bytes.

    cut_first: the first GET of each path sends only half the body (with the full Content-Length)
    and closes the connection, like a dropped transfer; later GETs honour Range requests.
    """

    def __init__(self, files: dict[str, bytes], cut_first: bool = False):
        self.files, self.cut_first, self.requests = files, cut_first, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = server.files.get(self.path)
                server.requests.append((self.path, self.headers.get("Range")))
                if body is None:
                    self.send_error(404)
                    return
                first = sum(p == self.path for p, _ in server.requests) == 1
                start = 0
                if self.headers.get("Range") and not first:
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if server.cut_first and first:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_archive(tmp_path):
    path = tmp_path / "served" / "cifar-10-python.tar.gz"
    path.parent.mkdir()
    test = fake_cifar10_archive(path)
    return path, hashlib.md5(path.read_bytes()).hexdigest(), test


def test_cifar_download_verify_extract_decode(cache_root, fake_archive):
    path, md5, expected_test = fake_archive
    with Server({"/cifar-10-python.tar.gz": path.read_bytes()}) as server:
        url = server.url("/cifar-10-python.tar.gz")
        test = load_split("cifar10", "test", url=url, md5=md5, progress=False)
        train = load_split("cifar10", "train", url=url, md5=md5, progress=False)
    assert np.array_equal(test.images, expected_test.images)  # channel order and layout decoded right
    assert np.array_equal(test.labels, expected_test.labels)
    assert len(train) == 5 * 4 and train.images.shape[1:] == (32, 32, 3)
    assert test.classes == [f"class{i}" for i in range(10)]
    assert (cache_root / "cifar10" / "cifar-10-batches-py" / "data_batch_5").exists()
    assert not list((cache_root / "cifar10").glob(".tmp-*"))  # the temporary extraction folder is gone
    assert (cache_root / "arrays" / "cifar10-32px-test.npz").exists()


def test_cifar_resized_on_request(cache_root, fake_archive):
    path, md5, _ = fake_archive
    with Server({"/c.tar.gz": path.read_bytes()}) as server:
        test = load_split("cifar10", "test", img_size=16, url=server.url("/c.tar.gz"), md5=md5, progress=False)
    assert test.images.shape == (4, 16, 16, 3)


def test_cifar_corrupted_download_is_deleted_and_raises(cache_root, fake_archive):
    path, md5, _ = fake_archive
    corrupted = bytearray(path.read_bytes())
    corrupted[100] ^= 0xFF
    with Server({"/c.tar.gz": bytes(corrupted)}) as server:
        with pytest.raises(DownloadError, match="md5 mismatch"):
            cifar.download_archive("cifar10", url=server.url("/c.tar.gz"), md5=md5, progress=False)
    downloads = cache_root / "downloads"
    assert not (downloads / "cifar-10-python.tar.gz").exists()
    assert not (cache_root / "cifar10").exists()  # nothing extracted from a bad archive


def test_cifar_interrupted_download_resumes(cache_root, fake_archive):
    path, md5, _ = fake_archive
    with Server({"/c.tar.gz": path.read_bytes()}, cut_first=True) as server:
        url = server.url("/c.tar.gz")
        with pytest.raises(DownloadError):
            cifar.download_archive("cifar10", url=url, md5=md5, progress=False)
        part = cache_root / "downloads" / "cifar-10-python.tar.gz.part"
        assert part.exists() and 0 < part.stat().st_size < path.stat().st_size
        assert not (cache_root / "downloads" / "cifar-10-python.tar.gz").exists()  # never looks complete
        archive = cifar.download_archive("cifar10", url=url, md5=md5, progress=False)
        assert server.requests[-1][1] == f"bytes={path.stat().st_size // 2}-"  # resumed, not restarted
    assert archive.read_bytes() == path.read_bytes()


def test_missing_cifar_says_where_it_looked_and_how_to_get_it(cache_root):
    with Server({}) as server:  # every path 404s, like a dead link or no network
        with pytest.raises(DatasetNotFoundError) as error:
            load_split("cifar10", "test", url=server.url("/nothing.tar.gz"), progress=False)
    message = str(error.value)
    assert str(cache_root) in message and "downloads" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


def test_interrupted_extraction_leaves_no_dataset(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"top/file{i}.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:60])
    with pytest.raises((tarfile.TarError, EOFError, OSError)):
        extract_tar(truncated, tmp_path / "out" / "data", progress=False)
    assert not (tmp_path / "out" / "data").exists()
    assert extract_tar(archive, tmp_path / "out" / "data", progress=False).joinpath("file2.txt").exists()


# ---------------------------------------------------------------------------------------------
# Class folders
# ---------------------------------------------------------------------------------------------
def write_png_tree(root: Path, splits=("train", "test"), classes=("cat", "dog", "emu"), per_class=3):
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = (24, 20) if i % 2 else (12, 12)  # different sizes and aspect ratios
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (root / (splits[0] or "") / classes[0] / "notes.txt").write_text("not an image")


def test_class_folder_tree_with_splits(cache_root, tmp_path):
    write_png_tree(tmp_path / "pets")
    train = load_split(f"folder:{tmp_path / 'pets'}", "train", img_size=16, progress=False)
    test = load_split(f"folder:{tmp_path / 'pets'}", "test", img_size=16, progress=False)
    assert train.classes == ["cat", "dog", "emu"]
    assert train.images.shape == (9, 16, 16, 3) and len(test) == 9
    assert sorted(np.bincount(train.labels).tolist()) == [3, 3, 3]


def test_class_folder_tree_without_splits_holds_out_a_test_share(cache_root, tmp_path):
    write_png_tree(tmp_path / "flat", splits=(None,), per_class=10)
    train = load_split(f"folder:{tmp_path / 'flat'}", "train", img_size=8, progress=False)
    test = load_split(f"folder:{tmp_path / 'flat'}", "test", img_size=8, progress=False)
    assert len(train) + len(test) == 30 and len(test) == 3


def test_wrong_folder_path_says_where_it_looked(cache_root, tmp_path):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nope")):
        load_split(f"folder:{tmp_path / 'nope'}", "train", img_size=8)


def test_missing_shared_archive_says_where_it_looked(cache_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELVIT_SHARED_DATA", str(tmp_path / "no_shared"))
    with pytest.raises(DatasetNotFoundError, match="no_shared.*cifar10_jpeg.tar.gz"):
        load_split("cifar10_jpeg", "test")


def test_shared_data_dir_is_beside_the_repo(monkeypatch):
    monkeypatch.delenv("PIXELVIT_SHARED_DATA", raising=False)
    assert shared_data_dir() == REPO_ROOT.parent / "shared" / "data"


@pytest.mark.shared_data
@pytest.mark.skipif(not (shared_data_dir() / "cifar10_jpeg.tar.gz").exists(),
                    reason="../shared/data/cifar10_jpeg.tar.gz is absent (only present on course machines)")
def test_shared_cifar10_jpeg_reads_the_test_split():
    # the default cache root (PIXELVIT_DATA or ~/.cache/pixelvit): extracted and decoded once, then cached
    test = load_split("cifar10_jpeg", "test", progress=False)
    assert test.images.shape == (10_000, 32, 32, 3)
    assert test.classes[:3] == ["airplane", "automobile", "bird"]
    assert np.bincount(test.labels).tolist() == [1000] * 10


# ---------------------------------------------------------------------------------------------
# Loading: order, augmentation, normalisation
# ---------------------------------------------------------------------------------------------
def tiny_arrays(count=40, size=8) -> ImageArrays:
    rng = np.random.default_rng(0)
    return ImageArrays(rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8), np.arange(count) % 4,
                       ["a", "b", "c", "d"])


def test_epoch_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    full = list(EpochBatchSampler(40, 8, seed=1, epoch=2))
    assert full == list(EpochBatchSampler(40, 8, seed=1, epoch=2))
    assert full != list(EpochBatchSampler(40, 8, seed=1, epoch=3))
    assert list(EpochBatchSampler(40, 8, seed=1, epoch=2, start_batch=3)) == full[3:]
    assert sorted(i for batch in full for i, _ in batch) == list(range(40))


def test_processes_split_each_global_batch():
    whole = list(EpochBatchSampler(40, 8, seed=0, epoch=0))
    halves = [list(EpochBatchSampler(40, 8, seed=0, epoch=0, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves, strict=True)] == whole
    shards = [list(EvalBatchSampler(10, 4, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(i for s in shards for b in s for i in b) == list(range(10))


@pytest.mark.parametrize("augmentation", ["light", "timm"])
def test_augmentation_is_reproducible_per_sample_and_leaves_global_rng_alone(augmentation):
    dataset = ArrayImageDataset(tiny_arrays(size=16), train_transform(augmentation, 16), seed=5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = dataset[(7, 0)][0]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first, dataset[(7, 0)][0])  # same (index, epoch): same augmentation
    assert first.dtype == torch.uint8 and first.shape == (3, 16, 16)
    others = [dataset[(7, epoch)][0] for epoch in range(1, 8)]
    assert any(not torch.equal(first, other) for other in others)  # other epochs: other augmentations


def test_loader_normalises_on_the_device_with_timm_statistics():
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    arrays = tiny_arrays()
    loader = make_loader(ArrayImageDataset(arrays), EvalBatchSampler(len(arrays), 16), "cpu")
    images, labels = next(iter(loader))
    raw = torch.from_numpy(arrays.images[:16]).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    assert torch.allclose(images, (raw - mean) / std, atol=1e-5)
    assert labels.tolist() == arrays.labels[:16].tolist()


def test_data_root_env_var(monkeypatch, tmp_path):
    from pixelvit.data import data_root

    monkeypatch.setenv("PIXELVIT_DATA", str(tmp_path / "x"))
    assert data_root() == tmp_path / "x" and (tmp_path / "x").is_dir()
    assert data_root(tmp_path / "y") == tmp_path / "y"
    monkeypatch.delenv("PIXELVIT_DATA")
    assert data_root() == Path(os.path.expanduser("~/.cache/pixelvit"))


def test_classification_and_segmentation_splits_are_one_type(tmp_path):
    """ImageArrays and SegmentationArrays share SplitArrays: len, img_size, num_classes, subset, the .npz cache."""
    from pixelvit.data.arrays import SplitArrays, load_arrays, save_arrays
    from pixelvit.data.segmentation import SegmentationArrays, load_segmentation_file, save_segmentation

    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    labelled = ImageArrays(images, np.arange(5) % 2, ["a", "b"], "x")
    masked = SegmentationArrays(images, np.zeros((5, 4, 4), np.uint8), ["a", "b"], "y")
    for arrays in (labelled, masked):
        assert isinstance(arrays, SplitArrays) and (len(arrays), arrays.img_size, arrays.num_classes) == (5, 4, 2)
        first = arrays.subset(3)
        assert type(first) is type(arrays) and len(first) == 3 and first.name == arrays.name
        assert len(first.targets) == 3 and arrays.subset(None) is arrays
    again = load_arrays(save_arrays(labelled, tmp_path / "l.npz"), "x")
    assert again.labels.dtype == np.int64 and (again.labels == labelled.labels).all()
    back = load_segmentation_file(save_segmentation(masked, tmp_path / "m.npz"), "y")
    assert type(back) is SegmentationArrays and (back.masks == masked.masks).all() and back.classes == ["a", "b"]
