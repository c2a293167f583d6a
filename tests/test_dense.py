"""Dense prediction: heads, segmentation models, metrics and the segmentation datasets."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import pixelvit.train
from pixelvit.data.segmentation import (
    SCRIBBLE_CLASSES,
    SegmentationArrays,
    SegmentationDataError,
    SegmentationDataset,
    generate_scribbles,
    load_segmentation,
    mosaic_from,
)
from pixelvit.dense import (
    HEADS,
    LinearHead,
    confusion_matrix,
    create_segmentation_model,
    dense_features,
    iou_per_class,
    load_segmentation_model,
    mean_iou,
    pixel_accuracy,
)
from pixelvit.tasks import get_task
from pixelvit.train import TrainConfig, train

TINY = dict(embed_dim=32, depth=2)  # tiny backbones keep these tests fast on CPU
TINY_ARGS = {"vit": dict(TINY, num_heads=2), "adventurer": dict(TINY, d_state=8, headdim=16, chunk_size=16)}


def tiny_model(backbone: str, head: str, patch_size: int, img_size: int = 16, num_classes: int = 6):
    torch.manual_seed(0)
    return create_segmentation_model(f"{backbone}_micro_seg_{head}", img_size=img_size, patch_size=patch_size,
                                     num_classes=num_classes, **TINY_ARGS[backbone])


# ---- heads and models -----------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["vit", "adventurer"])
@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("patch_size", [8, 4, 2, 1])
def test_logits_have_one_score_per_class_and_pixel(backbone, head, patch_size):
    model = tiny_model(backbone, head, patch_size)
    logits = model(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 6, 16, 16)
    logits.sum().backward()  # every parameter of the head gets a gradient
    assert all(p.grad is not None for p in model.head.parameters())


def test_decoder_handles_a_patch_size_that_is_not_a_power_of_two():
    model = create_segmentation_model("vit_micro_seg_decoder", img_size=12, patch_size=3, num_classes=4,
                                      **TINY_ARGS["vit"])
    assert model(torch.randn(1, 3, 12, 12)).shape == (1, 4, 12, 12)


@pytest.mark.parametrize("backbone", ["vit", "adventurer"])
@pytest.mark.parametrize("head", ["linear", "pixelshuffle"])
def test_linear_head_at_patch_1_is_a_1x1_convolution_over_the_token_grid(backbone, head):
    model = tiny_model(backbone, head, patch_size=1).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        grid = dense_features(model.backbone, images)[-1]  # (B, D, 16, 16)
        weight = model.head.proj.weight[:, :, None, None]  # (classes, D, 1, 1): the same numbers as a conv kernel
        reference = F.conv2d(grid, weight, model.head.proj.bias)
        torch.testing.assert_close(model(images), reference, rtol=1e-5, atol=1e-6)


def test_linear_head_at_patch_p_paints_each_patch_from_its_own_token():
    """Pixel (i*p + a, j*p + b) comes from token (i, j) only: torch's conv 1x1 + pixel_shuffle as reference."""
    torch.manual_seed(0)
    head = LinearHead(embed_dim=8, num_classes=3, patch_size=4, upsample="pixel_shuffle")
    grid = torch.randn(2, 8, 3, 5)  # a non-square token grid
    reference = F.pixel_shuffle(F.conv2d(grid, head.proj.weight[:, :, None, None], head.proj.bias), 4)
    torch.testing.assert_close(head([grid]), reference)
    assert head([grid]).shape == (2, 3, 12, 20)


def test_linear_head_equals_a_1x1_convolution_then_bilinear_upsampling():
    torch.manual_seed(0)
    head = LinearHead(embed_dim=8, num_classes=3, patch_size=4)  # upsample="bilinear", the paper's reading
    grid = torch.randn(1, 8, 4, 4)
    coarse = F.conv2d(grid, head.proj.weight[:, :, None, None], head.proj.bias)  # (1, 3, 4, 4)
    torch.testing.assert_close(head([grid]), F.interpolate(coarse, scale_factor=4, mode="bilinear"))


def test_dense_features_drop_the_class_token_wherever_the_model_keeps_it():
    """ViT keeps its class token first, Adventurer last: the grid must hold the N patch tokens, in raster order."""
    for backbone in ("vit", "adventurer"):
        model = tiny_model(backbone, "linear", patch_size=4).eval()
        images = torch.randn(1, 3, 16, 16)
        with torch.no_grad():
            tokens = model.backbone.forward_features(images)  # (1, N+1, D), final norm applied
            grid = dense_features(model.backbone, images)[-1]  # (1, D, 4, 4)
        patches = tokens[:, 1:] if backbone == "vit" else tokens[:, :-1]
        torch.testing.assert_close(grid.flatten(2).transpose(1, 2), patches)


def test_segmentation_model_round_trips_through_a_model_folder(tmp_path):
    from pixelvit.io import save_model

    model = tiny_model("adventurer", "decoder", patch_size=2).eval()
    save_model(model, tmp_path / "model")
    again = load_segmentation_model(tmp_path / "model", chunk_size=16).eval()  # run-time settings are not saved
    images = torch.randn(1, 3, 16, 16)
    assert torch.equal(model(images), again(images))


def test_unknown_segmentation_names_are_refused_with_the_valid_form():
    with pytest.raises(ValueError, match="_seg_"):
        create_segmentation_model("vit_nano")
    with pytest.raises(ValueError, match="head"):
        create_segmentation_model("vit_micro_seg_upernet")


# ---- metrics ----------------------------------------------------------------------------------------


def test_metrics_match_a_hand_count():
    targets = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
    predictions = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 0]])
    confusion = confusion_matrix(predictions, targets, num_classes=4)
    assert confusion.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    # IoU: class 0: 2 / (3 + 3 - 2) = 0.5; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 2 / 3; class 3 absent
    iou = iou_per_class(confusion)
    assert iou[:3].tolist() == pytest.approx([0.5, 2 / 3, 2 / 3]) and torch.isnan(iou[3])
    assert mean_iou(confusion) == pytest.approx(100 * (0.5 + 4 / 3) / 3)
    assert pixel_accuracy(confusion) == pytest.approx(100 * 6 / 8)


def test_confusion_matrix_refuses_maps_of_different_sizes():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5), num_classes=3)


# ---- datasets -------------------------------------------------------------------------------------


def test_scribbles_are_deterministic_and_splits_differ():
    a, b = generate_scribbles(40, 16, seed=0, stream=0), generate_scribbles(40, 16, seed=0, stream=0)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    other = generate_scribbles(40, 16, seed=0, stream=1)
    assert not np.array_equal(a.masks, other.masks)
    assert set(np.unique(a.masks)) == set(range(len(SCRIBBLE_CLASSES)))  # every class occurs


def test_scribble_masks_align_with_their_images():
    """Within one image every class has one colour (plus noise): rebuilding each image from its mask and the
    per-class mean colours leaves only the noise. A mask shifted by one pixel against its image does not."""

    def rebuild_error(image, mask):  # (H, W) mean |error| over the channels
        palette = {c: image[mask == c].mean(0) for c in np.unique(mask)}
        rebuilt = np.stack([palette[c] for c in mask.ravel()]).reshape(image.shape)
        return np.abs(image - rebuilt).mean(-1)

    data = generate_scribbles(30, 16)
    for image, mask in zip(data.images.astype(float), data.masks):
        shifted = np.roll(mask, 1, axis=1)
        aligned = rebuild_error(image, mask)
        assert aligned.mean() < 7  # pixel noise std 0.03 * 255 = 7.7 -> mean |error| about 6
        moved = mask != shifted  # the pixels whose label the shift changes
        assert rebuild_error(image, shifted)[moved].mean() > 3 * aligned[moved].mean()


def test_scribbles_have_one_pixel_detail():
    """Strokes and dots are thin: most of their pixels have other classes on both sides, across or along."""
    masks = generate_scribbles(50, 16).masks
    across = (masks != np.roll(masks, 1, axis=2)) & (masks != np.roll(masks, -1, axis=2))
    along = (masks != np.roll(masks, 1, axis=1)) & (masks != np.roll(masks, -1, axis=1))
    thin = across | along
    for name in ("stroke", "dot"):
        label = SCRIBBLE_CLASSES.index(name)
        assert thin[masks == label].mean() > 0.5, name


def test_mosaic_pixels_come_from_the_source_image_of_their_label():
    """Sources filled with a colour that encodes their class: every mosaic pixel's colour must name its label."""
    labels = np.repeat(np.arange(10), 5)
    sources = np.broadcast_to((labels * 20 + 5).astype(np.uint8)[:, None, None, None], (50, 8, 8, 3)).copy()
    mosaic = mosaic_from(sources, labels, [f"class{c}" for c in range(10)], count=64, seed=0)
    assert np.array_equal(mosaic.images[..., 0] // 20, mosaic.masks)
    pieces = [len(np.unique(m)) for m in mosaic.masks]
    assert min(pieces) >= 1 and max(pieces) >= 3  # 2-3 pieces (a small piece may vanish at 8x8)
    again = mosaic_from(sources, labels, [f"class{c}" for c in range(10)], count=64, seed=0)
    assert np.array_equal(mosaic.images, again.images)


def test_load_segmentation_caches_and_reloads_the_same_arrays(tmp_path):
    first = load_segmentation("scribbles", "test", 16, root=tmp_path)
    assert (tmp_path / "arrays" / "scribbles-v1-16px-test.npz").exists()
    second = load_segmentation("scribbles", "test", 16, root=tmp_path)
    assert np.array_equal(first.images, second.images) and np.array_equal(first.masks, second.masks)
    assert len(first) == 1000 and first.classes == SCRIBBLE_CLASSES


def test_mask_size_that_differs_from_the_image_is_refused():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(SegmentationDataError, match="differs from image size"):
        SegmentationArrays(images, np.zeros((2, 8, 7), np.uint8), ["a", "b"])


def test_labels_outside_the_class_range_are_refused():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[1, 3, 3] = 2
    with pytest.raises(SegmentationDataError, match=r"valid labels 0\.\.1"):
        SegmentationArrays(images, masks, ["a", "b"])


def test_flip_moves_image_and_mask_together_and_is_reproducible():
    data = generate_scribbles(20, 16)
    dataset = SegmentationDataset(data, "flip", seed=3)
    flipped = 0
    for index in range(20):
        image, mask = dataset[(index, 1)]
        assert image.shape == (3, 16, 16) and mask.shape == (16, 16) and mask.dtype == torch.int64
        if not np.array_equal(mask.numpy(), data.masks[index]):
            flipped += 1
            assert np.array_equal(mask.numpy(), data.masks[index][:, ::-1])
            assert np.array_equal(image.permute(1, 2, 0).numpy(), data.images[index][:, ::-1])
        again_image, again_mask = dataset[(index, 1)]
        assert torch.equal(image, again_image) and torch.equal(mask, again_mask)
    assert 0 < flipped < 20


# ---- training through pixelvit.train (the segmentation task) -------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One dataset cache for the module: scribbles at 8 px is generated once."""
    return str(tmp_path_factory.mktemp("data"))


def tiny_run(data_root, tmp_path, **changes) -> TrainConfig:
    base = TrainConfig(task="segmentation", model="vit_micro_seg_linear", model_args=dict(TINY_ARGS["vit"]),
                       dataset="scribbles", img_size=8, patch_size=2, steps=40, batch_size=16, lr=3e-3,
                       train_samples=320, eval_samples=64, label_smoothing=0.0, runs_dir=str(tmp_path / "runs"),
                       data_root=data_root, checkpoint_every=5, log_every=5)
    return replace(base, **changes)


def test_a_short_segmentation_run_lowers_the_loss(data_root, tmp_path):
    result = train(tiny_run(data_root, tmp_path), progress=False)
    lines = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if line["kind"] == "train"]
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.metrics["miou"] > 100 / 6 and result.metrics["pixel_accuracy"] > 50  # better than chance
    assert result.top1 is None and 0 <= result.metrics["miou"] <= 100


def test_a_killed_segmentation_run_resumes_bit_identical(data_root, tmp_path, monkeypatch):
    config = tiny_run(data_root, tmp_path, steps=8, train_samples=64, checkpoint_every=3, augmentation="flip",
                      drop_path=0.1, model="adventurer_micro_seg_decoder", model_args=dict(TINY_ARGS["adventurer"]))
    reference = load_file(str(Path(train(replace(config, out=str(tmp_path / "reference")), progress=False).run_dir)
                              / "model" / "model.safetensors"))
    killed = replace(config, out=str(tmp_path / "killed"))
    save_checkpoint = pixelvit.train.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(run_dir, step, model, state):
        save_checkpoint(run_dir, step, model, state)
        if step == 3:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(pixelvit.train, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            train(killed, progress=False)
    resumed = train(killed, progress=False)
    assert json.loads((Path(resumed.run_dir) / "run.json").read_text())["resumed_from_step"] == 3
    weights = load_file(str(Path(resumed.run_dir) / "model" / "model.safetensors"))
    assert weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in weights)


def test_eval_sums_add_up_over_batches_to_the_whole_set_metrics():
    task = get_task("segmentation")
    torch.manual_seed(0)
    outputs, targets = torch.randn(6, 4, 5, 5), torch.randint(0, 4, (6, 5, 5))
    whole = task.summarize(task.eval_sums(outputs, targets))
    halves = [task.eval_sums(outputs[:2], targets[:2]), task.eval_sums(outputs[2:], targets[2:])]
    summed = task.summarize([a + b for a, b in zip(*halves)])
    assert summed == pytest.approx(whole)
    confusion = confusion_matrix(outputs.argmax(1), targets, 4)
    assert whole["miou"] == pytest.approx(mean_iou(confusion))
    assert whole["eval_loss"] == pytest.approx(F.cross_entropy(outputs, targets).item())


@pytest.mark.parametrize("args, message", [
    (["--model", "vit_nano"], "vit_nano_seg_linear"),
    (["--model", "vit_nano_seg_linear", "--dataset", "cifar10"], "unknown segmentation dataset"),
    (["--model", "vit_nano_seg_linear", "--mixup", "0.2"], "not for segmentation"),
    (["--model", "vit_nano_seg_linear", "--extend", "2"], "leave them at 1"),
    (["--model", "vit_nano_seg_linear", "--aug", "light"], "unknown segmentation augmentation 'light'"),
])
def test_cli_names_a_bad_segmentation_argument_in_one_line(args, message, capsys, tmp_path):
    code = pixelvit.train.main(["--task", "segmentation", "--dataset", "scribbles", "--runs-dir", str(tmp_path),
                                *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # refused before any run folder or data work


def test_cli_accepts_the_segmentation_flip_and_the_check_passes():
    """`--aug flip` reaches the segmentation task (argparse once refused it: its choices were classification's)."""
    args = pixelvit.train.build_parser().parse_args(["--task", "segmentation", "--dataset", "scribbles",
                                                     "--model", "vit_nano_seg_linear", "--aug", "flip"])
    config = pixelvit.train.config_from_args(args)
    assert config.augmentation == "flip"
    pixelvit.train.check_config(config)  # raises ConfigError on any problem


def test_segmentation_names_are_timm_models():
    import timm

    model = timm.create_model("adventurer_nano_seg_decoder", img_size=16, patch_size=4, num_classes=3)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_decoder_leads_and_the_verdict_from_sweep_rows():
    from pixelvit.dense import report

    miou = {("linear", 8): 40.0, ("decoder", 8): 45.0, ("linear", 1): 90.0, ("decoder", 1): 91.0}
    rows = [{"model": f"vit_nano_seg_{head}", "patch_size": str(p), "miou": str(v), "dataset": "scribbles", "img_size": 16}
            for (head, p), v in miou.items()]  # as read back from results.csv: strings
    assert report.decoder_leads(rows) == [
        {"backbone": "vit_nano", "patch_size": 8, "linear": 40.0, "decoder": 45.0, "lead": 5.0},
        {"backbone": "vit_nano", "patch_size": 1, "linear": 90.0, "decoder": 91.0, "lead": 1.0},
    ]
    assert report.lead_shrinks(rows)["vit_nano"]["shrinks"] is True
    rows[1]["miou"] = "39.0"  # the decoder now trails at patch 8: its lead at patch 1 is no longer smaller
    assert report.lead_shrinks(rows)["vit_nano"]["shrinks"] is False


def test_sweep_over_patch_size_and_head_writes_miou_and_the_figure(data_root, tmp_path):
    from pixelvit import sweep

    base = tiny_run(data_root, tmp_path, steps=2, train_samples=32, eval_samples=16)
    configs = sweep.grid(base, ["vit_micro_seg_linear", "vit_micro_seg_decoder"], [4, 2], seeds=[0])
    rows = sweep.run_sweep(configs, tmp_path / "sweep", progress=False, paper=True)
    assert [(r["model"], r["patch_size"]) for r in rows] == [
        ("vit_micro_seg_linear", 4), ("vit_micro_seg_linear", 2), ("vit_micro_seg_decoder", 4), ("vit_micro_seg_decoder", 2)]
    assert all(0 <= r["miou"] <= 100 and r["top1"] is None and r["gflops"] > 0 for r in rows)
    assert rows[2]["gflops"] > rows[0]["gflops"]  # the decoder costs more than one linear layer
    import csv

    with open(tmp_path / "sweep" / "results.csv", newline="") as handle:
        stored = list(csv.DictReader(handle))
    assert [float(r["miou"]) for r in stored] == pytest.approx([r["miou"] for r in rows])
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 10_000


def test_mosaic_reads_the_shared_copy_when_present_and_the_download_otherwise(tmp_path, monkeypatch):
    from pixelvit.data.segmentation import cifar_source

    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("PIXELVIT_SHARED_DATA", str(shared))
    assert cifar_source(tmp_path / "cache") == "cifar10"
    (shared / "cifar10_jpeg.tar.gz").write_bytes(b"")  # only its presence is checked here
    assert cifar_source(tmp_path / "cache") == "cifar10_jpeg"
