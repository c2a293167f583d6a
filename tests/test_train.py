"""pixelvit.train: exact resume after SIGKILL, stored results, DDP, divergence, multi-stage, checkpoints.

Every run here is a micro ViT (32 wide, 2 deep) on 8x8 specks for a few dozen steps. Subprocesses get
OMP_NUM_THREADS=1 (the machine is shared, and equal thread counts keep CPU float sums identical).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import pixelvit.tasks
import pixelvit.train
from pixelvit.interrupt import TrainingInterrupted
from pixelvit.runs import RunDirConflict, latest_checkpoint
from pixelvit.train import (
    Stage,
    TrainConfig,
    TrainingDiverged,
    build_parser,
    config_from_args,
    config_hash,
    main,
    run_dir_of,
    train,
    train_stages,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MICRO = {"embed_dim": 32, "depth": 2, "num_heads": 2}
MICRO_ARGS = [arg for k, v in MICRO.items() for arg in ("--model-arg", f"{k}={v}")]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One dataset cache for the module: specks at 8 px is generated once."""
    return str(tmp_path_factory.mktemp("data"))


def tiny(data_root, tmp_path, **changes) -> TrainConfig:
    base = TrainConfig(model="vit_micro", model_args=dict(MICRO), dataset="specks", img_size=8, patch_size=4,
                       steps=12, batch_size=16, lr=2e-3, train_samples=256, eval_samples=64,
                       runs_dir=str(tmp_path / "runs"), data_root=data_root, checkpoint_every=5, log_every=4)
    return replace(base, **changes)


def subprocess_env(data_root) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PIXELVIT_DATA=data_root)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def weights(run_dir) -> dict:
    return load_file(str(Path(run_dir) / "model" / "model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_no_non_finite_weights_on_disk(folder):
    files = list(Path(folder).rglob("*.safetensors"))
    for file in files:
        assert all(torch.isfinite(t).all() for t in load_file(str(file)).values()), f"NaN or inf in {file}"
    return files


# every source of randomness the trainer has: drop path, augmentation, EMA (no randomness, but state), Mixup/CutMix
RANDOM_RECIPE = dict(drop_path=0.1, augmentation="light", ema_decay=0.9, mixup=0.2, cutmix=1.0)
RANDOM_RECIPE_ARGS = ["--drop-path", "0.1", "--aug", "light", "--ema-decay", "0.9", "--mixup", "0.2", "--cutmix", "1.0"]


# ---------------------------------------------------------------------------------------------
def test_run_records_config_metrics_and_is_reused(data_root, tmp_path):
    config = tiny(data_root, tmp_path, eval_every=6)
    result = train(config, progress=False)
    run_dir = Path(result.run_dir)
    assert run_dir == run_dir_of(config) and config_hash(config) in run_dir.name
    assert not result.cached and result.steps == 12 and 0 <= result.top1 <= 100
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config_hash"] == config_hash(config)
    environment = record["environment"]
    assert {"torch", "timm", "numpy", "device", "git_revision", "python"} <= set(environment)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if line["kind"] == "eval"]
    assert [e["step"] for e in evals] == [6, 12]
    assert all({"loss", "images_per_s", "wall_s", "lr"} <= set(line) for line in lines if line["kind"] == "train")
    assert not (run_dir / "checkpoints").exists()  # finished: the final model and result.json remain

    started = time.perf_counter()
    again = train(config, progress=False)
    assert again.cached and again.top1 == result.top1 and time.perf_counter() - started < 1.0
    # settings that do not change the weights do not change the run
    assert train(replace(config, log_every=1, num_workers=1), progress=False).cached


def test_another_config_in_the_same_folder_is_refused(data_root, tmp_path):
    config = tiny(data_root, tmp_path, out=str(tmp_path / "fixed"), steps=2)
    train(config, progress=False)
    with pytest.raises(RunDirConflict, match="another config"):
        train(replace(config, lr=1e-4), progress=False)


def test_checkpoint_state_loads_with_weights_only_and_nan_stops_the_run(data_root, tmp_path):
    # a learning rate of 1e6 blows the weights up within a few steps
    config = tiny(data_root, tmp_path, lr=1e6, warmup_steps=0, steps=40, checkpoint_every=1, clip_grad=0.0)
    with pytest.raises(TrainingDiverged) as error:
        train(config, progress=False)
    message = str(error.value)
    assert "at step" in message and "last good weights" in message
    folder = latest_checkpoint(run_dir_of(config))
    assert folder is not None and f"--init-from {folder}" in message
    # lr is in the run hash: "a lower --lr" means a new run, so the message must not promise a resume
    assert "a new run with a lower --lr" in message and "resume" not in message
    state = torch.load(folder / "trainer_state.pt", weights_only=True)  # no pickled code needed
    assert {"optimizer", "scheduler", "rng_by_rank", "step", "epoch", "batch_in_epoch"} <= set(state)
    failed_at = int(message.split("at step ")[1].split()[0])
    assert state["step"] == failed_at - 1  # the checkpoint is the last step before the bad update
    good = load_file(str(folder / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in good.values())


def test_cli_reports_divergence_with_exit_code(data_root, tmp_path, capsys):
    code = main(["--dataset", "specks", "--img-size", "8", "--patch-size", "4", *MICRO_ARGS, "--steps", "30",
                 "--batch-size", "16", "--train-samples", "256", "--eval-samples", "32", "--lr", "1e7",
                 "--warmup-steps", "0", "--clip-grad", "0", "--data-root", data_root,
                 "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    assert code == 3
    assert "at step" in capsys.readouterr().err


def test_cli_parses_model_args_and_defaults():
    config = config_from_args(build_parser().parse_args(["--model-arg", "embed_dim=64", "--model-arg", "depth=3",
                                                         "--steps", "7"]))
    assert config.model_args == {"embed_dim": 64, "depth": 3} and config.steps == 7
    assert config.dataset == "specks"


def test_cli_runs_and_prints_result(data_root, tmp_path, capsys):
    args = ["--dataset", "specks", "--img-size", "8", "--patch-size", "4", *MICRO_ARGS, "--steps", "3",
            "--batch-size", "16", "--train-samples", "64", "--eval-samples", "32", "--data-root", data_root,
            "--out", str(tmp_path / "cli_run"), "--quiet"]
    assert main(args) == 0
    assert "trained: top-1" in capsys.readouterr().out
    assert main(args) == 0
    assert "stored result: top-1" in capsys.readouterr().out


def test_killed_run_resumes_bit_identical(data_root, tmp_path):
    """SIGKILL a training subprocess mid-epoch after it wrote a checkpoint, resume it, compare weights."""
    # 2,000 training images / 16 per batch = 125 steps an epoch; 150 steps cross an epoch boundary
    # after the resume. Patch 1 at 8x8 (65 tokens) makes a step slow enough to kill in flight.
    common = ["-m", "pixelvit.train", "--dataset", "specks", "--img-size", "8", "--patch-size", "1", *MICRO_ARGS,
              *RANDOM_RECIPE_ARGS, "--steps", "150", "--batch-size", "16", "--train-samples", "2000", "--eval-samples", "64",
              "--checkpoint-every", "10", "--lr", "2e-3", "--data-root", data_root, "--quiet"]
    env = subprocess_env(data_root)
    killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"

    process = subprocess.Popen([sys.executable, *common, "--out", str(killed_dir)], env=env, cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pointer = killed_dir / "checkpoints" / "latest.json"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= 30:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed: " + process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(pointer.read_text())["step"]
    assert 30 <= killed_at < 125 and killed_at % 125 != 0  # a checkpoint in the middle of epoch 0
    assert not (killed_dir / "result.json").exists()

    resumed = subprocess.run([sys.executable, *common, "--out", str(killed_dir)], env=env, cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    reference = subprocess.run([sys.executable, *common, "--out", str(reference_dir)], env=env, cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr

    run = json.loads((killed_dir / "run.json").read_text())
    assert run["resumed_from_step"] == killed_at
    a, b = weights(killed_dir), weights(reference_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    results = [json.loads((d / "result.json").read_text()) for d in (killed_dir, reference_dir)]
    assert results[0]["top1"] == results[1]["top1"] and results[0]["steps"] == 150
    steps_logged = [json.loads(line)["step"] for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == sorted(steps_logged)  # lines after the checkpoint were dropped on resume


# `python -m pixelvit.train` that also records, on each rank, its generators and the initial weights at
# the moment train() wraps the model for training (right after seed_rank), without drawing from them.
RECORDING_TRAINER = """
import hashlib, json, os, random, sys
from pathlib import Path
import numpy as np
import torch
import pixelvit.train as train

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

wrap_for_training = train.wrap_for_training

def record_then_wrap(model, run):
    numpy_state = np.random.get_state()
    record = {"torch": sha(torch.get_rng_state().numpy().tobytes()),
              "numpy": sha(numpy_state[1].tobytes() + repr(numpy_state[2:]).encode()),
              "python": sha(repr(random.getstate()).encode()),
              "weights": sha(b"".join(t.detach().numpy().tobytes() for t in model.state_dict().values()))}
    Path(os.environ["RECORD_DIR"], f"rank{run.processes.rank}.json").write_text(json.dumps(record))
    return wrap_for_training(model, run)

train.wrap_for_training = record_then_wrap
sys.exit(train.main(sys.argv[1:]))
"""


def test_ddp_two_processes_stay_in_sync_and_match_one_process(data_root, tmp_path):
    """torchrun with 2 CPU processes (gloo) against 1 process with the same global batch of 16."""
    common = ["--dataset", "specks", "--img-size", "8", "--patch-size", "4", *MICRO_ARGS, "--steps", "6",
              "--batch-size", "16", "--train-samples", "256", "--eval-samples", "64", "--lr", "2e-3",
              "--log-every", "1", "--data-root", data_root, "--quiet"]
    trainer = tmp_path / "recording_trainer.py"
    trainer.write_text(RECORDING_TRAINER)
    records = {"ddp": tmp_path / "records_ddp", "single": tmp_path / "records_single"}
    for folder in records.values():
        folder.mkdir()
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(trainer), *common, "--out", str(tmp_path / "ddp")],
                         env=dict(subprocess_env(data_root), RECORD_DIR=str(records["ddp"])),
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, str(trainer), *common, "--out", str(tmp_path / "single")],
                            env=dict(subprocess_env(data_root), RECORD_DIR=str(records["single"])),
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["world_size"] == 2 and result["replicas_in_sync"] is True  # identical weights on both ranks

    # The real two-process run: the ranks start from the same weights, then each draws its own random
    # numbers (before seed_rank rank 1 repeated rank 0's crops, flips and drop-path masks); rank 0 draws
    # what one process draws.
    rank0, rank1 = (json.loads((records["ddp"] / f"rank{r}.json").read_text()) for r in (0, 1))
    alone = json.loads((records["single"] / "rank0.json").read_text())
    assert rank0["weights"] == rank1["weights"] == alone["weights"]
    assert all(rank0[g] != rank1[g] for g in ("torch", "numpy", "python"))
    assert rank0 == alone

    def losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if json.loads(line)["kind"] == "train"]

    # the loss of every global batch agrees (DDP averages the two halves' gradients = the whole batch's)
    assert losses("ddp") == pytest.approx(losses("single"), rel=1e-5, abs=1e-6)
    assert len(losses("ddp")) == 6

    # The weights agree up to float rounding, amplified by Adam only where a gradient is ~0 (its first
    # steps move every weight by about +-lr whatever the gradient's size, so a sign flip of a near-zero
    # gradient shows as ~lr). So compare the training updates as a whole: they differ by < 0.1 %.
    from pixelvit.models import create_model

    torch.manual_seed(0)  # the trainer's initialisation
    initial = create_model("vit_micro", img_size=8, patch_size=4, num_classes=8, **MICRO).state_dict()
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    difference = sum(((a[k] - b[k]) ** 2).sum() for k in a) ** 0.5
    update = sum(((b[k] - initial[k]) ** 2).sum() for k in a) ** 0.5
    assert difference / update < 1e-3


def test_multi_stage_fine_tunes_at_a_higher_resolution(data_root, tmp_path):
    config = tiny(data_root, tmp_path)
    low, high = train_stages(config, [Stage(8, 4), Stage(16, 3)], progress=False)
    meta_low = json.loads((Path(low.run_dir) / "model" / "config.json").read_text())
    meta_high = json.loads((Path(high.run_dir) / "model" / "config.json").read_text())
    assert meta_low["config"]["img_size"] == 8 and meta_high["config"]["img_size"] == 16
    assert high.tokens == (16 // 4) ** 2 + 1 and low.tokens == (8 // 4) ** 2 + 1
    assert high.config["init_from"] == str(Path(low.run_dir) / "model")
    assert Stage.parse("32:100:2") == Stage(32, 100, 2)
    with pytest.raises(ValueError):
        Stage.parse("32")
    # finished stages are reused
    assert all(r.cached for r in train_stages(config, [Stage(8, 4), Stage(16, 3)], progress=False))


def test_ema_mixup_and_augmentation_run(data_root, tmp_path):
    config = tiny(data_root, tmp_path, steps=4, ema_decay=0.9, mixup=0.2, cutmix=1.0, augmentation="light")
    result = train(config, progress=False)
    assert result.top1_raw is not None  # EMA on: top1 is the EMA weights', top1_raw the trained ones'
    meta = json.loads((Path(result.run_dir) / "model" / "config.json").read_text())
    assert meta["ema"] is True


def test_loader_workers_do_not_change_the_result(data_root, tmp_path):
    """Augmentation is seeded per (seed, epoch, index), so worker processes give the same batches."""
    config = tiny(data_root, tmp_path, steps=3, train_samples=64, augmentation="light")
    in_process = train(replace(config, out=str(tmp_path / "w0")), progress=False)
    with_workers = train(replace(config, out=str(tmp_path / "w2"), num_workers=2), progress=False)
    a, b = weights(in_process.run_dir), weights(with_workers.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_stages(data_root, tmp_path, capsys):
    code = main(["--dataset", "specks", "--patch-size", "4", *MICRO_ARGS, "--stages", "8:3", "16:2",
                 "--batch-size", "16", "--train-samples", "64", "--eval-samples", "32", "--data-root", data_root,
                 "--out", str(tmp_path / "stages"), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and "17 tokens" in printed[1]
    assert len(list((tmp_path / "stages").iterdir())) == 2


# ---------------------------------------------------------------------------------------------
# Same config, same weights: every generator seeded at the start of every run and stage
# ---------------------------------------------------------------------------------------------
def test_two_fresh_processes_with_mixup_and_cutmix_give_identical_weights(data_root, tmp_path):
    """timm's Mixup draws from numpy's global generator: unseeded, two processes disagreed."""
    common = ["-m", "pixelvit.train", "--dataset", "specks", "--img-size", "8", "--patch-size", "4", *MICRO_ARGS,
              *RANDOM_RECIPE_ARGS, "--steps", "6", "--batch-size", "16", "--train-samples", "64",
              "--eval-samples", "32", "--data-root", data_root, "--quiet"]
    for name in ("first", "second"):
        done = subprocess.run([sys.executable, *common, "--out", str(tmp_path / name)], env=subprocess_env(data_root),
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert same_weights(weights(tmp_path / "first"), weights(tmp_path / "second"))


def test_stage_two_is_the_same_whether_stage_one_was_trained_or_loaded(data_root, tmp_path):
    config = tiny(data_root, tmp_path, **RANDOM_RECIPE)
    stages = [Stage(8, 3), Stage(16, 3)]
    _, fresh = train_stages(config, stages, progress=False)  # stage 1 just trained
    first = weights(fresh.run_dir)
    shutil.rmtree(fresh.run_dir)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)  # whatever the process drew before
    low, again = train_stages(config, stages, progress=False)  # stage 1 read from its folder
    assert low.cached and not again.cached and again.run_dir == fresh.run_dir
    assert same_weights(first, weights(again.run_dir))


# ---------------------------------------------------------------------------------------------
# Resume with every source of randomness, with a negative control
# ---------------------------------------------------------------------------------------------
class Killed(Exception):
    """Stands for SIGKILL in-process: raised right after a chosen checkpoint is written."""


@pytest.mark.parametrize("killed_at", [3, 4], ids=["mid-epoch", "epoch-boundary"])  # 64 / 16 = 4 steps an epoch
@pytest.mark.parametrize("restore", ["restored", "no-op"])
def test_resume_with_drop_path_augmentation_ema_and_mixup(data_root, tmp_path, monkeypatch, killed_at, restore):
    """A resumed run equals the uninterrupted one; with the random-state restore made a no-op it must
    not (the negative control: this test can fail when the restore is broken)."""
    config = tiny(data_root, tmp_path, steps=10, train_samples=64, checkpoint_every=3, **RANDOM_RECIPE)
    reference = weights(train(replace(config, out=str(tmp_path / "reference")), progress=False).run_dir)

    killed = replace(config, out=str(tmp_path / "killed"))
    save_checkpoint = pixelvit.train.save_checkpoint

    def save_then_die(run_dir, step, model, state):
        save_checkpoint(run_dir, step, model, state)
        if step == killed_at:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(pixelvit.train, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            train(killed, progress=False)
    assert latest_checkpoint(Path(killed.out)).name == f"step_{killed_at:07d}"
    if restore == "no-op":
        monkeypatch.setattr(pixelvit.train, "set_random_state", lambda state: None)
    resumed = train(killed, progress=False)
    assert json.loads((Path(resumed.run_dir) / "run.json").read_text())["resumed_from_step"] == killed_at
    assert same_weights(weights(resumed.run_dir), reference) == (restore == "restored")


def test_a_run_killed_in_its_final_evaluation_resumes_without_training_again(data_root, tmp_path, monkeypatch):
    """Before, the last checkpoint was the last periodic one (step 10 here), so a kill or Ctrl-C during
    the final evaluation (minutes at patch 1 on 10,000 images) cost every step since."""
    config = tiny(data_root, tmp_path, steps=12, checkpoint_every=5, eval_every=0)  # evaluated only at the end
    reference = train(replace(config, out=str(tmp_path / "reference")), progress=False)

    def killed_in_evaluation(*args):
        raise Killed

    killed = replace(config, out=str(tmp_path / "killed"))
    with monkeypatch.context() as patch:
        patch.setattr(pixelvit.train, "evaluate", killed_in_evaluation)
        with pytest.raises(Killed):
            train(killed, progress=False)
    assert latest_checkpoint(Path(killed.out)).name == "step_0000012"

    steps_trained, training_step = [], pixelvit.train.training_step

    def counted_step(train_model, images, targets, recipe, run, step):
        steps_trained.append(step)
        return training_step(train_model, images, targets, recipe, run, step)

    monkeypatch.setattr(pixelvit.train, "training_step", counted_step)
    resumed = train(killed, progress=False)
    assert steps_trained == []
    assert json.loads((Path(resumed.run_dir) / "run.json").read_text())["resumed_from_step"] == 12
    assert same_weights(weights(resumed.run_dir), weights(reference.run_dir))
    assert resumed.top1 == reference.top1 and not (Path(resumed.run_dir) / "checkpoints").exists()


def test_a_run_killed_after_its_final_evaluation_line_logs_that_evaluation_once(data_root, tmp_path, monkeypatch):
    """Killed between the final evaluation's metrics line and result.json, the resumed run evaluated
    again and metrics.jsonl held two final lines for the same step (campaigns read it per epoch)."""
    config = tiny(data_root, tmp_path, steps=12, checkpoint_every=5, eval_every=6)

    def killed_while_saving(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(pixelvit.train, "finish_run", killed_while_saving)
        with pytest.raises(Killed):
            train(config, progress=False)
    resumed = train(config, progress=False)
    lines = [json.loads(line) for line in (Path(resumed.run_dir) / "metrics.jsonl").read_text().splitlines()]
    evals = [(line["step"], line.get("final", False)) for line in lines if line["kind"] == "eval"]
    assert evals == [(6, False), (12, True)]
    assert [line["step"] for line in lines if line["kind"] == "train"][-1] == 12


# ---------------------------------------------------------------------------------------------
# NaN stop: checked with clipping on and off, and never a non-finite weight on disk
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip_grad", [1.0, 0.0], ids=["clip", "no-clip"])
def test_an_injected_nan_gradient_stops_before_the_update(data_root, tmp_path, monkeypatch, clip_grad):
    """A NaN gradient with a finite loss (step 4 here). Unchecked without clipping, it was applied and
    the next checkpoint, named as "the last good one", held NaN weights."""
    build_model = pixelvit.tasks.build_model

    def poisoned(config, spec, num_classes, img_size):
        model = build_model(config, spec, num_classes, img_size)
        calls = []

        def nan_on_the_fourth_backward(grad):
            calls.append(1)
            return torch.full_like(grad, float("nan")) if len(calls) == 4 else grad

        next(model.parameters()).register_hook(nan_on_the_fourth_backward)
        return model

    monkeypatch.setattr(pixelvit.tasks, "build_model", poisoned)
    config = tiny(data_root, tmp_path, steps=8, clip_grad=clip_grad, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match="the gradient norm is nan at step 4 "):
        train(config, progress=False)
    run_dir = run_dir_of(config)
    last = latest_checkpoint(run_dir)
    assert last.name == "step_0000003" and not (run_dir / "model").exists()
    assert assert_no_non_finite_weights_on_disk(run_dir)
    monkeypatch.undo()  # the advice in the message works: a new run from the last good weights trains on
    again = train(replace(config, steps=2, init_from=str(last), out=str(tmp_path / "again")), progress=False)
    assert again.steps == 2 and np.isfinite(again.eval_loss)


def test_a_huge_lr_without_clipping_leaves_no_nan_or_inf_on_disk(data_root, tmp_path):
    out = tmp_path / "huge_lr"
    code = main(["--dataset", "specks", "--img-size", "8", "--patch-size", "4", *MICRO_ARGS, "--steps", "30",
                 "--batch-size", "16", "--train-samples", "256", "--eval-samples", "32", "--lr", "3e4",
                 "--warmup-steps", "0", "--clip-grad", "0", "--checkpoint-every", "1", "--data-root", data_root,
                 "--out", str(out), "--quiet"])
    assert code in (0, 3)
    assert assert_no_non_finite_weights_on_disk(out)


# ---------------------------------------------------------------------------------------------
# The run hash: "these exact weights would come out"
# ---------------------------------------------------------------------------------------------
def test_run_hash_keys_the_device_type_and_normalizes_the_model(data_root, tmp_path):
    config = tiny(data_root, tmp_path)
    assert config_hash(config, "cpu") != config_hash(config, "cuda")  # device="auto" on a CPU and on a GPU
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert config_hash(config) == config_hash(replace(config, device=here))
    # the same model spelled two ways is one run: defaults left out or written out
    assert config_hash(replace(config, patch_size=None)) == config_hash(config)  # vit_micro's patch size is 4
    assert config_hash(replace(config, model_args={**MICRO, "mlp_ratio": 4.0})) == config_hash(config)
    assert config_hash(replace(config, img_size=None)) == config_hash(replace(config, img_size=16))  # specks: 16
    assert run_dir_of(replace(config, patch_size=None)) == run_dir_of(config)
    assert config_hash(replace(config, model_args={**MICRO, "mlp_ratio": 2.0})) != config_hash(config)


def test_run_hash_and_folder_names_stay_what_they_were():
    """A run's folder is named by its hash, so finished runs are found again only while identical configs
    hash as they always have: these values were computed before config_hash moved to pixelvit.run_id."""
    import pixelvit.run_id

    default = TrainConfig()  # vit_micro on specks 16 px, patch 4, 300 steps
    assert pixelvit.train.config_hash is pixelvit.run_id.config_hash  # the old import path still works
    assert config_hash(default, "cpu", 1) == config_hash(TrainConfig(), "cpu", 1) == "571d8e65fc82"
    assert (config_hash(default, "cuda", 1), config_hash(default, "cpu", 2)) == ("757ebee72749", "96b047dacdaa")
    sweep_point = TrainConfig(model="vit_nano", dataset="specks", img_size=16, patch_size=2, steps=300)
    assert run_dir_of(sweep_point, config_hash(sweep_point, "cpu", 1)) == \
        Path("runs/vit_nano-specks-16px-p2-300steps-64d92aa72639")


def test_train_help_description_is_the_module_docstring_s_first_line():
    """`pixelvit train --help` shows pixelvit.train_args.DESCRIPTION: the trainer's own summary, kept equal."""
    import pixelvit.train_args

    assert pixelvit.train_args.DESCRIPTION == pixelvit.train.__doc__.split("\n\n")[0]
    assert build_parser().description == pixelvit.train_args.DESCRIPTION


def test_run_hash_keys_init_from_by_content_not_path(data_root, tmp_path):
    start = Path(train(tiny(data_root, tmp_path, steps=2), progress=False).run_dir) / "model"
    copy = tmp_path / "copy_of_model"
    shutil.copytree(start, copy)
    config = tiny(data_root, tmp_path, img_size=16)
    assert config_hash(replace(config, init_from=str(start))) == config_hash(replace(config, init_from=str(copy)))
    state = load_file(str(copy / "model.safetensors"))
    name = next(iter(state))
    state[name] = state[name] + 1e-3
    save_file(state, str(copy / "model.safetensors"))
    assert config_hash(replace(config, init_from=str(start))) != config_hash(replace(config, init_from=str(copy)))


# ---------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, no traceback, before any data work
# ---------------------------------------------------------------------------------------------
BAD_ARGUMENTS = {
    "batch-larger-than-samples": (["--batch-size", "64", "--train-samples", "32"], "--train-samples 32 is fewer"),
    "patch-does-not-divide": (["--patch-size", "5", "--img-size", "32"], "not divisible by patch size 5"),
    "unknown-dataset": (["--dataset", "nonexistent"], "unknown dataset 'nonexistent'"),
    "unknown-model": (["--model", "nonexistent"], "unknown model 'nonexistent'"),
    "unknown-model-field": (["--model-arg", "widht=3"], "widht"),
    "bad-stage": (["--stages", "16"], "IMG_SIZE:STEPS"),
    "missing-init-from": (["--init-from", "/nonexistent/model"], "is not a pixelvit model directory"),
    "negative-lr": (["--lr", "-1"], "--lr must be > 0"),
    "segmentation-aug-for-classification": (["--aug", "flip"], "unknown augmentation 'flip'"),
}


@pytest.mark.parametrize("args, expected", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_arguments_give_one_line_before_any_data_work(tmp_path, capsys, args, expected):
    data, runs = tmp_path / "data", tmp_path / "runs"
    code = main([*args, "--data-root", str(data), "--runs-dir", str(runs), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("pixelvit train: error: ") and expected in err[0]
    assert not data.exists() and not runs.exists()  # nothing was prepared


def test_the_command_prints_no_traceback_and_debug_shows_one(tmp_path):
    command = [sys.executable, "-m", "pixelvit.cli", "train", "--patch-size", "5", "--img-size", "32",
               "--data-root", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs")]
    env = subprocess_env(str(tmp_path / "data"))
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    debug = subprocess.run([*command, "--debug"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_weights_that_turn_inf_after_a_finite_update_are_never_saved(data_root, tmp_path, monkeypatch):
    """The last line of defence: the save path itself refuses NaN/inf weights, and the run stops there."""
    after_step = pixelvit.train.Recipe.after_step

    def then_overflow(self, model, step):
        after_step(self, model, step)
        if step == 3:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))

    monkeypatch.setattr(pixelvit.train.Recipe, "after_step", then_overflow)
    config = tiny(data_root, tmp_path, steps=8, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match="NaN or inf .* at step 3 "):
        train(config, progress=False)
    run_dir = run_dir_of(config)
    assert latest_checkpoint(run_dir).name == "step_0000002"
    assert assert_no_non_finite_weights_on_disk(run_dir)


# ---------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM: the step finishes, a checkpoint is saved, the run stops and resumes exactly
# ---------------------------------------------------------------------------------------------
class SignalReachedTheStep(Exception):
    """What the test's own handler raises: the signal was not caught by the trainer."""


@pytest.fixture
def guarded(request):
    """A handler for the signal under test that raises SignalReachedTheStep (so, unhandled, a signal
    fails the test instead of stopping pytest), put back as it was afterwards."""
    signum = request.param

    def guard(number, frame):
        raise SignalReachedTheStep(signal.Signals(number).name)

    previous = signal.signal(signum, guard)
    yield signum, guard
    signal.signal(signum, previous)


def signal_during_step(monkeypatch, signum, at_step, times=1):
    """Send `signum` to this process `times` times as training step `at_step` (0-based) starts."""
    training_step = pixelvit.train.training_step

    def step_with_signal(train_model, images, targets, recipe, run, step):
        if step == at_step:
            for _ in range(times):
                signal.raise_signal(signum)
        return training_step(train_model, images, targets, recipe, run, step)

    monkeypatch.setattr(pixelvit.train, "training_step", step_with_signal)


@pytest.mark.parametrize("guarded", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"], indirect=True)
def test_a_signal_saves_a_checkpoint_after_the_step_and_the_run_resumes_exactly(data_root, tmp_path, monkeypatch,
                                                                                 guarded):
    """Before, Ctrl-C raised KeyboardInterrupt inside the step and the steps since the last checkpoint
    were lost (here: all of them, checkpoint_every=0); SIGTERM killed the process."""
    signum, guard = guarded
    config = tiny(data_root, tmp_path, steps=12, checkpoint_every=0)  # 256 / 16 = 16 steps an epoch: no boundary
    reference = weights(train(replace(config, out=str(tmp_path / "reference")), progress=False).run_dir)

    stopped = replace(config, out=str(tmp_path / "stopped"))
    with monkeypatch.context() as patch:
        signal_during_step(patch, signum, at_step=5)
        with pytest.raises(TrainingInterrupted, match="at step 6 of 12") as caught:
            train(stopped, progress=False)
    assert caught.value.exit_code == 128 + signum
    assert latest_checkpoint(Path(stopped.out)).name == "step_0000006"  # the step under way finished
    assert not (Path(stopped.out) / "result.json").exists()
    assert signal.getsignal(signum) is guard  # the handler from before is back

    resumed = train(stopped, progress=False)
    assert json.loads((Path(resumed.run_dir) / "run.json").read_text())["resumed_from_step"] == 6
    assert same_weights(weights(resumed.run_dir), reference)


@pytest.mark.parametrize("guarded", [signal.SIGINT], ids=["SIGINT"], indirect=True)
def test_a_second_signal_stops_at_once(data_root, tmp_path, monkeypatch, guarded):
    signum, guard = guarded
    config = tiny(data_root, tmp_path, steps=12, checkpoint_every=0)
    signal_during_step(monkeypatch, signum, at_step=5, times=2)
    with pytest.raises(SignalReachedTheStep):  # the second went to the handler from before, inside the step
        train(config, progress=False)
    assert latest_checkpoint(run_dir_of(config)) is None
    assert signal.getsignal(signum) is guard


def wait_for_first_log_line(run_dir: Path, still_running, timeout_s: float = 120):
    """Until a training run in another process has logged its first step (log_every=1): it is in the loop."""
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + timeout_s
    while time.time() < deadline and still_running() and not (metrics.exists() and metrics.read_text()):
        time.sleep(0.05)


def test_ctrl_c_on_the_command_line_is_one_line_and_a_checkpoint(data_root, tmp_path):
    args = ["-m", "pixelvit.train", "--dataset", "specks", "--img-size", "8", "--patch-size", "1", *MICRO_ARGS,
            "--steps", "100000", "--batch-size", "16", "--train-samples", "256", "--eval-samples", "64",
            "--checkpoint-every", "0", "--log-every", "1", "--data-root", data_root, "--quiet",
            "--out", str(tmp_path / "run")]
    process = subprocess.Popen([sys.executable, *args], env=subprocess_env(data_root), cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_first_log_line(tmp_path / "run", still_running=lambda: process.poll() is None)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("pixelvit train: stopped by SIGINT at step ")
    step = int(last_line.split(" at step ")[1].split()[0])
    assert latest_checkpoint(tmp_path / "run").name == f"step_{step:07d}"


# `python -m pixelvit.train` whose rank 1 sends itself SIGTERM as step 3 starts.
SIGNALLED_TRAINER = """
import os, signal, sys
import pixelvit.train as train

training_step = train.training_step

def step_with_signal(train_model, images, targets, recipe, run, step):
    if step == 3 and run.processes.rank == 1 and os.environ.get("SEND_SIGNAL"):
        signal.raise_signal(signal.SIGTERM)
    return training_step(train_model, images, targets, recipe, run, step)

train.training_step = step_with_signal
sys.exit(train.main(sys.argv[1:]))
"""


def test_under_ddp_a_signal_to_one_rank_stops_every_rank_after_the_same_step(data_root, tmp_path):
    """Rank 1 alone gets SIGTERM; both ranks must stop after step 4 together (rank 0 alone going on
    would wait for rank 1 in the next all-reduce until gloo's timeout) and the run resumes."""
    trainer = tmp_path / "signalled_trainer.py"
    trainer.write_text(SIGNALLED_TRAINER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(trainer),
               "--dataset", "specks", "--img-size", "8", "--patch-size", "4", *MICRO_ARGS, "--steps", "6",
               "--batch-size", "16", "--train-samples", "256", "--eval-samples", "64", "--checkpoint-every", "0",
               "--data-root", data_root, "--quiet", "--out", str(tmp_path / "ddp")]
    stopped = subprocess.run(command, env=dict(subprocess_env(data_root), SEND_SIGNAL="1"), cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=300)
    assert stopped.returncode != 0
    assert "stopped by SIGTERM at step 4 of 6" in stopped.stderr  # rank 1
    assert "stopped by a signal to another process at step 4 of 6" in stopped.stderr  # rank 0
    assert latest_checkpoint(tmp_path / "ddp").name == "step_0000004"
    assert not (tmp_path / "ddp" / "result.json").exists()

    resumed = subprocess.run(command, env=subprocess_env(data_root), cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["steps"] == 6 and result["replicas_in_sync"] is True
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["resumed_from_step"] == 4


def test_jupyters_stop_button_saves_a_checkpoint(data_root, tmp_path):
    """The interrupt a notebook's stop button sends (a real kernel): the cell ends with
    TrainingInterrupted, and the checkpoint it names is on disk."""
    manager = pytest.importorskip("jupyter_client.manager")
    kernel, client = manager.start_new_kernel(kernel_name="python3", env=subprocess_env(data_root), cwd=str(REPO_ROOT))
    try:
        run_dir = tmp_path / "run"
        cell = client.execute(
            "from pixelvit.train import TrainConfig, train\n"
            f"train(TrainConfig(model='vit_micro', model_args={MICRO!r}, dataset='specks', img_size=8, patch_size=1,"
            f" steps=100000, batch_size=16, train_samples=256, eval_samples=64, checkpoint_every=0, log_every=1,"
            f" data_root={data_root!r}, out={str(run_dir)!r}), progress=False)")
        wait_for_first_log_line(run_dir, still_running=kernel.is_alive)
        kernel.interrupt_kernel()
        error = None
        while True:
            message = client.get_iopub_msg(timeout=120)
            if message["msg_type"] == "error":
                error = message["content"]
            if message["parent_header"].get("msg_id") == cell and message["msg_type"] == "status" \
                    and message["content"]["execution_state"] == "idle":
                break
    finally:
        client.stop_channels()
        kernel.shutdown_kernel(now=True)
    assert error is not None and error["ename"] == "TrainingInterrupted", error
    step = int(error["evalue"].split(" at step ")[1].split()[0])
    assert latest_checkpoint(run_dir).name == f"step_{step:07d}"


# ---------------------------------------------------------------------------------------------
# --restart, and the model spec resolved once
# ---------------------------------------------------------------------------------------------
def test_restart_with_stages_trains_every_stage_again(data_root, tmp_path, capsys):
    """--restart used to be ignored with --stages: both stages came back as stored results."""
    args = ["--dataset", "specks", "--patch-size", "4", *MICRO_ARGS, "--stages", "8:3", "16:2",
            "--batch-size", "16", "--train-samples", "64", "--eval-samples", "32", "--data-root", data_root,
            "--out", str(tmp_path / "stages"), "--quiet"]
    assert main(args) == 0
    assert main(args) == 0
    assert capsys.readouterr().out.count("stored result") == 2
    assert main([*args, "--restart"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and all(line.startswith("trained:") for line in printed)


def test_a_run_from_init_from_reads_its_config_json_once(data_root, tmp_path, monkeypatch):
    """The model spec (patch size, fields) used to be resolved by check_config, config_hash, run_dir_of and
    the task's build_model, each reading --init-from's config.json again."""
    start = Path(train(tiny(data_root, tmp_path, steps=2), progress=False).run_dir) / "model"
    reads = []
    read_text, read_bytes = Path.read_text, Path.read_bytes

    def counted(original):
        def read(path, *args, **kwargs):
            if path.name == "config.json" and path.parent == start:
                reads.append(str(path))
            return original(path, *args, **kwargs)
        return read

    monkeypatch.setattr(Path, "read_text", counted(read_text))
    monkeypatch.setattr(Path, "read_bytes", counted(read_bytes))
    result = train(tiny(data_root, tmp_path, img_size=16, steps=2, init_from=str(start)), progress=False)
    assert not result.cached and result.tokens == (16 // 4) ** 2 + 1
    assert len(reads) == 1


# `python -m pixelvit.train` that records on each rank whether train() returned a stored result, and whose
# rank 0 is slow to delete files (as on a busy shared disk): --restart's deletion must happen before any
# rank reads the run folder.
RESTARTING_TRAINER = """
import json, os, shutil, sys, time
from pathlib import Path
import pixelvit.train as train

rank = int(os.environ.get("RANK", 0))
if rank == 0:
    rmtree, unlink = shutil.rmtree, Path.unlink

    def slow_rmtree(*args, **kwargs):
        time.sleep(3)
        return rmtree(*args, **kwargs)

    def slow_unlink(path, *args, **kwargs):
        time.sleep(1)
        return unlink(path, *args, **kwargs)

    shutil.rmtree, Path.unlink = slow_rmtree, slow_unlink
real_train = train.train

def recording_train(*args, **kwargs):
    result = real_train(*args, **kwargs)
    Path(os.environ["RECORD_DIR"], f"rank{rank}.json").write_text(json.dumps({"cached": result.cached}))
    return result

train.train = recording_train
sys.exit(train.main(sys.argv[1:]))
"""


def test_under_ddp_restart_deletes_the_finished_run_before_any_rank_reads_it(data_root, tmp_path):
    """Rank 0 deleted the finished run's files while rank 1 read them: rank 1 returned the stale result
    and left, and rank 0 retrained alone, waiting for rank 1 in its first collective."""
    trainer = tmp_path / "restarting_trainer.py"
    trainer.write_text(RESTARTING_TRAINER)
    records = tmp_path / "records"
    records.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(trainer),
               "--dataset", "specks", "--img-size", "8", "--patch-size", "4", *MICRO_ARGS, "--steps", "2",
               "--batch-size", "16", "--train-samples", "64", "--eval-samples", "32", "--data-root", data_root,
               "--quiet", "--out", str(tmp_path / "ddp")]
    env = dict(subprocess_env(data_root), RECORD_DIR=str(records))

    def run(*extra):
        process = subprocess.Popen([*command, *extra], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(f"torchrun {' '.join(extra)} hung: a rank waited for one that had left")
        assert process.returncode == 0, stderr[-3000:]
        return [json.loads((records / f"rank{r}.json").read_text())["cached"] for r in (0, 1)]

    assert run() == [False, False]
    assert run("--restart") == [False, False]  # both ranks trained again; neither returned the old result
    assert json.loads((tmp_path / "ddp" / "result.json").read_text())["replicas_in_sync"] is True
