"""pixelvit.paper holds the paper's tables as data: every cell is checked against the course's copy of the
tables (../shared/paper/tables.md) when it is present, and the tables against each other always."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pixelvit import paper

TABLES_MD = Path(__file__).resolve().parents[2] / "shared" / "paper" / "tables.md"


# ---------------------------------------------------------------------------------------------
# A small reader for the Markdown tables of tables.md
# ---------------------------------------------------------------------------------------------
def markdown_tables(text: str) -> dict[int, list[list[str]]]:
    """{table number: rows of cell strings (header row first)} for every '## Table N' section."""
    tables, number = {}, None
    for line in text.splitlines():
        heading = re.match(r"^## Table (\d+)\b", line)
        if heading:
            number = int(heading.group(1))
            tables[number] = []
        elif line.startswith("## "):
            number = None
        elif number is not None and line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            tables[number].append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return tables


def parse_cell(text: str):
    """'68.2' -> 68.2, '1,024' -> 1024, '62 MB' -> 62, '' or 'not run' -> None, other text unchanged."""
    if text in ("", "not run"):
        return None
    number = re.fullmatch(r"([\d,]+(?:\.\d+)?)(?: MB)?", text)
    if number:
        value = number.group(1).replace(",", "")
        return float(value) if "." in value else int(value)
    return text


@pytest.fixture(scope="module")
def shared_tables():
    if not TABLES_MD.exists():
        pytest.skip(f"{TABLES_MD} is absent (only present on course machines)")
    return markdown_tables(TABLES_MD.read_text())


def test_markdown_reader_on_a_known_snippet():
    text = "## Table 9: x\n\n| a | b |\n|---|---|\n| T | 1,024 |\n| S | not run |\n## Recipes\n| z |\n"
    tables = markdown_tables(text)
    assert tables == {9: [["a", "b"], ["T", "1,024"], ["S", "not run"]]}
    assert [parse_cell(c) for c in ("1,024", "62 MB", "80.06", "", "not run", "12-13M")] == \
        [1024, 62, 80.06, None, None, "12-13M"]


@pytest.mark.shared_data
@pytest.mark.parametrize("number", sorted(paper.TABLES))
def test_every_cell_matches_the_shared_tables(shared_tables, number):
    table = paper.get(number)
    header, *body = shared_tables[number]
    assert len(header) == len(table.columns), f"Table {number}: columns {header} vs {table.columns}"
    assert len(body) == len(table.rows), f"Table {number}: {len(body)} rows in tables.md, {len(table.rows)} here"
    for expected, row in zip(body, table.rows):
        parsed = [parse_cell(cell) for cell in expected]
        # tables.md writes some numbers as text with units ("1,024"); compare numbers as numbers
        assert len(parsed) == len(row)
        for want, have in zip(parsed, row):
            if isinstance(want, (int, float)) and not isinstance(want, bool):
                assert isinstance(have, (int, float)) and have == pytest.approx(want, abs=1e-9), \
                    f"Table {number}, row {row}: {have!r} here, {want!r} in tables.md"
            else:
                assert have == want, f"Table {number}, row {row}: {have!r} here, {want!r} in tables.md"


# ---------------------------------------------------------------------------------------------
# Internal consistency: the paper repeats numbers across tables, and tokens follow from sizes
# ---------------------------------------------------------------------------------------------
def test_table_1_adventurer_base_rows_repeat_table_4_base_rows():
    table_4 = {(r["input"], r["model"]): r for r in paper.TABLE_4.records()}
    for row in paper.TABLE_1.records():
        if row["model"] == "Adventurer-Base" and row["input"] in (128, 224):
            base = table_4[(row["input"], "Base")]
            assert [row[p] for p in paper.PATCHES_16_TO_1] == [base[p] for p in paper.PATCHES_16_TO_1]


def test_table_5_scaling_column_is_table_1_at_the_same_token_counts():
    table_1 = {(r["model"], r["input"]): r for r in paper.TABLE_1.records()}
    for row in paper.TABLE_5.records():
        model, size = row["model"].rsplit(" ", 1)
        patch = int(size) // round(row["tokens"] ** 0.5)  # tokens = (input / p)^2
        assert (int(size) // patch) ** 2 == row["tokens"]
        assert table_1[(model, int(size))][f"p{patch}"] == row["scaling"]
        if patch == 16:  # the shortest sequence is the same model by either route
            assert row["extending"] == row["scaling"]


def test_table_6_tokens_follow_from_the_patch_size_at_224():
    for row in paper.TABLE_6.records():
        assert row["tokens"] == (224 // row["p"]) ** 2


def test_catalog_patch1_checkpoints_report_the_paper_numbers():
    from pixelvit.catalog import CATALOG

    reported = {(r["img_size"], r["model"]): r["top1"] for r in paper.imagenet_top1() if r["patch_size"] == 1}
    checked = 0
    for entry in CATALOG.values():
        key = (entry.img_size, f"Adventurer-{entry.model.split('_')[1].capitalize()}")
        if entry.patch_size == 1 and key in reported:
            assert entry.top1 == reported[key], entry.name
            checked += 1
    assert checked >= 7  # Tiny/Small/Base at 128 and 224, Base at 64


def test_long_formats():
    points = paper.imagenet_top1(img_size=128)
    assert {"model": "DeiT-Base", "img_size": 128, "patch_size": 8, "top1": 81.0,
            "source": "Table 1, " + paper.CITATION} in points
    assert not [p for p in points if p["model"] == "DeiT-Base" and p["patch_size"] == 1]  # "not run" left out
    assert len({(p["model"], p["patch_size"]) for p in points}) == len(points)  # Base not counted twice
    rows = paper.extend_vs_scale()
    assert len(rows) == 2 * len(paper.TABLE_5.rows)
    assert {r["method"] for r in rows} == {"extend", "scale"}
    assert paper.top1_by_patch(paper.TABLE_2)[0] == {
        "model": "Adventurer-T", "decoder": "UperNet", "params": "17M", "patch_size": 16, "value": 41.3,
        "source": "Table 2, " + paper.CITATION}


def test_every_table_is_labelled_as_reported_and_renders():
    for table in paper.TABLES.values():
        assert "as reported in Wang et al. 2025, arXiv 2502.03738" in table.title
        markdown = table.to_markdown()
        assert markdown.count("\n|") == len(table.rows) + 2  # header, rule, rows
    with pytest.raises(KeyError, match="not Table 3"):
        paper.get(3)
    with pytest.raises(ValueError, match="expected 2"):
        paper.PaperTable(number=9, caption="x", columns=("a", "b"), rows=((1,),))
