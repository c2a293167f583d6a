"""Train one model at several patch sizes and plot accuracy against patch size and against compute.

    pixelvit sweep                     # the default: specks, 16x16 images, patch 8 4 2 1 (~5 min on 2 CPU cores)
    pixelvit sweep --model vit_micro --dataset cifar10 --img-size 32 --patch-sizes 8 4 2 --steps 2000 \\
                   --out results/cifar10_vit_micro

Every grid point is an ordinary `pixelvit.train` run in its own hash-named folder under --runs-dir,
so a stopped sweep resumes where it stopped and finished runs are reused by any later sweep with the
same settings. The sweep folder (--out) gets:

    results.csv     model, dataset, img_size, patch_size, tokens, params, gflops, steps, top1, wall_s, device, ...
    sweep.png       top-1 vs patch size, and top-1 vs training compute (FLOPs), one line per model
    sweep.json      the sweep's settings and rows

Every run gets the same number of optimizer steps and images: the comparison the paper makes. With
--paper, a third panel shows the ImageNet-1k top-1 the authors report per patch size (their numbers,
clearly labelled, not measured here).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path

from pixelvit.io import atomic_write, atomic_write_json, new_figure
from pixelvit.train import TrainConfig, parse_value, train

# The default sweep: what `pixelvit sweep` with no arguments runs (and the README's main job).
# A vit_micro slimmed to 64 wide x 4 deep so that patch size 1 (257 tokens) trains in ~2 minutes on
# 2 CPU cores; 300 steps of 32 images. Measured: see results/specks_default/ and the README.
DEFAULT_SWEEP = dict(
    models=["vit_micro"],
    model_args={"embed_dim": 64, "depth": 4, "num_heads": 4},
    dataset="specks",
    img_size=16,
    patch_sizes=[8, 4, 2, 1],
    steps=300,
    batch_size=32,
    lr=2e-3,
    seeds=[0],
    out="runs/sweeps/specks_default",
)

CSV_COLUMNS = ["model", "dataset", "img_size", "patch_size", "tokens", "params", "gflops", "train_tflops",
               "steps", "batch_size", "seed", "top1", "eval_loss", "wall_s", "images_per_s", "device",
               "gflops_source", "run_dir", "cached"]


# ---------------------------------------------------------------------------------------------
# The paper's numbers, for the comparison panel. Quoted, never measured here.
# ---------------------------------------------------------------------------------------------
def paper_reference() -> list[dict]:
    """ImageNet-1k top-1 by patch size as reported by the authors, at 224x224 input.

    Adventurer: from pixelvit.catalog (the Patch_Scaling and Adventurer READMEs; patch 16 and 8 are the
    Adventurer baselines, patch 1 the paper's pixel-token models). ViT (DeiT) per patch size is in the
    paper's Table 1; those numbers are not in our sources yet (PAPER_VIT_TOP1 below stays empty, so
    nothing is drawn for ViT rather than something unverified).
    """
    from pixelvit.catalog import CATALOG

    rows = [
        {"model": f"Adventurer-{entry.model.split('_')[1].capitalize()}", "patch_size": entry.patch_size,
         "top1": entry.top1, "source": entry.source}
        for entry in CATALOG.values()
        if entry.img_size == 224 and entry.top1 is not None and entry.model != "adventurer_large"
    ]
    rows += [{"model": model, "patch_size": patch, "top1": top1, "source": PAPER_VIT_SOURCE}
             for model, by_patch in PAPER_VIT_TOP1.items() for patch, top1 in by_patch.items()]
    return rows


# ViT (DeiT) ImageNet top-1 per patch size from Table 1 of Wang et al. 2025, e.g. {"DeiT-T": {16: ..., 8: ...}}.
# Deliberately empty: none of our sources had that table, and an unverified number is worse than none.
# Fill it from the paper's PDF (and cite the table) to draw the ViT line in the paper panel.
PAPER_VIT_TOP1: dict[str, dict[int, float]] = {}
PAPER_VIT_SOURCE = "Wang et al. 2025, Table 1 (arXiv:2502.03738)"


# ---------------------------------------------------------------------------------------------
# Running the grid
# ---------------------------------------------------------------------------------------------
def grid(base: TrainConfig, models: list[str], patch_sizes: list[int], seeds: list[int]) -> list[TrainConfig]:
    return [dataclasses.replace(base, model=model, patch_size=patch, seed=seed, out=None)
            for model in models for seed in seeds for patch in patch_sizes]


def forward_gflops(run_dir: Path) -> tuple[float, str]:
    """Forward GFLOPs per image of a finished run's model: pixelvit.costs if it can, else measured."""
    from pixelvit.io import read_model_files
    from pixelvit.models import model_from_config

    meta, _ = read_model_files(run_dir / "model")
    model = model_from_config(meta["arch"], meta["config"])
    try:
        from pixelvit.costs import estimate

        return float(estimate(model)["gflops"]), "pixelvit.costs"
    except Exception:  # a config pixelvit.costs has no formula for: count a real forward pass instead
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        size = model.config.img_size
        height, width = (size, size) if isinstance(size, int) else size
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, model.config.in_chans, height, width))
        return counter.get_total_flops() / 1e9, "FlopCounterMode"


def result_row(config: TrainConfig, result) -> dict:
    gflops, source = forward_gflops(Path(result.run_dir))
    meta_img = result.config.get("img_size")
    return {
        "model": config.model, "dataset": config.dataset, "img_size": meta_img,
        "patch_size": config.patch_size, "tokens": result.tokens, "params": result.params,
        "gflops": round(gflops, 6),
        # a training step costs ~3 forward passes (forward + backward); images seen = steps x batch
        "train_tflops": round(3 * gflops * result.steps * config.batch_size / 1e3, 6),
        "steps": result.steps, "batch_size": config.batch_size, "seed": config.seed,
        "top1": round(result.top1, 3), "eval_loss": round(result.eval_loss, 5),
        "wall_s": round(result.wall_s, 2), "images_per_s": round(result.images_per_s, 1),
        "device": result.device, "gflops_source": source, "run_dir": result.run_dir, "cached": result.cached,
    }


def run_sweep(configs: list[TrainConfig], out, progress: bool = True, paper: bool = False) -> list[dict]:
    """Train (or load) every config, then write results.csv, sweep.json and sweep.png into `out`."""
    out = Path(out)
    rows, started = [], time.perf_counter()
    for index, config in enumerate(configs, 1):
        if progress:
            print(f"[{index}/{len(configs)}] {config.model} patch {config.patch_size} seed {config.seed}", flush=True)
        rows.append(result_row(config, train(config, progress=progress)))
        write_csv(rows, out / "results.csv")  # after every run, so a stopped sweep still has a table
    atomic_write_json(out / "sweep.json", {
        "configs": [dataclasses.asdict(c) for c in configs], "rows": rows,
        "sweep_wall_s": time.perf_counter() - started,
    })
    plot(rows, out / "sweep.png", paper=paper)
    return rows


def write_csv(rows: list[dict], path) -> Path:
    with atomic_write(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def read_csv(path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------
def plot(rows: list[dict], path, paper: bool = False):
    """Top-1 vs patch size (smaller patches to the right) and vs training compute; optional paper panel."""
    import pandas as pd
    import seaborn as sns

    frame = pd.DataFrame(rows)
    for column in ("patch_size", "top1", "train_tflops", "tokens", "img_size"):
        frame[column] = pd.to_numeric(frame[column])
    frame["label"] = frame["model"] + " " + frame["dataset"] + " " + frame["img_size"].astype(str) + "px"
    reference = pd.DataFrame(paper_reference()) if paper else pd.DataFrame()
    panels = 3 if len(reference) else 2

    sns.set_theme(style="whitegrid", context="notebook")
    figure = new_figure(figsize=(5.2 * panels, 4.2))
    axes = figure.subplots(1, panels, squeeze=False)[0]
    errorbar = "sd" if frame.groupby(["label", "patch_size"]).size().max() > 1 else None

    sns.lineplot(frame, x="patch_size", y="top1", hue="label", marker="o", errorbar=errorbar, ax=axes[0])
    axes[0].set_xscale("log", base=2)
    patch_sizes = sorted(frame["patch_size"].unique())
    axes[0].set_xticks(patch_sizes, [f"{p}\n({int(frame[frame.patch_size == p].tokens.iloc[0])} tok)"
                                     for p in patch_sizes])
    axes[0].invert_xaxis()  # smaller patches (more tokens) to the right
    axes[0].set(xlabel="patch size (tokens per image)", ylabel="test top-1 (%)", title="Accuracy vs patch size")
    axes[0].legend(title=None)

    sns.lineplot(frame, x="train_tflops", y="top1", hue="label", marker="o", errorbar=errorbar, ax=axes[1],
                 legend=False)
    axes[1].set_xscale("log")
    for _, row in frame.groupby(["label", "patch_size"], as_index=False).mean(numeric_only=True).iterrows():
        axes[1].annotate(f"p{int(row.patch_size)}", (row.train_tflops, row.top1), textcoords="offset points",
                         xytext=(4, -12), fontsize=9)
    axes[1].set(xlabel="training compute (TFLOPs = 3 x forward FLOPs x images seen)", ylabel="test top-1 (%)",
                title="Accuracy vs compute")

    if panels == 3:
        sns.lineplot(reference, x="patch_size", y="top1", hue="model", marker="s", linestyle="--", ax=axes[2])
        axes[2].set_xscale("log", base=2)
        ticks = sorted(reference["patch_size"].unique())
        axes[2].set_xticks(ticks, [str(t) for t in ticks])
        axes[2].invert_xaxis()
        axes[2].set(xlabel="patch size", ylabel="ImageNet-1k top-1 (%)",
                    title="Paper (Wang et al. 2025), 224 px\nreported by the authors, not measured here")
    steps = sorted(frame["steps"].astype(int).unique())
    seeds = frame.groupby(["label", "patch_size"]).size().max()
    spread = f"; mean and band of +-1 sd over {seeds} seeds" if seeds > 1 else ""
    figure.suptitle(f"pixelvit sweep: same {'/'.join(map(str, steps))} training steps for every patch size{spread}",
                    fontsize=11)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    return Path(path)


def format_table(rows: list[dict]) -> str:
    columns = ["model", "patch_size", "tokens", "params", "gflops", "steps", "seed", "top1", "wall_s"]
    lines = [" | ".join(columns)]
    for row in rows:
        lines.append(" | ".join(str(row[c]) for c in columns))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    d = DEFAULT_SWEEP
    p = argparse.ArgumentParser(prog="pixelvit sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", dest="models", nargs="+", default=None,
                   help=f"default: {' '.join(d['models'])} (slimmed, see --model-arg)")
    p.add_argument("--model-arg", action="append", default=None, metavar="KEY=VALUE",
                   help="model config override (repeatable); default with no --model: "
                        + " ".join(f"{k}={v}" for k, v in d["model_args"].items()))
    p.add_argument("--dataset", default=d["dataset"])
    p.add_argument("--img-size", type=int, default=None, help=f"default: {d['img_size']} for specks, else native")
    p.add_argument("--patch-sizes", type=int, nargs="+", default=d["patch_sizes"])
    p.add_argument("--steps", type=int, default=d["steps"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--seeds", type=int, nargs="+", default=d["seeds"])
    p.add_argument("--ema-decay", type=float, default=0.0)
    p.add_argument("--aug", dest="augmentation", default=None, choices=["none", "light", "timm"])
    p.add_argument("--train-samples", type=int, default=None)
    p.add_argument("--eval-samples", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help=f"sweep folder (default {d['out']} for the default sweep, "
                                                "else runs/sweeps/<model>-<dataset>-<size>px)")
    p.add_argument("--runs-dir", default="runs", help="where the individual runs go (shared by sweeps)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--paper", action="store_true", help="add a panel with the paper's ImageNet numbers")
    p.add_argument("--quiet", action="store_true")
    return p


def configs_from_args(args) -> tuple[list[TrainConfig], Path]:
    d = DEFAULT_SWEEP
    use_default_model = args.models is None
    if use_default_model:
        args.models = list(d["models"])
    if args.model_arg is None:  # the default slimming only applies when no --model was given
        model_args = dict(d["model_args"]) if use_default_model else {}
    else:
        model_args = {k.replace("-", "_"): parse_value(v) for k, _, v in (a.partition("=") for a in args.model_arg)}
    img_size = args.img_size or (d["img_size"] if args.dataset == "specks" else None)
    base = TrainConfig(
        dataset=args.dataset, img_size=img_size, model_args=model_args, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay, augmentation=args.augmentation,
        train_samples=args.train_samples, eval_samples=args.eval_samples, device=args.device,
        runs_dir=args.runs_dir, data_root=args.data_root,
    )
    configs = grid(base, args.models, args.patch_sizes, args.seeds)
    is_default = all(getattr(args, k) == d[k] for k in ("models", "dataset", "patch_sizes", "steps", "seeds"))
    out = args.out or (d["out"] if is_default and model_args == d["model_args"]
                       else f"runs/sweeps/{'+'.join(args.models)}-{args.dataset.replace(':', '_').replace('/', '_')}"
                            f"-{img_size or 'native'}px")
    return configs, Path(out)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configs, out = configs_from_args(args)
    started = time.perf_counter()
    rows = run_sweep(configs, out, progress=not args.quiet, paper=args.paper)
    print(format_table(rows))
    print(f"sweep: {len(rows)} runs in {time.perf_counter() - started:.1f} s -> {out / 'results.csv'}, "
          f"{out / 'sweep.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
