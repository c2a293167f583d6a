"""Sphinx configuration of the course website (`make book` -> _build/html/index.html).

    python -m sphinx -b html -c book . _build/html       # what `make book` runs

Sphinx + myst-nb, no Jupyter Book layer. The source folder is the repository itself (this folder holds only
the configuration), so nothing is copied, every page is the file a student opens, and the links between
README.md, the notebooks and results/README.md work as they do on GitHub. The front page is README.md (also
written as index.html), with the course's table of contents added below it while it is read; links to files
that are not pages (code, folders) point at the repository on GitHub (pyproject.toml [project.urls]).
Built with no network at all: the theme (sphinx-book-theme) ships its fonts, icons and scripts in its wheel,
and nothing here downloads.

* notebooks/00-08 are executed at their default parameters by myst-nb, in the repository's own folder
  layout (each kernel starts in notebooks/), and a notebook that raises fails the build;
* execution is cached (jupyter-cache, in _build/.jupyter_cache): a notebook runs again only when its
  code cells change; Sphinx itself re-reads only changed files, so a second build with nothing changed
  executes nothing;
* the student assignment notebooks are rendered as they are, not executed (their blanks would raise);
  the masters and solutions are never read;
* book/paper.md, the paper's tables as reported, is written at build time from pixelvit.paper (paper_page.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import paper_page  # noqa: E402
import site_links  # noqa: E402

project = "pixelvit"
author = "the pixelvit authors"
copyright = "pixelvit authors, MIT licence"
root_doc = "README"

# sphinx-mathjax-offline: MathJax from the site itself (_static/mathjax), not from a CDN
extensions = ["myst_nb", "sphinx-mathjax-offline"]
include_patterns = ["README.md", "book/paper.md", "notebooks/[0-9]*.ipynb", "assignments/*/student/*.ipynb",
                    "results/README.md", "results/cifar10_nano/README.md", "results/cifar10_patch1_pilot/README.md",
                    "assignments/README.md",
                    "notebooks/TIMINGS.md", "tools/README.md"]
# not even walked: environments, build and run outputs, the assignments' masters and solutions
exclude_patterns = [".*", "_build", "book/_static", "runs", "outputs", "test-artifacts", "build", "dist", "*.egg-info",
                    "assignments/*/master", "assignments/*/dist", "**/.ipynb_checkpoints"]

# ---- notebooks -------------------------------------------------------------------------------
nb_execution_mode = "cache"
nb_execution_cache_path = str(HERE.parent / "_build" / ".jupyter_cache")
nb_execution_excludepatterns = ["assignments/*/student/*.ipynb"]  # student versions: shown with their blanks, never run
nb_execution_timeout = 900  # seconds per cell; the slowest notebook takes about 2 minutes in all
nb_execution_raise_on_error = True  # a notebook that fails fails the build
nb_execution_show_tb = True  # ...and the log shows the traceback
nb_merge_streams = True
# Live widgets (tqdm's bars, the explorer) need a kernel and scripts from a CDN: the site shows their text
# form instead (a bar's last state, e.g. "100%|##########| 150/150"), and loads no script from elsewhere.
nb_ipywidgets_js = {}
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", -1),
                              ("html", "application/vnd.jupyter.widget-state+json", -1)]
nb_output_stderr = "remove"  # progress bars and warnings (tqdm writes to stderr); errors still fail the build

# The paper's checkpoints are not downloaded while building: the site builds offline and the same way online.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PIXELVIT_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3  # README-style links to #section-names resolve
suppress_warnings = ["myst.header"]

# ---- HTML ------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "pixelvit: Scaling Laws in Patchification"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "home_page_in_toc": True,
}
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_last_updated_fmt = None
html_show_sourcelink = False


def setup(app):
    app.connect("builder-inited", lambda app: paper_page.write(HERE / "paper.md"))
    site_links.setup(app)
    return {"parallel_read_safe": True}
