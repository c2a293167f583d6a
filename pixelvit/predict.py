"""Use a pretrained model: ImageNet preprocessing, class names, top-k predictions, and `pixelvit predict`.

    pixelvit predict cat.jpg dog.png --model adventurer_base_patch1_224 --top 5
    pixelvit predict cat.jpg --model adventurer_tiny_patch1_64 --checkpoint ~/Downloads/adventurer_tiny_patch1_64.pth
    pixelvit predict cat.jpg --checkpoint pixelvit/assets/cifar10_adventurer_nano     # shipped: works offline

Preprocessing is the evaluation transform of DeiT / Adventurer, built by timm from `model.pretrained_cfg`:
resize the shorter side to img_size / crop_pct (bicubic), center-crop img_size x img_size, scale to [0, 1],
normalize with the ImageNet mean and std. crop_pct comes from the checkpoint's catalog entry (1.0 for the
patch-1 models at 128 and 224 px, 0.875 at 64 px and for patch 16 at 224 px).

On a CPU the patch-1 models are slow but work: without gradients every Adventurer block runs its tokens in
blocks (pixelvit.ops.mixer, tested equal to the plain forward), so time grows linearly with the tokens and
memory stays flat. `python -m benchmarks` records the figures (benchmarks/results/results.md, full-scale
section): Adventurer-Tiny and -Base at patch 1 and 224 px (50,177 tokens; 50,178 inside the mixer), one
image on 2 shared CPU cores, with seconds, GFLOP/s against a matmul measured in the same process, and the
whole process's peak memory.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import torch

from pixelvit.catalog import CATALOG
from pixelvit.cli import HelpFormatter, UserError, report_user_errors


def data_config(model) -> dict:
    """input_size, interpolation, mean, std, crop_pct, crop_mode for `model`, via timm."""
    from timm.data import resolve_data_config

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    h, w = model.patch_embed.img_size
    cfg["input_size"] = (model.patch_embed.proj.in_channels, h, w)  # the one size the model accepts
    return resolve_data_config(pretrained_cfg=cfg)


def eval_transform(model):
    """PIL image -> normalized (C, H, W) tensor the way the model was evaluated."""
    from timm.data import create_transform

    return create_transform(**data_config(model), is_training=False)


def class_names(num_classes: int = 1000) -> list[str]:
    """Human-readable ImageNet-1k class names (from timm); 'class i' for other heads."""
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [f"class {i}" for i in range(num_classes)]


def normalize(model, pictures: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) pictures in [0, 1], already at the model's size -> normalized with its mean and std."""
    cfg = data_config(model)
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    return (pictures - mean) / std


@torch.no_grad()
def predict(model, images, top: int = 5, batch_size: int = 8) -> list[list[tuple[float, int, str]]]:
    """For each PIL image (or already normalized (C, H, W) tensor): the `top` (probability, class index,
    class name), most likely first."""
    transform = eval_transform(model)
    reference = next(model.parameters())
    probabilities = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([image if isinstance(image, torch.Tensor) else transform(image.convert("RGB"))
                             for image in images[start:start + batch_size]])
        logits = model(batch.to(device=reference.device, dtype=reference.dtype))
        probabilities.append(logits.float().softmax(dim=-1).cpu())  # (B, num_classes)
    probabilities = torch.cat(probabilities)
    labels = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")  # timm's key for class names
    names = list(labels) if labels and len(labels) == probabilities.shape[-1] else class_names(probabilities.shape[-1])
    values, indices = probabilities.topk(min(top, probabilities.shape[-1]), dim=-1)
    return [
        [(p, i, names[i]) for p, i in zip(row_values.tolist(), row_indices.tolist(), strict=True)]
        for row_values, row_indices in zip(values, indices, strict=True)
    ]


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 8) -> float:
    """Top-1 accuracy (%) on already preprocessed images (B, C, H, W)."""
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size].to(device))
        correct += (logits.argmax(-1).cpu() == labels[start:start + batch_size]).sum().item()
    return 100.0 * correct / len(images)


def detect_flip_rule(model, images: torch.Tensor, labels: torch.Tensor, rules=None, batch_size: int = 8):
    """Which token-flip schedule were an Adventurer's weights trained with? Try each on labelled images.
    (It lives here, beside `accuracy`, because it is an evaluation: pixelvit.pretrained only loads weights.)

    The released code flips the token order in layers 2 and 3 only (`flip = (n // 2 == 1)`), which looks
    like a slip for "every two layers"; the weights work well only with the schedule they were trained
    with. Returns (best rule, {rule: top-1 %}). Use a few hundred ImageNet validation images: with
    random weights or a handful of images the numbers say nothing.
    """
    import dataclasses

    from pixelvit.models import model_from_config

    if model.arch != "adventurer":
        raise ValueError(f"flip rules exist only for Adventurer, not {model.arch}")
    if rules is None:
        from pixelvit.models.adventurer import FLIP_RULES

        rules = FLIP_RULES
    state = model.state_dict()
    reference = next(model.parameters())
    results = {}
    for rule in rules:
        candidate = model_from_config("adventurer", {**dataclasses.asdict(model.config), "flip_rule": rule})
        candidate.load_state_dict(state)
        candidate.to(device=reference.device, dtype=reference.dtype).eval()
        results[rule] = accuracy(candidate, images, labels, batch_size)
    best = max(results, key=results.get)
    return best, results


DEFAULT_MODEL = "adventurer_tiny_patch1_64"  # what `pixelvit predict IMAGE` downloads (ImageNet classes)


class CannotLoad(UserError):
    """The weights cannot be had or read (offline, a bad file): one line, exit code 1."""

    exit_code = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelvit predict", description="Top-k classes for images.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("images", nargs="+", help="image files (anything PIL opens)")
    parser.add_argument("--model", default=None,
                        help=f"released checkpoint (pixelvit.catalog.list_checkpoints()), a timm ViT/DeiT name, a "
                             f"URL or a path (default: {DEFAULT_MODEL}, downloaded once); with --checkpoint, the "
                             "released checkpoint whose crop to use when the file does not say")
    parser.add_argument("--checkpoint", help="local file or directory to load instead of downloading --model, "
                                             f"e.g. the model shipped with pixelvit: {shipped_model_path()}")
    parser.add_argument("--top", type=int, default=5, help="how many classes to print per image")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--model-ema", action="store_true", help="use the EMA weights of a training checkpoint")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="unpickle objects beyond the allowlist (runs code from the file: trusted files only)")
    return parser


def shipped_model_path() -> str:
    """The model folder inside the package (pixelvit.assets), relative to the current folder when inside it."""
    from pixelvit.assets import CIFAR10_MODEL

    try:
        return str(CIFAR10_MODEL.relative_to(Path.cwd()))
    except ValueError:
        return str(CIFAR10_MODEL)


def open_images(paths: list[str]) -> list:
    """Every image, opened and decoded, before any model work; a UserError naming those that are not."""
    from PIL import Image, UnidentifiedImageError

    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise UserError(f"no such image: {', '.join(missing)}")
    images, unreadable = [], []
    for path in paths:
        try:
            image = Image.open(path)
            image.load()  # the whole file: a truncated image fails here, not after the model has loaded
            images.append(image)
        except (UnidentifiedImageError, OSError, SyntaxError) as error:  # SyntaxError: PIL on some broken files
            unreadable.append(f"{path} ({error})")
    if unreadable:
        raise UserError(f"not an image PIL can read: {'; '.join(unreadable)}")
    return images


def saved_crop_pct(path) -> float | None:
    """The crop a pixelvit model folder (or its model.safetensors) was saved with; None if the file does not say."""
    from pixelvit.io import CONFIG_NAME, WEIGHTS_NAME

    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent if path.name == WEIGHTS_NAME else None
    if folder is None or not (folder / CONFIG_NAME).is_file():
        return None
    return (json.loads((folder / CONFIG_NAME).read_text()).get("pretrained_cfg") or {}).get("crop_pct")


def why_not_downloadable(name: str) -> str | None:
    """Why the released checkpoint `name` cannot be had now (not in the Hugging Face cache, hub not
    reachable), or None when it can. Asks the hub once (pixelvit.checkpoints.hub_reachable)."""
    from huggingface_hub import constants, try_to_load_from_cache

    from pixelvit.checkpoints import HUB_PROBE_TIMEOUT_S, hub_reachable

    entry = CATALOG[name]
    if isinstance(try_to_load_from_cache(entry.repo_id, entry.filename), str) or hub_reachable():
        return None
    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    return f"{urlparse(constants.ENDPOINT).hostname} did not answer within {HUB_PROBE_TIMEOUT_S} s"


def check_weights_source(args) -> None:
    """A UserError for a --checkpoint that does not exist, or a released --model that cannot be downloaded now:
    before the model is built. (A misspelt --model is told by pixelvit.pretrained, with a did-you-mean.)"""
    if args.checkpoint:
        if urlparse(args.checkpoint).scheme not in ("http", "https") and not Path(args.checkpoint).expanduser().exists():
            raise UserError(f"--checkpoint {args.checkpoint}: no such file or directory")
        if args.model is not None and args.model not in CATALOG:
            close = difflib.get_close_matches(args.model, CATALOG, n=1)
            raise UserError(f"with --checkpoint, --model names the released checkpoint whose crop to use; "
                            f"{args.model!r} is none{f' (did you mean {close[0]}?)' if close else ''}")
        return
    name = args.model or DEFAULT_MODEL
    why = why_not_downloadable(name) if name in CATALOG else None
    if why:
        entry = CATALOG[name]
        raise CannotLoad(
            f"{name} is not downloaded and cannot be downloaded now ({why}). Offline, use the model shipped with "
            f"pixelvit (CIFAR-10 classes): --checkpoint {shipped_model_path()}. Or, on a machine with internet, "
            f"download {entry.url} (or run `hf download {entry.repo_id} {entry.filename}`) and pass "
            "--checkpoint PATH."
        )


def run_command(args) -> int:
    from pixelvit.checkpoints import CheckpointError
    from pixelvit.io import DownloadError
    from pixelvit.ops.progress import layer_progress
    from pixelvit.pretrained import load_pretrained

    images = open_images(args.images)  # a path that is not an image stops here, before any model work
    check_weights_source(args)
    source = args.checkpoint or args.model or DEFAULT_MODEL
    try:
        model = load_pretrained(source, model_ema=args.model_ema, allow_unsafe_pickle=args.allow_unsafe_pickle,
                                verbose=False)
    except (CheckpointError, DownloadError, FileNotFoundError) as error:
        raise CannotLoad(str(error)) from error
    if args.checkpoint and args.model in CATALOG and saved_crop_pct(args.checkpoint) is None:
        model.pretrained_cfg["crop_pct"] = CATALOG[args.model].crop_pct  # the file does not say; the catalog does
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    model.to(device)  # the scan's chunk length follows the device by itself (pixelvit.ops.ssd.ssd_scan)

    cfg = data_config(model)
    _, h, w = cfg["input_size"]
    start = time.perf_counter()
    with layer_progress(model, calls=-(-len(images) // 8), desc="forward"):  # predict's batches of 8
        results = predict(model, images, top=args.top)
    seconds = time.perf_counter() - start
    print(f"{source}: {h}x{w} input, {model.num_tokens:,} tokens, crop {cfg['crop_pct']}, "
          f"{seconds:.2f} s for {len(images)} image(s) on {device}")
    for path, rows in zip(args.images, results, strict=True):
        print(path)
        for probability, _, name in rows:
            print(f"  {probability:7.2%}  {name}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return report_user_errors("pixelvit predict", lambda: run_command(args))


if __name__ == "__main__":
    sys.exit(main())
