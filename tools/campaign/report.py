"""`collect`: the CSVs, the figures and the generated README.md of results/cifar10_nano, from finished runs only."""

from __future__ import annotations

import time
from pathlib import Path

from campaign import jobs
from campaign.figures import plot_extend_vs_scale, plot_gap, plot_sweep
from campaign.folders import committed_rows, pinned_commit, state
from campaign.rows import (
    GAP_COLUMNS,
    PILOT_RUN_COLUMNS,
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    extend_vs_scale_rows,
    finished_row,
    gap_rows,
    summarise,
    write_csv,
)


def collect(_args=None) -> int:
    if jobs.BUDGET.name == "patch1":
        return collect_pilot()
    committed = committed_rows()
    queued = jobs.queue()
    rows = [row for job in queued if (row := finished_row(job, committed)) is not None]
    jobs.BUDGET.results.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    ablation = extend_vs_scale_rows(summary)
    write_csv(rows, RUN_COLUMNS, jobs.BUDGET.results / "runs.csv")
    write_csv(summary, SUMMARY_COLUMNS, jobs.BUDGET.results / "summary.csv")
    write_csv(ablation, SUMMARY_COLUMNS, jobs.BUDGET.results / "extend_vs_scale.csv")
    if rows:
        plot_sweep(rows, summary, jobs.BUDGET.results / "sweep.png")
    if ablation:  # only once an Adventurer run has finished
        plot_extend_vs_scale(ablation, jobs.BUDGET.results / "extend_vs_scale.png")
    (jobs.BUDGET.results / "README.md").write_text(report(queued, rows, summary, ablation, committed))
    print(f"{len(rows)} of {len(queued)} runs finished -> {jobs.BUDGET.results}")
    return 0


def cell(summary: list[dict], model: str, method: str, tokens: int) -> dict | None:
    return next((r for r in summary if r["model"] == model and r["method"] == method and r["tokens"] == tokens), None)


def describe(c: dict) -> str:
    spread = f" +- {c['sd']:.2f}" if c["sd"] != "" else ""
    return f"{c['mean']:.2f}{spread} (n={c['n']})"


def rise_verdicts(summary: list[dict]) -> list[str]:
    """Adventurer, patch 8 -> 4 -> 2 -> 1: does the seed mean rise at every step, relative to the spread?"""
    model, lines = jobs.MODELS["adventurer"], []
    for coarse, fine in ((8, 4), (4, 2), (2, 1)):
        a, b = (cell(summary, model, "scale", (jobs.IMG_SIZE // p) ** 2) for p in (coarse, fine))
        if a is None or b is None:
            lines.append(f"* patch {coarse} -> {fine}: pending (not every run has finished)")
            continue
        gap = b["mean"] - a["mean"]
        sds = [c["sd"] for c in (a, b) if c["sd"] != ""]
        spread = f"largest seed sd {max(sds):.2f}" if sds else "one seed each: no spread measured yet"
        verdict = f"rises by {gap:+.2f} points" if gap > 0 else f"does NOT rise: falls by {-gap:.2f} points"
        clear = ""
        if sds:
            clear = "; larger than the spread" if abs(gap) > max(sds) else "; within the spread"
        lines.append(f"* patch {coarse} -> {fine}: {describe(a)} -> {describe(b)}: {verdict} ({spread}{clear})")
    return lines


def ablation_verdict(ablation: list[dict]) -> str:
    baseline = (jobs.IMG_SIZE // 8) ** 2  # patch 8: the same runs under both names
    both = sorted({r["tokens"] for r in ablation if r["method"] == "extend"} &
                  {r["tokens"] for r in ablation if r["method"] == "scale"} - {baseline})
    if not both:
        return f"Pending: no token count above {baseline} has finished runs of both methods yet."
    tokens = both[-1]
    scale = next(r for r in ablation if r["method"] == "scale" and r["tokens"] == tokens)
    extend = next(r for r in ablation if r["method"] == "extend" and r["tokens"] == tokens)
    gap = scale["mean"] - extend["mean"]
    verdict = "scaling beats extending" if gap > 0 else "scaling does NOT beat extending"
    return (f"At {tokens} tokens, the largest count with finished runs of both: scale {describe(scale)} vs "
            f"extend {describe(extend)}: {verdict} by {gap:+.2f} points.")


def markdown_table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]


def report(queued: list[jobs.Job], rows: list[dict], summary: list[dict], ablation: list[dict], committed: dict) -> str:
    finished = {r["name"] for r in rows}
    lines = [
        "# CIFAR-10 scaling campaign",
        "",
        "Written by `python tools/cifar_campaign.py collect`; do not edit by hand. Measured here, on CPU.",
        "",
        f"Budget, the same for every run: {jobs.BUDGET.steps} steps of {jobs.BUDGET.batch} images ({jobs.BUDGET.epochs} epochs of the 50,000 training "
        f"images), AdamW lr {jobs.BUDGET.lr:g} (10 % warmup, cosine), label smoothing 0.1, crop + flip; `{jobs.DATASET}` at "
        f"{jobs.IMG_SIZE} x {jobs.IMG_SIZE}; top-1 on all 10,000 test images, evaluated after every epoch. "
        "Models: `adventurer_nano` and `vit_nano` (64 wide x 4 deep). Tokens are patch tokens (the class "
        "token not counted). Mean and sample sd over seeds; n = number of seeds finished.",
        "",
        f"## Status: {len(finished)} of {len(queued)} runs finished (collected {time.strftime('%Y-%m-%d %H:%M %Z')})",
        "",
        "Only finished runs enter the tables below; nothing is reported for a run still in progress. "
        "To continue the queue (skips finished runs, resumes the one in progress from its last checkpoint): "
        "`python tools/cifar_campaign.py start`; then `plan` to watch it and `collect` to rewrite this folder. "
        f"Runs live in `{jobs.BUDGET.runs_dir.as_posix().replace(str(Path.home()), '~')}`"
        + (f"; the campaign's code is pinned at commit {pinned_commit()[:12]}." if pinned_commit() else "."),
        "",
        "| # | run | tokens | state |",
        "|---|---|---|---|",
    ]
    for index, job in enumerate(queued, 1):
        status, steps = state(job, committed)
        text = {"done": "finished", "committed": "finished (earlier session)"}.get(
            status, f"in progress: step {steps} of {jobs.BUDGET.steps}" if status == "partial" else "pending")
        lines.append(f"| {index} | {job.name} | {job.tokens} | {text} |")
    lines += ["", "## Top-1 (%) by model and patch size (summary.csv)", ""]
    lines += markdown_table(summary, SUMMARY_COLUMNS) if summary else ["No run has finished yet."]
    lines += ["", "### Does Adventurer rise at every step 8 -> 4 -> 2 -> 1?", ""] + rise_verdicts(summary)
    lines += ["", "## Extending vs scaling (extend_vs_scale.csv)", "",
              "`scale`: a smaller patch. `extend`: patch 8, its 4 x 4 token grid bilinearly interpolated 2x / 4x / 8x "
              "per side (pixelvit.extend), so the sequence is as long as the scaled one and costs as much, but "
              "no token carries detail finer than an 8 x 8 patch. The "
              f"{(jobs.IMG_SIZE // 8) ** 2}-token row is the same patch-8 runs under both names. `upsample`: patch 8 on the "
              "image upsampled 2x / 4x (bicubic); each token then covers the same original pixels as the scaled "
              "patch 4 / 2, so it is expected to match `scale`, not `extend` (pixelvit.extend explains why).", ""]
    lines += markdown_table(ablation, SUMMARY_COLUMNS) if ablation else ["No Adventurer run has finished yet."]
    lines += ["", ablation_verdict(ablation), "", "Files: runs.csv (one row per finished run, with top-1 after "
              "each epoch), summary.csv, extend_vs_scale.csv, sweep.png, extend_vs_scale.png, pilot.json.", ""]
    return "\n".join(lines)


def collect_pilot() -> int:
    """results/cifar10_patch1_pilot/: runs.csv (finished runs only), gap.csv, gap.png and README.md."""
    from campaign import patch1

    committed = committed_rows()
    queued = jobs.queue()
    rows = [row for job in queued if (row := finished_row(job, committed)) is not None]
    sd = patch1.seed_sd()
    gaps = gap_rows(rows, sd)
    out = jobs.BUDGET.results
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, PILOT_RUN_COLUMNS, out / "runs.csv")
    write_csv(gaps, GAP_COLUMNS, out / "gap.csv")
    plot_gap(gaps, sd, out / "gap.png")
    (out / "README.md").write_text(pilot_report(queued, rows, gaps, committed, sd))
    print(f"{len(rows)} of {len(queued)} runs finished -> {out}")
    return 0


def pilot_report(queued: list[jobs.Job], rows: list[dict], gaps: list[dict], committed: dict, sd: float | None) -> str:
    from campaign import patch1
    from campaign.plan import estimated_speed, hours_left, measured_speeds, pilot_speeds

    pilot, measured = pilot_speeds(), measured_speeds(committed)
    here = "python tools/cifar_campaign.py --budget patch1"
    noise = (f"{sd:.2f} points, the largest seed sd of an Adventurer cell in results/cifar10_nano/summary.csv"
             if sd else "not known (results/cifar10_nano/summary.csv is missing)")
    lines = [
        "# Why does patch 1 lose to patch 2? A pilot, one factor at a time",
        "",
        f"Written by `{here} collect`; do not edit by hand. Measured here, on CPU. The settings and why: "
        "`tools/campaign/patch1.py`.",
        "",
        "In results/cifar10_nano (one recipe for every patch size, 3 epochs) Adventurer nano reaches 64.27 +- 0.57 "
        "top-1 at patch 2 (n=3) and 57.98 at patch 1 (n=1). Each setting below changes one factor of that recipe "
        f"at 1 epoch ({jobs.BUDGET.steps} steps of {jobs.BUDGET.batch}, the `base` setting) and trains it at patch 2 "
        "(256 tokens) and patch 1 (1,024 tokens), seed 0; the gap is patch-1 top-1 minus patch-2 top-1 on all "
        "10,000 test images. A setting that closes the gap points at the cause.",
        "",
        f"Seed noise: {noise}. A gap of single-seed runs has sd = noise x sqrt(2); within 2 sd of 0 (or of the "
        "baseline's gap) means more seeds are needed before any reading.",
        "",
        f"## Status: {len(rows)} of {len(queued)} runs finished (collected {time.strftime('%Y-%m-%d %H:%M %Z')})",
        "",
        "Only finished runs enter runs.csv, gap.csv and gap.png. Continue the queue (skips finished runs, resumes "
        f"a stopped one from its last checkpoint): `{here} start --parallel 2 --commit-rows` (two workers on an "
        "idle 2-core machine, one without --parallel; --commit-rows: each worker runs `collect` and commits this "
        f"folder alone as each run finishes), watch with `{here} plan`. This folder's rows are what a machine "
        f"without the run folders (`{jobs.BUDGET.runs_dir.as_posix().replace(str(Path.home()), '~')}`) keeps"
        + (f". The queue's code is pinned at commit {pinned_commit()[:12]}." if pinned_commit() else "."),
        "",
        "Hours: single-thread estimates at the images/s of finished runs of the same kind, else "
        + ("this folder's pilot.json" if (jobs.BUDGET.results / "pilot.json").exists() else
           "the training step alone measured on a quiet machine (jobs.BUDGETS['patch1']) with the trainer's data "
           "loading on top") + "; a setting that changes the model scales them by its FLOPs (pixelvit.costs).",
        "",
        "| # | setting | factor | change from base | patch 2 | patch 1 | hours (p2 + p1) |",
        "|---|---|---|---|---|---|---|",
    ]
    total = 0.0
    for index, s in enumerate(patch1.SETTINGS, 1):
        cells, hours = [], []
        for job in (j for j in queued if j.setting == s.name):
            status, steps = state(job, committed)
            cells.append({"done": "finished", "committed": "finished (committed)"}.get(
                status, f"step {steps} of {job.steps}" if status == "partial" else "pending"))
            left = hours_left(job, steps, estimated_speed(job, pilot, measured)) if status in ("partial", "pending") else 0.0
            hours.append(left)
        total += sum(h or 0.0 for h in hours)
        spent = " + ".join("?" if h is None else f"{h:.1f}" for h in hours)
        lines.append(f"| {index} | {s.name} | {s.factor} | {s.change} | {' | '.join(cells)} | {spent} |")
    lines += ["", f"Left: about {total:.1f} single-thread hours (about half with two workers).", "",
              "## The gap per setting (gap.csv, gap.png)", "", "![gap](gap.png)", ""]
    lines += markdown_table(gaps, GAP_COLUMNS)
    lines += ["", "## The commands", "",
              "Each run is this `pixelvit train` command (the same config hash, so the same run folder); the queue "
              "runs them in this order with one thread (`OMP_NUM_THREADS=1`) at nice 15. A run of the `epochs3` "
              "setting is a committed run of results/cifar10_nano (`source` in runs.csv) and is not trained again.",
              "", "```"]
    lines += [f"# {job.name}\nOMP_NUM_THREADS=1 {patch1.command(job)}" for job in queued]
    lines += ["```", "", "Files: runs.csv (one row per finished run, top-1 after each epoch), gap.csv, gap.png, "
              "README.md; pilot.json once `pilot` has measured the speeds on this machine.", ""]
    return "\n".join(lines)
