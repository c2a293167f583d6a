"""A per-layer progress bar for long forward passes (a 50,177-token Adventurer takes a minute on a laptop).

    with layer_progress(model):
        logits = model(images)

tqdm.auto (a widget in Jupyter, text in a terminal) advances once per block, through forward hooks on the
model's blocks; nothing in the model changes, and the hooks are removed on exit.
"""

from __future__ import annotations

from contextlib import contextmanager

from tqdm.auto import tqdm


def _blocks(model):
    for name in ("trunk", "layers", "blocks"):  # pixelvit's PatchTokenModel, Adventurer, timm's ViT
        blocks = getattr(model, name, None)
        if blocks is not None:
            return blocks
    raise ValueError(f"{type(model).__name__} has no trunk, layers or blocks to show progress for")


@contextmanager
def layer_progress(model, calls: int = 1, desc: str = "layers", enabled: bool = True, **tqdm_kwargs):
    """A tqdm bar over `calls` forward passes of `model`, one step per block; yields the bar."""
    blocks = _blocks(model)
    bar = tqdm(total=len(blocks) * calls, desc=desc, unit="layer", disable=not enabled, **tqdm_kwargs)

    def advance(*_):  # a forward hook that returns something replaces the block's output: return None
        bar.update(1)

    handles = [block.register_forward_hook(advance) for block in blocks]
    try:
        yield bar
    finally:
        for handle in handles:
            handle.remove()
        bar.close()
