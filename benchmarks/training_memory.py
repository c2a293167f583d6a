"""6. Training memory: bytes autograd keeps for backward per image, Adventurer against ViT, and step time.

Both models are the 64 x 4 "nano" models (vit_nano: 4 heads, MLP 256; adventurer_nano: d_inner 128, 4 heads
of 32, d_state 16, SwiGLU 160) at 32x32 images, patch 2 and 1 (257 / 1,025 tokens), batch 4, fp32, 2 threads.

* saved bytes per image: the distinct storages autograd saves during one forward
  (torch.autograd.graph.saved_tensors_hooks via benchmarks.machine.SavedTensorCounter; parameters and
  images excluded), divided by the batch. Exact and noise-free.
* Adventurer is measured twice: as it trains by default (the mixer is pixelvit.ops.mixer_autograd.MixerFunction,
  which keeps its input and the per-chunk SSM states and recomputes the rest in backward) and "as before" (the readable mixer with
  the readable scan ssd_chunked at chunk 64, what pixelvit ran before the lean mixer existed).
* step time: forward + backward + AdamW of the two Adventurer variants, alternated, medians; the ratio
  before / now is the "step time >= 0.85x today's" target (> 1: now faster).
Targets: Adventurer saved bytes / ViT's <= 1.2 at patch 2 and 1; step time ratio >= 0.85.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from benchmarks.machine import SavedTensorCounter, alternate, median, ratios, spread
from benchmarks.report import fmt, table

MODELS = {"vit": "vit_nano", "adventurer": "adventurer_nano"}


@contextlib.contextmanager
def as_before():
    """The Adventurer mixer as pixelvit ran it before the memory-lean path: readable forward, ssd_chunked."""
    from pixelvit.ops import mixer, ssd

    fast, trainable = ssd.ssd_fast, ssd.ssd_trainable
    ssd.ssd_fast = ssd.ssd_trainable = lambda *args, **kwargs: ssd.ssd_chunked(*args, **kwargs)
    try:
        with mixer.readable_mixer():
            yield
    finally:
        ssd.ssd_fast, ssd.ssd_trainable = fast, trainable


def build(name: str, img_size: int, patch_size: int):
    from pixelvit.models import create_model

    torch.manual_seed(0)
    return create_model(name, img_size=img_size, patch_size=patch_size, num_classes=10).train()


def _batch(batch_size: int, img_size: int):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, 3, img_size, img_size, generator=g), torch.randint(0, 10, (batch_size,), generator=g)


def saved_bytes_per_image(model, images, labels, context=contextlib.nullcontext) -> float:
    with context(), SavedTensorCounter(exclude=[*model.parameters(), images]) as saved:
        loss = F.cross_entropy(model(images), labels)
    with context():
        loss.backward()
    model.zero_grad(set_to_none=True)
    return saved.bytes / images.shape[0]


def _step(model, optimizer, images, labels, context):
    def step():
        with context():
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()

    return step


def run(patch_sizes=(2, 1), img_size: int = 32, batch_size: int = 4, repeats: int = 5, warmup: int = 1,
        log=print) -> dict:
    rows = []
    for patch_size in patch_sizes:
        images, labels = _batch(batch_size, img_size)
        vit = build(MODELS["vit"], img_size, patch_size)
        adv = build(MODELS["adventurer"], img_size, patch_size)
        row = {
            "patch_size": patch_size,
            "tokens": adv.num_tokens,
            "vit_saved_mb_per_image": saved_bytes_per_image(vit, images, labels) / 2**20,
            "adventurer_saved_mb_per_image": saved_bytes_per_image(adv, images, labels) / 2**20,
            "adventurer_before_saved_mb_per_image": saved_bytes_per_image(adv, images, labels, as_before) / 2**20,
        }
        row["adventurer_over_vit"] = row["adventurer_saved_mb_per_image"] / row["vit_saved_mb_per_image"]
        row["before_over_vit"] = row["adventurer_before_saved_mb_per_image"] / row["vit_saved_mb_per_image"]
        # step time, the two Adventurer variants alternated (separate models with the same weights)
        before = build(MODELS["adventurer"], img_size, patch_size)
        steps = {
            "now": _step(adv, torch.optim.AdamW(adv.parameters()), images, labels, contextlib.nullcontext),
            "before": _step(before, torch.optim.AdamW(before.parameters()), images, labels, as_before),
        }
        times = alternate(steps, repeats, warmup)
        paired = ratios(times["before"], times["now"])
        row.update({
            "step_ms_now": median(times["now"]) * 1e3,
            "step_ms_before": median(times["before"]) * 1e3,
            "step_speed_ratio_now_over_before": median(paired),  # before time / now time: > 1 = now faster
            "step_speed_ratio_iqr": spread(paired),
        })
        log(f"  patch {patch_size}: saved MB/image ViT {row['vit_saved_mb_per_image']:.2f}, Adventurer "
            f"{row['adventurer_saved_mb_per_image']:.2f} (before {row['adventurer_before_saved_mb_per_image']:.2f}); "
            f"step {row['step_ms_now']:.0f} ms vs before {row['step_ms_before']:.0f} ms")
        rows.append(row)
    worst_memory = max(r["adventurer_over_vit"] for r in rows)
    worst_speed = min(r["step_speed_ratio_now_over_before"] for r in rows)
    return {
        "description": "saved activation bytes per image (training), Adventurer vs ViT at the same width and depth",
        "models": MODELS,
        "img_size": img_size,
        "batch_size": batch_size,
        "repeats": repeats,
        "method": "torch.autograd.graph.saved_tensors_hooks, distinct storages, parameters and images excluded",
        "rows": rows,
        "target": "Adventurer saved bytes/image <= 1.2x ViT's (patch 2 and 1); step time >= 0.85x before",
        "memory_target_met": worst_memory <= 1.2,
        "speed_target_met": worst_speed >= 0.85,
        "worst_adventurer_over_vit": worst_memory,
        "worst_step_speed_ratio": worst_speed,
    }


# the section in results.md (benchmarks/suite.py writes its heading)


def markdown(s) -> list[str]:
    rows = [
        [r["patch_size"], f"{r['tokens']:,}", fmt(r["vit_saved_mb_per_image"], ".2f"),
         fmt(r["adventurer_saved_mb_per_image"], ".2f"), fmt(r["adventurer_over_vit"], ".2f"),
         fmt(r["adventurer_before_saved_mb_per_image"], ".2f"), fmt(r["before_over_vit"], ".2f"),
         fmt(r["step_ms_now"], ".0f"), fmt(r["step_ms_before"], ".0f"), fmt(r["step_speed_ratio_now_over_before"], ".2f")]
        for r in s["rows"]
    ]  # fmt: skip
    return [
        f"{s['models']['vit']} vs {s['models']['adventurer']} (64 x 4), {s['img_size']}x{s['img_size']} images, batch "
        f"{s['batch_size']}, fp32; saved = {s['method']}. \"before\" = the readable mixer and ssd_chunked, as pixelvit "
        f"trained before the memory-lean mixer; step = forward + backward + AdamW, medians of {s['repeats']} alternated "
        "repetitions; speed ratio = before time / now time (> 1: now faster).",
        "",
        *table(["patch", "tokens", "ViT saved MB/img", "Adventurer saved MB/img", "Adv/ViT", "before MB/img",
                 "before/ViT", "step ms now", "step ms before", "speed ratio"], rows),
        "",
        f"Targets ({s['target']}): memory {'met' if s['memory_target_met'] else 'NOT met'} (worst "
        f"{s['worst_adventurer_over_vit']:.2f}x ViT), step time {'met' if s['speed_target_met'] else 'NOT met'} "
        f"(worst {s['worst_step_speed_ratio']:.2f}x).",
    ]
