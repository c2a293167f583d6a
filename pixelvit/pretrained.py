"""Load pretrained weights into pixelvit models, from wherever they are, without running code from the file.

    model = pixelvit.load_pretrained("adventurer_tiny_patch1_64")   # released checkpoint (Hugging Face hub)
    model = pixelvit.load_pretrained("downloads/adventurer_tiny_patch1_64.pth")  # the same file, local
    model = pixelvit.load_pretrained("runs/vit_tiny_p4")            # a directory from pixelvit.io.save_model
    model = pixelvit.load_pretrained("https://example.org/ckpt.pth", sha256="...")
    model = pixelvit.load_pretrained("deit_tiny_patch16_224")       # timm ViT/DeiT weights -> pixelvit ViT

"Pretrained" means released or trained weights to start from; "checkpoint" in pixelvit.train means the
state a training run resumes from. `load_pretrained` runs four steps, one function each; steps 1 and 2 live
here, steps 3 and 4 (and the safe reading of step 1) in pixelvit.checkpoints, below the models:

1. resolve the source   `resolve_source`: catalog name -> hub cache, URL -> pixelvit cache, path -> itself,
                        timm name -> timm's weights; every download is checked against a sha256, and files
                        are read by `checkpoints.read_checkpoint`: safetensors, or torch.load(weights_only=True)
                        with an explicit allowlist (anything else is refused unless allow_unsafe_pickle=True)
2. build the model      `build_model`: from the catalog entry, the directory's config.json, or what the
                        tensors' shapes say, at the requested size
3. filter the weights   `checkpoints.filter_state_dict` (timm's checkpoint_filter_fn): unwrap 'model' /
                        'model_ema', strip 'module.' / '_orig_mod.', drop a head of another size, resample
                        pos_embed and patch_embed to the model's grid and patch
4. check and load       `checkpoints.load_state_dict_checked`: every missing, unexpected and mis-shaped key by
                        name, in one error

`timm.create_model("<name>.<tag>", pretrained=True)` builds the model itself and runs steps 3 and 4
(`checkpoints.load_into`, through `PatchTokenModel.load_pretrained`).

The model comes back in eval mode with `model.pretrained_cfg` (input size, crop, mean/std: what timm's
`resolve_data_config` reads) and `model.load_report` (what was transformed on the way).
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from pixelvit.catalog import CATALOG, Checkpoint
from pixelvit.checkpoints import (  # noqa: F401  (the names pixelvit.pretrained has always offered)
    EMA_KEYS,
    HEAD_KEYS,
    HUB_PROBE_TIMEOUT_S,
    STATE_DICT_KEYS,
    WRAPPER_PREFIXES,
    CheckpointError,
    CheckpointMismatchError,
    LoadReport,
    UnsafeCheckpointError,
    _check_sha256,
    _hub_offline_unless_reachable,
    compare_state_dict,
    filter_state_dict,
    hub_reachable,
    load_into,
    load_state_dict_checked,
    pick_state_dict,
    read_checkpoint,
    safe_globals,
    strip_prefixes,
    verify_hub_file,
)
from pixelvit.io import CONFIG_NAME, WEIGHTS_NAME, download_url, read_model_files
from pixelvit.models.registry import (
    MODELS,
    TIMM_NAMES,
    create_model,
    get_config,
    list_models,
    model_from_config,
    pretrained_tag,
)


# ---------------------------------------------------------------------------------------------
# 1. Resolve the source: find the file (downloaded and hash-checked), read it safely
# ---------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """Where URL downloads go: $PIXELVIT_CACHE, else ~/.cache/pixelvit (hub files stay in the hub cache)."""
    return Path(os.environ.get("PIXELVIT_CACHE", Path.home() / ".cache" / "pixelvit")) / "checkpoints"


def _is_url(text: str) -> bool:
    return urlparse(str(text)).scheme in ("http", "https")


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
    close = difflib.get_close_matches(text, CATALOG, n=1)  # a typo of a release, not a list of all of them
    known = f"did you mean {close[0]}?" if close else f"pixelvit.catalog.list_checkpoints() lists the {len(CATALOG)}"
    raise CheckpointError(
        f"{text!r} is neither a file or directory, a URL, a released checkpoint ({known}), "
        f"nor a timm ViT/DeiT model name{hint}."
    )


# ---------------------------------------------------------------------------------------------
# 1. (cont.) a name or path -> a Source (the checkpoint object and what came with it)
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
# Steps 1 to 4: load_pretrained
# ---------------------------------------------------------------------------------------------
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



__all__ = [
    "CheckpointError", "CheckpointMismatchError", "UnsafeCheckpointError", "LoadReport", "Source",
    "load_pretrained", "resolve_source", "build_model", "filter_state_dict", "load_into",
    "download_checkpoint", "verify_hub_file", "checkpoint_file", "read_checkpoint", "pick_state_dict",
    "strip_prefixes", "describe_state_dict", "compare_state_dict", "load_state_dict_checked", "safe_globals",
]
