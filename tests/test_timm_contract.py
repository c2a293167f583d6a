"""pixelvit's models keep the contract of timm's own VisionTransformer, on every registered name.

Each test builds small instances (depth 2, 32x32 images, 8x8 for patch 1) so the whole module runs in well
under a minute on a CPU; the pretrained cfgs are checked at the names' real sizes without building them.
"""

import argparse
import dataclasses
import json
import re

import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.optim import create_optimizer_v2

import pixelvit  # noqa: F401  (registers the models: nothing else is needed)
from pixelvit.catalog import CATALOG
from pixelvit.io import save_model
from pixelvit.models import MODELS, ModelArgumentError, create_model, get_config, merge_overrides
from pixelvit.models.timm_registry import TIMM_NAMES
from pixelvit.pretrained import UnsafeCheckpointError, load_pretrained

NAMES = sorted(TIMM_NAMES.values())


def small(timm_name: str, **kwargs):
    """The name's model at depth 2, 64 wide, on small images (8x8 for patch 1, 16x16 for patch 8, else 32x32):
    nothing in the contract depends on the width, and Large at full width would take seconds per test."""
    config = get_config(next(n for n, t in TIMM_NAMES.items() if t == timm_name))
    img = {1: 8, 8: 16}.get(config.patch_size, 32)
    narrow = dict(num_heads=2) if hasattr(config, "num_heads") else dict(headdim=32, d_state=16)
    torch.manual_seed(0)
    return timm.create_model(timm_name, img_size=img, depth=2, embed_dim=64, **narrow, **kwargs)


def images_for(model, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.pretrained_cfg["input_size"])


def test_every_name_is_registered_and_no_timm_name_is_shadowed():
    assert set(NAMES) <= set(timm.list_models())
    own_entrypoints = {n for n in timm.list_models() if timm.models.get_pretrained_cfg(n) is not None
                       and timm.models.model_entrypoint(n).__module__ == "pixelvit.models.timm_registry"}
    assert own_entrypoints == set(NAMES)  # nothing of timm's was replaced by a pixelvit entrypoint
    assert {"vit_nano", "adventurer_nano"} <= set(NAMES) and len(NAMES) == len(MODELS) == 21
    for renamed in ("vit_tiny", "vit_small", "vit_base", "vit_large"):  # timm's families vit_tiny_patch16_224 ...
        assert timm.list_models(f"{renamed}_*") and not timm.is_model(renamed)
        assert TIMM_NAMES[renamed] == f"pixelvit_{renamed}"


def test_every_entry_point_is_a_plain_function_a_reader_can_grep():
    """timm_registry.py spells out `@register_model def <name>(pretrained=False, **kwargs)` for every name, and
    timm's registry holds those very functions. (Before: made in a loop through globals()[...], so grepping
    for `def adventurer_tiny` found nothing.)"""
    from pixelvit.models import timm_registry

    source = open(timm_registry.__file__).read()
    assert "globals()" not in source and source.count("@register_model\n") == len(MODELS)
    for name, timm_name in TIMM_NAMES.items():
        assert f"@register_model\ndef {timm_name}(pretrained=False, **kwargs):\n" in source, timm_name
        function = getattr(timm_registry, timm_name)
        assert timm.models.model_entrypoint(timm_name) is function and function.__name__ == timm_name
        assert f'return _build("{name}", pretrained, **kwargs)' in source


def test_the_names_table_of_pixelvit_models_maps_real_names():
    """The table in pixelvit.models' docstring: each row's pixelvit name and timm name are what the code maps."""
    import pixelvit.models
    from pixelvit.models.registry import pretrained_tag

    rows = {}
    for line in pixelvit.models.__doc__.splitlines():
        cells = re.split(r"\s{2,}", line.strip())  # kind | pixelvit | timm | mapping
        if len(cells) == 4:
            rows[cells[0]] = cells[1:3]
    assert rows["a model"] == ["adventurer_tiny_patch1", "adventurer_tiny_patch1"]
    assert TIMM_NAMES["adventurer_tiny_patch1"] == "adventurer_tiny_patch1"
    pixelvit_name, timm_name = rows["a paper-sized ViT"]
    assert TIMM_NAMES[pixelvit_name] == timm_name and timm.is_model(timm_name)
    catalog_name, tag = rows["a released checkpoint"]
    assert pretrained_tag(CATALOG[catalog_name]) == tag and tag in timm.list_pretrained()
    assert load_pretrained.__module__ == "pixelvit.pretrained"  # which takes both (tests/test_pretrained.py)


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg_at_the_real_size(name):
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    config = get_config(next(n for n, t in TIMM_NAMES.items() if t == name))
    assert cfg["input_size"][0] == config.in_chans and cfg["fixed_input_size"] is True
    if cfg.get("hf_hub_id") is None:  # a name without weights: its own default size
        assert cfg["input_size"][1:] == (config.img_size, config.img_size)
    assert cfg["num_classes"] == config.num_classes
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["interpolation"] == "bicubic" and 0.8 <= cfg["crop_pct"] <= 1.0
    assert (cfg["first_conv"], cfg["classifier"], cfg["paper_ids"]) == ("patch_embed.proj", "head", "arXiv:2502.03738")


@pytest.mark.parametrize("name", NAMES)
def test_instances_carry_their_cfg_and_timm_data_config_fits_them(name):
    model = small(name)
    data = resolve_data_config({}, model=model)
    assert data["input_size"] == model.pretrained_cfg["input_size"] == (3, *model.patch_embed.img_size)
    picture = Image.new("RGB", (50, 40), (200, 30, 90))
    assert create_transform(**data)(picture).shape == data["input_size"]  # timm's eval transform fits the model
    assert model.default_cfg is model.pretrained_cfg
    assert model(images_for(model)).shape == (2, model.num_classes)
    # pixelvit's own constructor path sets one too
    assert create_model("adventurer_nano").pretrained_cfg["input_size"] == (3, 32, 32)


@pytest.mark.parametrize("name", NAMES)
def test_standard_create_model_kwargs(name):
    model = small(name, drop_rate=0.5, global_pool="avg", device="cpu", dtype=torch.float64, num_classes=3)
    assert model.head_drop.p == 0.5 and model.global_pool == "avg" and model.pos_embed.dtype == torch.float64
    model.eval()
    x = images_for(model).double()
    with torch.no_grad():
        features = model.forward_features(x)  # (B, N+1, D)
        patches = features[:, 1:] if model.cls_index == 0 else features[:, :-1]
        assert torch.allclose(model.forward_head(features, pre_logits=True), patches.mean(1))
    with pytest.raises(TypeError, match="no field.*'not_an_argument'"):
        small(name, not_an_argument=1)


@pytest.mark.parametrize("name", NAMES)
def test_head_api(name):
    model = small(name, num_classes=7).eval()
    x = images_for(model)
    D = model.embed_dim
    assert model.num_classes == 7 and model.num_features == model.head_hidden_size == D
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_tokens, D)
        pooled = model.forward_head(features, pre_logits=True)
        assert torch.equal(pooled, features[:, model.cls_index])  # the class token: first (ViT) or last
        assert torch.allclose(model.forward_head(features), model(x))
    assert model.get_classifier() is model.head
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == model.config.num_classes == 3
    model.reset_classifier(0, "")
    assert model(x).shape == (2, model.num_tokens, D)


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_are_the_patch_tokens_in_image_order(name):
    model = small(name).eval()
    x = images_for(model)
    rows, cols = model.patch_embed.grid_size
    D = model.embed_dim
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)  # every block, NCHW
        assert [m.shape for m in maps] == [(2, D, rows, cols)] * 2
        assert torch.allclose(final, model.forward_features(x))
        tokens = model.forward_intermediates(x, indices=[-1], norm=True, output_fmt="NLC", intermediates_only=True)
        expected = final[:, 1:] if model.cls_index == 0 else final[:, :-1]  # the N patch tokens, raster order
        assert torch.allclose(tokens[0], expected)
        # NCHW[b, :, r, c] is the token of patch (r, c)
        assert torch.allclose(maps[-1][:, :, 1, 0], model.forward_intermediates(
            x, indices=1, output_fmt="NLC", intermediates_only=True)[0][:, cols])
        (patches, cls), = model.forward_intermediates(x, indices=1, return_prefix_tokens=True, norm=True,
                                                      intermediates_only=True, output_fmt="NLC")
        assert torch.allclose(cls[:, 0], final[:, model.cls_index])


@pytest.mark.parametrize("name", NAMES)
def test_features_only_and_feature_info(name):
    features = small(name, features_only=True, out_indices=(0, 1)).eval()
    x = torch.randn(2, *features.pretrained_cfg["input_size"])
    outs = features(x)
    p = get_config(next(n for n, t in TIMM_NAMES.items() if t == name)).patch_size
    assert [o.shape[1:] for o in outs] == [(features.feature_info.channels()[0], x.shape[2] // p, x.shape[3] // p)] * 2
    assert features.feature_info.reduction() == [p, p]
    model = small(name)
    assert len(model.feature_info) == 2 and model.feature_info[0]["module"].endswith(".0")
    kept = model.prune_intermediate_layers(indices=[0])
    assert kept == [0] and len(model.trunk) == 1 and model.num_classes == 0


@pytest.mark.parametrize("name", NAMES)
def test_weight_decay_exclusions_and_layer_decay_groups(name):
    model = small(name)
    skip = model.no_weight_decay()
    assert {"pos_embed", "cls_token"} <= skip
    if model.arch == "adventurer":
        assert {f"layers.{i}.mixer.{p}" for i in range(2) for p in ("A_log", "D", "dt_bias")} <= skip
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(model.pos_embed) in no_decay and id(model.cls_token) in no_decay
    assert id(model.patch_embed.proj.weight) not in no_decay
    layered = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scale = {id(p): g["lr_scale"] for g in layered.param_groups for p in g["params"]}
    blocks = model.trunk
    assert scale[id(model.pos_embed)] < scale[id(next(blocks[0].parameters()))] < scale[id(next(blocks[1].parameters()))]
    assert scale[id(model.head.weight)] == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_fx_traceable(name):
    model = small(name).eval()
    graph = torch.fx.symbolic_trace(model)
    x = images_for(model)
    with torch.no_grad():
        assert torch.allclose(graph(x), model(x), atol=1e-5)


def test_every_release_is_a_pretrained_tag():
    tagged = timm.list_pretrained("adventurer*")
    assert len(tagged) == len(CATALOG) == 17
    for entry in CATALOG.values():
        tag = f"{entry.model}_patch{entry.patch_size}.in1k_{entry.img_size}"
        cfg = timm.models.get_pretrained_cfg(tag).to_dict()
        assert tag in tagged
        assert (cfg["hf_hub_id"], cfg["hf_hub_filename"]) == (entry.repo_id, entry.filename)
        assert cfg["input_size"] == (3, entry.img_size, entry.img_size) and cfg["crop_pct"] == entry.crop_pct


# ---- pretrained=True through timm, against a local stand-in for the hub -------------------------------------
TINY = dict(embed_dim=32, depth=2, d_state=8, headdim=16)  # the tag names adventurer_tiny; ours is tinier


@pytest.fixture()
def release(tmp_path, monkeypatch):
    """The released file adventurer_tiny_patch1_64.pth (an official-format training checkpoint with an
    argparse.Namespace, shrunk to TINY) served at its real hub path by tests/test_download.py's server."""
    from huggingface_hub import constants
    from test_download import Server

    entry = CATALOG["adventurer_tiny_patch1_64"]
    torch.manual_seed(0)
    source = create_model("adventurer_tiny_patch1", img_size=64, **TINY).eval()
    path = tmp_path / "release.pth"
    torch.save({"model": source.state_dict(), "args": argparse.Namespace(model="adventurer_tiny"), "epoch": 9}, path)
    server = Server()
    server.files[f"/{entry.repo_id}/resolve/main/{entry.filename}"] = path.read_bytes()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    server.source, server.entry = source, entry
    yield server
    server.close()


def test_timm_pretrained_tag_downloads_and_loads_through_the_safe_loader(release):
    model = timm.create_model("adventurer_tiny_patch1.in1k_64", pretrained=True, **TINY).eval()
    assert any(method == "GET" for method, _, _ in release.requests)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), release.source(x))
    assert model.pretrained_cfg["crop_pct"] == 0.875 and model.config.flip_rule == "released"
    assert "adventurer_tiny_patch1_64" in str(model.load_report)
    headless = timm.create_model("adventurer_tiny_patch1.in1k_64", pretrained=True, num_classes=10, **TINY)
    assert "dropped head" in str(headless.load_report) and headless.num_classes == 10
    tagged = load_pretrained("adventurer_tiny_patch1.in1k_64", verbose=False, **TINY)  # the tag names the release
    with torch.no_grad():
        assert torch.equal(tagged(x), release.source(x)) and tagged.pretrained_cfg["checkpoint"] == "adventurer_tiny_patch1_64"
    features = timm.create_model("adventurer_tiny_patch1.in1k_64", pretrained=True, features_only=True,
                                 out_indices=(1,), **TINY)
    assert features(x)[0].shape == (1, 32, 64, 64)  # (B, D, H/p, W/p) at patch 1


def test_timm_pretrained_refuses_an_unsafe_pickle(release, tmp_path):
    class NotAllowed:  # stands for any class a malicious pickle would import
        pass

    import sys

    sys.modules[__name__].NotAllowed = NotAllowed
    NotAllowed.__module__, NotAllowed.__qualname__ = __name__, "NotAllowed"
    path = tmp_path / "evil.pth"
    torch.save({"model": release.source.state_dict(), "payload": NotAllowed()}, path)
    release.files[f"/{release.entry.repo_id}/resolve/main/{release.entry.filename}"] = path.read_bytes()
    with pytest.raises(UnsafeCheckpointError, match="NotAllowed"):
        timm.create_model("adventurer_tiny_patch1.in1k_64", pretrained=True, **TINY)


# ---- run-time settings are never saved; old folders that saved them still load --------------------------------
@pytest.mark.parametrize("runtime", [dict(scan_backend="mamba_ssm", chunk_size=256, grad_checkpointing=True),
                                     dict(scan_backend="reference", chunk_size=16)])
def test_a_model_saved_with_any_runtime_setting_loads_and_runs_on_cpu(tmp_path, runtime):
    torch.manual_seed(0)
    model = create_model("adventurer_nano", img_size=16, **runtime).eval()  # mamba_ssm cannot run here
    save_model(model, tmp_path / "new")
    assert not set(runtime) & set(json.loads((tmp_path / "new" / "config.json").read_text())["config"])
    loaded = load_pretrained(tmp_path / "new", verbose=False)
    reference = create_model("adventurer_nano", img_size=16).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), reference(x), atol=1e-6)


def test_an_old_folder_with_runtime_keys_in_its_config_loads(tmp_path):
    """pixelvit before this change wrote dataclasses.asdict(config) with the run-time fields in it."""
    torch.manual_seed(0)
    model = create_model("adventurer_nano", img_size=16).eval()
    save_model(model, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"].update(scan_backend="mamba_ssm", chunk_size=64, grad_checkpointing=True)  # as the old save did
    (tmp_path / "config.json").write_text(json.dumps(meta))
    loaded = load_pretrained(tmp_path, verbose=False)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
    assert loaded.scan_backend == "auto" and not loaded.grad_checkpointing


def test_set_scan_changes_how_not_what():
    torch.manual_seed(0)
    model = create_model("adventurer_nano", patch_size=2).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        default = model(x)
        model.set_scan(backend="reference", chunk_size=7)
        assert torch.allclose(model(x), default, atol=1e-5)
    assert all(layer.mixer.chunk_size == 7 for layer in model.layers)


# ---- named models instead of slimming dicts; overrides normalized -----------------------------------------
def test_named_nano_configs_equal_the_old_slimmed_micro_configs():
    """The committed results/cifar10_*_nano folders were trained as micro + {embed_dim 64, depth 4, ...}."""
    assert get_config("vit_nano") == get_config("vit_micro", embed_dim=64, depth=4, num_heads=4)
    assert get_config("adventurer_nano") == get_config("adventurer_micro", embed_dim=64, depth=4)


def test_none_and_the_default_value_normalize_to_the_same_config():
    assert dataclasses.asdict(get_config("vit_nano", patch_size=None)) == dataclasses.asdict(get_config("vit_nano", patch_size=4))


def test_a_field_given_twice_is_one_clear_error():
    with pytest.raises(ModelArgumentError, match="patch_size=2 and patch_size=4 given twice"):
        merge_overrides({"patch_size": 2}, {"patch_size": 4})
    assert merge_overrides({"patch_size": 4, "img_size": None}, {"patch_size": 4, "depth": 2}) == {"patch_size": 4, "depth": 2}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_pixelvit_name_builds_through_pixelvit_create_model(name):
    config = get_config(name)
    img = {1: 8, 8: 16}.get(config.patch_size, 32)
    model = create_model(name, img_size=img, depth=1)
    assert model.pretrained_cfg["architecture"] == name and model(torch.randn(1, 3, img, img)).shape[-1] == config.num_classes


def test_a_sweep_of_both_nano_models_needs_no_config_matching_and_a_bad_override_stops_before_any_run(tmp_path, capsys):
    """Notebook 04 used to suggest adding adventurer_micro to a sweep slimmed with ViT's num_heads: it failed
    only after the ViT runs had finished. Named models need no slimming; a bad override fails first."""
    from pixelvit import sweep

    configs, _ = sweep.configs_from_args(sweep.build_parser().parse_args(["--model", "vit_nano", "adventurer_nano"]))
    assert {c.model for c in configs} == {"vit_nano", "adventurer_nano"} and all(c.model_args == {} for c in configs)
    runs = tmp_path / "runs"
    code = sweep.main(["--model", "vit_nano", "adventurer_nano", "--model-arg", "num_heads=2", "--runs-dir", str(runs),
                       "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert code == 2 and "AdventurerConfig has no field(s) ['num_heads']" in capsys.readouterr().err
    assert not runs.exists()  # not even the ViT runs started
