"""Every pixelvit benchmark in one process: run the sections, print a table, write the results files.

    python -m benchmarks [--quick | --tiny] [--only NAME ...] [--out DIR]

Sections (names for --only):
    vit_vs_timm   CPU training step of pixelvit's ViT vs timm's VisionTransformer   benchmarks/vit_vs_timm.py
    scan          the SSD scans the models run on CPU vs the loop; chunk sweep      benchmarks/scan.py (+ bench_ssd.py)
    cost_growth   Adventurer vs ViT as tokens grow, and the crossover               benchmarks/cost_growth.py
    gpu           bf16 ViT-B vs the matmul peak; Adventurer at 50,178 tokens        benchmarks/gpu.py (CUDA only)
    full_scale    Adventurer-Tiny/-Base at patch 1, 224 px on CPU: s, GFLOP/s, RSS  benchmarks/full_scale.py
    training_memory  saved activation bytes per image, Adventurer vs ViT; step time  benchmarks/training_memory.py
    training_speed   training img/s and fraction of the matmul rate, 1 and 2 threads   benchmarks/training_speed.py

Writes DIR/results.json (everything, with the machine and the exact command), DIR/results.md (the tables)
and DIR/cost_growth.json (the small file notebook 3 plots). Profiles: the default (full) takes ~10 minutes
on 2 CPU cores and writes to benchmarks/results; --quick (< 2 min) and --tiny (seconds; for the test
suite, numbers meaningless) write to benchmarks/results/quick and .../tiny (git-ignored) unless --out.
Times are medians of alternated repetitions (A B, B A, ...) after warm-up; on a shared machine the
paired ratios are the numbers to trust.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks import cost_growth, full_scale, gpu, scan, training_memory, training_speed, vit_vs_timm
from benchmarks.machine import REPO_ROOT, machine_info

# name (for --only) -> (heading in results.md, module). Each module has run(**settings) -> section dict and
# markdown(section) -> the section's lines of results.md.
SECTIONS = {
    "vit_vs_timm": ("1. pixelvit ViT vs timm, CPU training step", vit_vs_timm),
    "scan": ("2. SSD scan on CPU: the training and inference scans the models run, and the chunk length", scan),
    "cost_growth": ("3. Cost growth: Adventurer vs ViT as tokens grow", cost_growth),
    "gpu": ("4. GPU", gpu),
    "full_scale": ("5. Full scale on CPU: Adventurer at 50,177 tokens", full_scale),
    "training_memory": ("6. Training memory: Adventurer vs ViT", training_memory),
    "training_speed": ("7. Training throughput: Adventurer vs ViT, 1 and 2 threads", training_speed),
}

_GPU_FULL = dict(
    vit=dict(name="vit_base", img_size=64, patch_size=1, batch_sizes=[64, 32, 16, 8, 4, 2, 1]),
    adventurers=["adventurer_tiny", "adventurer_base"],
    adventurer_img=224,
    adventurer_patch=1,
    variants=["reference", "compiled", "mamba_ssm", "fla"],
    batch_sizes=[8, 4, 2, 1],
    repeats=5,
    warmup=2,
)

PROFILES = {
    "full": {
        "vit_vs_timm": dict(
            configs=[(m, p) for m in ("vit_micro", "vit_tiny") for p in (8, 4, 2)], batch_size=16, repeats=10
        ),
        "scan": dict(
            lengths=[256, 1024, 4096, 16384],
            repeats=5,
            max_sequential_length=4096,
            sweep_chunk_sizes=[32, 64, 128],
            sweep_lengths=[65, 257, 1025, 50178],
        ),
        "cost_growth": dict(img_sizes=[32, 64], patch_sizes=[8, 4, 2, 1], batch_size=1, repeats=5),
        "gpu": _GPU_FULL,
        "full_scale": dict(models=[("adventurer_tiny", 224, 1, True), ("adventurer_base", 224, 1, False)]),
        "training_memory": dict(patch_sizes=[2, 1], repeats=5),
        "training_speed": dict(
            cases=[("adventurer_nano", p, "default") for p in (4, 2, 1)] + [("adventurer_nano", 1, "readable_mixer")]
            + [("vit_nano", p, "default") for p in (4, 2, 1)],
            repeats=5,  # 3 repeats after 1 warm-up step left the first, shortest case 1.5x off its A/B figure
            warmup=2,
            profile_case=("adventurer_nano", 1),
        ),
    },
    "quick": {
        "vit_vs_timm": dict(
            configs=[("vit_micro", 8), ("vit_micro", 4), ("vit_tiny", 8)], batch_size=8, repeats=3
        ),
        "scan": dict(lengths=[256, 1024, 4096], repeats=3, max_sequential_length=4096, sweep_chunk_sizes=[32, 64, 128],
                     sweep_lengths=[65, 257, 1025]),
        "cost_growth": dict(img_sizes=[32], patch_sizes=[4, 2, 1], batch_size=1, repeats=3),
        "gpu": {
            **_GPU_FULL,
            "adventurers": ["adventurer_tiny"],
            "variants": ["reference", "mamba_ssm", "fla"],
            "repeats": 3,
            "warmup": 1,
        },
        "full_scale": dict(models=[("adventurer_tiny", 64, 1, True)]),
        "training_memory": dict(patch_sizes=[2, 1], repeats=3),
        "training_speed": dict(cases=[("adventurer_nano", 2, "default"), ("adventurer_nano", 2, "readable_mixer"),
                                      ("vit_nano", 2, "default")], repeats=2, profile_case=("adventurer_nano", 2)),
    },
    "tiny": {
        "vit_vs_timm": dict(configs=[("vit_micro", 8)], batch_size=2, repeats=2, warmup=0),
        "scan": dict(lengths=[64, 128, 256], repeats=1, max_sequential_length=128, sweep_chunk_sizes=[32, 64],
                     sweep_lengths=[65, 129]),
        "cost_growth": dict(img_sizes=[16], patch_sizes=[8, 4], batch_size=1, repeats=2, warmup=0),
        "gpu": dict(
            vit=dict(name="vit_micro", img_size=32, patch_size=4, batch_sizes=[4, 1]),
            adventurers=["adventurer_micro"],
            adventurer_img=32,
            adventurer_patch=4,
            variants=["reference", "mamba_ssm", "fla"],
            batch_sizes=[2, 1],
            repeats=1,
            warmup=0,
        ),
        "full_scale": dict(models=[("adventurer_nano", 32, 4, True)]),
        "training_memory": dict(patch_sizes=[4], img_size=16, batch_size=2, repeats=1, warmup=0),
        "training_speed": dict(cases=[("adventurer_nano", 4, "default"), ("adventurer_nano", 4, "readable_mixer"),
                                      ("vit_nano", 4, "default")], batch_size=2, img_size=16, repeats=1,
                               warmup=0, profile_case=("adventurer_nano", 4)),
    },
}


# ---------------------------------------------------------------------------------------------------
# the Markdown report: the machine, then each section's own markdown() under its heading
# ---------------------------------------------------------------------------------------------------


def to_markdown(results: dict) -> str:
    m = results["machine"]
    gpu_name = m["gpu"]["name"] if m["gpu"] else "none"
    lines = [
        "# pixelvit benchmarks",
        "",
        f"Command: `{results['command']}` (profile `{results['profile']}`), {results['started']}, "
        f"total {results['total_runtime_s']:.0f} s.",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus_usable']} usable cores, {m['memory_gb']} GB; torch {m['torch']} "
        f"({m['torch_num_threads']} threads, {m['cpu_capability']}), timm {m['timm']}, Python {m['python']}; "
        f"OMP_WAIT_POLICY={m['OMP_WAIT_POLICY']}, OMP_NUM_THREADS={m['OMP_NUM_THREADS']}; GPU: {gpu_name}; "
        f"load average (1/5/15 min) {m['load_average_1_5_15']} at the start, {results['load_average_at_end']} at the end; "
        f"git {m['git_commit']}.",
    ]
    for name, section in results["sections"].items():
        title, module = SECTIONS[name]
        lines += ["", f"## {title}", ""]
        if "error" in section:
            lines.append(f"ERROR: {section['error']}")
        elif "not_selected" in section:
            lines.append(f"Not run: {section['not_selected']}")
        else:
            lines += module.markdown(section)
            if "runtime_s" in section:
                lines += ["", f"Section runtime {section['runtime_s']:.0f} s."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------------


def _check_finite(obj, path="results"):
    """Raise if any number in the results is NaN or infinite (json.dumps would write invalid JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{path} is {obj}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{path}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_finite(v, f"{path}[{i}]")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="fewer configurations and repetitions: < 2 min on 2 CPU cores"
    )
    size.add_argument(
        "--tiny",
        action="store_true",
        help="smallest sizes, seconds; checks the machinery (numbers meaningless)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(SECTIONS),
        metavar="NAME",
        help=f"run only these sections: {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default benchmarks/results; .../quick or .../tiny for those profiles)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    profile = "quick" if args.quick else "tiny" if args.tiny else "full"
    out = args.out or (REPO_ROOT / "benchmarks" / "results" / ("" if profile == "full" else profile))
    torch.set_num_threads(2)
    command = "python -m benchmarks" + ("" if not argv else " " + shlex.join(argv))
    started = time.perf_counter()
    results = {
        "command": command,
        "argv": argv,
        "profile": profile,
        "settings": PROFILES[profile],
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "sections": {},
    }
    print(f"{command}  (profile {profile}, output {out})")
    failed = []
    for name, (title, module) in SECTIONS.items():
        if args.only and name not in args.only:
            results["sections"][name] = {"not_selected": f"not in --only {' '.join(args.only)}"}
            continue
        print(f"\n== {title}")
        t0 = time.perf_counter()
        try:
            section = module.run(**PROFILES[profile][name])
        except Exception as error:  # noqa: BLE001 - record it, run the other sections, fail at the end
            traceback.print_exc()
            section = {"error": f"{type(error).__name__}: {error}"[:3000]}
            failed.append(name)
        section["runtime_s"] = time.perf_counter() - t0
        results["sections"][name] = section
    results["total_runtime_s"] = time.perf_counter() - started
    results["load_average_at_end"] = (
        [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    )
    _check_finite(results)

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    markdown = to_markdown(results)
    (out / "results.md").write_text(markdown)
    written = ["results.json", "results.md"]
    growth = results["sections"].get("cost_growth", {})
    if "points" in growth:
        (out / "cost_growth.json").write_text(json.dumps(cost_growth.notebook_json(growth), indent=1) + "\n")
        written.append("cost_growth.json")
    print("\n" + markdown)
    print(f"wrote {', '.join(str(out / w) for w in written)}; total {results['total_runtime_s']:.0f} s")
    if failed:
        print(f"FAILED sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
