#!/bin/sh
# Grade a folder of submissions offline with `otter run` (no Docker), one submission after the other.
#
#   sh assignments/grade_all.sh NAME [SUBMISSIONS] [GRADES]      (from the repository root)
#
# NAME is an assignment folder (e.g. 01_patches_and_tokens); its autograder is
# assignments/NAME/dist/autograder.zip, written by `make assignments`. Every SUBMISSIONS/*.ipynb and
# SUBMISSIONS/*.zip (default: submissions/) is graded into GRADES/NAME/<submission>/ (default: grades/):
# results.json (every question's score, max_score and test output) and otter.log (what otter printed).
# Both default folders are in .gitignore. Exit status: 0 if every submission was graded, 1 if otter failed
# on one (the others are still graded), 2 for a usage error.
set -u
here=$(dirname "$0")
[ $# -ge 1 ] && [ $# -le 3 ] || { echo "usage: sh $0 NAME [SUBMISSIONS] [GRADES]" >&2; exit 2; }
name=$1
submissions=${2:-submissions}
grades=${3:-grades}
autograder="$here/$name/dist/autograder.zip"
[ -f "$autograder" ] || { echo "no $autograder: run \`make assignments\` first" >&2; exit 2; }
[ -d "$submissions" ] || { echo "no folder $submissions: put the submissions (.ipynb or .zip) there" >&2; exit 2; }
otter="$here/../.venv/bin/otter"  # the repository's environment, else the otter on PATH
[ -x "$otter" ] || otter=otter

status=0 count=0
for f in "$submissions"/*.ipynb "$submissions"/*.zip; do
    [ -e "$f" ] || continue
    out="$grades/$name/$(basename "${f%.*}")"
    mkdir -p "$out"
    if "$otter" run --no-logo -a "$autograder" -o "$out" "$f" >"$out/otter.log" 2>&1; then
        echo "$f: $(grep 'Total Score' "$out/otter.log")"
    else
        echo "$f: otter run failed, see $out/otter.log" >&2
        status=1
    fi
    count=$((count + 1))
done
echo "$count submission(s) graded into $grades/$name/"
exit $status
