"""The options of `pixelvit train` and `pixelvit sweep` (argparse), and the TrainConfig they give.

    args = build_parser().parse_args(["--model", "vit_nano", "--patch-size", "2"])
    config = config_from_args(args)        # a TrainConfig; --model-arg KEY=VALUE parsed into model_args

recipe_arguments() is the parent parser both commands share: every TrainConfig field a user sets. What
runs the parsed command is pixelvit.train.main (and pixelvit.sweep.main); the `pixelvit` launcher that
picks the subcommand without importing torch is pixelvit_cli.py (pixelvit.cli says how the pieces fit).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from pixelvit.cli import HelpFormatter
from pixelvit.config import TrainConfig
from pixelvit.data import AUGMENTATIONS
from pixelvit.data.segmentation import SEGMENTATION_AUGMENTATIONS
from pixelvit.run_id import ConfigError
from pixelvit.tasks import TASKS

# the first paragraph of pixelvit.train's docstring, as `pixelvit train --help` has always shown it
DESCRIPTION = "Train one model on one dataset: `train(TrainConfig(...)) -> RunResult`, and `pixelvit train`."


def parse_value(text: str):
    """'64' -> 64, '0.1' -> 0.1, 'true' -> True, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_model_args(items: list[str] | None) -> dict:
    """["embed_dim=64", "depth=3"] -> {"embed_dim": 64, "depth": 3}."""
    model_args = {}
    for item in items or []:
        key, equals, value = item.partition("=")
        if not equals:
            raise ConfigError(f"--model-arg {item!r}: write KEY=VALUE, e.g. --model-arg embed_dim=64")
        model_args[key.replace("-", "_")] = parse_value(value)
    return model_args


def recipe_arguments() -> argparse.ArgumentParser:
    """The options `pixelvit train` and `pixelvit sweep` share (an argparse parent parser)."""
    d = TrainConfig()
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. --model-arg embed_dim=64 (repeatable)")
    p.add_argument("--dataset", default=d.dataset, help="specks | cifar10 | cifar100 | cifar10_jpeg | folder:<path>")
    p.add_argument("--task", default=d.task, help="what to learn: " + " | ".join(TASKS))
    p.add_argument("--img-size", type=int, default=None, help="default: the dataset's native size")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (after warmup, then cosine)")
    p.add_argument("--min-lr", type=float, default=d.min_lr, help="learning rate at the end of the cosine")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of the steps")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="0 = hard labels")
    p.add_argument("--mixup", type=float, default=d.mixup, help="Mixup alpha (0 = off)")
    p.add_argument("--cutmix", type=float, default=d.cutmix, help="CutMix alpha (0 = off)")
    # No argparse `choices`: which names are valid depends on --task, and the task's check says so in one line
    p.add_argument("--aug", dest="augmentation", default=None,
                   help=f"classification: {' | '.join(AUGMENTATIONS)} (default: the dataset's; specks: none, others: "
                        f"light); segmentation: {' | '.join(SEGMENTATION_AUGMENTATIONS)} (default: none)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="0 = no EMA")
    p.add_argument("--clip-grad", type=float, default=d.clip_grad, help="0 = no clipping")
    p.add_argument("--drop-path", type=float, default=d.drop_path, help="stochastic depth rate of the last block")
    p.add_argument("--extend", type=int, default=d.extend,
                   help="interpolate the patch tokens this many times per side: the paper's 'extending' (1 = off)")
    p.add_argument("--upsample", type=int, default=d.upsample,
                   help="upsample the images this many times per side before the model (1 = off)")
    p.add_argument("--train-samples", type=int, default=None, help="use only the first N training images")
    p.add_argument("--eval-samples", type=int, default=None, help="evaluate on the first N test images")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument("--no-amp", dest="amp", action="store_false",
                   help="turn off bf16 autocast on CUDA (on by default; the CPU runs float32 either way)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in backward: less memory, ~30%% slower")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--runs-dir", default=d.runs_dir, help="where run folders go")
    p.add_argument("--data-root", default=None, help="dataset cache (default: $PIXELVIT_DATA or ~/.cache/pixelvit)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="0 = only at the end")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="save a checkpoint every N steps (also after each epoch, the last step and Ctrl-C)")
    p.add_argument("--log-every", type=int, default=d.log_every, help="log the training loss every N steps")
    p.add_argument("--workers", dest="num_workers", type=int, default=d.num_workers,
                   help="DataLoader worker processes (0 is fastest for small images on 1-2 cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    return p


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="pixelvit train", description=DESCRIPTION,
                                parents=[recipe_arguments()], formatter_class=HelpFormatter)
    p.add_argument("--model", default=d.model, help="a name from pixelvit.models.list_models()")
    p.add_argument("--patch-size", type=int, default=None, help="default: the model's")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the weights, the data order and augmentation")
    p.add_argument("--stages", nargs="+", default=None, metavar="IMG:STEPS[:PATCH]",
                   help="multi-stage training, e.g. --stages 16:200 32:100 (overrides --img-size/--steps)")
    p.add_argument("--init-from", default=None, help="start from this model folder (resized if needed)")
    p.add_argument("--out", default=None, help="run folder (default: <runs-dir>/<name>-<hash>)")
    p.add_argument("--resume", action="store_true",
                   help="resume from the run folder's last checkpoint (what happens anyway; see --restart)")
    p.add_argument("--restart", action="store_true",
                   help="delete the run folder's checkpoints and results and train from scratch "
                        "(default: resume from the last checkpoint, or return the stored result)")
    return p


def config_from_args(args, **changes) -> TrainConfig:
    """The TrainConfig fields among the parsed arguments, with --model-arg parsed, then `changes`."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    return TrainConfig(**{**values, "model_args": parse_model_args(args.model_arg), **changes})
