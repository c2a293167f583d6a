"""Google Colab and Binder: one repository address, an "Open in Colab" link and a Colab install cell everywhere.

* Every place that names the repository (README's Binder badge, each notebook's Colab link and install cell)
  is written from pyproject.toml's [project.urls] Repository by tools/repo_links.py, and agrees with it.
* Every notebook (notebooks/*.ipynb) and every student assignment notebook carries the link, to its own
  path, in its first cell, and the install cell as its first code cell, before the parameters cell.
* The install cell does nothing outside Colab, and on a simulated Colab it installs pixelvit and keeps the
  torch and torchvision that were there.

The simulated Colab is a fresh virtual environment with pip and nothing else, plus "Colab's own" torch and
torchvision: the dependency closure of the two in this environment (torch, its nvidia libraries, sympy,
numpy, pillow, ...), linked into a folder that a .pth file puts on the new environment's sys.path, the way
Colab's preinstalled packages sit in their own site folder. That costs no download and no copy of the GBs of
the CUDA torch wheel, and pip sees them as installed distributions exactly as it sees Colab's. pip cannot
remove them either: it never uninstalls outside its environment. The cell's GitHub URL is replaced by
git+file:// of this repository (its committed HEAD), and `google.colab` is put into sys.modules before the
cell runs. Stricter than Colab: Colab also has pandas, matplotlib, scikit-image and more preinstalled.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import repo_links  # noqa: E402

NOTEBOOKS = sorted(REPO.glob("notebooks/*.ipynb"))
STUDENT_NOTEBOOKS = sorted(REPO.glob("assignments/*/student/*.ipynb"))
URL = repo_links.repository_url()


def test_there_are_notebooks_and_student_notebooks():
    assert len(NOTEBOOKS) >= 9 and len(STUDENT_NOTEBOOKS) >= 4


def test_every_place_agrees_with_the_one_setting():
    stale = [str(path.relative_to(REPO)) for path, text in repo_links.planned().items() if path.read_text() != text]
    assert not stale, f"{stale} disagree with pyproject.toml [project.urls]: run `python tools/repo_links.py`"
    readme = (REPO / "README.md").read_text()
    owner, name = repo_links.owner_and_name(URL)
    assert f"https://mybinder.org/v2/gh/{owner}/{name}/HEAD" in readme


@pytest.mark.parametrize("notebook", NOTEBOOKS + STUDENT_NOTEBOOKS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_notebook_has_its_colab_link_first_and_the_install_cell_first_among_code_cells(notebook):
    cells = nbformat.read(notebook, as_version=4).cells
    link = f"({repo_links.colab_url(URL, notebook.relative_to(REPO).as_posix())})"
    assert cells[0].cell_type == "markdown" and "[Open in Colab]" + link in cells[0].source, \
        f"{notebook.name}: its first cell lacks [Open in Colab]{link}: run `python tools/repo_links.py`"
    code = [cell for cell in cells if cell.cell_type == "code"]
    assert code[0].source == repo_links.install_cell_source(URL), f"{notebook.name}: first code cell is not the install cell"
    tags = [cell.metadata.get("tags", []) for cell in code]
    assert "parameters" not in tags[0] and any("parameters" in t for t in tags[1:]), "parameters cell after the install cell"


def test_a_fork_rewrites_every_place(tmp_path):
    """The tool writes the new address everywhere and the old one nowhere (a fork's first step)."""
    for relative in ["README.md", "pyproject.toml", *(p.relative_to(REPO) for p in repo_links.notebook_paths())]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text((REPO / relative).read_text())
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(f'Repository = "{URL}"', 'Repository = "https://github.com/a-fork/pixelvit"'))
    texts = repo_links.planned(tmp_path)
    assert len(texts) == 1 + len(NOTEBOOKS) + len(STUDENT_NOTEBOOKS)
    owner, _ = repo_links.owner_and_name(URL)
    for path, text in texts.items():
        assert f"/{owner}/pixelvit" not in text and "a-fork/pixelvit" in text, path
    pyproject.write_text(pyproject.read_text().replace("https://github.com/a-fork/pixelvit", "github.com/a-fork"))
    with pytest.raises(SystemExit, match="must be https://github.com/OWNER/NAME"):
        repo_links.planned(tmp_path)


def test_the_install_cell_does_nothing_outside_colab(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: calls.append(args))
    assert "google.colab" not in sys.modules
    exec(repo_links.install_cell_source(URL), {})
    assert calls == []
    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    exec(repo_links.install_cell_source(URL), {})
    assert calls and calls[0][0][-1] == repo_links.install_requirement(URL)  # the same cell, on Colab, installs


# ---------------------------------------------------------------------------------------------
# a simulated Colab
# ---------------------------------------------------------------------------------------------
def dependency_closure(names: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions `names` need, recursively (markers evaluated, no extras)."""
    found, todo = {}, list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found:
            continue
        found[name] = dist = importlib.metadata.distribution(name)
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def link_preinstalled(names: list[str], folder: Path) -> None:
    """Symlink the top-level files and folders of `names` and their dependencies into `folder`."""
    folder.mkdir()
    for dist in dependency_closure(names):
        site = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if ".." not in Path(f).parts}:
            if not (folder / top).exists() and (site / top).exists():
                (folder / top).symlink_to(site / top)


def run(command: list[str], **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_the_install_cell_installs_pixelvit_on_a_simulated_colab_and_keeps_its_torch(tmp_path):
    if not (REPO / ".git").exists():
        pytest.skip("needs this repository as a git clone (the cell installs with git+file://)")
    run([sys.executable, "-m", "venv", str(tmp_path / "colab")])
    python = str(tmp_path / "colab" / "bin" / "python")
    run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip>=24"])  # Colab's pip is current
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    link_preinstalled(["torch", "torchvision"], tmp_path / "preinstalled")
    (site / "colab_preinstalled.pth").write_text(str(tmp_path / "preinstalled") + "\n")
    probe = ("import importlib.metadata as m, json, torch, torchvision; print(json.dumps({n: [m.version(n), "
             "str(m.distribution(n).locate_file(''))] for n in ('torch', 'torchvision')}))")
    before = json.loads(run([python, "-c", probe]))
    assert before["torch"][0] == importlib.metadata.version("torch")

    cell = repo_links.install_cell_source(URL).replace(f"git+{URL}", f"git+file://{REPO}")
    assert f"git+file://{REPO}" in cell
    on_colab = f"import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n{cell}\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_REQUIRE_VIRTUALENV", "VIRTUAL_ENV"))}
    run([python, "-c", on_colab], env=env, timeout=1200)

    assert json.loads(run([python, "-c", probe])) == before, "pip replaced Colab's torch or torchvision"
    check = ("import pixelvit, torch; from pixelvit.models import create_model; import otter, skimage; "
             "m = create_model('vit_nano', img_size=16, patch_size=4, num_classes=3); "
             "print(pixelvit.__file__, tuple(m(torch.zeros(1, 3, 16, 16)).shape))")
    out = run([python, "-c", check], cwd=tmp_path).split()
    assert str(site) in out[0] and out[1:] == ["(1,", "3)"], out
