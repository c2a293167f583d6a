"""What a training run is: `TrainConfig`, the one dataclass that `pixelvit train`, sweeps and tasks share.

It sits below pixelvit.tasks and pixelvit.train, so a task can name it without importing the trainer.
Fields above the marker change the trained weights and so the run hash (pixelvit.train.config_hash);
those in NOT_HASHED only say where and how often to log and save.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    model: str = "vit_micro"
    dataset: str = "specks"
    task: str = "classification"  # a name in pixelvit.tasks.TASKS
    img_size: int | None = None  # None: the dataset's native size (specks 16, CIFAR 32)
    patch_size: int | None = None  # None: the model's default
    model_args: dict = field(default_factory=dict)  # config overrides, e.g. {"embed_dim": 64, "depth": 4}
    steps: int = 300  # optimizer steps; the budget sweeps keep equal across patch sizes
    batch_size: int = 128  # global: split across DDP processes
    lr: float = 1e-3  # peak learning rate for this global batch
    min_lr: float = 1e-5  # where the cosine ends
    warmup_steps: int | None = None  # None: 10 % of the steps
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    mixup: float = 0.0  # Mixup alpha (0 = off)
    cutmix: float = 0.0  # CutMix alpha (0 = off)
    augmentation: str | None = None  # none | light | timm; None: the dataset's default
    ema_decay: float = 0.0  # EMA of the weights (0 = off); top-1 is then measured on the EMA weights
    clip_grad: float = 1.0  # max gradient norm (0 = no clipping; the norm is checked for NaN either way)
    drop_path: float = 0.0  # stochastic depth rate of the last block
    seed: int = 0
    train_samples: int | None = None  # use only the first N training images (None: all)
    eval_samples: int | None = None  # evaluate on the first N test images (None: all)
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30 % slower
    compile: bool = False  # torch.compile the model
    init_from: str | None = None  # a model folder to start from (multi-stage: the previous stage's model/)
    # the paper's Table 5 (pixelvit.extend): longer sequences without new information
    extend: int = 1  # patch-embedding token grid interpolated this many times per side (1 = off)
    upsample: int = 1  # images upsampled (bicubic) this many times per side before the model (1 = off)
    # ---- below: where and how often; they do not change the trained weights, so not in the hash ----
    out: str | None = None  # run folder; None: <runs_dir>/<name>-<hash>
    runs_dir: str = "runs"
    data_root: str | None = None  # dataset cache root (default $PIXELVIT_DATA or ~/.cache/pixelvit)
    eval_every: int = 0  # evaluate every N steps (0: only at the end)
    checkpoint_every: int = 100  # also at the end of every epoch, after the last step and on Ctrl-C
    log_every: int = 50
    num_workers: int = 0  # DataLoader workers; 0 is fastest for small in-memory images on 1-2 cores


NOT_HASHED = {"out", "runs_dir", "data_root", "eval_every", "checkpoint_every", "log_every", "num_workers"}
