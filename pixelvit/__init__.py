"""pixelvit: patch-size scaling of ViT and Adventurer (Mamba-2), small enough to read and to run on a laptop.

The public API is imported lazily so that `import pixelvit` stays fast and a notebook that only
needs `pixelvit.patching` does not pay for building models.
"""

from importlib import import_module

__version__ = "0.1.0"

# name -> module that defines it
_LAZY = {
    "create_model": "pixelvit.models",
    "list_models": "pixelvit.models",
    "load_pretrained": "pixelvit.checkpoints",
    "patchify": "pixelvit.patching",
    "unpatchify": "pixelvit.patching",
    "num_tokens": "pixelvit.patching",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pixelvit' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
