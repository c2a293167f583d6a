"""What a patch size costs: tokens, parameters, forward FLOPs and training activation memory.

Everything here is arithmetic on a model config; nothing is built or run. Halving the patch size
multiplies the number of tokens by 4. The parameters barely change (only the position embedding
grows, and the patch embedding shrinks), but the compute does not stay put:

- in a ViT, every block does ~24 * T * D**2 FLOPs of matrix products (linear in tokens T) plus
  4 * T**2 * D in attention (quadratic in T), which dominates once T is in the thousands;
- in Adventurer, the Mamba-2 scan replaces attention and is linear in T.

FLOPs are counted the way `torch.utils.flop_counter.FlopCounterMode` counts them: 2 per
multiply-add of every matrix product, convolution and attention product; element-wise work
(norms, activations, softmax) is not counted. tests/test_costs.py checks the formulas against
FlopCounterMode on real forward passes.

Activation memory is the memory a training step keeps for the backward pass, per image, in bf16
mixed precision with memory-efficient attention (no T x T matrix stored). For ViT this is the
Megatron-LM count of 34 bytes per token per channel per block (Korthikanti et al. 2022, without
the attention-matrix term), which reproduces the paper's Table 6 within a few percent.

    pixelvit costs --model vit_tiny --img-size 224 --patch-sizes 16 8 4 2 1
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from pixelvit.cli import HelpFormatter, UserError, report_user_errors
from pixelvit.patching import as_hw, check_divisible

# The paper's Table 6: training memory of ViT at 224x224 per patch size (MB). Quoted, not measured here.
PAPER_TABLE6_VIT_MEMORY_MB = {16: 62, 8: 252, 4: 1024, 2: 4057, 1: 16118}

BYTES_PER_VALUE = 2  # bf16 activations
# The scan's chunk length is a run-time setting, not part of the config: cost the one ssd_scan picks on CPU.
SCAN_CHUNK_SIZE = 64  # pixelvit.ops.ssd.CPU_CHUNK_SIZE


def _config(model, img_size=None, patch_size=None, num_classes=None):
    """A config object from a model name, a config dataclass or a model; sizes overridden if given."""
    import dataclasses

    overrides = {
        key: value
        for key, value in (("img_size", img_size), ("patch_size", patch_size), ("num_classes", num_classes))
        if value is not None
    }
    if isinstance(model, str):
        from pixelvit.models import get_config

        return get_config(model, **overrides)
    config = getattr(model, "config", model)
    return dataclasses.replace(config, **overrides) if overrides else config


def _arch(config) -> str:
    return "adventurer" if hasattr(config, "d_state") else "vit"


# ---------------------------------------------------------------------------------------------
# ViT
# ---------------------------------------------------------------------------------------------
def _vit_costs(config) -> dict:
    width, depth = config.embed_dim, config.depth
    channels, patch_size = config.in_chans, config.patch_size
    num_patches = _grid_tokens(config)
    tokens = num_patches + 1  # class token first
    mlp_hidden = int(width * config.mlp_ratio)
    qkv_bias = getattr(config, "qkv_bias", True)

    params = {
        "patch_embed": channels * patch_size**2 * width + width,
        "cls_token + pos_embed": width + tokens * width,
        "blocks": depth * (
            4 * width  # two LayerNorms (weight + bias)
            + 3 * width * width + (3 * width if qkv_bias else 0)  # qkv
            + width * width + width  # attention output projection
            + 2 * width * mlp_hidden + mlp_hidden + width  # MLP fc1, fc2
        ),
        "norm + head": 2 * width + width * config.num_classes + config.num_classes,
    }
    flops = {
        # each patch is a (C * p * p) vector multiplied into D channels: 2 * H * W * C * D in total,
        # the same for every patch size
        "patch_embed": 2 * num_patches * channels * patch_size**2 * width,
        "linear layers": depth * 2 * tokens * (3 * width * width + width * width + 2 * width * mlp_hidden),
        "attention": depth * 4 * tokens * tokens * width,  # Q K^T and (softmax) V
        "head": 2 * width * config.num_classes,
    }
    # Megatron-LM: 34 * T * D bytes per block in 16-bit training (without the 5 * heads * T**2 term
    # of the stored attention matrix, which memory-efficient attention does not keep).
    activation_bytes = depth * 34 * tokens * width
    return {"tokens": tokens, "params_breakdown": params, "flops_breakdown": flops,
            "activation_bytes": activation_bytes}


# ---------------------------------------------------------------------------------------------
# Adventurer (Mamba-2 mixer + SwiGLU MLP)
# ---------------------------------------------------------------------------------------------
def ssd_flops(length: int, nheads: int, headdim: int, d_state: int, ngroups: int, chunk_size: int) -> int:
    """Matrix-product FLOPs of the chunked SSD scan (pixelvit.ops.ssd) over the `length` real tokens.

    With chunks of Q = min(chunk_size, length) tokens, every token does:
      1. intra-chunk: its row of C B^T in its chunk and group (2 Q G N), times X per head (2 Q H P)
      2. chunk states: its share of B^T X (2 H P N)
      4. states to outputs: C times the carried state (2 H P N)
    Step 3 (passing one state per chunk along the chunks) is element-wise and, as everywhere here, not
    counted. The implementations pad the last chunk with zeros; that padding is not work a scan has to
    do, so it is not counted either (FlopCounterMode does count it: tests/test_costs.py compares them at a
    length that is a multiple of the chunk).
    """
    chunk = min(chunk_size, length)
    intra = 2 * length * chunk * (ngroups * d_state + nheads * headdim)
    states = 2 * length * nheads * headdim * d_state
    outputs = 2 * length * nheads * headdim * d_state
    return intra + states + outputs


def _adventurer_costs(config, chunk_size: int = SCAN_CHUNK_SIZE) -> dict:
    width, depth = config.embed_dim, config.depth
    channels, patch_size = config.in_chans, config.patch_size
    num_patches = _grid_tokens(config)
    tokens = num_patches + 1  # class token last
    mixer_tokens = tokens + 1  # the mean ("heading average") token is prepended inside every block
    inner = config.expand * width
    nheads = inner // config.headdim
    groups_state = config.ngroups * config.d_state
    conv_channels = inner + 2 * groups_state
    in_proj_out = 2 * inner + 2 * groups_state + nheads  # z, xBC, dt
    mlp_hidden = int(config.mlp_ratio * width)

    params = {
        "patch_embed": channels * patch_size**2 * width + width,
        "cls_token + pos_embed": width + tokens * width,
        "layers": depth * (
            2 * width  # two RMSNorms (weight only)
            + width * in_proj_out  # in_proj, no bias
            + conv_channels * config.d_conv + conv_channels  # depthwise conv1d + bias
            + 3 * nheads  # dt_bias, A_log, D
            + inner  # gated RMSNorm
            + inner * width  # out_proj, no bias
            + 3 * width * mlp_hidden + 2 * mlp_hidden + width  # SwiGLU w1, w2, w3 with biases
        ),
        "norm + head": width + width * config.num_classes + config.num_classes,
    }
    conv_out_length = mixer_tokens + config.d_conv - 1  # padded both sides, trimmed after
    flops = {
        "patch_embed": 2 * num_patches * channels * patch_size**2 * width,
        "linear layers": depth * 2 * (
            mixer_tokens * width * in_proj_out + mixer_tokens * inner * width  # in_proj, out_proj
            + tokens * 3 * width * mlp_hidden  # SwiGLU
        ),
        "conv1d": depth * 2 * conv_out_length * conv_channels * config.d_conv,
        "ssd scan": depth * ssd_flops(
            mixer_tokens, nheads, config.headdim, config.d_state, config.ngroups, chunk_size
        ),
        "head": 2 * width * config.num_classes,
    }
    # Values kept for backward per token and block. The Mamba-2 mixer trains memory-lean
    # (pixelvit.ops.mixer_autograd.MixerFunction keeps its input and the SSM states entering each chunk,
    # d_state x headdim per head and chunk, and recomputes the rest in backward), so:
    # the two RMSNorms' inputs and normalized values (before the weight), the mixer's input, the MLP
    # norm's output, and the SwiGLU's w1/w2 outputs, SiLU and product. tests/test_costs.py checks it
    # against what autograd saves (saved_tensors_hooks); benchmarks/training_memory.py measures it.
    per_token_values = 6 * width + 4 * mlp_hidden
    chunk_states = -(-mixer_tokens // chunk_size) * nheads * config.d_state * config.headdim
    activation_bytes = depth * (mixer_tokens * per_token_values + chunk_states) * BYTES_PER_VALUE
    return {"tokens": tokens, "mixer_tokens": mixer_tokens, "params_breakdown": params, "flops_breakdown": flops,
            "activation_bytes": activation_bytes}


def _grid_tokens(config) -> int:
    grid_h, grid_w = check_divisible(config.img_size, config.patch_size)
    return grid_h * grid_w


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def estimate(model, img_size=None, patch_size=None, num_classes=None, chunk_size=None) -> dict:
    """Costs of one image through `model` (a name like "vit_tiny", a config or a model).

    Returns a dict with: arch, img_size, patch_size, tokens (the sequence through the blocks, special
    tokens included: model.num_tokens), mixer_tokens (what the token mixer sees: the same for ViT, one
    more for Adventurer, whose blocks prepend a mean token), params, gflops (forward, per image),
    activation_mb (training, per image, bf16) and the breakdowns they are sums of. chunk_size: the
    Adventurer scan's chunk length (a run-time setting; default SCAN_CHUNK_SIZE, the CPU choice).
    """
    config = _config(model, img_size, patch_size, num_classes)
    arch = _arch(config)
    if arch == "adventurer":
        parts = _adventurer_costs(config, chunk_size or SCAN_CHUNK_SIZE)
    else:
        parts = _vit_costs(config)
    height, width = as_hw(config.img_size)
    return {
        "model": model if isinstance(model, str) else arch,
        "arch": arch,
        "img_size": height if height == width else (height, width),
        "patch_size": config.patch_size,
        "tokens": parts["tokens"],
        "mixer_tokens": parts.get("mixer_tokens", parts["tokens"]),
        "params": sum(parts["params_breakdown"].values()),
        "flops": sum(parts["flops_breakdown"].values()),
        "gflops": sum(parts["flops_breakdown"].values()) / 1e9,
        "activation_mb": parts["activation_bytes"] / 1e6,
        "params_breakdown": parts["params_breakdown"],
        "flops_breakdown": parts["flops_breakdown"],
    }


def cost_table(model, img_size, patch_sizes) -> list[dict]:
    """`estimate` for each patch size, in the given order."""
    return [estimate(model, img_size=img_size, patch_size=patch_size) for patch_size in patch_sizes]


def format_table(rows: list[dict]) -> str:
    header = f"{'patch':>5} {'tokens':>8} {'params (M)':>11} {'GFLOPs':>10} {'act. MB':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['patch_size']:>5} {row['tokens']:>8,} {row['params'] / 1e6:>11.2f} "
            f"{row['gflops']:>10.2f} {row['activation_mb']:>10,.0f}"
        )
    return "\n".join(lines)


def plot_costs(rows: list[dict], path, title: str | None = None):
    """Tokens, GFLOPs and activation memory against patch size on log axes (pixelvit.viz.cost_figure,
    the figure the notebooks draw), saved to `path` as PNG."""
    import matplotlib.pyplot as plt

    from pixelvit.io import atomic_write
    from pixelvit.viz import cost_figure

    figure = cost_figure({title or "cost of shrinking the patch": rows})
    figure.suptitle(title or "cost of shrinking the patch")
    figure.tight_layout()
    path = Path(path)
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pixelvit costs", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--model", default="vit_tiny", help="model name (see pixelvit.list_models())")
    parser.add_argument("--img-size", type=int, default=224, help="square input images of this many pixels")
    parser.add_argument("--patch-sizes", type=int, nargs="+", default=[16, 8, 4, 2, 1],
                        help="one row per patch size; each must divide --img-size")
    parser.add_argument("--out", default="outputs", help="folder for the CSV table and the PNG plot")
    args = parser.parse_args(argv)
    return report_user_errors("pixelvit costs", lambda: run_command(args))


def check_sizes(img_size: int, patch_sizes) -> None:
    """A UserError (one line) for an image size below 1 or a patch size that does not divide it, as
    `pixelvit train` checks them: before anything is computed or written."""
    if img_size < 1:
        raise UserError(f"--img-size {img_size}: use at least 1")
    for patch_size in patch_sizes:
        try:
            check_divisible(img_size, patch_size)
        except ValueError as error:
            raise UserError(f"--patch-sizes {patch_size}: {error}") from None


def run_command(args) -> int:
    check_sizes(args.img_size, args.patch_sizes)
    try:
        rows = cost_table(args.model, args.img_size, args.patch_sizes)
    except ValueError as error:  # an unknown model name
        raise UserError(str(error)) from None
    print(f"{args.model} at {args.img_size}x{args.img_size}")
    print(format_table(rows))
    stem = Path(args.out) / f"costs_{args.model}_{args.img_size}"
    from pixelvit.io import atomic_write

    with atomic_write(stem.with_suffix(".csv"), "w") as handle:
        columns = ["model", "img_size", "patch_size", "tokens", "params", "gflops", "activation_mb"]
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot_path = plot_costs(rows, stem.with_suffix(".png"), title=f"{args.model} at {args.img_size}x{args.img_size}")
    print(f"\nwrote {stem.with_suffix('.csv')} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
