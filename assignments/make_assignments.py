"""Generate the student notebooks and autograders of the course assignments with otter-grader.

    python assignments/make_assignments.py               # all assignments (what `make assignments` runs)
    python assignments/make_assignments.py 01_patches_and_tokens
    python assignments/make_assignments.py --check       # exit 1 if a committed student notebook is stale
    python assignments/make_assignments.py --measure     # time + peak memory of each solution, graded

Each assignment folder holds one master notebook (questions, solutions, public and hidden tests), in
`<name>/master/<name>.ipynb`. `otter assign` turns it into

    <name>/dist/student/<name>.ipynb      solutions and hidden tests removed   (gitignored)
    <name>/dist/autograder/<name>.ipynb   the solutions notebook               (gitignored)
    <name>/dist/autograder.zip            what `otter run` / `otter grade` need (gitignored: has hidden tests)

and this script copies the student notebook to `<name>/student/<name>.ipynb`, which is committed so that
Binder users open it directly. Two things are normalised on the way so the committed copy only changes
when the master does: otter gives cells random ids (here: cell-000, cell-001, ...), and git's nbstripout
filter would strip the same metadata nbstripout strips here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXTRA_KEYS = ["metadata.papermill", "cell.metadata.papermill"]  # as the git filter (see Makefile `setup`)


def assignment_names() -> list[str]:
    return sorted(p.parent.parent.name for p in HERE.glob("*/master/*.ipynb"))


def master_path(name: str) -> Path:
    return HERE / name / "master" / f"{name}.ipynb"


def committed_student_path(name: str) -> Path:
    return HERE / name / "student" / f"{name}.ipynb"


def normalized(text: str) -> str:
    """A notebook's JSON with stable cell ids and without what nbstripout strips (outputs, counts, ...)."""
    import nbformat
    from nbstripout import strip_output

    notebook = nbformat.reads(text, as_version=4)
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:03d}"
    notebook = strip_output(notebook, keep_output=False, keep_count=False, keep_id=True, extra_keys=EXTRA_KEYS)
    return nbformat.writes(notebook) + "\n"  # byte for byte what the git filter commits


def otter_assign(name: str, dist: Path) -> dict[str, Path]:
    """Run `otter assign` on one master into `dist`; return the student notebook, solutions and autograder zip."""
    master = master_path(name)
    if not master.exists():
        raise SystemExit(f"no master notebook {master}: known assignments are {', '.join(assignment_names())}")
    shutil.rmtree(dist, ignore_errors=True)
    result = subprocess.run([sys.executable, "-m", "otter", "assign", "--no-pdfs", str(master), str(dist)],
                            capture_output=True, text=True, cwd=master.parent)
    zips = sorted((dist / "autograder").glob("*.zip"))
    if result.returncode != 0 or len(zips) != 1:
        raise RuntimeError(f"otter assign {master} failed:\n{result.stdout}\n{result.stderr}")
    autograder_zip = dist / "autograder.zip"  # a stable name (otter's carries a timestamp)
    shutil.copy(zips[0], autograder_zip)
    return {"student": dist / "student" / f"{name}.ipynb", "solution": dist / "autograder" / f"{name}.ipynb",
            "autograder": autograder_zip}


def build(name: str) -> dict[str, Path]:
    """Generate one assignment into <name>/dist and refresh the committed student notebook."""
    paths = otter_assign(name, HERE / name / "dist")
    target = committed_student_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(normalized(paths["student"].read_text()))
    return paths


def stale(name: str) -> bool:
    """True if the committed student notebook differs from what the master generates now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = normalized(otter_assign(name, Path(tmp) / "dist")["student"].read_text())
    committed = committed_student_path(name)
    return not committed.exists() or normalized(committed.read_text()) != fresh


def measure(name: str) -> dict:
    """Grade the solutions with default settings (no SMOKE) in a fresh process: wall time and peak memory."""
    paths = build(name)
    code = (
        "import resource, sys, time, otter.run\n"
        "start = time.perf_counter()\n"
        f"results = otter.run.main({str(paths['solution'])!r}, autograder={str(paths['autograder'])!r}, "
        "output_dir=None, no_logo=True)\n"
        "print('SECONDS', time.perf_counter() - start)\n"
        "print('PEAK_MB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
        "print('SCORE', results.total, results.possible)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PIXELVIT_OFFLINE": "1"}
    env.pop("PIXELVIT_SMOKE", None)
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp, env=env)
    values = {}
    for line in result.stdout.splitlines():
        key, _, rest = line.partition(" ")
        if key in ("SECONDS", "PEAK_MB", "SCORE"):
            values[key] = rest
    if result.returncode != 0 or "SCORE" not in values:
        raise RuntimeError(f"grading the solutions of {name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    total, possible = map(float, values["SCORE"].split())
    return {"seconds": float(values["SECONDS"]), "peak_mb": float(values["PEAK_MB"]), "score": total,
            "possible": possible}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="assignment folders (default: all)")
    parser.add_argument("--check", action="store_true", help="only check that the committed student notebooks are current")
    parser.add_argument("--measure", action="store_true", help="grade each solution with default settings; print time and memory")
    args = parser.parse_args(argv)
    names = args.names or assignment_names()
    unknown = sorted(set(names) - set(assignment_names()))
    if unknown:
        print(f"unknown assignment(s) {', '.join(unknown)}: choose from {', '.join(assignment_names())}", file=sys.stderr)
        return 2
    if args.check:
        outdated = [name for name in names if stale(name)]
        for name in outdated:
            print(f"{committed_student_path(name).relative_to(HERE.parent)} is stale: run `make assignments`")
        return 1 if outdated else 0
    for name in names:
        if args.measure:
            m = measure(name)
            print(f"| `{name}` | {m['seconds']:.0f} s | {m['peak_mb']:,.0f} MB | {m['score']:g} / {m['possible']:g} |",
                  flush=True)
        else:
            started = time.perf_counter()
            paths = build(name)
            print(f"{name}: {committed_student_path(name).relative_to(HERE.parent)}, "
                  f"{paths['autograder'].relative_to(HERE.parent)} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as error:  # otter assign or grading failed: its own output says why, no traceback
        print(error, file=sys.stderr)
        sys.exit(1)
