"""Numbers and lists in docstrings that are checked against the code or the committed data they describe."""

from __future__ import annotations

import ast
import csv
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = {"four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}


def docstring(relative: str) -> str:
    return ast.get_docstring(ast.parse((REPO / relative).read_text()))


def test_the_tasks_docstring_counts_the_questions_it_lists_and_task_answers():
    from pixelvit.tasks import Task

    text = docstring("pixelvit/tasks.py")
    count = WORDS[re.search(r"A task answers (\w+) questions", text).group(1)]
    listed = re.findall(r"^    (\w+)\(", text, re.MULTILINE)
    methods = [n for n, v in vars(Task).items() if callable(v) and not n.startswith("_")]
    assert count == len(listed) and sorted(listed) == sorted(methods)


def test_the_pretrained_steps_are_numbered_as_the_section_headers():
    """The module docstring describes four steps; the section headers follow them in order."""
    text = docstring("pixelvit/pretrained.py")
    steps = [int(n) for n in re.findall(r"^(\d)\. ", text, re.MULTILINE)]
    assert steps == [1, 2, 3, 4] and "four steps" in text
    source = (REPO / "pixelvit/pretrained.py").read_text()
    headers = [int(n) for n in re.findall(r"^# (\d)\. ", source, re.MULTILINE)]
    assert headers == sorted(headers) and set(headers) <= set(steps)


def test_the_trainers_docstring_names_every_module_of_the_loop():
    text = docstring("pixelvit/train.py")
    listed = set(re.findall(r"^    (pixelvit\.\w+) ", text, re.MULTILINE))
    assert {f"pixelvit.{m}" for m in ("config", "tasks", "data", "runs", "distributed", "interrupt")} <= listed


def test_the_nano_models_epoch_times_are_the_committed_csvs():
    source = (REPO / "pixelvit/models/registry.py").read_text()
    quoted = re.search(r"took ([\d,]+) s \(ViT\) and\s+#\s+([\d,]+) s \(Adventurer\)", source)
    assert quoted, "the nano comment in pixelvit/models/registry.py no longer quotes the two epoch times"

    def wall_s(folder: str) -> str:
        rows = csv.DictReader((REPO / "results" / folder / "results.csv").open())
        (row,) = [r for r in rows if r["patch_size"] == "2"]
        return f"{round(float(row['wall_s'])):,}"

    assert quoted.groups() == (wall_s("cifar10_vit_nano"), wall_s("cifar10_adventurer_nano"))
