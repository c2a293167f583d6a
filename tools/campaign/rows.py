"""The campaign's tables: one row per finished run, the summary over seeds, and the extending-vs-scaling rows."""

from __future__ import annotations

import json
from pathlib import Path

from campaign import jobs
from campaign.folders import committed_row, read_metrics, run_dir

RUN_COLUMNS = ["name", "model", "method", "patch_size", "factor", "tokens", "seed", "steps", "epochs", "top1",
               "eval_loss", "top1_by_epoch", "wall_s", "images_per_s", "device", "config_hash"]
# the patch-1 pilot's runs.csv: the setting beside the name, and where a reused run's row came from
PILOT_RUN_COLUMNS = RUN_COLUMNS[:1] + ["setting"] + RUN_COLUMNS[1:] + ["source"]
GAP_COLUMNS = ["setting", "varies", "change", "top1_p2", "top1_p1", "gap", "n_p2", "n_p1", "verdict"]


SUMMARY_COLUMNS = ["model", "method", "patch_size", "factor", "tokens", "n", "mean", "sd", "min", "max", "seeds"]


def finished_row(job: jobs.Job, committed: dict) -> dict | None:
    """The run's row when it finished (from its folder, else from the committed runs.csv), else None."""
    folder = run_dir(job)
    if not (folder / "result.json").exists():
        return committed_row(job, committed)
    result = json.loads((folder / "result.json").read_text())
    digest = result["config_hash"]
    per_epoch = [f"{record['epoch']:g}:{record['top1']:.2f}" for record in read_metrics(folder)
                 if record.get("kind") == "eval" and record.get("top1") is not None]
    return {"name": job.name, "model": job.model, "method": job.method, "patch_size": job.patch,
            "factor": job.factor, "tokens": job.tokens, "seed": job.seed, "steps": result["steps"],
            "epochs": round(result["epochs"], 3), "top1": round(result["top1"], 2),
            "eval_loss": round(result["eval_loss"], 4), "top1_by_epoch": " ".join(per_epoch),
            "wall_s": round(result["wall_s"], 1), "images_per_s": round(result["images_per_s"], 2),
            "device": result["device"], "config_hash": digest, "setting": job.setting, "source": ""}


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


def gap_rows(rows: list[dict], seed_sd: float | None) -> list[dict]:
    """The patch-1 pilot, one row per setting (campaign.patch1.SETTINGS, in order): mean top-1 at patch 2 and
    at patch 1 over the setting's finished seeds, the gap (patch 1 minus patch 2) and a verdict.

    Noise: `seed_sd` is the spread of one run's top-1 over seeds (patch1.seed_sd); a gap of means over n2
    and n1 seeds has sd seed_sd * sqrt(1/n2 + 1/n1), the change of a gap from the baseline's the root sum
    of both squares. Within 2 sd of zero (or of the baseline's gap) is "within noise": more seeds needed.
    """
    import math
    import statistics

    from campaign.patch1 import SETTINGS

    def noise(n2: int, n1: int) -> float | None:
        return seed_sd * math.sqrt(1 / n2 + 1 / n1) if seed_sd else None

    out, base = [], None
    for s in SETTINGS:
        top1 = {p: [float(r["top1"]) for r in rows if r.get("setting") == s.name and int(r["patch_size"]) == p]
                for p in (2, 1)}
        row = {"setting": s.name, "varies": s.factor, "change": s.change, "n_p2": len(top1[2]), "n_p1": len(top1[1]),
               "top1_p2": "", "top1_p1": "", "gap": "", "verdict": ""}
        if not (top1[2] and top1[1]):
            missing = " and ".join(f"patch {p}" for p in (2, 1) if not top1[p])
            out.append({**row, "verdict": f"pending: {missing} not finished"})
            continue
        p2, p1 = statistics.mean(top1[2]), statistics.mean(top1[1])
        gap, sd = p1 - p2, noise(len(top1[2]), len(top1[1]))
        row.update(top1_p2=round(p2, 2), top1_p1=round(p1, 2), gap=round(gap, 2))
        if sd is None:
            words = [f"patch 1 {'loses' if gap < 0 else 'wins'} by {abs(gap):.2f} (no seed spread to judge noise)"]
        elif abs(gap) <= 2 * sd:
            words = [f"within noise of 0 (2 sd = {2 * sd:.2f}): train more seeds"]
        else:
            words = [f"patch 1 {'loses' if gap < 0 else 'wins'} by {abs(gap):.2f} (2 sd = {2 * sd:.2f})"]
        if s.name == "base":
            base = (gap, sd)
        elif base is not None:
            change = gap - base[0]
            change_sd = math.hypot(sd, base[1]) if sd is not None and base[1] is not None else None
            words.append(f"{'narrows' if change > 0 else 'widens'} the baseline's gap by {abs(change):.2f}"
                         + ("" if change_sd is None else " (within noise)" if abs(change) <= 2 * change_sd
                            else f" (beyond 2 sd = {2 * change_sd:.2f})"))
        out.append({**row, "verdict": "; ".join(words)})
    return out
