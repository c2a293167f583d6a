"""The campaign's tables: one row per finished run, the summary over seeds, and the extending-vs-scaling rows."""

from __future__ import annotations

import json
from pathlib import Path

from campaign import jobs
from campaign.folders import read_metrics, run_dir

RUN_COLUMNS = ["name", "model", "method", "patch_size", "factor", "tokens", "seed", "steps", "epochs", "top1",
               "eval_loss", "top1_by_epoch", "wall_s", "images_per_s", "device", "config_hash"]


SUMMARY_COLUMNS = ["model", "method", "patch_size", "factor", "tokens", "n", "mean", "sd", "min", "max", "seeds"]


def finished_row(job: jobs.Job, committed: dict) -> dict | None:
    """The run's row when it finished (from its folder, else from the committed runs.csv), else None."""
    folder = run_dir(job)
    if not (folder / "result.json").exists():
        return committed.get(job.name)
    result = json.loads((folder / "result.json").read_text())
    digest = result["config_hash"]
    per_epoch = [f"{record['epoch']:g}:{record['top1']:.2f}" for record in read_metrics(folder)
                 if record.get("kind") == "eval" and record.get("top1") is not None]
    return {"name": job.name, "model": job.model, "method": job.method, "patch_size": job.patch,
            "factor": job.factor, "tokens": job.tokens, "seed": job.seed, "steps": result["steps"],
            "epochs": round(result["epochs"], 3), "top1": round(result["top1"], 2),
            "eval_loss": round(result["eval_loss"], 4), "top1_by_epoch": " ".join(per_epoch),
            "wall_s": round(result["wall_s"], 1), "images_per_s": round(result["images_per_s"], 2),
            "device": result["device"], "config_hash": digest}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean, sample standard deviation (n - 1), range and n over seeds, per (model, method, patch, factor)."""
    import statistics

    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["model"], row["method"], int(row["patch_size"]), int(row["factor"]), int(row["tokens"]))
        cells.setdefault(key, []).append(row)
    out = []
    for (model, method, patch, factor, tokens), members in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2], kv[0][3])):
        values = [float(r["top1"]) for r in members]
        out.append({"model": model, "method": method, "patch_size": patch, "factor": factor, "tokens": tokens,
                    "n": len(values), "mean": round(statistics.mean(values), 2),
                    "sd": round(statistics.stdev(values), 2) if len(values) > 1 else "",
                    "min": min(values), "max": max(values),
                    "seeds": " ".join(str(r["seed"]) for r in sorted(members, key=lambda r: int(r["seed"])))})
    return out


def extend_vs_scale_rows(summary: list[dict]) -> list[dict]:
    """Adventurer at equal token counts: scale = patch 8 / 4 / 2 / 1, extend = patch 8 interpolated x1 / 2 / 4 / 8.

    The 16-token row is the same patch-8 runs under both names, as in the paper's Table 5.
    """
    adv = [r for r in summary if r["model"] == jobs.MODELS["adventurer"]]
    rows = []
    for r in adv:
        if r["method"] == "scale":
            rows.append({**r, "method": "scale"})
            if r["patch_size"] == 8:
                rows.append({**r, "method": "extend"})
        else:
            rows.append(dict(r))
    return sorted(rows, key=lambda r: (r["tokens"], r["method"]))


def parse_epochs(text: str) -> dict[float, float]:
    return {float(e): float(t) for e, t in (item.split(":") for item in str(text or "").split())}


def write_csv(rows: list[dict], columns: list[str], path: Path):
    import csv

    from pixelvit.io import atomic_write

    with atomic_write(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
