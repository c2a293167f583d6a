"""pyproject.toml, environment.yml, binder/ and constraints.txt must name the same dependencies.

A student on Binder, one with conda and one with pip must get the same packages. The checker
below reads all four files; the tests run it on the real files (no problems allowed) and on
copies with one dependency removed (the removal must be reported by name).
"""

import re
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from the PyPI ones
CONDA_NAME = {"torch": "pytorch"}
# entries of environment.yml / binder that are not Python dependencies of pixelvit
NOT_DEPENDENCIES = {"python", "pip"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str | None:
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    return canonical(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0])


def read_files(root: Path) -> dict:
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    environment = yaml.safe_load((root / "environment.yml").read_text())
    conda = {requirement_name(entry) for entry in environment["dependencies"] if isinstance(entry, str)}
    return {
        "runtime": {requirement_name(d) for d in pyproject["dependencies"]},
        "notebooks": {requirement_name(d) for d in pyproject["optional-dependencies"]["notebooks"]},
        "dev": {requirement_name(d) for d in pyproject["optional-dependencies"]["dev"]},
        "conda": conda - NOT_DEPENDENCIES,
        "binder": {requirement_name(x) for x in (root / "binder/requirements.txt").read_text().splitlines()} - {None},
        "constraints": {requirement_name(x) for x in (root / "constraints.txt").read_text().splitlines()} - {None},
    }


def find_inconsistencies(deps: dict) -> list[str]:
    """Every problem as one readable line; an empty list means the files agree."""
    problems = []
    to_conda = {canonical(CONDA_NAME.get(name, name)) for name in deps["runtime"] | deps["notebooks"] | deps["dev"]}
    for name in sorted(to_conda - deps["conda"]):
        problems.append(f"environment.yml lacks {name} (declared in pyproject.toml)")
    for name in sorted(deps["conda"] - to_conda):
        problems.append(f"environment.yml has {name}, which pyproject.toml does not declare")
    binder_needs = deps["runtime"] | deps["notebooks"]
    for name in sorted(binder_needs - deps["binder"]):
        problems.append(f"binder/requirements.txt lacks {name} (a runtime or notebooks dependency)")
    for name in sorted(deps["binder"] - binder_needs):
        problems.append(f"binder/requirements.txt has {name}, which pyproject.toml does not declare")
    for name in sorted((deps["runtime"] | deps["notebooks"] | deps["dev"]) - deps["constraints"]):
        problems.append(f"constraints.txt does not pin {name}")
    return problems


def test_real_files_agree():
    assert find_inconsistencies(read_files(ROOT)) == []


def _copy_without(tmp_path: Path, relative: str, pattern: str) -> Path:
    for name in ("pyproject.toml", "environment.yml", "binder/requirements.txt", "constraints.txt"):
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        text = (ROOT / name).read_text()
        if name == relative:
            kept = [line for line in text.splitlines() if not re.search(pattern, line)]
            assert len(kept) < len(text.splitlines()), f"{pattern!r} not found in {name}"
            text = "\n".join(kept) + "\n"
        target.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "relative, pattern, reported",
    [
        ("environment.yml", r"^\s+- seaborn", "environment.yml lacks seaborn"),
        ("environment.yml", r"^\s+- pytorch", "environment.yml lacks pytorch"),
        ("binder/requirements.txt", r"^ipywidgets==", "binder/requirements.txt lacks ipywidgets"),
        ("binder/requirements.txt", r"^safetensors==", "binder/requirements.txt lacks safetensors"),
        ("pyproject.toml", r'^\s+"einops', "environment.yml has einops, which pyproject.toml does not declare"),
        ("pyproject.toml", r'^\s+"papermill', "binder/requirements.txt has papermill, which pyproject.toml does not declare"),
        ("constraints.txt", r"^timm==", "constraints.txt does not pin timm"),
        # the assignments' grader (notebooks extra) and the notebook git filter (dev extra)
        ("binder/requirements.txt", r"^otter-grader==", "binder/requirements.txt lacks otter-grader"),
        ("environment.yml", r"^\s+- otter-grader", "environment.yml lacks otter-grader"),
        ("constraints.txt", r"^otter-grader==", "constraints.txt does not pin otter-grader"),
        ("environment.yml", r"^\s+- nbstripout", "environment.yml lacks nbstripout"),
        ("constraints.txt", r"^nbstripout==", "constraints.txt does not pin nbstripout"),
        ("pyproject.toml", r'^\s+"nbstripout', "environment.yml has nbstripout, which pyproject.toml does not declare"),
    ],
)
def test_a_removed_dependency_is_reported(tmp_path, relative, pattern, reported):
    problems = find_inconsistencies(read_files(_copy_without(tmp_path, relative, pattern)))
    assert any(problem.startswith(reported) for problem in problems), problems


def test_binder_uses_cpu_torch_and_standard_repo2docker_files():
    requirements = (ROOT / "binder/requirements.txt").read_text()
    assert re.search(r"^torch==[\d.]+\+cpu$", requirements, re.M)
    assert "download.pytorch.org/whl/cpu" in requirements
    assert (ROOT / "binder/runtime.txt").read_text().strip().startswith("python-3.")
    post_build = ROOT / "binder/postBuild"
    assert post_build.stat().st_mode & 0o111, "binder/postBuild must be executable"
    constraints = (ROOT / "constraints.txt").read_text()
    # Binder pins the same versions the tests ran with (torch differs only in its +cpu build tag)
    for line in requirements.splitlines():
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==")
            pinned = re.search(rf"^{re.escape(name)}==(\S+)$", constraints, re.M | re.I)
            assert pinned, f"{name} is pinned in binder but not in constraints.txt"
            assert version.split("+")[0] == pinned.group(1).split("+")[0], name


def test_grader_and_notebook_filter_are_declared():
    """Binder students grade assignments with otter-grader; contributors' commits go through nbstripout."""
    deps = read_files(ROOT)
    assert "otter-grader" in deps["notebooks"] and "otter-grader" in deps["binder"]
    assert "nbstripout" in deps["dev"]
