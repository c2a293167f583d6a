"""What a new student meets in the first hour: the words match what they see, and failures point at the fix.

(issue 14) The README's count of released checkpoints is the catalog's; offline, the CIFAR-10 commands
point at the course's copy (`cifar10_jpeg`); run folders (and so progress bars) have short names.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def closed_port_url(path: str = "/cifar-10-python.tar.gz") -> str:
    """An http URL on 127.0.0.1 where nothing listens: a connection is refused at once, like offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def test_readme_counts_the_released_checkpoints_of_the_catalog():
    from pixelvit.catalog import CATALOG

    words = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
            "sixteen seventeen eighteen nineteen twenty".split()
    found = re.findall(r"(\w+) released checkpoints", (REPO / "README.md").read_text())
    counts = [int(w) if w.isdigit() else words.index(w.lower()) for w in found if w.isdigit() or w.lower() in words]
    assert counts, "the README should say how many released checkpoints there are"
    assert set(counts) == {len(CATALOG)}, (found, len(CATALOG))  # notebook 00 prints len(CATALOG)


def test_offline_cifar10_points_at_the_course_copy(tmp_path, monkeypatch):
    from pixelvit.data import load_split
    from pixelvit.data.locations import DatasetNotFoundError

    monkeypatch.setenv("PIXELVIT_SHARED_DATA", str(tmp_path / "shared"))
    with pytest.raises(DatasetNotFoundError) as raised:
        load_split("cifar10", "test", root=tmp_path / "cache", url=closed_port_url(), progress=False)
    message = str(raised.value)
    assert "--dataset cifar10_jpeg" in message and str(tmp_path / "shared") in message


def test_run_folders_of_folder_datasets_have_short_names(tmp_path):
    from pixelvit.train import TrainConfig, run_dir_of

    deep = tmp_path / "some" / "very" / "long" / "path" / "low"
    config = TrainConfig(model="vit_nano", dataset=f"folder:{deep}", img_size=8, patch_size=1, steps=10,
                         runs_dir=str(tmp_path / "runs"))
    name = run_dir_of(config).name
    assert name.startswith("vit_nano-folder-low-8px-p1-10steps-"), name
    assert str(tmp_path.name) not in name


@pytest.fixture
def unreachable_hub(monkeypatch):
    """The hub's endpoint on a closed local port (no real network), offline mode off, no cached answer.

    Counts every TCP connection attempt to that port."""
    import socket

    from huggingface_hub import constants

    from pixelvit import checkpoints

    endpoint = closed_port_url("").rstrip("/")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(checkpoints, "_HUB_ANSWERS", {})
    port = int(endpoint.rsplit(":", 1)[1])
    attempts = []
    connect = socket.socket.connect

    def counting_connect(sock, address):
        if isinstance(address, tuple) and address[1] == port:
            attempts.append(address)
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", counting_connect)
    return attempts


def test_offline_load_by_name_fails_at_once_without_retries(unreachable_hub, tmp_path, capsys, caplog):
    """huggingface_hub alone tries 6 times over ~25 s, printing a 'Retrying' warning each time."""
    from pixelvit.pretrained import CheckpointError, load_pretrained

    for _ in range(2):  # the second load asks nothing: the answer is kept for the process
        with pytest.raises(CheckpointError) as raised:
            load_pretrained("adventurer_tiny_patch1_64", cache_dir=tmp_path / "hub")
    assert len(unreachable_hub) == 1  # one probe, no download attempts
    message = str(raised.value)
    assert "did not answer" in message and "hf download" in message
    printed = capsys.readouterr()
    everything = printed.out + printed.err + caplog.text
    assert "retry" not in everything.lower() and "Connection refused" not in everything


def test_hub_probe_honors_offline_mode(unreachable_hub, monkeypatch):
    from huggingface_hub import constants

    from pixelvit.pretrained import hub_reachable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_reachable() is False and unreachable_hub == []  # not even a probe
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hub_reachable() is False and len(unreachable_hub) == 1


def test_hub_probe_sees_a_listening_hub(monkeypatch):
    import socket

    from huggingface_hub import constants

    from pixelvit import checkpoints

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(checkpoints, "_HUB_ANSWERS", {})
        assert checkpoints.hub_reachable() is True


def test_predict_names_classes_from_the_models_label_names():
    """A 10-class model used to print 'class 3'; timm's `label_names` in its pretrained_cfg give real names."""
    import torch

    from pixelvit.models import create_model
    from pixelvit.predict import predict

    torch.manual_seed(0)
    model = create_model("vit_nano").eval()
    names = [f"kind {i}" for i in range(10)]
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": names}
    (rows,) = predict(model, [torch.randn(3, 32, 32)], top=3)
    assert [name for _, index, name in rows] == [names[index] for _, index, _ in rows]


# ---------------------------------------------------------------------------------------------
# (issue 27) The `pixelvit` command itself: usage, typos and --help
# ---------------------------------------------------------------------------------------------
PIXELVIT = Path(sys.executable).with_name("pixelvit")  # the console script pip wrote for pyproject's entry point


def run_pixelvit(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """The real `pixelvit` command, with Python's import log on: (result, top-level packages it imported)."""
    if not PIXELVIT.exists():
        pytest.skip(f"no console script at {PIXELVIT} (pixelvit not installed into this environment)")
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run([str(PIXELVIT), *args], capture_output=True, text=True, env=env, timeout=120)
    log = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in log[1:]}  # log[0] is the header
    result.stderr = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("import time:"))
    return result, imported


def test_pixelvit_help_bare_and_typos_answer_without_importing_torch():
    """`pixelvit --help` took 5-11 s and 850 MB (torch, imported by `import pixelvit` before argv was read);
    bare `pixelvit` exited 0; `pixelvit cost` got no suggestion."""
    result, imported = run_pixelvit("--help")
    assert result.returncode == 0 and "usage: pixelvit <command>" in result.stdout
    assert "pixelvit_cli" in imported and not imported & {"torch", "timm", "pixelvit", "numpy"}, sorted(imported)

    result, imported = run_pixelvit()  # a command is required: usage on stderr, exit 2 (as argparse does)
    assert result.returncode == 2 and result.stdout == "" and "usage: pixelvit <command>" in result.stderr
    assert "torch" not in imported

    result, imported = run_pixelvit("cost")
    assert result.returncode == 2 and "torch" not in imported
    assert result.stderr.strip().splitlines() == [
        "pixelvit: error: unknown command 'cost': did you mean 'costs'? commands: costs, train, sweep, predict"]


def test_import_pixelvit_still_registers_the_models_with_timm():
    code = "import pixelvit, timm; print(type(timm.create_model('adventurer_nano')).__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0 and result.stdout.strip() == "Adventurer", result.stderr[-2000:]


def option_help(text: str) -> dict[str, str]:
    """`--help` output -> {option: its help text on one line}."""
    options, name = {}, None
    for line in text.split("options:", 1)[1].splitlines():
        match = re.match(r"  (-{1,2}[\w-]+)", line)
        if match:
            name = match.group(1)
            options[name] = line
        elif name:
            options[name] += " " + line.strip()
    return {name: " ".join(help_text.split()) for name, help_text in options.items()}


@pytest.mark.parametrize("command", ["train", "sweep", "costs", "predict"])
def test_help_shows_each_default_once_and_none_for_flags(command):
    """--help said "(default: none) (default: None)", "--no-amp ... (default: True)", and nothing for --steps,
    --lr or any option of `pixelvit costs`."""
    result = subprocess.run([sys.executable, "-m", "pixelvit.cli", command, "--help"], capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    options = option_help(result.stdout)
    for text in options.values():
        assert "(default: None)" not in text and not re.search(r"\(default: [^()]*\) \(default: [^()]*\)$", text), text
        assert "(default: True)" not in text and "(default: False)" not in text, text
    expected = {"train": {"--steps": "300", "--lr": "0.001", "--batch-size": "128", "--seed": "0"},
                "sweep": {"--steps": "300", "--lr": "0.002", "--patch-sizes": "8 4 2 1"},
                "costs": {"--model": "vit_tiny", "--img-size": "224", "--patch-sizes": "16 8 4 2 1", "--out": "outputs"},
                "predict": {"--top": "5", "--device": "auto"}}[command]
    for name, default in expected.items():
        assert options[name].endswith(f"(default: {default})"), options[name]
    if command in ("train", "sweep"):
        assert "(default:" not in options["--no-amp"] and "on by default" in options["--no-amp"]


def test_offline_cifar10_error_is_short_and_names_a_partial_file_only_when_there_is_one(tmp_path, monkeypatch):
    """(issue 27) The ~600-character error said "The partial file ... is kept" when nothing had arrived."""
    from pixelvit.data import load_split
    from pixelvit.data.locations import DatasetNotFoundError

    monkeypatch.setenv("PIXELVIT_SHARED_DATA", str(tmp_path / "shared"))
    root = tmp_path / "cache"

    def error_line() -> str:  # as `pixelvit train` prints it: one line (pixelvit.cli.report_user_errors)
        with pytest.raises(DatasetNotFoundError) as raised:
            load_split("cifar10", "test", root=root, url=closed_port_url(), progress=False)
        return " ".join(str(raised.value).split())

    line = error_line()
    assert ".part" not in line and "kept" not in line, line
    assert len(line.replace(str(tmp_path), "~")) < 450, line  # the temporary folder's long name aside
    assert "--dataset cifar10_jpeg" in line and str(root / "downloads") in line

    part = root / "downloads" / "cifar-10-python.tar.gz.part"  # an earlier transfer that stopped after 1000 bytes
    part.write_bytes(b"x" * 1000)
    assert f"the 1,000 bytes that arrived are kept in {part}: run again to resume" in error_line()


def test_readme_names_the_shared_data_variable_and_the_offline_predict_route():
    """(issue 27) The README introduced `--dataset cifar10_jpeg` without PIXELVIT_SHARED_DATA (only the error
    named it), and gave `pixelvit predict` only with a download."""
    import inspect

    from pixelvit.assets import CIFAR10_MODEL
    from pixelvit.data import locations

    readme = (REPO / "README.md").read_text()
    variable = re.search(r'os\.environ\.get\("(\w+)"\)', inspect.getsource(locations.shared_data_dir)).group(1)
    paragraph = next(p for p in readme.split("\n\n") if "`--dataset cifar10_jpeg`" in p)
    assert f"`{variable}`" in paragraph and "../shared/data" in paragraph
    shipped = re.findall(r"pixelvit predict \S+ --checkpoint (\S+)", readme)
    assert shipped and all((REPO / path).resolve() == CIFAR10_MODEL.resolve() for path in shipped), shipped
