"""The website's page of the paper's tables, as reported: book/paper.md, written at build time (gitignored).

Tables 1, 2, 4, 5 and 6 come from pixelvit.paper (the numbers the notebooks compare with). The paper's other
tables (3: COCO, 7: configurations, the recipes, the released checkpoints) are taken from the course's copy,
../shared/paper/tables.md, when it is present beside the repository; without it the page says so and goes on.
The file is rewritten only when its text changes, so an unchanged page is not rebuilt.
"""

from __future__ import annotations

import re
from pathlib import Path

from pixelvit import paper

SHARED_TABLES = Path(__file__).resolve().parents[2] / "shared" / "paper" / "tables.md"


def shared_sections(path: Path = SHARED_TABLES) -> dict[str, str]:
    """The `## ` sections of the course's tables.md, by heading; {} when the file is absent."""
    if not path.is_file():
        return {}
    sections = re.split(r"^## ", path.read_text(), flags=re.MULTILINE)[1:]
    return {section.partition("\n")[0].strip(): section.partition("\n")[2].strip() for section in sections}


def held_by_pixelvit(heading: str) -> bool:
    match = re.match(r"Table (\d+):", heading)
    return bool(match) and int(match[1]) in paper.TABLES


def page(shared: dict[str, str]) -> str:
    lines = [
        "# The paper's tables, as reported",
        "",
        f"Every number on this page is quoted from the paper ({paper.CITATION}, [arXiv]({paper.ARXIV_URL})), "
        "never measured by pixelvit. The notebooks and the [results page](../results/README.md) put pixelvit's own "
        "measurements beside them, labelled.",
        "",
        "## From `pixelvit.paper`",
        "",
        f"Tables {', '.join(str(n) for n in sorted(paper.TABLES))}, as data in the package "
        "(`from pixelvit import paper; paper.get(1).records()`).",
    ]
    for table in paper.TABLES.values():
        lines += ["", table.to_markdown(digits=None)]  # every number as the paper prints it
    lines += ["", "## The other tables", ""]
    others = {heading: body for heading, body in shared.items() if not held_by_pixelvit(heading)}
    if not others:
        lines.append("The course's copy of the paper's other tables (`../shared/paper/tables.md`) was not "
                     "present when this site was built; see the paper itself.")
    else:
        lines.append("From the course's copy of the tables (`shared/paper/tables.md`), as reported.")
        for heading, body in others.items():
            lines += ["", f"### {heading}", "", body]
    return "\n".join(lines) + "\n"


def write(target: Path, shared_path: Path = SHARED_TABLES) -> bool:
    """Write the page to `target` if its text changed; True if it was written."""
    text = page(shared_sections(shared_path))
    if target.is_file() and target.read_text() == text:
        return False
    target.write_text(text)
    return True
