"""The CIFAR-10 scaling campaign: a resumable queue of pixelvit.train runs that spans sessions.

    python tools/cifar_campaign.py pilot     # 50 steps of every kind of run: images/s now -> results/cifar10_nano/pilot.json
    python tools/cifar_campaign.py plan      # each run: done / partial / pending, hours left; running: img/s, ends ~HH:MM; latest epoch top-1
    python tools/cifar_campaign.py start     # `run` in the background (1 thread, nice 15, own session), prints its pid
    python tools/cifar_campaign.py start --parallel 2   # two such workers sharing the queue (an idle 2-core machine)
    python tools/cifar_campaign.py run       # train the queue in order, in this process
    python tools/cifar_campaign.py collect   # results/cifar10_nano/: runs.csv, summary.csv, extend_vs_scale.csv, figures, README.md

What runs: the nano models (64 wide x 4 deep) on `cifar10_jpeg` (../shared/data) at 32 x 32, top-1 on all
10,000 test images, the same recipe and number of steps for every run (BUDGETS below):

* the sweep: Adventurer at patch 8 / 4 / 2 / 1 and ViT at 8 / 4 / 2, seeds 0 1 2 (patch 1: seed 0 first);
* the extending-vs-scaling ablation (the paper's Table 5, pixelvit.extend): Adventurer at patch 8 with its
  4 x 4 token grid interpolated 2x / 4x / 8x (64 / 256 / 1,024 tokens, no information finer than 8 x 8)
  against the sweep's patch 4 / 2 / 1 runs with the same token counts, which serve as the "scale" rows.

Why it can stop at any moment: every run is an ordinary pixelvit.train run in its own folder under
~/.cache/pixelvit/runs/cifar10_nano (outside the work tree), checkpointed every 25 steps and at every
epoch end; `run` skips finished runs and resumes a stopped one from its last checkpoint, exactly
(pixelvit.train's resume). Runs whose rows are already committed in results/cifar10_nano/runs.csv are
skipped too, so a machine without that cache does not redo finished work (a run cut short on such a
machine starts again). Several `run`s (workers) may share the queue: each takes the lock of the job it trains
(runs dir / locks / NAME.lock), and the others pass that job by, so no two processes ever write one folder.
The queue is ordered so that what finishes first is most useful: seed 0 of the cheap grid, the other
seeds, the ablation, then the expensive patch-1 runs.

One thread only (torch.set_num_threads(1), OMP_NUM_THREADS=1) and nice 15: the campaign shares 2 cores
with interactive work and tests.

On a CUDA machine the same campaign at a larger budget (bf16 autocast, batch 256, 30 epochs, ViT at
patch 1 too), into ~/.cache/pixelvit/runs/cifar10_nano_gpu and results/cifar10_nano_gpu:

    python tools/cifar_campaign.py --budget gpu run && python tools/cifar_campaign.py --budget gpu collect

The patch-1 pilot (why Adventurer nano at patch 1 loses to patch 2: one factor at a time, campaign/patch1.py)
is a third budget with the same commands, into ~/.cache/pixelvit/runs/cifar10_patch1_pilot and
results/cifar10_patch1_pilot:

    python tools/cifar_campaign.py --budget patch1 plan      # each run's estimated hours and the total
    python tools/cifar_campaign.py --budget patch1 start --parallel 2 --commit-rows   # commits each finished row
    python tools/cifar_campaign.py --budget patch1 collect   # runs.csv, gap.csv, gap.png, README.md

This file is the command line; the campaign itself is the package beside it, one idea per module:

    campaign/jobs.py      the budget, one Job per run, the queue in its order
    campaign/patch1.py    the patch-1 pilot's settings, its queue and each run's `pixelvit train` command
    campaign/folders.py   where each run is: its folder (manifest.json), its state, its metrics
    campaign/workers.py   job locks, `run` (a worker of the shared queue), `start` (detached workers)
    campaign/plan.py      the pilot, estimated speeds and hours, `plan`
    campaign/rows.py      runs.csv, summary.csv, extend_vs_scale.csv and the pilot's gap.csv rows from finished runs
    campaign/figures.py   sweep.png, extend_vs_scale.png and the pilot's gap.png
    campaign/report.py    `collect`: the tables, the figures and the generated README.md
"""


from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported anywhere in this process
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from campaign import jobs  # noqa: E402  (tools/campaign/, beside this file: the script's folder is on sys.path)
from campaign.plan import pilot, plan  # noqa: E402
from campaign.report import collect  # noqa: E402
from campaign.workers import run, start  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tools/cifar_campaign.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=sorted(jobs.BUDGETS), default="cpu",
                        help="cpu: this course's 2-core machines; gpu: a CUDA machine (bf16, batch 256, 30 epochs); "
                             "patch1: the pilot of why patch 1 loses to patch 2 (campaign/patch1.py)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("plan", help="list every run with its state and estimated hours")
    commands.add_parser("run", help="train the queue in this process")
    start_parser = commands.add_parser("start", help="`run` in the background (detached, nice 15, 1 thread)")
    start_parser.add_argument("--new-code", action="store_true",
                              help="run the current commit instead of the one the campaign started with")
    start_parser.add_argument("--parallel", type=int, default=1, choices=range(1, 9), metavar="N",
                              help="N workers side by side, one thread each, sharing the queue (default 1; "
                                   "2 on an idle 2-core machine)")
    start_parser.add_argument("--commit-rows", action="store_true",
                              help="after each finished run, `collect` into this work tree and commit the results "
                                   "folder alone (nothing else staged is committed)")
    pilot_parser = commands.add_parser("pilot", help="measure images/s of each kind of run")
    pilot_parser.add_argument("--steps", type=int, default=50)
    commands.add_parser("collect", help="write results/cifar10_nano from the finished runs")
    args = parser.parse_args(argv)
    jobs.BUDGET = jobs.BUDGETS[args.budget]
    return {"plan": plan, "run": run, "start": start, "pilot": pilot, "collect": collect}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
