"""Checkpoint files, read and matched to a model without running code from them: the layer below the models.

    state = read_checkpoint("adventurer_tiny_patch1_64.pth")      # tensors, containers, numbers; no code runs
    weights = filter_state_dict(state, model, notes=notes)         # unwrapped, head dropped, embeddings resampled
    report = load_state_dict_checked(model, weights)               # every missing / extra / mis-shaped key, by name
    load_into(model, path)                                         # all three, for timm's `pretrained=True`

These functions take a model but never build one, so the model code can call them (`PatchTokenModel.
load_pretrained`, timm's hook) without importing pixelvit.pretrained, which builds models and so sits above
them. Released files from the Hugging Face hub are checked against a sha256 here too (`verify_hub_file`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from pixelvit.catalog import CATALOG, Checkpoint
from pixelvit.io import DownloadError, sha256_file
from pixelvit.resample import CLASS_TOKEN_POSITION, resample_patch_embed, resample_pos_embed

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / ModelEmaV2, torch.compile
STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict")  # where training scripts put the weights
EMA_KEYS = ("model_ema", "state_dict_ema")
HEAD_KEYS = ("head.weight", "head.bias")


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, read, or matched to a model; the message says what to do."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle needs objects outside the allowlist: loading it would run code from the file."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's tensors do not fit the model: keys missing, unexpected, or of another shape."""


# ---------------------------------------------------------------------------------------------
# Hashes: a file from the hub is the file the hub holds
# ---------------------------------------------------------------------------------------------
def _check_sha256(path: Path, expected: str, delete: list[Path], what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        for p in delete:
            p.unlink(missing_ok=True)
        raise DownloadError(
            f"sha256 mismatch for {what}: expected {expected}, got {actual}. The file was deleted; "
            "run again to download a fresh copy."
        )


# Is the hub there? Asked once per process, in about a second. Offline, huggingface_hub retries every request
# five times over ~25 s, with a warning each time, before it gives up; one socket connect says the same at once.
HUB_PROBE_TIMEOUT_S = 1.5
_HUB_ANSWERS: dict[str, bool] = {}  # endpoint -> reachable, for this process


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT) accepts a connection; False at once under HF_HUB_OFFLINE.

    One TCP connect to the hub's host and port (the name lookup gets the same deadline); the answer is kept
    for the rest of the process, so a notebook that found the hub unreachable does not wait again.
    """
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    if constants.ENDPOINT not in _HUB_ANSWERS:
        _HUB_ANSWERS[constants.ENDPOINT] = _accepts_connections(constants.ENDPOINT, timeout)
    return _HUB_ANSWERS[constants.ENDPOINT]


def _accepts_connections(url: str, timeout: float) -> bool:
    import socket
    import threading

    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    found = []
    # getaddrinfo has no timeout of its own: a dead DNS server can hold it for many seconds, so it runs in a
    # daemon thread that we stop waiting for
    lookup = threading.Thread(daemon=True, target=lambda: found.extend(
        _quiet(socket.getaddrinfo, parts.hostname, port, type=socket.SOCK_STREAM) or []))
    lookup.start()
    lookup.join(timeout)
    for family, kind, proto, _, address in found[:2]:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(address)
                return True
        except OSError:
            continue
    return False


def _quiet(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except OSError:
        return None


@contextlib.contextmanager
def _hub_offline_unless_reachable():
    """Inside: huggingface_hub in offline mode (cache only, no retries) when the hub cannot be reached."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or not hub_reachable()
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _hub_lfs_sha256(entry: Checkpoint) -> str | None:
    """The sha256 the hub stores for an LFS file (None when offline or unreachable)."""
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode() or not hub_reachable():
        return None
    try:
        (info,) = HfApi().get_paths_info(entry.repo_id, [entry.filename])
    except Exception:  # network trouble: fall back to the hash in the cache's blob name
        return None
    return info.lfs.sha256 if getattr(info, "lfs", None) is not None else None


def verify_hub_file(path, entry: Checkpoint) -> None:
    """Check a file from the hub cache against the catalog's sha256, else the hub's LFS sha256 (offline: the
    blob's name in the cache, which the hub set to that same sha256). A mismatch deletes it and raises."""
    path = Path(path)
    blob = Path(os.path.realpath(path))
    expected = entry.sha256 or _hub_lfs_sha256(entry)
    if expected is None and re.fullmatch(r"[0-9a-f]{64}", blob.name):
        expected = blob.name  # LFS blobs are stored under their sha256
    if expected is not None:
        _check_sha256(blob, expected, delete=[blob, path], what=f"{entry.repo_id}/{entry.filename}")


# ---------------------------------------------------------------------------------------------
# Read safely
# ---------------------------------------------------------------------------------------------
def _numpy_safe_globals() -> list:
    """numpy scalars and dtypes: DeiT-style scripts sometimes store e.g. a best accuracy as np.float64.
    They carry numbers, not code."""
    try:
        import numpy as np
    except ImportError:
        return []
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)]
    return [core.multiarray.scalar, np.dtype, *dtypes]


def safe_globals() -> list:
    """What the official checkpoints contain besides tensors, dicts, lists and numbers: the training
    script's argparse.Namespace (Adventurer/DeiT `main.py` saves 'args': args), plus numpy scalars."""
    return [argparse.Namespace, *_numpy_safe_globals()]


def _pickle_globals(path: Path) -> list[str] | None:
    """The classes and functions a plain pickle file would import, read with pickletools (which parses
    opcodes and runs nothing); None if the file is not a pickle. Scans the first few pickles, as
    torch's legacy format writes several in a row."""
    import pickletools

    names, strings = [], []
    with open(path, "rb") as handle:
        for count in range(4):
            try:
                for opcode, arg, _ in pickletools.genops(handle):
                    if opcode.name == "GLOBAL":
                        names.append(arg.replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(".".join(strings[-2:]))
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:
                return names if count else None
    return names


def _unsafe_globals(path: Path) -> list[str] | None:
    """What the file needs beyond the allowlist (None: not a pickle at all)."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in safe_globals()}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # zip checkpoints
    except Exception:
        names = _pickle_globals(path)  # legacy torch.save / plain pickle
    if names is None:
        return None
    return sorted({name for name in names if name not in allowed and not name.startswith("torch.")})


def read_checkpoint(path, allow_unsafe_pickle: bool = False):
    """Read a .safetensors or torch.save file into Python objects, running no code from the file.

    torch.load(weights_only=True) rebuilds only tensors, containers and numbers, plus the classes in
    `safe_globals()`. A pickle that needs anything else is refused (UnsafeCheckpointError) unless
    allow_unsafe_pickle=True, which runs the full pickle machinery: only for files you trust.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if allow_unsafe_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(safe_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # we explain failures ourselves
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        needed = _unsafe_globals(path) if "weights only load failed" in str(error).lower() else None
        if needed is None:
            raise _not_a_checkpoint(path, size, error) from None
        what = f"it needs {', '.join(needed)}" if needed else "it uses pickle features the safe loader does not read"
        raise UnsafeCheckpointError(
            f"refused to unpickle {path}: {what}, beyond pixelvit's allowlist (tensors, containers, numbers, "
            "argparse.Namespace, numpy scalars). Unpickling that can run arbitrary code. If you trust where "
            "the file came from, pass allow_unsafe_pickle=True (pixelvit.load_pretrained(path, "
            "allow_unsafe_pickle=True); `pixelvit predict --allow-unsafe-pickle`)."
        ) from None
    except Exception as error:
        raise _not_a_checkpoint(path, size, error) from None


def _not_a_checkpoint(path: Path, size: int, error: Exception) -> CheckpointError:
    reason = str(error).split(". ")[0][:200]
    return CheckpointError(
        f"{path} ({size:,} bytes) is not a readable checkpoint: {type(error).__name__}: {reason}. "
        "A truncated download looks like this: delete the file and download it again."
    )


# ---------------------------------------------------------------------------------------------
# Filter the weights for a model (timm's checkpoint_filter_fn)
# ---------------------------------------------------------------------------------------------
def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def pick_state_dict(checkpoint, model_ema: bool = False) -> tuple[dict, str | None, list[str]]:
    """(state_dict, the top-level key it came from, [notes on renamed keys]).

    Training checkpoints hold much besides the weights (optimizer, lr_scheduler, epoch, scaler, args);
    the weights are under 'model', the exponential moving average under 'model_ema'.
    """
    if model_ema:
        key = next((k for k in EMA_KEYS if isinstance(checkpoint, dict) and k in checkpoint), None)
        if key is None or not _is_state_dict(checkpoint[key]):
            found = "" if not isinstance(checkpoint, dict) else f" (top-level keys: {', '.join(map(str, checkpoint))})"
            raise CheckpointError(f"model_ema=True, but the checkpoint holds no EMA weights{found}")
    elif _is_state_dict(checkpoint):
        key = None
    else:
        key = next((k for k in STATE_DICT_KEYS if isinstance(checkpoint, dict) and _is_state_dict(checkpoint.get(k))), None)
        if key is None:
            found = f"top-level keys: {', '.join(map(str, checkpoint))}" if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise CheckpointError(f"found no weights in the checkpoint ({found}); expected one of {STATE_DICT_KEYS}")
    state = checkpoint if key is None else checkpoint[key]
    state, notes = strip_prefixes(state)
    return state, key, notes


def strip_prefixes(state: dict, prefixes=WRAPPER_PREFIXES) -> tuple[dict, list[str]]:
    """Remove wrapper prefixes that every key carries (e.g. 'module.' from DistributedDataParallel)."""
    notes = []
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                notes.append(f"stripped {prefix!r} from all {len(state)} keys")
                changed = True
    return state, notes


def filter_state_dict(checkpoint, model, *, model_ema: bool = False, notes: list | None = None) -> dict:
    """The checkpoint's weights, made to fit `model`; every change is appended to `notes`.

    Unwraps 'model' / 'model_ema' and wrapper prefixes; drops the head when the model's has another size
    (the model keeps its fresh one); resamples pos_embed (class token kept where the arch keeps it) and the
    patch filters when the model's grid or patch differ (pixelvit.resample).
    """
    notes = [] if notes is None else notes
    state, _, stripped = pick_state_dict(checkpoint, model_ema)
    notes += stripped
    state = dict(state)
    if "head.weight" in state and state["head.weight"].shape[0] != model.num_classes:
        notes.append(f"dropped head.weight, head.bias ({state['head.weight'].shape[0]} classes) for a new "
                     f"{model.num_classes}-class head")
        state = {k: v for k, v in state.items() if k not in HEAD_KEYS}
    weight, pos = state.get("patch_embed.proj.weight"), state.get("pos_embed")
    own = model.state_dict()
    if weight is not None and weight.shape[-2:] != own["patch_embed.proj.weight"].shape[-2:]:
        state["patch_embed.proj.weight"] = resample_patch_embed(weight, model.patch_embed.patch_size)
        notes.append(f"resampled patch_embed.proj.weight to patch {model.patch_embed.patch_size}")
    if pos is not None and pos.shape != own["pos_embed"].shape:
        state["pos_embed"] = resample_pos_embed(pos, model.patch_embed.grid_size,
                                                class_token=CLASS_TOKEN_POSITION[model.arch])
        notes.append(f"resampled pos_embed to a {model.patch_embed.grid_size} grid")
    return state


# ---------------------------------------------------------------------------------------------
# Check and load
# ---------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What happened between the file and the model, for `model.load_report`."""

    source: str
    file: str | None = None
    picked: str | None = None  # top-level key of the weights, e.g. 'model' or 'model_ema'
    notes: list[str] = field(default_factory=list)  # renamed / dropped / resampled keys, in order
    missing: list[str] = field(default_factory=list)  # only with strict=False
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {self.source}" + (f" [{self.picked}]" if self.picked else "")]
        lines += [f"  {note}" for note in self.notes]
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("mis-shaped", self.mismatched)):
            if keys:
                lines.append(f"  NOT loaded, {label}: {', '.join(keys)}")
        return "\n".join(lines)


def compare_state_dict(model, state: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped) keys of `state` against `model`, each a list of readable names."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    return missing, unexpected, mismatched


def _name_list(keys: list[str], limit: int = 40) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def load_state_dict_checked(model, state: dict, strict: bool = True, report: LoadReport | None = None,
                            fresh: tuple[str, ...] = ()):
    """Load `state` into `model`; with strict=True any difference is one error naming every key.
    `fresh`: keys the model may keep from its own init when the state lacks them (a new head)."""
    report = report or LoadReport(source="state dict")
    missing, unexpected, mismatched = compare_state_dict(model, state)
    missing = [k for k in missing if k not in fresh]
    if strict and (missing or unexpected or mismatched):
        parts = [f"{label} ({len(keys)}): {_name_list(keys)}" for label, keys in
                 (("missing in checkpoint", missing), ("unexpected in checkpoint", unexpected),
                  ("different shape", mismatched)) if keys]
        raise CheckpointMismatchError(
            f"{report.source} does not fit {type(model).__name__}:\n  " + "\n  ".join(parts) +
            "\nBuild the model the checkpoint was trained as (model=..., or config overrides such as "
            "embed_dim=..., depth=...), pass num_classes=N to replace the head, or strict=False to load "
            "what fits."
        )
    bad = {m.split(" ")[0] for m in mismatched}
    model.load_state_dict({k: v for k, v in state.items() if k not in bad and k not in unexpected}, strict=False)
    report.missing, report.unexpected, report.mismatched = missing, unexpected, mismatched
    return report


def load_into(model, path) -> LoadReport:
    """Load a released checkpoint file into `model` (timm's `pretrained=True` hook for pixelvit's models):
    verified against the hub's sha256 when it is a catalog file, read safely, filtered, loaded strictly."""
    path = Path(path)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    entry = next((e for e in CATALOG.values()
                  if (e.repo_id, e.filename) == (cfg.get("hf_hub_id"), cfg.get("hf_hub_filename"))), None)
    if entry is not None:
        verify_hub_file(path, entry)
    report = LoadReport(source=entry.name if entry else str(path), file=str(path))
    state = filter_state_dict(read_checkpoint(path), model, notes=report.notes)
    load_state_dict_checked(model, state, strict=True, report=report, fresh=HEAD_KEYS if "head.weight" not in state else ())
    model.load_report = report
    return report
