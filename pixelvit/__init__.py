"""pixelvit: patch-size scaling of ViT and Adventurer (Mamba-2), small enough to read and to run on a laptop.

`import pixelvit` registers every pixelvit model with timm (timm.create_model("adventurer_nano"),
timm.list_pretrained("adventurer*")) and applies two CPU settings that make training several times faster
without changing any result (`pixelvit.runtime`; PIXELVIT_CPU_TUNING=0 turns them off); the rest of the public API is imported when first used.

Architecture: a module imports only modules of its own layer or of a layer below it, never one above, and
no import circle, even inside functions (tests/test_architecture.py checks this list against the code).
Layers from the bottom, module names relative to `pixelvit.` (`x.*`: every module in package x):

     1. basics: _version, runtime, cli, io, patching, catalog, paper, interrupt, distributed
     2. kernels and data: ops, ops.*, data, data.*
     3. checkpoint files: resample, checkpoints
     4. model parts: models.layers, models.mamba2, models.base
     5. architectures: models.vit, models.adventurer
     6. model registry: models.registry, models.timm_registry, models, extend
     7. analysis: viz, costs, dense, dense.heads, dense.metrics, dense.model, dense.report
     8. pretrained weights: pretrained, assets, predict, explorer
     9. a run's description and folder: config, runs
    10. tasks: tasks, dense.task
    11. which run a config names, and its options: run_id, train_args
    12. the trainer: train
    13. sweeps: sweep
    14. the package root: __init__

So the model code reads checkpoint files (timm's `pretrained=True`) through pixelvit.checkpoints below it,
never through pixelvit.pretrained above it; and TrainConfig (pixelvit.config) sits below the tasks, which
name it, and the trainer, which runs them.
"""

from importlib import import_module

from pixelvit import runtime as _runtime

_runtime.configure()  # before torch loads: malloc keeps freed memory, OpenMP threads spin briefly (pixelvit.runtime)

from pixelvit import models as _models  # noqa: E402, F401  (after configure: registers the models with timm)
from pixelvit._version import __version__  # noqa: E402  (importable without torch: pixelvit.io uses it)

# name -> module that defines it
_LAZY = {
    "create_model": "pixelvit.models",
    "list_models": "pixelvit.models",
    "load_pretrained": "pixelvit.pretrained",
    "patchify": "pixelvit.patching",
    "unpatchify": "pixelvit.patching",
    "num_tokens": "pixelvit.patching",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pixelvit' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
