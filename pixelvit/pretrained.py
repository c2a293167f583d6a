"""Load pretrained weights into pixelvit models, from wherever they are, without running code from the file.

    model = pixelvit.load_pretrained("adventurer_tiny_patch1_64")   # released checkpoint (Hugging Face hub)
    model = pixelvit.load_pretrained("downloads/adventurer_tiny_patch1_64.pth")  # the same file, local
    model = pixelvit.load_pretrained("runs/vit_tiny_p4")            # a directory from pixelvit.io.save_model
    model = pixelvit.load_pretrained("https://example.org/ckpt.pth", sha256="...")
    model = pixelvit.load_pretrained("deit_tiny_patch16_224")       # timm ViT/DeiT weights -> pixelvit ViT

"Pretrained" means released or trained weights to start from; "checkpoint" in pixelvit.train means the
state a training run resumes from. `load_pretrained` runs four steps, one function each:

1. resolve the source   `resolve_source`: catalog name -> hub cache, URL -> pixelvit cache, path -> itself,
                        timm name -> timm's weights; every download is checked against a sha256, and files
                        are read by `read_checkpoint`: safetensors, or torch.load(weights_only=True) with an
                        explicit allowlist (anything else is refused unless allow_unsafe_pickle=True)
2. build the model      `build_model`: from the catalog entry, the directory's config.json, or what the
                        tensors' shapes say, at the requested size
3. filter the weights   `filter_state_dict` (timm's checkpoint_filter_fn): unwrap 'model' / 'model_ema',
                        strip 'module.' / '_orig_mod.', drop a head of another size, resample pos_embed and
                        patch_embed to the model's grid and patch
4. check and load       `load_state_dict_checked`: every missing, unexpected and mis-shaped key by name, in one error

`timm.create_model("<name>.<tag>", pretrained=True)` uses steps 3 and 4 too (`load_into`).

The model comes back in eval mode with `model.pretrained_cfg` (input size, crop, mean/std: what timm's
`resolve_data_config` reads) and `model.load_report` (what was transformed on the way).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from pixelvit.catalog import CATALOG, Checkpoint
from pixelvit.io import CONFIG_NAME, WEIGHTS_NAME, DownloadError, download_url, read_model_files, sha256_file
from pixelvit.models import MODELS, create_model, get_config, list_models, model_from_config
from pixelvit.models.timm_registry import TIMM_NAMES, pretrained_tag
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
# 1. Find the file
# ---------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """Where URL downloads go: $PIXELVIT_CACHE, else ~/.cache/pixelvit (hub files stay in the hub cache)."""
    return Path(os.environ.get("PIXELVIT_CACHE", Path.home() / ".cache" / "pixelvit")) / "checkpoints"


def _is_url(text: str) -> bool:
    return urlparse(str(text)).scheme in ("http", "https")


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


def download_checkpoint(name: str, cache_dir=None) -> Path:
    """Path to a released checkpoint in the Hugging Face cache, downloading it (resumably) if needed.

    Uses `hf_hub_download`, so HF_HUB_OFFLINE, HF_HUB_CACHE and HF_ENDPOINT work as for any hub file.
    The file is then checked against a sha256: the catalog's if known, else the one the hub reports for
    the LFS file (offline: the blob's name in the cache, which the hub set to that same sha256).
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    entry = CATALOG[name]
    try:
        with _hub_offline_unless_reachable():  # unreachable: the cache only, at once
            path = Path(hf_hub_download(entry.repo_id, entry.filename, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        why = (" (HF_HUB_OFFLINE is set)" if constants.is_offline_mode() else
               f" ({urlparse(constants.ENDPOINT).hostname} did not answer within {HUB_PROBE_TIMEOUT_S} s)"
               if not hub_reachable() else "")
        raise CheckpointError(
            f"{name} is not in the Hugging Face cache and cannot be downloaded now{why}. "
            "On a machine with internet run\n"
            f"    hf download {entry.repo_id} {entry.filename}\n"
            f"(that fills the cache; copy ~/.cache/huggingface/hub along), or download {entry.url}\n"
            f"and pass the local path: pixelvit.load_pretrained('/path/to/{entry.filename}')."
        ) from error
    except (HfHubHTTPError, OSError) as error:
        raise CheckpointError(
            f"could not download {entry.url}: {type(error).__name__}: {error}\nRun again (nothing partial "
            f"is kept under the final name), or download the file yourself and pass its local path."
        ) from error

    verify_hub_file(path, entry)
    return path


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


def checkpoint_file(name_or_path, sha256: str | None = None, cache_dir=None) -> tuple[Path, Checkpoint | None]:
    """Resolve a catalog name, URL or local path to a local file or directory (+ its catalog entry)."""
    text = str(name_or_path)
    if name_or_path is not None and Path(text).expanduser().exists():
        path = Path(text).expanduser()
        if sha256 is not None and path.is_file():
            _check_sha256(path, sha256, delete=[], what=str(path))
        return path, None
    if text in CATALOG:
        return download_checkpoint(text, cache_dir=cache_dir), CATALOG[text]
    if _is_url(text):
        entry = next((e for e in CATALOG.values() if e.url == text), None)
        sha256 = sha256 or (entry.sha256 if entry else None)
        url_hash = hashlib.sha256(text.encode()).hexdigest()[:12]  # two URLs, same file name: two files
        dest = Path(cache_dir or default_cache_dir()) / url_hash / Path(urlparse(text).path).name
        return download_url(text, dest, sha256=sha256), entry
    hint = ""
    if text in MODELS:
        hint = (f" ({text!r} names an architecture: create_model({text!r}) builds it with random weights; "
                f"its released weights: {', '.join(n for n in CATALOG if n.startswith(text)) or 'none'})")
    raise CheckpointError(
        f"{text!r} is neither a file or directory, a URL, a released checkpoint ({', '.join(CATALOG)}), "
        f"nor a timm ViT/DeiT model name{hint}."
    )


# ---------------------------------------------------------------------------------------------
# 2. Read it safely
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
# 1 + 2 together: a name or path -> a Source (the checkpoint object and what came with it)
# ---------------------------------------------------------------------------------------------
@dataclass
class Source:
    """Where weights come from and what came with them."""

    label: str  # what the caller passed
    checkpoint: object  # what the file held: a state dict, or a training checkpoint {'model': ..., ...}
    file: str | None = None
    entry: Checkpoint | None = None  # the catalog entry, for a released checkpoint
    meta: dict | None = None  # config.json of a pixelvit directory: rebuilds the model exactly
    pretrained_cfg: dict | None = None  # preprocessing that came with the weights (timm's, a directory's)
    overrides: dict = field(default_factory=dict)  # config fields the source knows (a timm ViT's)
    model_hint: str | None = None  # the training script's --model, if the checkpoint saved its args


def resolve_source(name_or_path, *, sha256: str | None = None, cache_dir=None,
                   allow_unsafe_pickle: bool = False) -> Source:
    """A released checkpoint name, a local file or pixelvit directory, an http(s) URL, or a timm ViT/DeiT name
    -> its weights, downloaded (hash-checked) and read safely. A timm tag of a release
    ('adventurer_tiny_patch1.in1k_64') names the same file as its catalog name."""
    text = str(name_or_path)
    name_or_path = text = next((e.name for e in CATALOG.values() if pretrained_tag(e) == text), name_or_path)
    if not Path(text).expanduser().exists() and text not in CATALOG and not _is_url(text) and _is_timm_name(text):
        state, overrides, cfg = _timm_weights(text)
        return Source(f"timm {text}", state, pretrained_cfg=cfg, overrides=overrides)
    path, entry = checkpoint_file(name_or_path, sha256=sha256, cache_dir=cache_dir)
    if path.name == WEIGHTS_NAME and (path.parent / CONFIG_NAME).exists():
        path = path.parent  # the weights of a pixelvit directory: use its config too
    if path.is_dir():
        meta, state = read_model_files(path)
        return Source(text, state, str(path), entry, meta=meta, pretrained_cfg=meta.get("pretrained_cfg"))
    checkpoint = read_checkpoint(path, allow_unsafe_pickle)
    args = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    return Source(text, checkpoint, str(path), entry, model_hint=getattr(args, "model", None))


# ---------------------------------------------------------------------------------------------
# 3. Filter the weights for a model (timm's checkpoint_filter_fn)
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
# 2. Build the model the weights belong to
# ---------------------------------------------------------------------------------------------
@dataclass
class StateDictShape:
    """What a state dict's shapes say about its model. `config` holds every config field the shapes
    determine; the rest (ViT's num_heads, Adventurer's ngroups, flip_rule, ...) they cannot show."""

    arch: str
    num_classes: int
    config: dict


def describe_state_dict(state: dict) -> StateDictShape:
    if any(k.startswith("layers.") for k in state):
        arch, prefix = "adventurer", "layers."
    elif any(k.startswith("blocks.") for k in state):
        arch, prefix = "vit", "blocks."
    else:
        raise CheckpointError(
            "cannot tell the architecture: no 'blocks.N' (ViT) or 'layers.N' (Adventurer) keys; "
            f"first keys: {', '.join(list(state)[:8])}"
        )
    for key in ("patch_embed.proj.weight", "pos_embed"):
        if key not in state:
            raise CheckpointError(f"the checkpoint has no {key!r}: not a ViT / Adventurer state dict")
    embed_dim, in_chans, patch_size, _ = state["patch_embed.proj.weight"].shape  # (D, C, p, p)
    n_patches = state["pos_embed"].shape[1] - 1  # (1, N + 1, D): one class token
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise CheckpointError(f"pos_embed has {n_patches} patch positions, not a square grid: pass img_size")
    config = dict(
        img_size=side * patch_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
        depth=1 + max(int(k.split(".")[1]) for k in state if k.startswith(prefix)),
    )
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        if arch == "vit":
            config["mlp_ratio"] = shapes["blocks.0.mlp.fc1.weight"][0] / embed_dim  # (hidden, D)
            config["qkv_bias"] = "blocks.0.attn.qkv.bias" in state
        else:
            d_inner = shapes["layers.0.mixer.out_proj.weight"][1]  # (D, d_inner)
            nheads = shapes["layers.0.mixer.A_log"][0]  # (nheads,)
            d_xBC, _, d_conv = shapes["layers.0.mixer.conv1d.weight"]  # (d_inner + 2 * d_state, 1, d_conv)
            config.update(
                mlp_ratio=shapes["layers.0.mlp.w1.weight"][0] / embed_dim,  # (hidden, D)
                expand=d_inner // embed_dim, headdim=d_inner // nheads,
                d_state=(d_xBC - d_inner) // 2, d_conv=d_conv,  # assumes ngroups = 1, as all released models
            )
    except KeyError as error:
        raise CheckpointError(f"the checkpoint lacks {error.args[0]!r}: not a pixelvit-compatible {arch}") from None
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    return StateDictShape(arch, num_classes, config)


def _model_name_and_overrides(shape: StateDictShape, hint: str | None = None) -> tuple[str, dict]:
    """A registered model of this arch, width and depth (the training script's name first), with every
    field the shapes determine. ViT's head count is invisible in the shapes: a registered model's, else
    64-dim heads, as all paper sizes use (pass num_heads=... otherwise)."""
    arch, config = shape.arch, dict(shape.config)
    names = list_models(f"{arch}_*")
    for name in ([hint] if hint in names else []) + names:
        registered = get_config(name)
        if (registered.embed_dim, registered.depth) == (config["embed_dim"], config["depth"]):
            return name, config
    if arch == "vit":
        config["num_heads"] = max(1, config["embed_dim"] // 64)
    return f"{arch}_tiny", config


def _vit_overrides_from_timm(timm_model) -> dict:
    """pixelvit ViTConfig fields for a timm VisionTransformer; refuse variants pixelvit's ViT lacks."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    m = timm_model
    block = m.blocks[0]
    problems = []
    if not isinstance(m, TimmViT) or type(m) is not TimmViT:
        problems.append(f"it is a {type(m).__name__}, not a plain VisionTransformer")
    else:
        if m.num_prefix_tokens != 1 or not m.has_class_token or getattr(m, "no_embed_class", False):
            problems.append("it has register/distillation tokens or no class token in pos_embed")
        if m.global_pool != "token":
            problems.append(f"it pools with {m.global_pool!r}, not the class token")
        for name in ("norm_pre", "fc_norm"):
            if not isinstance(getattr(m, name), torch.nn.Identity):
                problems.append(f"it has a {name}")
        if not isinstance(block.ls1, torch.nn.Identity):
            problems.append("it uses layer scale")
        if block.norm1.eps != 1e-6 or not isinstance(block.mlp.act, torch.nn.GELU):
            problems.append("its LayerNorm eps or MLP activation differ")
    if problems:
        raise CheckpointError(f"timm model cannot become a pixelvit ViT: {'; '.join(problems)}")
    return dict(
        img_size=tuple(m.patch_embed.img_size), patch_size=m.patch_embed.patch_size[0],
        in_chans=m.patch_embed.proj.in_channels, num_classes=m.num_classes, embed_dim=m.embed_dim,
        depth=len(m.blocks), num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / m.embed_dim, qkv_bias=block.attn.qkv.bias is not None,
    )


def _timm_weights(name: str):
    """(state_dict, ViTConfig overrides, timm's pretrained_cfg) for a timm ViT/DeiT name."""
    import timm

    try:
        with _hub_offline_unless_reachable():
            timm_model = timm.create_model(name, pretrained=True)
    except Exception as error:
        raise CheckpointError(
            f"could not get timm's pretrained weights for {name!r}: {type(error).__name__}: {error}\n"
            "timm downloads them from the Hugging Face hub (offline: only if they are in its cache). "
            "Alternatively save them on a machine with internet, "
            f"torch.save(timm.create_model({name!r}, pretrained=True).state_dict(), 'vit.pth'), "
            "and load the local file: pixelvit.load_pretrained('vit.pth')."
        ) from error
    overrides = _vit_overrides_from_timm(timm_model)
    return timm_model.state_dict(), overrides, dict(timm_model.pretrained_cfg)


def _is_timm_name(text: str) -> bool:
    """A timm model name, not one of pixelvit's own (which pixelvit registers with timm too)."""
    import timm

    base = text.split(".")[0]
    return "/" not in text and base not in TIMM_NAMES and base not in TIMM_NAMES.values() and timm.is_model(base)


def build_model(source: Source, state: dict, *, model: str | None = None, num_classes: int | None = None,
                notes: list | None = None, **overrides):
    """The model `state` belongs to (random weights), with `overrides` (e.g. img_size, patch_size) applied.

    What to build, first match wins: a pixelvit directory's config.json; `model` (a pixelvit model name or
    a released checkpoint's) or the catalog entry, with the geometry from the shapes; else a registered
    model whose width and depth fit the shapes. num_classes=None keeps the checkpoint's head size.
    """
    notes = [] if notes is None else notes
    shape = describe_state_dict(state)
    classes = shape.num_classes if num_classes is None else num_classes
    overrides = {**source.overrides, **{k: v for k, v in overrides.items() if v is not None}}
    overrides.pop("num_classes", None)
    if source.meta is not None:  # pixelvit's own directory: the config alone rebuilds the model
        return model_from_config(source.meta["arch"], {**source.meta["config"], **overrides, "num_classes": classes})
    entry = CATALOG[model] if model in CATALOG else source.entry
    name = CATALOG[model].model if model in CATALOG else model or (entry.model if entry else None)
    if name:  # the caller (or the catalog) names the model: take only the geometry from the shapes
        inferred = {k: shape.config[k] for k in ("img_size", "patch_size", "in_chans")}
    else:
        name, inferred = _model_name_and_overrides(shape, source.model_hint)
    kwargs = {**inferred, **overrides}
    changed = {k: v for k, v in kwargs.items() if getattr(get_config(name), k) != v}
    notes.insert(0, f"built {name} with {changed}" if changed else f"built {name}")
    return create_model(name, num_classes=classes, **kwargs)


# ---------------------------------------------------------------------------------------------
# 4. Check and load
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


def _pretrained_cfg(model, entry: Checkpoint | None, base: dict | None) -> dict:
    """What preprocessing the weights expect, in the keys timm's resolve_data_config reads."""
    cfg = {**model.pretrained_cfg, **(base or {})}  # the model's own (pixelvit.models.base.data_cfg), updated
    if entry is not None:
        cfg.update(crop_pct=entry.crop_pct, top1=entry.top1, checkpoint=entry.name, flip_rule=entry.flip_rule)
    h, w = model.patch_embed.img_size
    cfg["input_size"] = (model.patch_embed.proj.in_channels, h, w)  # the model accepts only this size
    cfg["num_classes"] = model.num_classes
    return cfg


def load_pretrained(name_or_path, *, model_ema: bool = False, num_classes: int | None = None, strict: bool = True,
                    allow_unsafe_pickle: bool = False, model: str | None = None, img_size=None, patch_size=None,
                    sha256: str | None = None, cache_dir=None, verbose: bool = True, **overrides):
    """A pixelvit model with pretrained weights, in eval mode, on the CPU.

    name_or_path: a released checkpoint (`pixelvit.catalog.list_checkpoints()`), a local .pth /
        .safetensors file, a directory written by `pixelvit.io.save_model`, an http(s) URL, or a timm
        ViT/DeiT name such as "deit_tiny_patch16_224".
    model_ema: take the exponential-moving-average weights ('model_ema') of a training checkpoint.
    num_classes: a new head of this size (0 = none); the checkpoint's head is then dropped (and said so).
    strict: any missing, unexpected or mis-shaped key raises CheckpointMismatchError naming all of them;
        strict=False loads what fits and lists the rest in `model.load_report`.
    allow_unsafe_pickle: unpickle objects beyond the allowlist (runs code from the file: trusted files only).
    model: the pixelvit model name to build, when the file cannot say (otherwise: catalog entry,
        config.json, or the tensors' shapes). `**overrides` are further config fields (e.g. num_heads).
    img_size / patch_size: build the model at this size; position and patch embeddings are resampled.
    verbose: print what was built and which keys were renamed or dropped (also in `model.load_report`).
    sha256: expected hash of a URL download or local file (catalog files are checked against the hub's
        hash; a URL without one is only checked for completeness).
    """
    source = resolve_source(name_or_path, sha256=sha256, cache_dir=cache_dir, allow_unsafe_pickle=allow_unsafe_pickle)
    report = LoadReport(source=source.label, file=source.file)
    state, report.picked, _ = pick_state_dict(source.checkpoint, model_ema)
    if source.overrides:
        report.notes.append(f"converted {source.label} (identical parameter names)")
    net = build_model(source, state, model=model, num_classes=num_classes, notes=report.notes,
                      img_size=img_size, patch_size=patch_size, **overrides)
    state = filter_state_dict(source.checkpoint, net, model_ema=model_ema, notes=report.notes)
    fresh = HEAD_KEYS if "head.weight" not in state else ()  # no head in the weights: the model's new one
    load_state_dict_checked(net, state, strict=strict, report=report, fresh=fresh)
    net.eval()
    net.pretrained_cfg = net.default_cfg = _pretrained_cfg(net, source.entry, source.pretrained_cfg)
    net.load_report = report
    if verbose:
        print(report)
    return net


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


__all__ = [
    "CheckpointError", "CheckpointMismatchError", "UnsafeCheckpointError", "LoadReport", "Source",
    "load_pretrained", "resolve_source", "build_model", "filter_state_dict", "load_into",
    "download_checkpoint", "verify_hub_file", "checkpoint_file", "read_checkpoint", "pick_state_dict",
    "strip_prefixes", "describe_state_dict", "compare_state_dict", "load_state_dict_checked", "safe_globals",
]
