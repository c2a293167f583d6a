"""The notebooks: committed clean (no outputs, no widget state), and each one runs top to bottom.

Every notebook is executed with papermill and its smoke parameters (`SMOKE=True`, injected after the cell
tagged `parameters`), offline (`HF_HUB_OFFLINE=1`), in a kernel that runs this very Python, so the test
exercises the package under test and not whatever `python3` kernel happens to be installed. The executed
copies land in test-artifacts/notebooks/ (gitignored) for a look at what failed.

The full (default) settings are measured separately, because they take minutes:

    python tests/test_notebooks.py --timings          # run every notebook twice (default + smoke),
                                                       # write notebooks/TIMINGS.md
    python tests/test_notebooks.py --timings 01_patchification.ipynb
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
ARTIFACTS = REPO / "test-artifacts" / "notebooks"
KERNEL_NAME = "pixelvit-test"
SMOKE_TIMEOUT_S = 300  # per cell; the whole smoke run of one notebook takes well under a minute
BUDGET = {"seconds": 300, "peak_mb": 2048}  # what a notebook's default settings may use on 2 CPU cores

sys.path.insert(0, str(REPO / "tools"))
import check_notebooks  # noqa: E402


# ---------------------------------------------------------------------------------------------
# running a notebook
# ---------------------------------------------------------------------------------------------
def kernel_env(directory: Path) -> dict:
    """Environment for papermill: a kernelspec named KERNEL_NAME that starts *this* Python, offline hub."""
    spec_dir = directory / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "pixelvit test kernel", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    env = {
        "JUPYTER_PATH": os.pathsep.join([str(directory), os.environ.get("JUPYTER_PATH", "")]).rstrip(os.pathsep),
        "HF_HUB_OFFLINE": "1",
        "PIXELVIT_OFFLINE": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # silences a debugger warning in every kernel start
    }
    return env


def make_test_checkpoint(directory: Path) -> Path:
    """A small Adventurer with an ImageNet head in the official file format ({'model': state_dict, ...}).

    Random weights: notebook 06 only needs something to load, predict with and time when the real
    checkpoints cannot be downloaded (tests run offline).
    """
    import torch

    from pixelvit.models import create_model

    torch.manual_seed(0)
    model = create_model("adventurer_tiny", img_size=32, patch_size=1, embed_dim=64, depth=2, num_classes=1000)
    path = directory / "adventurer_test_patch1_32.pth"
    torch.save({"model": model.state_dict(), "epoch": 0}, path)
    return path


def parameter_names(notebook: Path) -> set[str]:
    """Names assigned in the notebook's parameters cell."""
    import ast

    cells = json.loads(notebook.read_text())["cells"]
    (cell,) = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    tree = ast.parse("".join(cell["source"]))
    return {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
            if isinstance(target, ast.Name)}


def run_parameters(notebook: Path, workdir: Path, smoke: bool = True) -> dict:
    """SMOKE, a fresh RUNS_DIR (so nothing is loaded from an earlier run) and, in smoke runs of notebooks
    that take one, a local CHECKPOINT file (tests run offline). Default runs keep CHECKPOINT = None: what a
    student without the released weights sees."""
    names = parameter_names(notebook)
    parameters = {"SMOKE": True} if smoke else {}
    if "RUNS_DIR" in names:
        runs = workdir / f"runs-{notebook.stem}-{'smoke' if smoke else 'default'}"
        shutil.rmtree(runs, ignore_errors=True)
        parameters["RUNS_DIR"] = str(runs)
    if smoke and "CHECKPOINT" in names:
        parameters["CHECKPOINT"] = str(make_test_checkpoint(workdir))
    return parameters


def execute(notebook: Path, output: Path, parameters: dict, env: dict, timeout=SMOKE_TIMEOUT_S):
    """Run `notebook` with papermill in NOTEBOOK_DIR (notebooks open data relative to themselves)."""
    import papermill

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters, kernel_name=KERNEL_NAME, cwd=str(NOTEBOOK_DIR),
            progress_bar=False, execution_timeout=timeout, log_output=False,
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------
def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(notebook):
    """What git would commit: no outputs, execution counts or widget state; one parameters cell; < 1 MB;
    short cells. Outputs in the working copy are fine when the nbstripout git filter removes them."""
    found, checked = check_notebooks.committed_problems(notebook)
    assert not found, f"{notebook.name} ({checked}): {'; '.join(found)}\n{check_notebooks.FIX_HINT}"


def test_start_here_lists_every_notebook_and_how_to_install_before_the_root_note():
    """(issue 27) Its table of notebooks stopped at 07, and "or by hand: pip install ..." came after the
    paragraph about running as root, away from the commands it is an alternative to."""
    import re

    cells = json.loads((NOTEBOOK_DIR / "00_start_here.ipynb").read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    listed = re.findall(r"^\| `(\d\d_\w+)` \|", text, flags=re.M)
    assert listed == [p.stem for p in NOTEBOOKS if p.stem != "00_start_here"]
    assert text.index("make setup") < text.index("or by hand: `pip install") < text.index("Running as root")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_has_smoke_flag(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    (cell,) = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    source = "".join(cell["source"])
    assert "SMOKE = False" in source, "the parameters cell must define SMOKE = False (tests set it True)"


def test_checker_refuses_outputs_and_widget_state(tmp_path):
    notebook = json.loads(NOTEBOOKS[0].read_text())
    notebook["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    code = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "hi"}]
    code["execution_count"] = 3
    for cell in notebook["cells"]:
        cell.get("metadata", {}).get("tags", []).clear()
    path = tmp_path / "dirty.ipynb"
    path.write_text(json.dumps(notebook))
    found = "\n".join(check_notebooks.problems(path))
    for expected in ("widgets", "output", "execution_count", "parameters"):
        assert expected in found
    check_notebooks.strip(path)
    assert "output" not in "\n".join(check_notebooks.problems(path))


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _repo_with_notebook(tmp_path: Path, git_filter: bool, source: Path = NOTEBOOKS[0]) -> tuple[Path, Path]:
    """A new git repository holding .gitattributes and a committed copy of `source` (notebook 00), the git
    filter configured by the Makefile's own `git-filter` target (with this Python) when `git_filter`."""
    if shutil.which("git") is None or (git_filter and shutil.which("make") is None):
        pytest.skip("needs git (and make)")
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / ".gitattributes", repo / ".gitattributes")
    notebook = repo / "notebooks" / source.name
    shutil.copy(source, notebook)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "student@example.com")
    _git(repo, "config", "user.name", "student")
    if git_filter:
        subprocess.run(["make", "-s", "-f", str(REPO / "Makefile"), "git-filter", f"PY={sys.executable}"],
                       cwd=repo, check=True, capture_output=True)
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "clean notebooks")
    return repo, notebook


def kernel_language_info() -> dict:
    """What the kernel writes into a notebook's metadata.language_info on every run (ipykernel's own)."""
    from ipykernel.ipkernel import IPythonKernel

    return dict(IPythonKernel.language_info)  # name, version, mimetype, codemirror_mode, pygments_lexer, ...


def _run_in_jupyterlab(notebook: Path) -> None:
    """What JupyterLab's autosave leaves behind: outputs, execution counts, widget state, the kernel's
    language_info (nbformat's layout)."""
    content = json.loads(notebook.read_text())
    for count, cell in enumerate((c for c in content["cells"] if c["cell_type"] == "code"), start=1):
        cell["execution_count"] = count
        cell["outputs"] = [{"name": "stdout", "output_type": "stream", "text": [f"output of cell {count}\n"]}]
    content["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    content["metadata"]["language_info"] = kernel_language_info()
    notebook.write_text(json.dumps(content, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


STUDENT_NOTEBOOK = REPO / "assignments" / "01_patches_and_tokens" / "student" / "01_patches_and_tokens.ipynb"


@pytest.mark.parametrize("source", [NOTEBOOKS[0], STUDENT_NOTEBOOK], ids=["notebook", "assignment"])
def test_outputs_in_the_working_copy_never_reach_a_commit(tmp_path, source):
    """With the nbstripout filter set up by `make setup`, a notebook run in JupyterLab keeps its outputs in
    the working copy, `git diff` is empty, the clean check passes and staging it leaves nothing to commit.
    (issue 27: the kernel's metadata.language_info, its Python version and CodeMirror mode, was staged.)"""
    pytest.importorskip("nbstripout")
    pytest.importorskip("ipykernel")
    repo, notebook = _repo_with_notebook(tmp_path, git_filter=True, source=source)
    _run_in_jupyterlab(notebook)
    assert "output of cell 1" in notebook.read_text()  # the student still sees the outputs
    assert check_notebooks.problems(notebook), "the working copy should have outputs"
    found, checked = check_notebooks.committed_problems(notebook)
    assert found == [] and "git filter" in checked
    assert _git(repo, "diff") == ""  # (`git status` may list the file until it is staged: the size differs)
    _git(repo, "add", "notebooks")
    assert _git(repo, "status", "--porcelain") == ""  # nothing to commit
    staged = _git(repo, "show", f":notebooks/{notebook.name}")
    assert "output of cell" not in staged and "widget-state" not in staged and "codemirror_mode" not in staged
    assert staged == source.read_text()  # byte for byte the committed source


def test_the_git_filter_strips_what_the_check_refuses_and_every_key_the_kernel_writes(tmp_path):
    """One list (tools/check_notebooks.py GIT_FILTER_EXTRA_KEYS) for both: the Makefile configures the filter
    from it, and it covers everything the kernel writes into language_info but the language's name."""
    pytest.importorskip("ipykernel")
    repo, _ = _repo_with_notebook(tmp_path, git_filter=True)
    configured = _git(repo, "config", "--get", "filter.nbstripout.extrakeys").split()
    assert configured == list(check_notebooks.GIT_FILTER_EXTRA_KEYS)
    written = {f"metadata.language_info.{key}" for key in kernel_language_info()} - {"metadata.language_info.name"}
    assert written <= set(configured), written - set(configured)


def test_without_the_filter_the_check_fails_and_says_how_to_fix_it(tmp_path, capsys):
    repo, notebook = _repo_with_notebook(tmp_path, git_filter=False)
    _run_in_jupyterlab(notebook)
    found, checked = check_notebooks.committed_problems(notebook)
    assert any("output" in line for line in found) and "no git filter" in checked
    assert check_notebooks.main([str(notebook)]) == 1
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "make setup" in last_line and "--fix" in last_line
    assert check_notebooks.main(["--fix", str(notebook)]) == 0
    assert _git(repo, "status", "--porcelain") == ""  # --fix restored the committed source exactly


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_with_smoke_parameters(notebook, tmp_path):
    pytest.importorskip("papermill")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    output = ARTIFACTS / notebook.name
    execute(notebook, output, run_parameters(notebook, tmp_path), kernel_env(tmp_path))
    executed = json.loads(output.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


# ---------------------------------------------------------------------------------------------
# measuring the default settings: python tests/test_notebooks.py --timings
# ---------------------------------------------------------------------------------------------
_MEASURE = r"""
import json, resource, sys, time
sys.path.insert(0, {tests!r})
import test_notebooks as t
start = time.perf_counter()
t.execute(t.Path({notebook!r}), t.Path({output!r}), json.loads({parameters!r}), json.loads({env!r}), timeout=1800)
seconds = time.perf_counter() - start
# the kernel is a child of this process: RUSAGE_CHILDREN's max RSS is the kernel's peak (kB on Linux)
print(json.dumps({{"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""


def measure(notebook: Path, smoke: bool, workdir: Path) -> dict:
    """Wall time and the kernel's peak resident memory for one run, in a fresh process."""
    parameters = run_parameters(notebook, workdir, smoke=smoke)
    output = ARTIFACTS / ("smoke" if smoke else "default") / notebook.name
    output.parent.mkdir(parents=True, exist_ok=True)
    code = _MEASURE.format(tests=str(REPO / "tests"), notebook=str(notebook), output=str(output),
                           parameters=json.dumps(parameters), env=json.dumps(kernel_env(workdir)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        return {"seconds": float("nan"), "peak_mb": float("nan"), "error": result.stderr[-2000:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_timings(rows: list[tuple[str, dict, dict]], path: Path) -> None:
    import platform

    cpu = platform.processor() or platform.machine()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or "unknown commit"
    lines = [
        "# Notebook run times",
        "",
        f"Measured with `python tests/test_notebooks.py --timings` on {os.cpu_count()} CPU cores ({cpu}), "
        f"torch {__import__('torch').__version__}, {time.strftime('%Y-%m-%d')}, commit {commit}, offline, on a machine shared with "
        "other jobs (times are upper-end). *Default* = the notebook as committed, top to bottom; *smoke* = "
        "`SMOKE=True`, what `tests/test_notebooks.py` runs. Peak memory is the kernel process's maximum "
        "resident set size. Budget per notebook: 5 minutes and 2 GB.",
        "",
        "| notebook | default: time | default: peak memory | smoke: time | smoke: peak memory |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, default, smoke in rows:
        lines.append(f"| `{name}` | {default['seconds']:.0f} s | {default['peak_mb']:,.0f} MB | "
                     f"{smoke['seconds']:.0f} s | {smoke['peak_mb']:,.0f} MB |")
    total_default = sum(d["seconds"] for _, d, _ in rows)
    total_smoke = sum(s["seconds"] for _, _, s in rows)
    lines += ["", f"Total: {total_default / 60:.1f} min with default settings, {total_smoke / 60:.1f} min smoke.", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Measure every notebook's run time and peak memory.")
    parser.add_argument("--timings", action="store_true", help="run and write notebooks/TIMINGS.md")
    parser.add_argument("names", nargs="*", help="notebook file names (default: all)")
    args = parser.parse_args(argv)
    if not args.timings:
        parser.print_help()
        return 2
    chosen = [p for p in NOTEBOOKS if not args.names or p.name in args.names]
    rows, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        for notebook in chosen:
            default = measure(notebook, smoke=False, workdir=Path(tmp))
            smoke = measure(notebook, smoke=True, workdir=Path(tmp))
            for label, result in (("default", default), ("smoke", smoke)):
                if "error" in result:
                    failed = True
                    print(f"{notebook.name} ({label}) FAILED:\n{result['error']}", file=sys.stderr)
            over = default["seconds"] > BUDGET["seconds"] or default["peak_mb"] > BUDGET["peak_mb"]
            print(f"{notebook.name:40s} default {default['seconds']:6.0f} s {default['peak_mb']:7,.0f} MB"
                  f"{'  OVER BUDGET' if over else ''} | smoke {smoke['seconds']:5.0f} s {smoke['peak_mb']:7,.0f} MB",
                  flush=True)
            rows.append((notebook.name, default, smoke))
    if not args.names:
        write_timings(rows, NOTEBOOK_DIR / "TIMINGS.md")
        print(f"wrote {NOTEBOOK_DIR / 'TIMINGS.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
