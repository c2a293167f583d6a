"""`pixelvit predict` end to end on real photos (scikit-image's), preprocessing, and the flip-rule check."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelvit.models import create_model
from pixelvit.predict import class_names, data_config, detect_flip_rule, eval_transform, main, predict

PHOTOS = ("astronaut", "chelsea", "coffee")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in PHOTOS:
        path = folder / f"{name}.png"
        Image.fromarray(getattr(skimage_data, name)()).save(path)
        paths.append(str(path))
    return paths


def tiny_imagenet_model(**kwargs):
    torch.manual_seed(0)
    return create_model("adventurer_tiny", img_size=32, patch_size=4, embed_dim=32, depth=2, num_classes=1000,
                        d_state=8, headdim=16, chunk_size=16, **kwargs).eval()


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    """A small Adventurer saved the way the official main.py saves (weights under 'model', args)."""
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    model = tiny_imagenet_model()
    args = argparse.Namespace(model="adventurer_tiny_patch1", input_size=32, nb_classes=1000)
    torch.save({"model": model.state_dict(), "model_ema": None, "optimizer": {}, "lr_scheduler": {}, "epoch": 0,
                "scaler": "none", "args": args}, path)
    return str(path), model


def test_predict_main_on_real_photos(photos, official_checkpoint, capsys):
    path, _ = official_checkpoint
    code = main([*photos, "--model", "adventurer_tiny_patch1_64", "--checkpoint", path, "--top", "5",
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "32x32 input, 65 tokens, crop 0.875" in out  # the crop of the catalog entry named by --model
    names = set(class_names())
    for photo in photos:
        block = out.split(photo + "\n", 1)[1].splitlines()[:5]
        probabilities = [float(line.split("%")[0]) for line in block]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(line.split("%", 1)[1].strip() in names for line in block)


def test_predict_cli_subprocess(photos, official_checkpoint):
    path, _ = official_checkpoint
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "pixelvit.cli", "predict", photos[1], "--checkpoint", path,
                             "--top", "3"], capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.strip().splitlines()) == 1 + 1 + 3  # header, image, three classes


def test_predict_reports_missing_image_and_missing_checkpoint(tmp_path, capsys):
    assert main([str(tmp_path / "nope.png")]) == 2
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main([str(image), "--checkpoint", str(tmp_path / "nope.pth")]) == 2
    assert "no such file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# (issue 27) What a new user typed, through the real command line
# ---------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
SHIPPED = "pixelvit/assets/cifar10_adventurer_nano"  # relative to the repository root, where these run


def run_predict(*args, **env) -> subprocess.CompletedProcess:
    """`pixelvit predict ARGS` in a subprocess from the repository root, offline."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "pixelvit.cli", "predict", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=240)


def one_error_line(result: subprocess.CompletedProcess, code: int) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("pixelvit predict: error: ") and "Traceback" not in result.stderr
    return lines[0]


def test_predict_checks_every_image_before_any_model_work(tmp_path, photos):
    """`pixelvit predict README.md` loaded a model, then printed PIL's traceback. The checkpoint here is
    not one either: had the model been loaded first, that would have been the error."""
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("not a checkpoint")
    line = one_error_line(run_predict(photos[0], "README.md", "--checkpoint", not_a_checkpoint), 2)
    assert "not an image PIL can read: README.md" in line and photos[0] not in line


def test_predict_offline_names_the_command_line_route_and_it_works(tmp_path, photos):
    """Offline with an empty hub cache, the message told a CLI user to call pixelvit.load_pretrained('/path').
    Now it names --checkpoint PATH and the shipped model, and that command works offline."""
    line = one_error_line(run_predict(photos[1], HF_HUB_CACHE=str(tmp_path / "empty-hub")), 1)
    assert "HF_HUB_OFFLINE" in line and "--checkpoint PATH" in line and "load_pretrained" not in line
    assert f"--checkpoint {SHIPPED}" in line
    suggested = line.split("--checkpoint ", 1)[1].split()[0].rstrip(".")
    result = run_predict(photos[1], "--checkpoint", suggested, "--top", "3", HF_HUB_CACHE=str(tmp_path / "empty-hub"))
    assert result.returncode == 0, result.stderr[-2000:]
    # the shipped model's own crop (1.0, in its config.json), not the default model's 0.875
    assert result.stdout.startswith(f"{SHIPPED}: 32x32 input, 65 tokens, crop 1.0,"), result.stdout


def test_predict_missing_checkpoint_says_no_such_file(tmp_path, photos):
    line = one_error_line(run_predict(photos[0], "--checkpoint", "missing.pth"), 2)
    assert line == "pixelvit predict: error: --checkpoint missing.pth: no such file or directory"


def test_predict_misspelt_model_gets_a_did_you_mean_not_every_name(photos):
    """It listed all 17 released checkpoints in one 700-character line, and no suggestion."""
    line = one_error_line(run_predict(photos[0], "--model", "adventurer_tiny_patch1_6"), 1)
    assert "did you mean adventurer_tiny_patch1_64?" in line
    assert "adventurer_base_patch8_448" not in line and len(line) < 250, line


def test_predict_function_matches_the_model(photos, official_checkpoint):
    _, model = official_checkpoint
    images = [Image.open(p) for p in photos]
    model.pretrained_cfg = {"crop_pct": 1.0}
    top = predict(model, images, top=5)
    batch = torch.stack([eval_transform(model)(im.convert("RGB")) for im in images])
    with torch.no_grad():
        probabilities = model(batch).softmax(-1)
    for rows, p in zip(top, probabilities, strict=True):
        assert [i for _, i, _ in rows] == p.topk(5).indices.tolist()
        assert rows[0][2] == class_names()[rows[0][1]]


def test_eval_transform_is_resize_crop_normalize():
    """crop_pct 0.875 at 32 px: shorter side to floor(32 / 0.875) = 36 (bicubic), center 32x32, ImageNet stats."""
    import torchvision.transforms.functional as TF

    model = tiny_imagenet_model()
    model.pretrained_cfg = {"crop_pct": 0.875}
    cfg = data_config(model)
    assert cfg["input_size"] == (3, 32, 32) and cfg["interpolation"] == "bicubic"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    manual = TF.center_crop(TF.resize(image, 36, interpolation=TF.InterpolationMode.BICUBIC), [32, 32])
    manual = TF.normalize(TF.to_tensor(manual), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    torch.testing.assert_close(eval_transform(model)(image), manual)


def test_detect_flip_rule_finds_the_rule_the_labels_came_from():
    """Labels predicted by a model under "alternate": evaluating the same weights under each rule,
    only "alternate" reproduces them all (depth 8, where the three rules flip different layers)."""
    torch.manual_seed(0)
    kwargs = dict(img_size=8, patch_size=2, embed_dim=32, depth=8, num_classes=7, d_state=8, headdim=16, chunk_size=8)
    teacher = create_model("adventurer_tiny", flip_rule="alternate", **kwargs).eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    images = torch.randn(24, 3, 8, 8)
    with torch.no_grad():
        labels = teacher(images).argmax(-1)
    student = create_model("adventurer_tiny", flip_rule="released", **kwargs)
    student.load_state_dict(teacher.state_dict())
    best, results = detect_flip_rule(student, images, labels)
    assert set(results) == {"released", "every_two", "alternate"}
    assert best == "alternate" and results["alternate"] == 100.0
    assert results["released"] < 100.0
