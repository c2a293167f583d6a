"""Loading weights: official-format training checkpoints, pixelvit directories, timm ViTs; safety; errors.

Every file here is made by the test (random weights, tiny widths, small images): no network.
"""

import argparse
import pickle
import types

import pytest
import torch

import pixelvit
from pixelvit.catalog import CATALOG, get_checkpoint, list_checkpoints
from pixelvit.io import save_model
from pixelvit.models import create_model
from pixelvit.pretrained import (
    CheckpointError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    describe_state_dict,
    load_pretrained,
)

IMG, PATCH = 16, 4  # 16 patch tokens: fast on CPU


# ---- helpers ---------------------------------------------------------------------------------
def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw EVERY parameter (norm weights, A_log, D, dt_bias included), so nothing matches by luck
    of the default init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model.eval()


def tiny_model(arch: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    if arch == "vit":
        model = create_model("vit_tiny", img_size=IMG, patch_size=PATCH, num_classes=7, embed_dim=64, depth=2,
                             num_heads=1, **kwargs)
    else:  # depth 4 so that the released flip rule (layers 2, 3) is exercised
        model = create_model("adventurer_tiny", img_size=IMG, patch_size=PATCH, num_classes=7, embed_dim=32,
                             depth=4, d_state=8, headdim=16, **kwargs)
    return randomize_(model, seed)


def official_args(model_name: str) -> argparse.Namespace:
    """An argparse.Namespace like the one Adventurer's / DeiT's main.py saves under 'args'."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=model_name)
    parser.add_argument("--input-size", default=IMG, type=int)
    parser.add_argument("--opt-betas", default=(0.9, 0.999), type=float, nargs="+")
    parser.add_argument("--lr", default=5e-4, type=float)
    parser.add_argument("--clip-grad", default=None, type=float)
    parser.add_argument("--model-ema", action="store_true", default=True)
    parser.add_argument("--output_dir", default="./output/s1_128")
    args = parser.parse_args([])
    args.nb_classes, args.distributed, args.gpu = 7, False, 0
    return args


def save_official(path, model, ema_model, model_name: str, wrap_prefix: str = "") -> None:
    """The seven top-level keys of wangf3014/Adventurer main.py's `utils.save_on_master({...})`."""
    from timm.scheduler import CosineLRScheduler

    throwaway = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    optimizer = torch.optim.AdamW(throwaway, lr=1e-3, betas=(0.9, 0.999))
    for p in throwaway:
        p.grad = torch.randn_like(p)
    optimizer.step()  # so the optimizer state holds real tensors ('step', 'exp_avg', 'exp_avg_sq')
    prefix = lambda state: {wrap_prefix + k: v for k, v in state.items()}  # noqa: E731
    torch.save(
        {
            "model": prefix(model.state_dict()),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": CosineLRScheduler(optimizer, t_initial=300).state_dict(),
            "epoch": 299,
            "model_ema": ema_model.state_dict() if ema_model is not None else None,
            "scaler": torch.amp.GradScaler("cpu").state_dict(),
            "args": official_args(model_name),
        },
        path,
    )


def images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def same_outputs(a, b, x) -> bool:
    return torch.equal(a(x), b(x))


# ---- the official training-checkpoint format ---------------------------------------------------
@pytest.mark.parametrize("arch", ["adventurer", "vit"])
def test_official_checkpoint_loads_exactly(tmp_path, arch):
    source, ema = tiny_model(arch, seed=0), tiny_model(arch, seed=1)
    path = tmp_path / "checkpoint.pth"
    save_official(path, source, ema, f"{arch}_tiny")

    loaded = load_pretrained(path)  # strict by default
    assert type(loaded) is type(source) and not loaded.training
    assert loaded.config.img_size == IMG and loaded.config.patch_size == PATCH
    assert loaded.load_report.picked == "model"
    x = images()
    assert same_outputs(loaded, source, x)

    loaded_ema = load_pretrained(path, model_ema=True)
    assert loaded_ema.load_report.picked == "model_ema"
    assert same_outputs(loaded_ema, ema, x)
    assert not same_outputs(loaded_ema, source, x)


def test_official_checkpoint_from_ddp_has_module_prefix_stripped(tmp_path):
    source = tiny_model("adventurer")
    path = tmp_path / "ddp.pth"
    save_official(path, source, None, "adventurer_tiny", wrap_prefix="module._orig_mod.")
    loaded = load_pretrained(path)
    assert same_outputs(loaded, source, images())
    notes = " ".join(loaded.load_report.notes)
    assert "'module.'" in notes and "'_orig_mod.'" in notes
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_pretrained(path, model_ema=True)  # saved with model_ema None


def test_describe_state_dict_reads_the_mixer_geometry():
    model = tiny_model("adventurer")
    shape = describe_state_dict(model.state_dict())
    assert shape.arch == "adventurer" and shape.num_classes == 7
    for field in ("img_size", "patch_size", "embed_dim", "depth", "d_state", "headdim", "expand", "d_conv"):
        assert shape.config[field] == getattr(model.config, field), field


def test_pixelvit_directory_rebuilds_from_config_alone(tmp_path):
    source = tiny_model("adventurer", flip_rule="alternate")  # a field no tensor shape reveals
    save_model(source, tmp_path / "run")
    for path in (tmp_path / "run", tmp_path / "run" / "model.safetensors"):
        loaded = load_pretrained(path)
        assert loaded.config == source.config
        assert same_outputs(loaded, source, images())


def test_bare_safetensors_and_plain_state_dict_files(tmp_path):
    from safetensors.torch import save_file

    source = tiny_model("vit")
    save_file(source.state_dict(), tmp_path / "weights.safetensors")
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    for name in ("weights.safetensors", "weights.pth"):
        assert same_outputs(load_pretrained(tmp_path / name), source, images())


# ---- timm ViT / DeiT ---------------------------------------------------------------------------
def tiny_timm_vit(num_heads: int):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMG, patch_size=PATCH,
                              embed_dim=128, depth=2, num_heads=num_heads, num_classes=7)
    return randomize_(model, 3)


def test_timm_vit_weights_load_through_a_file(tmp_path):
    timm_model = tiny_timm_vit(num_heads=2)  # head dim 64: what the loader assumes when it cannot see
    torch.save(timm_model.state_dict(), tmp_path / "timm_vit.pth")
    loaded = load_pretrained(tmp_path / "timm_vit.pth")
    assert loaded.config.num_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(images()), timm_model(images()), rtol=1e-5, atol=1e-5)


def test_timm_vit_with_other_head_count_needs_num_heads(tmp_path):
    timm_model = tiny_timm_vit(num_heads=4)
    torch.save(timm_model.state_dict(), tmp_path / "timm_vit.pth")
    loaded = load_pretrained(tmp_path / "timm_vit.pth", num_heads=4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images()), timm_model(images()), rtol=1e-5, atol=1e-5)


def test_timm_name_offline_is_a_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="timm's pretrained weights.*deit_tiny_patch16_224") as info:
        load_pretrained("deit_tiny_patch16_224")
    assert "load_pretrained('vit.pth')" in str(info.value)


# ---- strict checks: every problem by name ------------------------------------------------------
def test_mismatch_names_every_key(tmp_path):
    source = tiny_model("vit")
    state = source.state_dict()
    state["blocks.0.attn.bonus.weight"] = torch.zeros(3)  # unexpected
    del state["blocks.1.norm2.bias"]  # missing
    state["norm.weight"] = torch.ones(5)  # wrong shape
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained(tmp_path / "bad.pth")
    message = str(info.value)
    for key in ("blocks.0.attn.bonus.weight", "blocks.1.norm2.bias", "norm.weight (checkpoint (5,), model (64,))"):
        assert key in message

    loose = load_pretrained(tmp_path / "bad.pth", strict=False)
    report = loose.load_report
    assert report.unexpected == ["blocks.0.attn.bonus.weight"] and report.missing == ["blocks.1.norm2.bias"]
    assert report.mismatched[0].startswith("norm.weight")
    assert torch.equal(loose.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_wrong_model_name_is_reported_by_key(tmp_path):
    torch.save({"model": tiny_model("adventurer").state_dict()}, tmp_path / "adv.pth")
    with pytest.raises(CheckpointMismatchError, match=r"layers\.0\.mixer\.in_proj\.weight \(checkpoint"):
        load_pretrained(tmp_path / "adv.pth", model="adventurer_tiny")  # width 256, not 32


def test_new_head_drops_the_old_one_by_name(tmp_path):
    source = tiny_model("adventurer")
    torch.save({"model": source.state_dict()}, tmp_path / "adv.pth")
    loaded = load_pretrained(tmp_path / "adv.pth", num_classes=3)
    assert loaded.head.out_features == 3
    assert any("dropped head.weight, head.bias (7 classes)" in note for note in loaded.load_report.notes)
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(images()), source.forward_features(images()))


def test_resample_on_load(tmp_path):
    source = tiny_model("adventurer")
    torch.save({"model": source.state_dict()}, tmp_path / "adv.pth")
    bigger = load_pretrained(tmp_path / "adv.pth", img_size=2 * IMG)
    assert bigger.pos_embed.shape[1] == (2 * IMG // PATCH) ** 2 + 1
    assert torch.equal(bigger.pos_embed[:, -1], source.pos_embed[:, -1])  # class token last, untouched
    assert bigger.pretrained_cfg["input_size"] == (3, 2 * IMG, 2 * IMG)


# ---- safety -----------------------------------------------------------------------------------
class CreatesMarker:
    """Unpickling this would create a file: the stand-in for arbitrary code in a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model": tiny_model("vit").state_dict(), "args": CreatesMarker(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(UnsafeCheckpointError, match="allow_unsafe_pickle=True") as info:
        load_pretrained(path)
    assert "open" in str(info.value)  # names what the file wanted
    assert not marker.exists()


def test_unknown_class_needs_opt_in(tmp_path):
    source = tiny_model("vit")
    torch.save({"model": source.state_dict(), "args": types.SimpleNamespace(model="vit_tiny")}, tmp_path / "c.pth")
    with pytest.raises(UnsafeCheckpointError, match="types.SimpleNamespace"):
        load_pretrained(tmp_path / "c.pth")
    trusted = load_pretrained(tmp_path / "c.pth", allow_unsafe_pickle=True)
    assert same_outputs(trusted, source, images())


@pytest.mark.parametrize("damage", ["truncated", "text", "empty"])
def test_damaged_files_give_a_short_clear_error(tmp_path, damage):
    good = tmp_path / "good.pth"
    save_official(good, tiny_model("vit"), None, "vit_tiny")
    data = good.read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes({"truncated": data[: len(data) // 2], "text": b"<html>404 Not Found</html>", "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="is not a readable checkpoint") as info:
        load_pretrained(bad)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unknown_name_suggests_the_closest_release():
    with pytest.raises(CheckpointError, match=r"did you mean adventurer_large_patch16_224\?"):
        load_pretrained("adventurer_huge_patch1_1024")
    with pytest.raises(CheckpointError, match=r"did you mean adventurer_tiny_patch1_64\?"):
        load_pretrained("adventurer_tiny_patch1_6")


# ---- the catalog -------------------------------------------------------------------------------
def test_catalog_has_the_nine_patch1_checkpoints():
    names = list_checkpoints(patch_size=1)
    assert len(names) == 9
    expected = {("tiny", 224): 81.9, ("small", 224): 83.8, ("base", 224): 84.6,
                ("tiny", 128): 80.7, ("small", 128): 81.4, ("base", 128): 82.4,
                ("tiny", 64): 77.4, ("small", 64): 80.5, ("base", 64): 80.9}
    for (size, img), top1 in expected.items():
        entry = get_checkpoint(f"adventurer_{size}_patch1_{img}")
        assert (entry.top1, entry.img_size, entry.repo_id) == (top1, img, "Wangf3014/Patch_Scaling")
        assert entry.filename == f"adventurer_{size}_patch1_{img}.pth" and entry.flip_rule == "unknown"
        assert entry.crop_pct == (0.875 if img == 64 else 1.0)
    assert get_checkpoint("adventurer_base_patch1_224").num_tokens == 50_177
    assert get_checkpoint("adventurer_tiny_patch16_224").top1 == 78.2


@pytest.mark.parametrize("name", list(CATALOG))
def test_every_catalog_model_builds(name):
    """On the meta device: shapes only, no memory, so even Base at patch 1 and 224 px is instant."""
    entry = CATALOG[name]
    with torch.device("meta"):
        model = create_model(entry.model, img_size=entry.img_size, patch_size=entry.patch_size)
    assert model.pos_embed.shape[1] == entry.num_tokens
    assert model.patch_embed.proj.weight.shape[-1] == entry.patch_size


def test_public_entry_point():
    assert pixelvit.load_pretrained is load_pretrained


def test_numpy_scalars_are_allowed(tmp_path):
    """DeiT-style scripts sometimes save numpy numbers (e.g. a best accuracy): data, not code."""
    import numpy as np

    source = tiny_model("vit")
    torch.save({"model": source.state_dict(), "max_accuracy": np.float64(81.9), "epoch": np.int64(3)},
               tmp_path / "np.pth")
    assert same_outputs(load_pretrained(tmp_path / "np.pth"), source, images())


def test_architecture_name_is_not_a_checkpoint():
    with pytest.raises(CheckpointError, match="adventurer_tiny_patch16_224"):
        load_pretrained("adventurer_tiny_patch16")  # registered with timm by pixelvit, but no weights


def test_filter_state_dict_unwraps_strips_drops_the_head_and_resamples():
    """timm's checkpoint_filter_fn steps in one place: the result equals resize_model's weights."""
    from pixelvit.pretrained import filter_state_dict
    from pixelvit.resample import resize_model

    torch.manual_seed(0)
    source = create_model("adventurer_nano", img_size=16, patch_size=4).eval()
    checkpoint = {"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 1}
    target = create_model("adventurer_nano", img_size=32, patch_size=2, num_classes=3)
    notes = []
    state = filter_state_dict(checkpoint, target, notes=notes)
    expected = resize_model(source, img_size=32, patch_size=2).state_dict()
    assert set(state) == set(expected) - {"head.weight", "head.bias"}
    for key, value in state.items():
        assert torch.equal(value, expected[key]), key
    text = " | ".join(notes)
    for fragment in ("stripped 'module.'", "dropped head.weight, head.bias (10 classes)", "resampled patch_embed",
                     "resampled pos_embed"):
        assert fragment in text
