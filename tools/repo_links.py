"""One setting, the repository's GitHub address, and every place that is written from it.

The setting is `Repository` under `[project.urls]` in pyproject.toml (`https://github.com/OWNER/pixelvit`).
This tool writes it into

* README.md's Binder badge;
* the first cell of every notebook (notebooks/*.ipynb) and of every assignment master
  (assignments/*/master/*.ipynb, which `make assignments` turns into the student notebooks): an
  "Open in Colab" link to that notebook's own path in the repository (for a master: its student version);
* the first code cell of the same notebooks: on Google Colab only, `pip install` pixelvit from the
  repository (Colab's own torch and torchvision stay: pixelvit asks for torch>=2.4, so pip keeps them).

    python tools/repo_links.py           # rewrite them all from pyproject.toml
    python tools/repo_links.py --check   # exit 1, naming every place that disagrees (tests/test_colab.py)

A fork sets `Repository` in pyproject.toml to its own address, runs `python tools/repo_links.py`, then
`make assignments` (the student notebooks are generated from the masters).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
BRANCH = "main"
GITHUB = re.compile(r"^https://github\.com/(?P<owner>[^/]+)/(?P<name>[^/]+?)/?$")
COLAB_LINK = re.compile(r"^\[Open in Colab\]\(.*\).*$", re.MULTILINE)
BINDER_BADGE = re.compile(r"\[!\[Binder\]\(https://mybinder\.org/badge_logo\.svg\)\]\(https://mybinder\.org/v2/gh/[^/]+/[^/]+/")
COLAB_MARKER = '"google.colab" in sys.modules'  # how the install cell is recognised


def repository_url(root: Path = REPO) -> str:
    """pyproject.toml's [project.urls] Repository, checked to be a GitHub address."""
    urls = tomllib.loads((root / "pyproject.toml").read_text())["project"].get("urls", {})
    url = urls.get("Repository", "")
    if not GITHUB.match(url):
        raise SystemExit(f"pyproject.toml [project.urls] Repository must be https://github.com/OWNER/NAME, not {url!r}")
    return url.rstrip("/")


def owner_and_name(url: str) -> tuple[str, str]:
    match = GITHUB.match(url)
    return match["owner"], match["name"]


def colab_url(url: str, path: str) -> str:
    owner, name = owner_and_name(url)
    return f"https://colab.research.google.com/github/{owner}/{name}/blob/{BRANCH}/{path}"


def colab_link(url: str, path: str) -> str:
    return f"[Open in Colab]({colab_url(url, path)}) (its first code cell installs pixelvit there)"


def install_requirement(url: str) -> str:
    """What the Colab cell gives pip: the `colab` extra (what Colab lacks: otter-grader, scikit-image)."""
    return f"pixelvit[colab] @ git+{url}"


def install_cell_source(url: str) -> str:
    return (
        "# On Google Colab only: install pixelvit from its repository (about a minute). Colab's own torch and\n"
        "# torchvision stay: pixelvit asks for torch>=2.4, so pip keeps them. Anywhere else this cell does nothing.\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        f"if {COLAB_MARKER}:\n"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"--quiet\",\n"
        f"                    \"{install_requirement(url)}\"], check=True)"
    )


def binder_prefix(url: str) -> str:
    owner, name = owner_and_name(url)
    return f"[![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/{owner}/{name}/"


# ---------------------------------------------------------------------------------------------
# the notebooks
# ---------------------------------------------------------------------------------------------
def notebook_paths(root: Path = REPO) -> list[Path]:
    return sorted(root.glob("notebooks/*.ipynb")) + sorted(root.glob("assignments/*/master/*.ipynb"))


def published_path(notebook: Path, root: Path = REPO) -> str:
    """The path a student opens: a master's link points at the student notebook generated from it."""
    relative = notebook.relative_to(root)
    if relative.parts[0] == "assignments" and relative.parts[2] == "master":
        relative = Path("assignments", relative.parts[1], "student", relative.name)
    return relative.as_posix()


def first_markdown(cells: list) -> int:
    return next(i for i, cell in enumerate(cells) if cell.cell_type == "markdown")


def install_cell_index(cells: list) -> int | None:
    """Index of the first code cell if it is the Colab install cell, else None."""
    code = [i for i, cell in enumerate(cells) if cell.cell_type == "code"]
    return code[0] if code and COLAB_MARKER in cells[code[0]].source else None


def with_colab_link(markdown: str, link: str) -> str:
    if COLAB_LINK.search(markdown):
        return COLAB_LINK.sub(lambda _: link, markdown, count=1)
    title, _, rest = markdown.partition("\n")  # right under the title
    return f"{title}\n\n{link}\n{rest}" if rest else f"{title}\n\n{link}"


def rewritten(text: str, url: str, path: str, cell_id: str) -> str:
    """The notebook `text` with its Colab link and install cell written from `url`."""
    import nbformat

    notebook = nbformat.reads(text, as_version=4)
    cells = notebook.cells
    title = first_markdown(cells)
    cells[title].source = with_colab_link(cells[title].source, colab_link(url, path))
    index = install_cell_index(cells)
    if index is None:
        cell = nbformat.v4.new_code_cell(install_cell_source(url))
        cell.id = cell_id
        cells.insert(title + 1, cell)
    else:
        cells[index].source = install_cell_source(url)
    return nbformat.writes(notebook) + "\n"  # as the nbstripout filter writes it


def new_cell_id(notebook: Path) -> str:
    """notebooks/03_x.ipynb -> 03-colab (their ids are NN-MM); masters -> master-colab."""
    return "master-colab" if notebook.parent.name == "master" else f"{notebook.name[:2]}-colab"


def planned(root: Path = REPO) -> dict[Path, str]:
    """Every file this tool writes, with the text it should hold."""
    url = repository_url(root)
    texts = {path: rewritten(path.read_text(), url, published_path(path, root), new_cell_id(path))
             for path in notebook_paths(root)}
    readme = root / "README.md"
    text = readme.read_text()
    if not BINDER_BADGE.search(text):
        raise SystemExit("README.md has no Binder badge ([![Binder](https://mybinder.org/badge_logo.svg)](...))")
    texts[readme] = BINDER_BADGE.sub(lambda _: binder_prefix(url), text)
    return texts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a file disagrees")
    args = parser.parse_args(argv)
    texts = planned()
    stale = [path for path, text in texts.items() if path.read_text() != text]
    for path in stale:
        relative = path.relative_to(REPO)
        if args.check:
            print(f"{relative} does not match [project.urls] Repository: run `python tools/repo_links.py`")
        else:
            path.write_text(texts[path])
            print(f"rewrote {relative}")
    if args.check and any(p.parent.name == "master" for p in stale):
        print("then `make assignments` to regenerate the student notebooks")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
