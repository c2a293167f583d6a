"""pixelvit: patch-size scaling of ViT and Adventurer (Mamba-2), small enough to read and to run on a laptop.

`import pixelvit` registers every pixelvit model with timm (timm.create_model("adventurer_nano"),
timm.list_pretrained("adventurer*")) and applies two CPU settings that make training several times faster
without changing any result (`pixelvit.runtime`; PIXELVIT_CPU_TUNING=0 turns them off); the rest of the public API is imported when first used.
"""

from importlib import import_module

from pixelvit import runtime as _runtime

_runtime.configure()  # before torch loads: malloc keeps freed memory, OpenMP threads spin briefly (pixelvit.runtime)

from pixelvit import models as _models  # noqa: E402, F401  (after configure: registers the models with timm)

__version__ = "0.1.0"

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
