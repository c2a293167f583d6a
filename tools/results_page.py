"""The tables of results/README.md, generated from the committed CSVs so that the page cannot drift from them.

    python tools/results_page.py            # rewrite the generated blocks of results/README.md in place
    python tools/results_page.py --check    # exit 1 and name the blocks that differ from the CSVs

A generated block sits between `<!-- begin: NAME -->` and `<!-- end: NAME -->`; BLOCKS below maps each NAME
to the function that renders it. The prose between the blocks is written by hand; `facts()` gives every
number the prose may quote (each computed from a committed file), and tests/test_results_page.py fails
when the prose quotes a number that is not one of them, or when a block is stale. After
`tools/cifar_campaign.py collect` adds runs, rerun this and reread the prose around the changed numbers.

Standard library only (no torch): the paper's tables are read from pixelvit/paper.py as a plain module.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
PAGE = RESULTS / "README.md"
BLOCK = re.compile(r"(<!-- begin: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


# ---- reading the committed files ---------------------------------------------------------------------------
def read_csv(relative: str) -> list[dict]:
    with open(RESULTS / relative, newline="") as file:
        return list(csv.DictReader(file))


def paper():
    """pixelvit/paper.py loaded on its own (it imports nothing from pixelvit, so no torch is needed)."""
    spec = importlib.util.spec_from_file_location("pixelvit_paper", REPO / "pixelvit" / "paper.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def shipped() -> dict:
    return json.loads((REPO / "pixelvit" / "assets" / "cifar10_adventurer_nano" / "config.json").read_text())["shipped"]


def campaign_cells() -> dict[tuple[str, str, int], dict]:
    """summary.csv by (model, method, tokens), numbers as numbers (sd None for one seed)."""
    cells = {}
    for row in read_csv("cifar10_nano/summary.csv"):
        cells[(row["model"], row["method"], int(row["tokens"]))] = {
            "patch": int(row["patch_size"]), "factor": int(row["factor"]), "tokens": int(row["tokens"]),
            "n": int(row["n"]), "mean": float(row["mean"]), "sd": float(row["sd"]) if row["sd"] else None,
            "min": float(row["min"]), "max": float(row["max"]), "seeds": row["seeds"]}
    return cells


def scale_cells(model: str) -> list[dict]:
    """One model's patch sweep (method scale), coarse patch first."""
    cells = [c for (m, method, _), c in campaign_cells().items() if m == model and method == "scale"]
    return sorted(cells, key=lambda c: -c["patch"])


def campaign_runs() -> list[dict]:
    return read_csv("cifar10_nano/runs.csv")


def top1_by_epoch(run: dict) -> dict[int, float]:
    """'1:38.39 2:45.97 3:49.11' -> {1: 38.39, 2: 45.97, 3: 49.11}."""
    return {int(e): float(v) for e, v in (pair.split(":") for pair in run["top1_by_epoch"].split())}


def epoch_means(model: str, patch: int, method: str = "scale", factor: int = 1) -> dict[int, float]:
    """Mean top-1 over the finished seeds of one cell, after each epoch."""
    runs = [top1_by_epoch(r) for r in campaign_runs() if r["model"] == model and r["method"] == method
            and int(r["patch_size"]) == patch and int(r["factor"]) == factor]
    return {epoch: statistics.mean(run[epoch] for run in runs) for epoch in runs[0]} if runs else {}


def sweep_rows(folder: str) -> list[dict]:
    return read_csv(f"{folder}/results.csv")


def specks_cells() -> list[dict]:
    """Per patch size of specks_3seeds: the seed-0 value and every seed, coarse patch first."""
    by_patch: dict[int, dict] = {}
    for row in sweep_rows("specks_3seeds"):
        cell = by_patch.setdefault(int(row["patch_size"]), {"patch": int(row["patch_size"]),
                                                            "tokens": int(row["tokens"]), "seeds": {}})
        cell["seeds"][int(row["seed"])] = float(row["top1"])
    for cell in by_patch.values():
        values = [cell["seeds"][s] for s in sorted(cell["seeds"])]
        cell["mean"], cell["sd"] = statistics.mean(values), statistics.stdev(values)
    return sorted(by_patch.values(), key=lambda c: -c["patch"])


def dense_cells(folder: str) -> list[dict]:
    """Per backbone and patch size: mIoU with the linear head and with the decoder."""
    cells: dict[tuple[str, int], dict] = {}
    for row in sweep_rows(folder):
        backbone, head = row["model"].split("_seg_")
        cell = cells.setdefault((backbone, int(row["patch_size"])),
                                {"backbone": backbone, "patch": int(row["patch_size"]), "tokens": int(row["tokens"])})
        cell[head] = float(row["miou"])
    for cell in cells.values():
        cell["lead"] = cell["decoder"] - cell["linear"]
    return sorted(cells.values(), key=lambda c: (c["backbone"] != "vit_nano", -c["patch"]))


# ---- formatting ------------------------------------------------------------------------------------------
def num(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}" if digits else f"{value:,.0f}"


def drop_zeros(value: float) -> str:
    """A top-1 as the CSV stores it (12.6, 92.15), not padded."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def spread(cell: dict) -> str:
    """'63.82 +- 1.08' for several seeds, '57.98' for one."""
    return num(cell["mean"]) + (f" +- {num(cell['sd'])}" if cell["sd"] is not None else "")


def table(columns: list[str], rows: list[list], right: int = 0) -> list[str]:
    """A Markdown table; the last `right` columns right-aligned."""
    align = ["---"] * (len(columns) - right) + ["---:"] * right
    return (["| " + " | ".join(columns) + " |", "| " + " | ".join(align) + " |"]
            + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


# ---- the blocks ------------------------------------------------------------------------------------------
def block_specks() -> list[str]:
    rows = [[c["patch"], c["tokens"], drop_zeros(c["seeds"][0]), f"{num(c['mean'], 1)} +- {num(c['sd'], 1)}",
             " / ".join(drop_zeros(c["seeds"][s]) for s in sorted(c["seeds"]))] for c in specks_cells()]
    return table(["patch", "tokens", "seed 0 (`make run`)", "mean +- sd, seeds 0 1 2", "seeds 0 / 1 / 2"], rows, 3)


def block_cifar10() -> list[str]:
    rows = []
    for model in ("vit_nano", "adventurer_nano"):
        for c in scale_cells(model):
            rows.append([model, c["patch"], num(c["tokens"], 0), f"**{spread(c)}**", c["n"],
                         f"{num(c['min'])} - {num(c['max'])}" if c["n"] > 1 else "one seed"])
    return table(["model", "patch", "tokens", "top-1 (%) after 3 epochs: mean +- sd", "seeds", "min - max"], rows, 3)


def step_verdict(a: dict, b: dict) -> str:
    """'8 -> 4: +8.88 (outside the spread: larger sd 1.08)' for two cells of one model."""
    change = b["mean"] - a["mean"]
    sds = [c["sd"] for c in (a, b) if c["sd"] is not None]
    if not sds:
        noise = "one seed each: no spread to compare with"
    else:
        largest = max(sds)
        noise = f"{'outside' if abs(change) > largest else 'within'} the spread: larger sd {num(largest)}"
    return f"{a['patch']} -> {b['patch']}: {change:+.2f} ({noise})"


def block_cifar10_verdicts() -> list[str]:
    lines = []
    for model, label in (("adventurer_nano", "Adventurer nano"), ("vit_nano", "ViT nano")):
        cells = scale_cells(model)
        patches = " / ".join(str(c["patch"]) for c in cells)
        lines.append(f"* **{label}**, patch {patches} = " + " / ".join(spread(c) for c in cells)
                     + ", n = " + "/".join(str(c["n"]) for c in cells) + "; "
                     + "; ".join(step_verdict(a, b) for a, b in zip(cells, cells[1:])) + ".")
    vit = {c["patch"]: c for c in scale_cells("vit_nano")}
    ahead = [(p, c["mean"] - vit[p]["mean"]) for p, c in ((c["patch"], c) for c in scale_cells("adventurer_nano"))
             if p in vit]
    lines.append("* **Adventurer minus ViT** at the same patch: "
                 + ", ".join(f"{gap:+.2f} at patch {p}" for p, gap in ahead) + ".")
    return lines


def block_extend() -> list[str]:
    cells = campaign_cells()
    base = cells[("adventurer_nano", "scale", 16)]
    rows = [[num(base["tokens"], 0), f"patch 8: {spread(base)} (n={base['n']})", "(the same runs)", ""]]
    for tokens in sorted({t for (m, _, t) in cells if m == "adventurer_nano"} - {16}):
        scale, extend = cells.get(("adventurer_nano", "scale", tokens)), cells.get(("adventurer_nano", "extend", tokens))
        rows.append([num(tokens, 0),
                     f"patch {scale['patch']}: {spread(scale)} (n={scale['n']})" if scale else "not finished",
                     f"patch 8 x{extend['factor']}: {spread(extend)} (n={extend['n']})" if extend else "not finished",
                     f"{scale['mean'] - extend['mean']:+.2f}" if scale and extend else ""])
    return table(["tokens", "scaling (smaller patch)", "extending (patch 8, grid interpolated)",
                  "scaling - extending"], rows, 1)


def block_paper() -> list[str]:
    p = paper()
    rows = [[r["model"], r["input"], *(num(r[k], 1) for k in p.PATCHES_16_TO_1)]
            for r in p.TABLE_1.records() if r["input"] in (64, 224)]
    lines = table(["Table 1 (as reported)", "input", "p16", "p8", "p4", "p2", "p1"], rows, 5) + [""]
    groups: dict[str, list[dict]] = {}
    for r in p.TABLE_5.records():
        groups.setdefault(r["model"], []).append(r)
    rows = [[model, " / ".join(num(r["tokens"], 0) for r in rs), " / ".join(num(r["extending"], 1) for r in rs),
             " / ".join(num(r["scaling"], 1) for r in rs)] for model, rs in groups.items()]
    return lines + table(["Table 5 (as reported)", "tokens", "extending", "scaling"], rows)


def block_one_epoch() -> list[str]:
    rows = []
    for folder in ("cifar10_vit_nano", "cifar10_adventurer_nano"):
        for r in sorted(sweep_rows(folder), key=lambda r: -int(r["patch_size"])):
            rows.append([f"`{folder}/`", r["model"], r["patch_size"], r["tokens"], r["top1"]])
    return table(["folder (1 epoch, superseded)", "model", "patch", "tokens", "top-1 (%), seed 0"], rows, 3)


def block_shipped() -> list[str]:
    info = shipped()
    rows = [[p, (32 // int(p)) ** 2 + 1, "trained" if p == "4" else "resampled", num(v)]
            for p, v in sorted(info["resampled_top1"].items(), key=lambda kv: -int(kv[0]))]
    return ([f"Test top-1 of the shipped model (all {info['test_images']:,} CIFAR-10 test images, patch 4): "
             f"**{num(info['test_top1'])} %**. The same weights at another patch size, without retraining, on the "
             f"first {info['resampled_images']:,} test images:", ""]
            + table(["patch", "tokens", "weights", "top-1 (%)"], rows, 1))


def block_dense() -> list[str]:
    """scribbles only: the mosaic runs are all near chance, the prose gives their range."""
    rows = [[c["backbone"], c["patch"], c["tokens"], num(c["linear"], 1), num(c["decoder"], 1), f"{c['lead']:+.2f}"]
            for c in dense_cells("dense_scribbles")]
    return table(["scribbles: backbone", "patch", "tokens", "mIoU linear", "mIoU decoder", "decoder lead"], rows, 5)


BLOCKS = {"specks": block_specks, "cifar10": block_cifar10, "cifar10-verdicts": block_cifar10_verdicts,
          "extend": block_extend, "paper": block_paper, "one-epoch": block_one_epoch, "shipped": block_shipped,
          "dense": block_dense}


# ---- the numbers the prose may quote -----------------------------------------------------------------------
def facts() -> dict[str, float]:
    """Every derived number the hand-written prose of results/README.md (and README.md) may quote, by name."""
    f: dict[str, float] = {}
    specks = sweep_rows("specks_default")
    f["specks wall_s total"] = sum(float(r["wall_s"]) for r in specks)
    for r in specks:
        f[f"specks p{r['patch_size']} seed0"] = float(r["top1"])
    for c in specks_cells():
        f[f"specks p{c['patch']} mean"], f[f"specks p{c['patch']} sd"] = c["mean"], c["sd"]
        f[f"specks p{c['patch']} seeds max-min"] = max(c["seeds"].values()) - min(c["seeds"].values())
    cells = campaign_cells()
    for (model, method, tokens), c in cells.items():
        key = f"{model} {method} {tokens}"
        f[f"{key} mean"], f[f"{key} min"], f[f"{key} max"] = c["mean"], c["min"], c["max"]
        if c["sd"] is not None:
            f[f"{key} sd"] = c["sd"]
    for model in ("vit_nano", "adventurer_nano"):
        sweep = scale_cells(model)
        for a, b in zip(sweep, sweep[1:]):
            f[f"{model} {a['patch']}->{b['patch']}"] = b["mean"] - a["mean"]
        f[f"{model} largest sd"] = max(c["sd"] for c in sweep if c["sd"] is not None)
    vit = {c["patch"]: c for c in scale_cells("vit_nano")}
    for c in scale_cells("adventurer_nano"):
        if c["patch"] in vit:
            f[f"adventurer - vit p{c['patch']}"] = c["mean"] - vit[c["patch"]]["mean"]
    base = cells[("adventurer_nano", "scale", 16)]
    for (model, method, tokens), c in cells.items():
        if method == "extend":
            f[f"extend x{c['factor']} - patch 8"] = c["mean"] - base["mean"]
            if (model, "scale", tokens) in cells:
                f[f"scale - extend {tokens}"] = cells[(model, "scale", tokens)]["mean"] - c["mean"]
    lowest = min(cells[("adventurer_nano", "scale", t)]["min"] for t in (64, 256))
    f["adventurer p1 below the lowest patch-4/2 seed"] = lowest - cells[("adventurer_nano", "scale", 1024)]["mean"]
    p1, p2 = epoch_means("adventurer_nano", 1), epoch_means("adventurer_nano", 2)
    for epoch in p1:
        f[f"adventurer p1 epoch {epoch}"] = p1[epoch]
        f[f"adventurer p2 - p1 epoch {epoch}"] = p2[epoch] - p1[epoch]
    one = {(r["model"], int(r["patch_size"])): float(r["top1"])
           for folder in ("cifar10_vit_nano", "cifar10_adventurer_nano") for r in sweep_rows(folder)}
    for (model, patch), value in one.items():
        f[f"1 epoch {model} p{patch}"] = value
    f["1 epoch vit 4->2"] = one[("vit_nano", 2)] - one[("vit_nano", 4)]
    for folder in ("specks_default", "cifar10_vit_nano", "cifar10_adventurer_nano"):
        for r in sweep_rows(folder):
            f[f"{folder} p{r['patch_size']} params (M)"] = int(r["params"]) / 1e6
    info = shipped()
    f["shipped top1"] = info["test_top1"]
    for patch, value in info["resampled_top1"].items():
        f[f"shipped p{patch}"] = value
    for folder in ("dense_scribbles", "dense_cifar10_mosaic"):
        for c in dense_cells(folder):
            for head in ("linear", "decoder", "lead"):
                f[f"{folder} {c['backbone']} p{c['patch']} {head}"] = c[head]
        rows = sweep_rows(folder)
        for column in ("miou", "pixel_accuracy"):
            values = [float(r[column]) for r in rows]
            f[f"{folder} {column} min"], f[f"{folder} {column} max"] = min(values), max(values)
    p = paper()
    for table_ in p.TABLES.values():
        for i, row in enumerate(table_.rows):
            for column, value in zip(table_.columns, row):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    f[f"paper table {table_.number} row {i} {column}"] = value
    return f


# ---- rewriting / checking the page -----------------------------------------------------------------------
def render(text: str) -> str:
    """The page with every generated block re-rendered from the committed files."""
    def one(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise KeyError(f"results/README.md has a block {name!r} that tools/results_page.py does not know")
        return match.group(1) + "\n".join(BLOCKS[name]()) + "\n" + match.group(4)
    return BLOCK.sub(one, text)


def stale_blocks(text: str) -> list[str]:
    fresh = {m["name"]: m["body"] for m in BLOCK.finditer(render(text))}
    return [m["name"] for m in BLOCK.finditer(text) if m["body"] != fresh[m["name"]]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report blocks that differ; exit 1 if any")
    args = parser.parse_args(argv)
    text = PAGE.read_text()
    stale = stale_blocks(text)
    if args.check:
        if stale:
            print(f"results/README.md: stale blocks {', '.join(stale)}; run python tools/results_page.py", file=sys.stderr)
        return 1 if stale else 0
    PAGE.write_text(render(text))
    print(f"rewrote {len(stale)} block(s) of {PAGE.relative_to(REPO)}: {', '.join(stale) or 'none changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
