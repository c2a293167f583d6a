"""Check (and optionally strip) the notebooks as git would commit them: sources only, small, papermill-ready.

    python tools/check_notebooks.py              # check notebooks/*.ipynb, exit 1 on any problem
    python tools/check_notebooks.py --fix        # strip outputs, execution counts and widget state first
    python tools/check_notebooks.py path/a.ipynb # check only these files

What is checked is what git would commit. `make setup` installs nbstripout as a git filter (declared in
.gitattributes): git passes every notebook through it when staging, so the outputs JupyterLab autosaves
stay in your working copy and never reach a commit. With the filter configured, the check reads the
working-tree file *through the filter*; without it (a fresh clone before `make setup`, a zip download),
it reads the file itself.

A committed notebook must have:
  * no outputs and no execution counts (the rendered results belong to a run, not to the source);
  * no widget state in its metadata (GitHub refuses to render notebooks whose `widgets` metadata lacks a
    state, and the state of a widget on the author's machine means nothing elsewhere);
  * no kernel details in `metadata.language_info` beyond the language's name (LANGUAGE_INFO_STATE);
  * exactly one cell tagged `parameters` (papermill injects SMOKE=True and friends after it);
  * a size under 1 MB, and no code cell longer than MAX_CELL_LINES lines (small cells you can inspect).
Only the standard library (and git, when present) is used, so this runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

MAX_BYTES = 1_000_000
MAX_CELL_LINES = 30
# metadata keys that hold run-specific state; removed by --fix, refused otherwise
STATE_METADATA = ("widgets",)
CELL_STATE_METADATA = ("execution", "papermill", "collapsed", "scrolled", "ExecuteTime")
NOTEBOOK_STATE_METADATA = ("widgets", "papermill")
# What a kernel writes into metadata.language_info on every run, beside the language's name: its Python version,
# CodeMirror mode, lexer, ... A student who only ran a notebook would otherwise see it changed in `git diff`.
LANGUAGE_INFO_STATE = ("codemirror_mode", "file_extension", "mimetype", "nbconvert_exporter", "pygments_lexer",
                       "version")
# What the nbstripout git filter strips beyond its defaults (which cover widgets, execution, collapsed,
# scrolled, ExecuteTime): the Makefile's `git-filter` target reads this list (`--git-filter-keys`), so the
# filter and this check cannot disagree.
GIT_FILTER_EXTRA_KEYS = ("metadata.papermill", "cell.metadata.papermill",
                         *(f"metadata.language_info.{key}" for key in LANGUAGE_INFO_STATE))
REPO = Path(__file__).resolve().parents[1]
FIX_HINT = ("fix: `make setup` (installs the nbstripout git filter, so outputs never reach a commit), "
            "or strip the file now: `python tools/check_notebooks.py --fix`")


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _git(args: list[str], cwd: Path, stdin: bytes | None = None) -> str | None:
    """stdout of `git args` in `cwd`, or None when git is missing or the command fails."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


def git_clean_filter(path: Path) -> str | None:
    """The clean-filter command git runs on `path` when staging it (None: no filter configured for it).

    Two things must both hold: .gitattributes gives the file a filter (`*.ipynb filter=nbstripout`), and the
    local git config defines that filter's `clean` command (`make setup` writes it).
    """
    folder = path.resolve().parent
    attribute = _git(["check-attr", "filter", "--", path.name], folder)
    name = attribute.rsplit(": ", 1)[-1].strip() if attribute else ""
    if name in ("", "unspecified", "unset", "set"):
        return None
    return (_git(["config", "--get", f"filter.{name}.clean"], folder) or "").strip() or None


def filtered_text(path: Path, command: str) -> str:
    """`path` passed through the clean filter `command`, as git runs it (through the shell, in the
    repository root, the file on stdin, %f replaced by the file's path)."""
    root = (_git(["rev-parse", "--show-toplevel"], path.resolve().parent) or "").strip()
    relative = path.resolve().relative_to(root).as_posix() if root else path.name
    command = command.replace("%f", shlex.quote(relative))
    try:
        done = subprocess.run(command, shell=True, cwd=root or None, input=path.read_bytes(), capture_output=True,
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RuntimeError(f"the git filter `{command}` failed on {path} ({error}); `make setup` reinstalls it") \
            from None
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip()[-300:]
        raise RuntimeError(f"the git filter `{command}` failed on {path} ({why}); `make setup` reinstalls it")
    return done.stdout.decode("utf-8", "replace")


def committed_problems(path: Path) -> tuple[list[str], str]:
    """(problems of what git would commit for `path`, what was checked).

    The file itself first (the filter only removes things, so a clean file stays clean); when it has
    problems and a clean filter is configured, the filter's output decides, as it is what `git add` stores.
    """
    found = problems(path)
    if not found:
        return found, "the file"
    command = git_clean_filter(path)
    if command is None:
        return found, "the file itself: no git filter configured"
    return problems(path, text=filtered_text(path, command)), "the file through the git filter (what git would commit)"


def problems(path: Path, max_cell_lines: int = MAX_CELL_LINES, text: str | None = None) -> list[str]:
    """Everything wrong with one notebook, as human-readable lines (empty = fine).

    text: the notebook's content, if not the file's own (e.g. the output of the git filter).
    """
    found = []
    if text is None:
        text = path.read_text(encoding="utf-8", errors="replace")
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        found.append(f"{size:,} bytes, more than {MAX_BYTES:,}")
    try:
        notebook = json.loads(text)
    except json.JSONDecodeError as error:
        return [*found, f"not a valid notebook (JSON): {error}"]
    for key in NOTEBOOK_STATE_METADATA:
        if key in notebook.get("metadata", {}):
            found.append(f"notebook metadata has {key!r} (run state; strip it)")
    for key in LANGUAGE_INFO_STATE:
        if key in notebook.get("metadata", {}).get("language_info", {}):
            found.append(f"notebook metadata.language_info has {key!r} (written by the kernel on every run; strip it)")
    parameter_cells = []
    for index, cell in enumerate(notebook.get("cells", [])):
        where = f"cell {index} ({cell.get('cell_type')})"
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags:
            parameter_cells.append(index)
        if "injected-parameters" in tags:
            found.append(f"{where} is a papermill injected-parameters cell (an executed copy, not the source)")
        if cell.get("outputs"):
            found.append(f"{where} has {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            found.append(f"{where} has execution_count {cell['execution_count']}")
        for key in ("widgets", *CELL_STATE_METADATA):
            if key in cell.get("metadata", {}):
                found.append(f"{where} metadata has {key!r} (run state; strip it)")
        if cell.get("attachments"):
            found.append(f"{where} has attachments (commit images as files instead)")
        if cell.get("cell_type") == "code":
            lines = _source(cell).rstrip("\n").count("\n") + 1
            if lines > max_cell_lines:
                found.append(f"{where} has {lines} lines, more than {max_cell_lines}: split it")
    if len(parameter_cells) != 1:
        found.append(
            f"{len(parameter_cells)} cells tagged 'parameters' (need exactly one, for papermill)"
            + (f": cells {parameter_cells}" if parameter_cells else "")
        )
    return found


def strip(path: Path) -> bool:
    """Remove outputs, execution counts and run-state metadata in place; True if the file changed."""
    text = path.read_text(encoding="utf-8")
    notebook = json.loads(text)
    for key in NOTEBOOK_STATE_METADATA:
        notebook.get("metadata", {}).pop(key, None)
    for key in LANGUAGE_INFO_STATE:
        notebook.get("metadata", {}).get("language_info", {}).pop(key, None)
    for cell in notebook.get("cells", []):
        metadata = cell.setdefault("metadata", {})
        for key in ("widgets", *CELL_STATE_METADATA):
            metadata.pop(key, None)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    new_text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    if new_text != text:
        path.write_text(new_text, encoding="utf-8")
        return True
    return False


def notebook_paths(paths=None) -> list[Path]:
    if paths:
        return [Path(p) for p in paths]
    return sorted((REPO / "notebooks").glob("*.ipynb"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="notebooks to check (default: notebooks/*.ipynb)")
    parser.add_argument("--fix", action="store_true", help="strip outputs and run state before checking")
    parser.add_argument("--git-filter-keys", action="store_true",
                        help="print the metadata keys the nbstripout git filter must strip (for the Makefile) and exit")
    args = parser.parse_args(argv)
    if args.git_filter_keys:
        print(" ".join(GIT_FILTER_EXTRA_KEYS))
        return 0
    paths = notebook_paths(args.paths)
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    failed = 0
    for path in paths:
        if args.fix and strip(path):
            print(f"stripped {path}")
        try:
            found, how = committed_problems(path)
        except RuntimeError as error:
            print(error, file=sys.stderr)
            return 1
        if found:
            failed += 1
            print(f"{path} (checked: {how}):")
            for line in found:
                print(f"  - {line}")
    if failed:
        print(f"\n{failed} of {len(paths)} notebook(s) would be committed with these problems. {FIX_HINT}")
        return 1
    print(f"{len(paths)} notebook(s) OK as git would commit them: no outputs, no widget state, "
          "one parameters cell each, all < 1 MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
