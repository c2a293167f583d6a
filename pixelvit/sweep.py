"""Train one model at several patch sizes and plot accuracy against patch size and against compute.

    pixelvit sweep                     # the default: specks, 16x16 images, patch 8 4 2 1 (about 3 min on 2 CPU cores)
    pixelvit sweep --model vit_nano --dataset cifar10 --img-size 32 --patch-sizes 8 4 2 --steps 2000 \\
                   --out runs/sweeps/my_cifar10_vit_nano

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

from pixelvit.cli import HelpFormatter, report_user_errors
from pixelvit.config import NOT_HASHED, TrainConfig
from pixelvit.costs import estimate
from pixelvit.io import atomic_write, atomic_write_json, read_model_files
from pixelvit.models import model_from_config
from pixelvit.paper import imagenet_top1
from pixelvit.run_id import check_config
from pixelvit.train import train
from pixelvit.train_args import config_from_args, recipe_arguments

# The default sweep: what `pixelvit sweep` with no arguments runs (and the README's main job).
# vit_nano (64 wide x 4 deep) so that patch size 1 (257 tokens) trains in ~2 minutes on 2 CPU cores;
# 300 steps of 32 images. Measured: see results/specks_default/ and the README.
DEFAULT_SWEEP = dict(
    models=["vit_nano"],
    model_args={},
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
               "gflops_source", "run_dir", "cached", "miou", "pixel_accuracy"]


# ---------------------------------------------------------------------------------------------
# The paper's numbers, for the comparison panel. Quoted, never measured here.
# ---------------------------------------------------------------------------------------------
def paper_reference() -> list[dict]:
    """ImageNet-1k top-1 by patch size at 224x224 input, as reported by the authors (pixelvit.paper).

    Adventurer Tiny / Small / Base at patch 16 / 8 / 4 / 2 / 1 from the paper's Table 4. DeiT-Base was
    trained only at 64 and 128 px (Table 1: `pixelvit.paper.imagenet_top1(128)` has both models there),
    so the 224 panel has no ViT line.
    """
    return [{"model": row["model"], "patch_size": row["patch_size"], "top1": row["top1"], "source": row["source"]}
            for row in imagenet_top1(img_size=224)]


# ---------------------------------------------------------------------------------------------
# Running the grid
# ---------------------------------------------------------------------------------------------
def grid(base: TrainConfig, models: list[str], patch_sizes: list[int], seeds: list[int]) -> list[TrainConfig]:
    return [dataclasses.replace(base, model=model, patch_size=patch, seed=seed, out=None)
            for model in models for seed in seeds for patch in patch_sizes]


def forward_gflops(run_dir: Path) -> float:
    """Forward GFLOPs per image of a finished run's model, from pixelvit.costs (attention included)."""
    meta, _ = read_model_files(run_dir / "model")
    if meta["arch"] == "segmentation":  # backbone + head (pixelvit.dense)
        from pixelvit.dense.model import segmentation_gflops, segmentation_model_from_config

        return float(segmentation_gflops(segmentation_model_from_config(meta["config"]))["gflops"])
    return float(estimate(model_from_config(meta["arch"], meta["config"]))["gflops"])


def result_row(config: TrainConfig, result) -> dict:
    gflops = forward_gflops(Path(result.run_dir))
    meta_img = result.config.get("img_size")
    return {
        "model": config.model, "dataset": config.dataset, "img_size": meta_img,
        "patch_size": config.patch_size, "tokens": result.tokens, "params": result.params,
        "gflops": round(gflops, 6),
        # a training step costs ~3 forward passes (forward + backward); images seen = steps x batch
        "train_tflops": round(3 * gflops * result.steps * config.batch_size / 1e3, 6),
        "steps": result.steps, "batch_size": config.batch_size, "seed": config.seed,
        "top1": None if result.top1 is None else round(result.top1, 3), "eval_loss": round(result.eval_loss, 5),
        # segmentation runs (task "segmentation") report these instead of top-1
        "miou": result.metrics.get("miou"), "pixel_accuracy": result.metrics.get("pixel_accuracy"),
        "wall_s": round(result.wall_s, 2), "images_per_s": round(result.images_per_s, 1),
        "device": result.device, "gflops_source": "pixelvit.costs", "run_dir": result.run_dir, "cached": result.cached,
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


# ---------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------
def plot(rows: list[dict], path, paper: bool = False):
    """Top-1 vs patch size and vs training compute, with a chance line; the paper's panel with `paper`.

    The figure is pixelvit.viz.sweep_figure, or pixelvit.dense.report.sweep_figure for a segmentation sweep;
    both draw the measured panel with pixelvit.viz.metric_vs_patch. This writes it as a PNG.
    """
    from pixelvit.viz import sweep_figure

    if rows and rows[0].get("miou") not in (None, "") and rows[0].get("top1") in (None, ""):  # segmentation
        from pixelvit.dense.report import sweep_figure as segmentation_figure

        figure = segmentation_figure(rows, paper=paper)  # mIoU, the decoder's lead, the paper's Table 2
    else:
        figure = sweep_figure(rows, paper_reference() if paper else None)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
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
                                parents=[recipe_arguments()], formatter_class=HelpFormatter)
    p.set_defaults(steps=d["steps"], batch_size=d["batch_size"], lr=d["lr"], dataset=d["dataset"])
    p.add_argument("--model", dest="models", nargs="+", default=None,
                   help=f"one or more names from pixelvit.models.list_models() (default: {' '.join(d['models'])})")
    p.add_argument("--patch-sizes", type=int, nargs="+", default=d["patch_sizes"], help="one run per patch size")
    p.add_argument("--seeds", type=int, nargs="+", default=d["seeds"], help="one run per seed and patch size")
    p.add_argument("--out", default=None, help=f"sweep folder (default: {d['out']} for the default sweep, "
                                                "else runs/sweeps/<model>-<dataset>-<size>px)")
    p.add_argument("--paper", action="store_true", help="add a panel with the paper's ImageNet numbers")
    return p


def sweep_grid(args) -> list[TrainConfig]:
    """Every run the parsed arguments ask for, unchecked."""
    models = args.models or list(DEFAULT_SWEEP["models"])
    img_size = args.img_size or (DEFAULT_SWEEP["img_size"] if args.dataset == "specks" else None)
    base = config_from_args(args, model=models[0], img_size=img_size, out=None)  # parses --model-arg
    return grid(base, models, args.patch_sizes, args.seeds)


def trained_weights(config: TrainConfig) -> dict:
    """What decides a run's weights: every field but where and how often it logs and saves (NOT_HASHED)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_HASHED}


def configs_from_args(args) -> tuple[list[TrainConfig], Path]:
    """Every run of the sweep (checked before any is trained) and the sweep folder."""
    configs = sweep_grid(args)
    for config in configs:
        check_config(config)  # a bad model, dataset or patch size stops the sweep before any training
    # The default folder holds the default sweep's runs only: any option that changes what is trained
    # (--lr, --batch-size, --img-size, --aug, ...) makes another sweep, with its own folder.
    defaults = sweep_grid(build_parser().parse_args([]))
    is_default = [trained_weights(c) for c in configs] == [trained_weights(c) for c in defaults]
    models = list(dict.fromkeys(c.model for c in configs))
    dataset = args.dataset.replace(":", "_").replace("/", "_")
    img_size = configs[0].img_size or "native"
    out = args.out or (DEFAULT_SWEEP["out"] if is_default else f"runs/sweeps/{'+'.join(models)}-{dataset}-{img_size}px")
    return configs, Path(out)


def run_command(args) -> int:
    configs, out = configs_from_args(args)
    started = time.perf_counter()
    rows = run_sweep(configs, out, progress=not args.quiet, paper=args.paper)
    print(format_table(rows))
    print(f"sweep: {summary(rows, time.perf_counter() - started)} -> {out / 'results.csv'}, {out / 'sweep.png'}")
    return 0


def summary(rows: list[dict], seconds: float) -> str:
    """'4 runs in 61.0 s', saying which runs were loaded from their run folders rather than trained: their
    wall_s is how long they took when they were trained, not part of this sweep's time."""
    loaded = sum(bool(row["cached"]) for row in rows)
    if not loaded:
        return f"{len(rows)} runs in {seconds:.1f} s"
    trained = f"{len(rows) - loaded} trained, " if loaded < len(rows) else ""
    return (f"{len(rows)} runs in {seconds:.1f} s ({trained}{loaded} loaded from their run folders: "
            "their wall_s is from when they were trained)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return report_user_errors("pixelvit sweep", lambda: run_command(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
