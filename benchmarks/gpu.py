"""4. GPU: how close the training step gets to the GPU's matmul peak, and Adventurer at 50,178 tokens.

Runs only when torch.cuda.is_available(); on a CPU machine the section is recorded as skipped.

* bf16 matmul peak: the median TFLOP/s of a large torch.matmul (the practical ceiling, not the datasheet).
* ViT-B at 64x64, patch 1 (4,097 tokens): a bf16-autocast training step (AdamW) with SDPA attention;
  achieved TFLOP/s = 3 x forward FLOPs (pixelvit.costs.estimate, FlopCounterMode's counting) x batch /
  step time, as a fraction of the measured matmul peak.
* Adventurer-Tiny and -Base at 224, patch 1 (50,176 patches + class token + average token = 50,178
  through the mixer): training images/s and peak memory per image with the reference scan, the same under
  torch.compile (each block compiled), mamba-ssm's Triton kernel and flash-linear-attention's, each if it
  imports (the variants of the profile). Each
  variant is first checked against the reference: relative error ||a - b|| / ||b|| of the logits and of
  the patch-embedding gradient, same weights, same images. Memory per image is set beside the paper's
  Table 6 (ViT at 224: 16,118 MB per image at patch 1) and pixelvit.costs' estimate, made at the chunk
  length the scan uses on this device (256 on CUDA).
Timing: torch.cuda.Event around each step, warm-up steps first, medians. Batch: the largest of the
candidates whose step fits in memory.

Smoke test: tests/test_gpu_benchmark.py sets DEVICE = "cpu" and runs `run` end to end at tiny sizes, so a
CPU-only machine checks every line of this file except the CUDA calls, which the helpers below skip there.
"""

from __future__ import annotations

import gc
import time

import torch
import torch.nn.functional as F

from benchmarks.machine import median
from benchmarks.report import fmt, table

DEVICE = "cuda"  # a module constant so that tests/test_gpu_benchmark.py can run the whole section on CPU


def on_cuda() -> bool:
    return torch.device(DEVICE).type == "cuda"


def synchronize():
    if on_cuda():
        torch.cuda.synchronize()
SKIPPED = {
    "skipped": "no GPU in this session (torch.cuda.is_available() is False); GPU part left for a GPU session"
}


def cuda_time(fn) -> float:
    """Seconds of GPU time for fn(), measured with CUDA events (wall time when DEVICE is not CUDA)."""
    if not on_cuda():
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


def matmul_peak_tflops(sizes=(8192, 16384), repeats: int = 10, dtype=torch.bfloat16) -> dict:
    best = {}
    for n in sizes:
        a = torch.randn(n, n, device=DEVICE, dtype=dtype)
        b = torch.randn(n, n, device=DEVICE, dtype=dtype)
        for _ in range(3):
            torch.matmul(a, b)
        times = [cuda_time(lambda a=a, b=b: torch.matmul(a, b)) for _ in range(repeats)]
        best[n] = 2 * n**3 / median(times) / 1e12
        del a, b
    return {
        "tflops": max(best.values()),
        "by_size": {str(n): t for n, t in best.items()},
        "dtype": str(dtype),
    }


def _free():
    gc.collect()
    if on_cuda():
        torch.cuda.empty_cache()


def memory_allocated() -> int:
    """Bytes the device's caching allocator has handed out (0 off CUDA: not measured there)."""
    return torch.cuda.memory_allocated() if on_cuda() else 0


def reset_peak_memory():
    if on_cuda():
        torch.cuda.reset_peak_memory_stats()


def max_memory_allocated() -> int:
    return torch.cuda.max_memory_allocated() if on_cuda() else 0


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


class Trainer:
    """One bf16-autocast training step (forward, cross-entropy, backward, AdamW) of `model` on fixed data."""

    def __init__(self, model, batch_size: int, img_size: int, num_classes: int):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator(device=DEVICE).manual_seed(0)
        self.images = torch.randn(batch_size, 3, img_size, img_size, device=DEVICE, generator=g)
        self.labels = torch.randint(0, num_classes, (batch_size,), device=DEVICE, generator=g)

    def step(self):
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = F.cross_entropy(self.model(self.images), self.labels)
        loss.backward()
        self.optimizer.step()


def logits_and_grad(model, images, labels):
    """Logits and the patch-embedding weight gradient of one bf16-autocast forward+backward (float32 copies)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
    loss.backward()
    grad = model.patch_embed.proj.weight.grad.float().clone()
    model.zero_grad(set_to_none=True)
    return logits.detach().float(), grad


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# Correctness first: a variant whose numbers are this far off is an error, not a timing. bf16 rounds at
# ~0.4 % per operation; 12 blocks of it stay well under 5 % (the thresholds are that margin, not measured).
MAX_REL_ERR = {"logits": 0.05, "grad": 0.10}


def require_close(what: str, errors: dict) -> dict:
    """`errors` (kind -> relative error) unchanged, or AssertionError when one exceeds MAX_REL_ERR[kind]."""
    for kind, err in errors.items():
        limit = MAX_REL_ERR[kind.split("_")[0]]
        if not err <= limit:  # also catches NaN
            raise AssertionError(f"{what}: {kind} {err:.3g} exceeds {limit}; not timing a wrong computation")
    return errors


def time_training(build, img_size: int, num_classes: int, batch_sizes, repeats: int, warmup: int) -> dict:
    """Largest batch that fits, then images/s and peak memory per image of the training step."""
    last_error = None
    for batch_size in batch_sizes:
        _free()
        try:
            model = build()
            trainer = Trainer(model, batch_size, img_size, num_classes)
            t0 = time.perf_counter()
            trainer.step()  # first step: allocates optimizer state (and compiles, if compiled)
            synchronize()
            first_step_s = time.perf_counter() - t0
            for _ in range(warmup):
                trainer.step()
            synchronize()
            base = memory_allocated()  # parameters, gradients, optimizer state, data
            reset_peak_memory()
            times = [cuda_time(trainer.step) for _ in range(repeats)]
            peak = max_memory_allocated() - base
        except Exception as error:  # noqa: BLE001 - OOM is expected for large batches; others recorded
            if not _is_oom(error):
                raise
            last_error = str(error).splitlines()[0]  # a string: the traceback would keep the tensors alive
            model = trainer = None
            continue
        step_s = median(times)
        result = {
            "batch_size": batch_size,
            "step_s": step_s,
            "step_all_s": [round(t, 5) for t in times],
            "first_step_s": first_step_s,
            "images_per_s": batch_size / step_s,
            "peak_activation_mb_per_image": peak / 2**20 / batch_size,
            "static_mb": base / 2**20,
        }
        del model, trainer
        _free()
        return result
    raise RuntimeError(f"no batch size in {list(batch_sizes)} fits: {last_error}")


def vit_mfu(
    name: str, img_size: int, patch_size: int, batch_sizes, repeats: int, warmup: int, peak_tflops: float
) -> dict:
    from pixelvit.costs import estimate
    from pixelvit.models import create_model

    def build():
        torch.manual_seed(0)
        return (
            create_model(name, img_size=img_size, patch_size=patch_size, num_classes=1000).to(DEVICE).train()
        )

    # correctness first: bf16 autocast against float32, same weights (SDPA picks a fused kernel in bf16)
    model = build()
    images = torch.randn(2, 3, img_size, img_size, device=DEVICE)
    labels = torch.randint(0, 1000, (2,), device=DEVICE)
    with torch.no_grad():
        fp32 = model(images)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            bf16 = model(images).float()
    check = {"logits_rel_err_bf16_vs_fp32": rel_err(bf16, fp32)}
    require_close(f"{name} bf16 autocast vs float32", check)
    del model, images, labels
    _free()

    timing = time_training(build, img_size, 1000, batch_sizes, repeats, warmup)
    est = estimate(name, img_size=img_size, patch_size=patch_size)
    step_flops = 3 * est["flops"] * timing["batch_size"]  # backward = 2x forward
    achieved = step_flops / timing["step_s"] / 1e12
    return {
        "model": name,
        "img_size": img_size,
        "patch_size": patch_size,
        "tokens": est["tokens"],
        "check": check,
        **timing,
        "train_flops_per_image": 3 * est["flops"],
        "achieved_tflops": achieved,
        "fraction_of_matmul_peak": achieved / peak_tflops,
    }


KERNEL_VARIANTS = ("mamba_ssm", "fla")  # variants that are a scan backend of pixelvit.ops.ssd


def mixer_estimate(name: str, img_size: int, patch_size: int, device=None) -> dict:
    """What pixelvit.costs expects of the model on `device` (default DEVICE): the tokens through the blocks and
    through the mixer (one more: the average token), and activation memory and FLOPs at the chunk length the
    scan uses there (pixelvit.ops.ssd.default_chunk_size: 256 on CUDA, 64 on CPU)."""
    from pixelvit.costs import estimate
    from pixelvit.ops.ssd import default_chunk_size

    chunk = default_chunk_size(DEVICE if device is None else device)
    est = estimate(name, img_size=img_size, patch_size=patch_size, chunk_size=chunk)
    return {
        "tokens": est["tokens"],
        "tokens_through_mixer": est["mixer_tokens"],
        "estimate_chunk_size": chunk,
        "estimated_gflops_per_image": est["gflops"],
        "estimated_activation_mb_per_image_bf16": est["activation_mb"],
    }


def adventurer_variants(
    name: str, img_size: int, patch_size: int, variants, batch_sizes, repeats: int, warmup: int
) -> dict:
    from pixelvit.costs import PAPER_TABLE6_VIT_MEMORY_MB
    from pixelvit.models import create_model
    from pixelvit.ops.ssd import describe_backends, select_backend

    def builder(variant):
        backend = variant if variant in KERNEL_VARIANTS else "reference"

        def build():
            torch.manual_seed(0)
            model = create_model(
                name, img_size=img_size, patch_size=patch_size, num_classes=1000, scan_backend=backend
            )
            model = model.to(DEVICE).train()
            if variant == "compiled":
                for layer in model.layers:
                    layer.compile()  # one graph per block kind (flipped or not), reused across layers
            return model

        return build

    results = {
        "model": name,
        "img_size": img_size,
        "patch_size": patch_size,
        "backends": describe_backends(),
        "variants": {},
    }
    g = torch.Generator(device=DEVICE).manual_seed(1)
    images = torch.randn(1, 3, img_size, img_size, device=DEVICE, generator=g)
    labels = torch.randint(0, 1000, (1,), device=DEVICE, generator=g)
    reference = None
    for variant in variants:
        if variant in KERNEL_VARIANTS:
            try:
                select_backend(DEVICE, variant)
            except ValueError as error:
                results["variants"][variant] = {"skipped": str(error)}
                continue
        _free()
        try:
            model = builder(variant)()
            out = logits_and_grad(model, images, labels)
            del model
            if reference is None:
                reference = out
                check = {"is_reference": True}
            else:
                check = require_close(f"{name} {variant} vs the first variant", {
                    "logits_rel_err": rel_err(out[0], reference[0]),
                    "grad_rel_err": rel_err(out[1], reference[1]),
                })
            timing = time_training(builder(variant), img_size, 1000, batch_sizes, repeats, warmup)
            results["variants"][variant] = {"check": check, **timing}
        except Exception as error:  # noqa: BLE001 - one variant failing must not lose the others
            results["variants"][variant] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        _free()
    results.update(mixer_estimate(name, img_size, patch_size))
    if patch_size in PAPER_TABLE6_VIT_MEMORY_MB and img_size == 224:
        paper = PAPER_TABLE6_VIT_MEMORY_MB[patch_size]
        results["paper_table6_vit_mb_per_image"] = paper
        for v in results["variants"].values():
            if "peak_activation_mb_per_image" in v:
                v["memory_vs_paper_table6_vit"] = v["peak_activation_mb_per_image"] / paper
    return results


def run(
    vit: dict,
    adventurers: list[str],
    adventurer_img: int,
    adventurer_patch: int,
    variants,
    batch_sizes,
    repeats: int,
    warmup: int,
    matmul_sizes=(8192, 16384),
    log=print,
) -> dict:
    if on_cuda() and not torch.cuda.is_available():
        return dict(SKIPPED)
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_peak_tflops(matmul_sizes)
    log(f"  bf16 matmul peak: {peak['tflops']:.0f} TFLOP/s")
    result = {
        "device": torch.cuda.get_device_name(0) if on_cuda() else f"{DEVICE} (DEVICE switched: a smoke test)",
        "matmul_peak": peak,
        "repeats": repeats,
        "warmup": warmup,
    }
    try:
        result["vit"] = vit_mfu(
            vit["name"],
            vit["img_size"],
            vit["patch_size"],
            vit["batch_sizes"],
            repeats,
            warmup,
            peak["tflops"],
        )
        log(
            f"  {vit['name']} {vit['img_size']}px patch {vit['patch_size']}: {result['vit']['images_per_s']:.1f} img/s, "
            f"{result['vit']['fraction_of_matmul_peak']:.0%} of the matmul peak"
        )
    except Exception as error:  # noqa: BLE001
        result["vit"] = {"error": f"{type(error).__name__}: {error}"[:2000]}
    result["adventurer"] = []
    for name in adventurers:
        r = adventurer_variants(
            name, adventurer_img, adventurer_patch, variants, batch_sizes, repeats, warmup
        )
        result["adventurer"].append(r)
        for variant, v in r["variants"].items():
            summary = (
                f"{v['images_per_s']:.2f} img/s, {v['peak_activation_mb_per_image']:.0f} MB/img"
                if "images_per_s" in v
                else v.get("error") or v.get("skipped")
            )
            log(f"  {name} {variant}: {summary}")
    return result


# the section in results.md (benchmarks/suite.py writes its heading)


def markdown(s) -> list[str]:
    if "skipped" in s:
        return [f"Skipped: {s['skipped']}. `python -m benchmarks --only gpu` runs it on a CUDA machine."]
    lines = [f"{s['device']}; bf16 matmul peak {s['matmul_peak']['tflops']:.0f} TFLOP/s (measured)."]
    v = s.get("vit", {})
    if "error" in v:
        lines.append(f"ViT: error {v['error']}")
    else:
        lines.append(
            f"{v['model']} at {v['img_size']}px patch {v['patch_size']} ({v['tokens']} tokens), bf16 training step, batch "
            f"{v['batch_size']}: {v['images_per_s']:.1f} img/s, {v['achieved_tflops']:.0f} TFLOP/s = "
            f"{v['fraction_of_matmul_peak']:.0%} of the matmul peak (logits bf16 vs fp32 rel. err "
            f"{v['check']['logits_rel_err_bf16_vs_fp32']:.1e})."
        )
    rows = []
    for a in s.get("adventurer", []):
        for variant, r in a["variants"].items():
            if "images_per_s" in r:
                check = (
                    "reference"
                    if r["check"].get("is_reference")
                    else f"{r['check']['logits_rel_err']:.1e} / {r['check']['grad_rel_err']:.1e}"
                )
                rows.append(
                    [
                        a["model"],
                        variant,
                        r["batch_size"],
                        fmt(r["images_per_s"], ".2f"),
                        fmt(r["peak_activation_mb_per_image"], ".0f"),
                        fmt(r.get("memory_vs_paper_table6_vit"), ".2f"),
                        check,
                    ]
                )
            else:
                rows.append(
                    [
                        a["model"],
                        variant,
                        "-",
                        "-",
                        "-",
                        "-",
                        " ".join((r.get("error") or r.get("skipped")).split())[:160],
                    ]
                )
    if rows:
        a0 = s["adventurer"][0]
        lines += [
            "",
            f"Adventurer at {a0['img_size']}px patch {a0['patch_size']} ({a0['tokens_through_mixer']:,} tokens through "
            "the mixer), bf16 autocast training step; memory = peak allocated above parameters + optimizer state, per "
            "image; paper Table 6 = ViT at the same patch size; pixelvit.costs estimates "
            + ", ".join(f"{a['model']} {a['estimated_activation_mb_per_image_bf16']:,.0f} MB/img" for a in s["adventurer"])
            + f" (scan chunk {a0['estimate_chunk_size']}).",
            "",
            *table(
                [
                    "model",
                    "scan",
                    "batch",
                    "img/s",
                    "MB/img",
                    "x paper Table 6 ViT",
                    "rel. err logits / grad",
                ],
                rows,
            ),
        ]
    return lines
