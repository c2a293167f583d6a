"""Files that never look complete when they are not: atomic writes, hashes and verified downloads.

Every place in pixelvit that writes something a later run trusts (checkpoints, datasets, result
tables) goes through here, so an interrupted run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from pixelvit._version import __version__

CHUNK_BYTES = 1 << 20


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path`; on success it replaces `path` in one rename.

    If the block raises (or the process dies), `path` keeps its old content (or stays absent);
    the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def file_digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks (sha256 for checkpoints, md5 where a source publishes md5)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path) -> str:
    return file_digest(path, "sha256")


class DownloadError(RuntimeError):
    """A download failed or its content did not match the expected hash."""


def download_url(url: str, dest, sha256: str | None = None, progress: bool = True, timeout: float = 60) -> Path:
    """Download `url` to `dest`, resuming a previous partial transfer, then verify and move into place.

    The bytes land in `dest + ".part"` first; only a complete file whose sha256 matches (when given)
    is renamed to `dest`. A hash mismatch deletes the partial file and raises DownloadError, so a
    corrupted download is never mistaken for a good one. An interrupted transfer leaves only the
    `.part` file, which the next call resumes with an HTTP Range request when the server allows it.
    """
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256_file(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    already = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={already}-"} if already else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = already and response.status == 206
            if not resumed:
                already = 0
            total = response.headers.get("Content-Length")
            total = int(total) + already if total is not None else None
            with open(part, "ab" if resumed else "wb") as handle, tqdm(
                total=total, initial=already, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"download {dest.name}", disable=not progress,
            ) as bar:
                for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                    handle.write(block)
                    bar.update(len(block))
            if total is not None and part.stat().st_size != total:
                raise DownloadError(
                    f"download of {url} stopped at {part.stat().st_size} of {total} bytes; "
                    f"run again to resume from {part}"
                )
    except (urllib.error.URLError, OSError) as error:
        if isinstance(error, DownloadError):
            raise
        reason = getattr(error, "reason", None) or error  # a URLError wraps the socket's error
        kept = part.stat().st_size if part.exists() else 0  # nothing arrived: there is no partial file to name
        resume = f"; the {kept:,} bytes that arrived are kept in {part}: run again to resume" if kept else ""
        raise DownloadError(f"could not download {url} ({reason}){resume}.") from error
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256:
            part.unlink()
            raise DownloadError(
                f"sha256 mismatch for {url}: expected {sha256}, got {actual}. The corrupted file was "
                "deleted; run again to download a fresh copy."
            )
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# pixelvit's own model files: a directory with `model.safetensors` (weights) and `config.json`
# (architecture + config dataclass as a dict). Nothing is pickled, so loading runs no code.
# ---------------------------------------------------------------------------------------------
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class NonFiniteWeights(ValueError):
    """A model with NaN or infinite weights was about to be saved; nothing was written."""


def save_model(model, directory, extra: dict | None = None) -> Path:
    """Write `model` as safetensors weights + JSON config into `directory`, each file atomically.

    The weights are written first and the config last, so a directory with a config.json always has
    the weights that belong to it. `extra` (e.g. training step, accuracy) is stored in the JSON.
    Weights that are NaN or infinite raise NonFiniteWeights before anything is written: no file
    pixelvit writes holds them.
    """
    import torch  # not at the top: only saving needs torch
    from safetensors.torch import save as safetensors_bytes

    directory = Path(directory)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise NonFiniteWeights(f"not saving {directory}: {len(bad)} weight tensors hold NaN or inf "
                               f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    with atomic_write(directory / WEIGHTS_NAME) as handle:
        handle.write(safetensors_bytes(state))
    meta = {
        "arch": model.arch,
        "config": dataclasses.asdict(model.config),
        "pixelvit_version": __version__,
        **(extra or {}),
    }
    atomic_write_json(directory / CONFIG_NAME, meta)
    return directory


def read_model_config(directory) -> dict:
    """The JSON half of a directory written by `save_model` (arch, config, extras), weights not read."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    missing = [str(p) for p in (config_path, weights_path) if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"{directory} is not a pixelvit model directory: missing {', '.join(missing)}. "
            "Such a directory is written by pixelvit.io.save_model (and by `pixelvit train`)."
        )
    return json.loads(config_path.read_text())


def read_model_files(directory) -> tuple[dict, dict]:
    """Return (meta, state_dict) from a directory written by `save_model`."""
    from safetensors.torch import load_file

    meta = read_model_config(directory)
    return meta, load_file(str(Path(directory) / WEIGHTS_NAME))


def new_figure(**kwargs):
    """A matplotlib Figure for saving to a file, outside pyplot's global state.

    Library code that writes plots must not switch the backend or leave figures open: in a notebook
    that would stop later figures from showing inline. A bare `Figure` needs neither.
    """
    from matplotlib.figure import Figure

    return Figure(**kwargs)

