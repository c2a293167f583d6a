"""Use a pretrained model: ImageNet preprocessing, class names, top-k predictions, and `pixelvit predict`.

    pixelvit predict cat.jpg dog.png --model adventurer_base_patch1_224 --top 5
    pixelvit predict cat.jpg --model adventurer_tiny_patch1_64 --checkpoint ~/Downloads/adventurer_tiny_patch1_64.pth

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
import sys
import time
from pathlib import Path

import torch

from pixelvit.catalog import CATALOG


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pixelvit predict", description="Top-k ImageNet classes for images.")
    parser.add_argument("images", nargs="+", help="image files (anything PIL opens)")
    parser.add_argument("--model", default="adventurer_tiny_patch1_64",
                        help=f"released checkpoint ({', '.join(CATALOG)}), a timm ViT/DeiT name, a URL or a "
                             "path; with --checkpoint only its preprocessing (crop) is used")
    parser.add_argument("--checkpoint", help="local file or directory to load instead of downloading --model")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--model-ema", action="store_true", help="use the EMA weights of a training checkpoint")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="unpickle objects beyond the allowlist (runs code from the file: trusted files only)")
    args = parser.parse_args(argv)

    from PIL import Image

    from pixelvit.io import DownloadError
    from pixelvit.ops.progress import layer_progress
    from pixelvit.pretrained import CheckpointError, load_pretrained

    missing = [path for path in args.images if not Path(path).is_file()]
    if missing:
        print(f"pixelvit predict: no such image: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        model = load_pretrained(args.checkpoint or args.model, model_ema=args.model_ema,
                                allow_unsafe_pickle=args.allow_unsafe_pickle, verbose=False)
    except (CheckpointError, DownloadError, FileNotFoundError) as error:
        print(f"pixelvit predict: {error}", file=sys.stderr)
        return 1
    entry = CATALOG.get(args.model)
    if args.checkpoint and entry is not None and "checkpoint" not in model.pretrained_cfg:
        model.pretrained_cfg["crop_pct"] = entry.crop_pct  # the file does not say; the catalog does
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    model.to(device)  # the scan's chunk length follows the device by itself (pixelvit.ops.ssd.ssd_scan)

    images = [Image.open(path) for path in args.images]
    cfg = data_config(model)
    _, h, w = cfg["input_size"]
    start = time.perf_counter()
    with layer_progress(model, calls=-(-len(images) // 8), desc="forward"):  # predict's batches of 8
        results = predict(model, images, top=args.top)
    seconds = time.perf_counter() - start
    print(f"{args.checkpoint or args.model}: {h}x{w} input, {model.num_tokens:,} tokens, crop {cfg['crop_pct']}, "
          f"{seconds:.2f} s for {len(images)} image(s) on {device}")
    for path, rows in zip(args.images, results, strict=True):
        print(path)
        for probability, _, name in rows:
            print(f"  {probability:7.2%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
