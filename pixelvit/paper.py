"""The paper's numbers as data: Tables 1, 2, 4, 5 and 6 of Wang et al. 2025, as reported by the authors.

    from pixelvit import paper
    paper.TABLE_1.records()              # [{"model": "DeiT-Base", "input": 64, "p16": 68.2, ...}, ...]
    paper.top1_by_patch(paper.TABLE_4)   # long format: one dict per (row, patch size)
    paper.get(5).caption                 # any table by its number in the paper

Source: Wang, Yu, Li, Xie (and co-authors), "Scaling Laws in Patchification: An Image Is Worth 50,176
Tokens And More", ICML 2025, arXiv 2502.03738 (v1 table markup and v2 text, which agree). Every number
here is QUOTED, never measured by pixelvit: print `REPORTED` next to any of them. `None` is a cell the
paper leaves empty ("not run", or no entry). p = patch size; tokens = (input / p)^2.
The tests (tests/test_paper.py) compare every cell with the course's copy of the tables,
../shared/paper/tables.md, when it is present, so a typo here fails.
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = "Wang et al. 2025, arXiv 2502.03738"
REPORTED = f"as reported in {CITATION}"
ARXIV_URL = "https://arxiv.org/abs/2502.03738"


@dataclass(frozen=True)
class PaperTable:
    """One table of the paper: its number, caption, column names and rows (cells as in the paper)."""

    number: int
    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple, ...]
    note: str = ""  # units and caveats

    def __post_init__(self):
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"Table {self.number}: row {row} has {len(row)} cells, expected {len(self.columns)}")

    @property
    def title(self) -> str:
        return f"Table {self.number}: {self.caption} ({REPORTED})"

    def records(self) -> list[dict]:
        """The rows as dicts keyed by column name (a list a DataFrame or csv.DictWriter takes as is)."""
        return [dict(zip(self.columns, row)) for row in self.rows]

    def column(self, name: str) -> list:
        index = self.columns.index(name)
        return [row[index] for row in self.rows]

    def to_markdown(self, digits: int | None = 1) -> str:
        """A Markdown table with the caption as a heading line and the citation underneath; floats with
        `digits` decimals, or as the paper prints them (not rounded) with digits=None."""
        def cell(value) -> str:
            if value is None:
                return ""
            return f"{value:.{digits}f}" if isinstance(value, float) and digits is not None else str(value)

        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)


PATCHES_16_TO_1 = ("p16", "p8", "p4", "p2", "p1")

TABLE_1 = PaperTable(
    number=1,
    caption="ImageNet-1k top-1 (%) vs patch size",
    columns=("model", "input", *PATCHES_16_TO_1),
    rows=(
        ("DeiT-Base", 64, 68.2, 76.9, 80.1, 80.8, 81.3),
        ("DeiT-Base", 128, 78.1, 81.0, 82.3, 82.9, None),  # p1 at 128: not run (16,384 tokens of attention)
        ("Adventurer-Base", 64, 69.2, 77.2, 80.0, 80.5, 80.9),
        ("Adventurer-Base", 128, 79.0, 81.5, 81.8, 82.2, 82.4),
        ("Adventurer-Base", 224, 82.6, 83.9, 84.3, 84.5, 84.6),
    ),
    note="Empty cell: not run. Same recipe and epochs for every patch size.",
)

TABLE_2 = PaperTable(
    number=2,
    caption="ADE20k semantic segmentation, mIoU (%) vs patch size",
    columns=("model", "decoder", "params", "p16", "p8", "p4", "p2"),
    rows=(
        ("Adventurer-T", "UperNet", "17M", 41.3, None, None, None),
        ("Adventurer-T", "none", "12-13M", 40.0, 41.6, 42.1, 42.5),
        ("Adventurer-B", "UperNet", "112M", 45.7, None, None, None),
        ("Adventurer-B", "none", "99-100M", 44.0, 45.5, 46.3, 46.8),
    ),
    note="decoder none = decoder-free: one linear layer on the dense features.",
)

TABLE_4 = PaperTable(
    number=4,
    caption="Adventurer, model size x patch size, ImageNet-1k top-1 (%)",
    columns=("input", "model", *PATCHES_16_TO_1),
    rows=(
        (128, "Tiny", 72.6, 78.5, 80.4, 80.6, 80.7),
        (128, "Small", 77.6, 80.5, 80.9, 81.2, 81.4),
        (128, "Base", 79.0, 81.5, 81.8, 82.2, 82.4),
        (128, "Large", 79.8, 82.2, 82.6, 82.9, 83.1),
        (224, "Tiny", 78.2, 80.9, 81.3, 81.7, 81.9),
        (224, "Small", 81.8, 83.0, 83.5, 83.7, 83.8),
        (224, "Base", 82.6, 83.9, 84.3, 84.5, 84.6),
    ),
)

TABLE_5 = PaperTable(
    number=5,
    caption="longer sequences by extending vs by scaling, ImageNet-1k top-1 (%)",
    columns=("model", "tokens", "extending", "scaling"),
    rows=(
        ("DeiT-Base 128", 64, 78.1, 78.1),
        ("DeiT-Base 128", 256, 78.2, 81.0),
        ("DeiT-Base 128", 1024, 78.2, 82.3),
        ("Adventurer-Base 224", 196, 82.6, 82.6),
        ("Adventurer-Base 224", 784, 82.7, 83.9),
        ("Adventurer-Base 224", 3136, 82.8, 84.3),
        ("Adventurer-Base 224", 12544, 82.8, 84.5),
    ),
    note="Extending: keep patch 16 and spatially interpolate the patch-embedding tokens to the longer "
         "sequence (no new information). Scaling: smaller patches (16, 8, 4, 2) give the same token counts.",
)

TABLE_6 = PaperTable(
    number=6,
    caption="training cost at 224 x 224",
    columns=("p", "tokens", "memory_mb", "deit_base_gpu_h", "adventurer_base_gpu_h"),
    rows=(
        (16, 196, 62, 0.36, 0.45),
        (8, 784, 252, 1.86, 1.76),
        (4, 3136, 1024, 9.79, 6.86),
        (2, 12544, 4057, 80.06, 27.45),
        (1, 50176, 16118, 967.99, 115.08),
    ),
    note="memory_mb: activation memory per image measured for the ViT (MB, excluding model and optimizer "
         "state). GPU-h: A100 hours per ImageNet epoch, fp16, FlashAttention for the ViT.",
)

TABLES = {table.number: table for table in (TABLE_1, TABLE_2, TABLE_4, TABLE_5, TABLE_6)}


def get(number: int) -> PaperTable:
    if number not in TABLES:
        raise KeyError(f"pixelvit.paper holds Tables {sorted(TABLES)}, not Table {number}")
    return TABLES[number]


def top1_by_patch(table: PaperTable) -> list[dict]:
    """A table with pNN columns in long format: one dict per (row, patch size), empty cells left out.

    Every dict keeps the row's other cells (model, input, ...) and adds patch_size, value and source.
    """
    patch_columns = [c for c in table.columns if c.startswith("p") and c[1:].isdigit()]
    if not patch_columns:
        raise ValueError(f"Table {table.number} has no per-patch-size columns")
    out = []
    for record in table.records():
        keys = {k: v for k, v in record.items() if k not in patch_columns}
        for column in patch_columns:
            if record[column] is not None:
                out.append({**keys, "patch_size": int(column[1:]), "value": record[column],
                            "source": f"Table {table.number}, {CITATION}"})
    return out


def imagenet_top1(img_size: int | None = None) -> list[dict]:
    """ImageNet-1k top-1 per patch size for DeiT-Base and every Adventurer size, one dict per point:
    {"model": "DeiT-Base", "img_size": 128, "patch_size": 8, "top1": 81.0, "source": ...}.

    DeiT-Base and Adventurer-Base from Table 1, Adventurer Tiny/Small/Large from Table 4 (its Base rows
    repeat Table 1's). `img_size` keeps only that input resolution (64, 128 or 224).
    """
    rows = [{"model": r["model"], "img_size": r["input"], "patch_size": r["patch_size"], "top1": r["value"],
             "source": r["source"]} for r in top1_by_patch(TABLE_1)]
    rows += [{"model": f"Adventurer-{r['model']}", "img_size": r["input"], "patch_size": r["patch_size"],
              "top1": r["value"], "source": r["source"]}
             for r in top1_by_patch(TABLE_4) if r["model"] != "Base"]
    return [r for r in rows if img_size is None or r["img_size"] == img_size]


def extend_vs_scale() -> list[dict]:
    """Table 5 in long format, the shape of our own ablation's CSV: model, tokens, method, top1."""
    return [{"model": r["model"], "tokens": r["tokens"], "method": method, "top1": r[column],
             "source": f"Table 5, {CITATION}"}
            for r in TABLE_5.records() for method, column in (("extend", "extending"), ("scale", "scaling"))]
