"""The released Adventurer checkpoints: where each file lives, what it is, and what it should score.

    from pixelvit.catalog import CATALOG, get_checkpoint
    get_checkpoint("adventurer_base_patch1_224").top1    # 84.6 (ImageNet-1k top-1, as reported)

Sources (read 2025; numbers are the authors' own, not re-measured here):
* Patch_Scaling README (github.com/wangf3014/Patch_Scaling): the nine patch-1 models of the paper
  (Tiny/Small/Base at 64, 128, 224 px) on the Hugging Face repo Wangf3014/Patch_Scaling. Its evaluation
  command uses `--eval-crop-ratio 1.0` and it recommends 0.875 "for very small input sizes like 64*64".
* Adventurer README (github.com/wangf3014/Adventurer): the patch-16 (and two patch-8) baselines on the
  Hugging Face repo Wangf3014/Adventurer, evaluated with crop ratio 0.875 at patch 16 / 224 px and 1.0
  "for models with patch sizes < 16 or input sizes > 224". Two versions of that README give Base-384 as
  83.9 and as 84.2; the later one (which also adds Base-448) says 84.2.

`sha256` is None where we do not know the file's hash: then the hub's own LFS sha256 (which
huggingface_hub reports) is checked after download. `flip_rule` is "unknown": the released code flips the
token order only in layers 2 and 3 (`flip = (n // 2 == 1)` in models_mamba.py), which may or may not be
what the checkpoints were trained with; `pixelvit.predict.detect_flip_rule` measures it on labelled images.
"""

from __future__ import annotations

from dataclasses import dataclass

PATCH_SCALING_README = "https://github.com/wangf3014/Patch_Scaling/blob/main/README.md"
ADVENTURER_README = "https://github.com/wangf3014/Adventurer/blob/main/README.md"
HF_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class Checkpoint:
    name: str  # catalog key = file name without ".pth"
    model: str  # pixelvit model name; built as create_model(model, img_size=..., patch_size=...)
    img_size: int  # input resolution it was trained and evaluated at
    patch_size: int
    top1: float | None  # ImageNet-1k top-1 (%) reported by the authors; None = not reported
    crop_pct: float | None  # evaluation center-crop ratio (resize to img_size / crop_pct, then crop)
    repo_id: str  # Hugging Face model repository
    filename: str
    source: str  # where the numbers above come from
    sha256: str | None = None  # None = unknown here; the hub's LFS sha256 is used instead
    flip_rule: str = "unknown"  # see module docstring
    num_classes: int = 1000

    @property
    def url(self) -> str:
        return f"{HF_ENDPOINT}/{self.repo_id}/resolve/main/{self.filename}"

    @property
    def num_tokens(self) -> int:
        """Tokens the model sees: (img_size / patch_size)^2 patches + 1 class token."""
        return (self.img_size // self.patch_size) ** 2 + 1


def _patch1(size: str, img_size: int, top1: float) -> Checkpoint:
    name = f"adventurer_{size}_patch1_{img_size}"
    return Checkpoint(
        name=name, model=f"adventurer_{size}", img_size=img_size, patch_size=1, top1=top1,
        crop_pct=0.875 if img_size <= 64 else 1.0,
        repo_id="Wangf3014/Patch_Scaling", filename=f"{name}.pth", source=PATCH_SCALING_README,
    )


def _baseline(size: str, patch_size: int, img_size: int, top1: float | None) -> Checkpoint:
    name = f"adventurer_{size}_patch{patch_size}_{img_size}"
    return Checkpoint(
        name=name, model=f"adventurer_{size}", img_size=img_size, patch_size=patch_size, top1=top1,
        crop_pct=0.875 if (patch_size >= 16 and img_size <= 224) else 1.0,
        repo_id="Wangf3014/Adventurer", filename=f"{name}.pth", source=ADVENTURER_README,
    )


_ENTRIES = [
    # The paper's patch-1 models (Patch_Scaling README): 50,176 pixels = tokens at 224 px.
    _patch1("tiny", 224, 81.9), _patch1("small", 224, 83.8), _patch1("base", 224, 84.6),
    _patch1("tiny", 128, 80.7), _patch1("small", 128, 81.4), _patch1("base", 128, 82.4),
    _patch1("tiny", 64, 77.4), _patch1("small", 64, 80.5), _patch1("base", 64, 80.9),
    # Patch-16 / patch-8 baselines (Adventurer README).
    _baseline("tiny", 16, 224, 78.2), _baseline("small", 16, 224, 81.8),
    _baseline("base", 16, 224, 82.6), _baseline("large", 16, 224, 83.4),
    _baseline("base", 16, 384, 84.2), _baseline("base", 16, 448, 84.3),
    _baseline("base", 8, 224, 83.9), _baseline("base", 8, 448, 84.8),
]
CATALOG: dict[str, Checkpoint] = {entry.name: entry for entry in _ENTRIES}


def list_checkpoints(patch_size: int | None = None) -> list[str]:
    return [name for name, entry in CATALOG.items() if patch_size is None or entry.patch_size == patch_size]


def get_checkpoint(name: str) -> Checkpoint:
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a released checkpoint; known: {', '.join(CATALOG)}") from None
