# pixelvit: two commands do all the set-up.
#   make run    create .venv, install the pinned environment, run the main job: the default patch-size
#               sweep on the generated `specks` data (about 3 minutes on 2 CPU cores)
#   make test   create .venv, install the pinned environment, run the test suite (notebooks included)
#   make book   the course website, offline, into _build/html/ (index.html): the notebooks executed at their
#               default settings (cached: an unchanged notebook is not run again), the student assignments,
#               the results page and the paper's tables (book/conf.py)
# Other targets: make setup, make bench, make lint, make assignments, make constraints, make clean.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# what `make setup` installs: the notebooks, the tests, and the website (tests/test_book.py builds it)
EXTRAS := notebooks,dev,book
# OMP_WAIT_POLICY=PASSIVE: with the default policy, OpenMP threads spin while waiting, which made
# 2-thread training 10x slower on a shared 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE
# ...and GOMP_SPINCOUNT lets a waiting thread spin ~0.1 ms before it sleeps: PASSIVE alone made every small op
# pay a wake-up, so 2 threads trained Adventurer no faster than 1 (pixelvit.runtime sets it too, when imported first).
export GOMP_SPINCOUNT ?= 10000

.PHONY: setup git-filter run costs test book bench lint assignments constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

REPO_DIR := $(dir $(abspath $(firstword $(MAKEFILE_LIST))))

# nbstripout as a git filter (declared in .gitattributes): git strips a notebook's outputs when staging it, so
# what JupyterLab autosaves stays in your working copy and never reaches a commit. --keep-id keeps the cell ids
# as committed (a filtered notebook is then byte for byte the committed one); the metadata keys it strips beyond
# nbstripout's defaults (papermill's, the kernel's language_info) are listed once, in tools/check_notebooks.py.
# Skipped outside a git clone.
setup: $(STAMP) git-filter

git-filter:
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean '"$(abspath $(PY))" -m nbstripout --keep-id' && \
	  git config filter.nbstripout.smudge cat && \
	  git config filter.nbstripout.extrakeys "$$("$(abspath $(PY))" "$(REPO_DIR)tools/check_notebooks.py" --git-filter-keys)" && \
	  git config diff.ipynb.textconv '"$(abspath $(PY))" -m nbstripout --keep-id -t'; \
	fi

run: setup
	$(VENV)/bin/pixelvit sweep

costs: setup
	$(VENV)/bin/pixelvit costs --model vit_tiny --img-size 224 --patch-sizes 16 8 4 2 1 --out outputs

test: setup
	$(VENV)/bin/ruff check pixelvit pixelvit_cli.py tests benchmarks tools book assignments/make_assignments.py
	$(PY) -m pytest

# -q: warnings and errors only; the pages land in _build/html/, the executed notebooks in _build/.jupyter_cache/.
# GitHub Pages builds the site with this same target (.github/workflows/book.yml).
book: setup
	$(PY) -m sphinx -b html -q -c book . _build/html

bench: setup
	$(PY) -m benchmarks

# the course assignments: otter assign every assignments/*/master/*.ipynb into <name>/dist/ (student version,
# solutions, autograder.zip) and refresh the committed student notebook <name>/student/<name>.ipynb
assignments: setup
	$(PY) assignments/make_assignments.py

lint: setup
	$(VENV)/bin/ruff check pixelvit pixelvit_cli.py tests benchmarks tools book assignments/make_assignments.py

constraints:
	rm -rf .venv-constraints && $(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1" -e ".[$(EXTRAS)]"
	{ sed -n '/^#/p' constraints.txt; .venv-constraints/bin/pip freeze --exclude-editable | grep -vi '^pixelvit'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-constraints

clean:
	rm -rf $(VENV) outputs .pytest_cache _build book/paper.md
