"""What turns the repository's README into the website's front page, and keeps every link on the site working.

* While README.md is read, the course's table of contents is added below it (README.md itself, as GitHub
  shows it, is unchanged): the notebooks, the student assignments, the results, the paper's tables and the guides.
* A link to a file of the repository that is not a page of the site (code, a folder, an instructor's guide)
  points at that file on GitHub, at the address in pyproject.toml [project.urls] Repository.
* The front page is written as README.html (its name as a page) and as index.html.
"""

from __future__ import annotations

import posixpath
import shutil
import sys
from pathlib import Path

from docutils import nodes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import repo_links  # noqa: E402

BRANCH = repo_links.BRANCH
CONTENTS = """

## The course website

The notebooks below ran top to bottom at their default settings, offline, when this site was built: every
figure and table on their pages is that run's output. The assignments are the student versions, with their
blanks, not run. The paper's numbers are quoted, never measured here.

```{toctree}
:caption: Notebooks
:maxdepth: 1
:glob:

notebooks/0*
```

```{toctree}
:caption: Assignments (student versions)
:maxdepth: 1
:glob:

assignments/*/student/*
```

```{toctree}
:caption: Results and the paper
:maxdepth: 1

results/README
results/cifar10_nano/README
results/cifar10_patch1_pilot/README
book/paper
notebooks/TIMINGS
```

```{toctree}
:caption: Guides
:maxdepth: 1

assignments/README
tools/README
```
"""


def add_contents(app, docname: str, source: list[str]) -> None:
    if docname == app.config.root_doc:
        source[0] += CONTENTS


def repository_link(docname: str, target: str, srcdir: Path) -> str | None:
    """The GitHub address of `target` (a relative link in `docname`) if it names a file or folder here."""
    path, _, anchor = target.partition("#")
    relative = posixpath.normpath(posixpath.join(posixpath.dirname(docname), path))
    if relative.startswith("..") or not (srcdir / relative).exists():
        return None
    kind = "tree" if (srcdir / relative).is_dir() else "blob"
    url = f"{repo_links.repository_url(REPO)}/{kind}/{BRANCH}/{relative}"
    return f"{url}#{anchor}" if anchor else url


def link_repository_files(app, doctree, docname: str) -> None:
    for node in doctree.findall(nodes.reference):
        target = node.get("refuri", "")
        if node.get("internal") or not target or target.startswith("#") or ":" in target.split("/")[0]:
            continue  # a page of the site, an anchor, or an address with a scheme (https:, mailto:)
        url = repository_link(docname, target, Path(app.srcdir))
        if url:
            node["refuri"] = url


def write_index(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        front = Path(app.outdir) / f"{app.config.root_doc}.html"
        if front.is_file():
            shutil.copyfile(front, Path(app.outdir) / "index.html")


def setup(app) -> None:
    app.connect("source-read", add_contents)
    app.connect("doctree-resolved", link_repository_files)
    app.connect("build-finished", write_index)
