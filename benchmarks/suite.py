"""Every pixelvit benchmark in one process: run the sections, print a table, write the results files.

    python -m benchmarks [--quick | --tiny] [--only NAME ...] [--out DIR]

Sections (names for --only):
    vit_vs_timm   CPU training step of pixelvit's ViT vs timm's VisionTransformer   benchmarks/vit_vs_timm.py
    scan          chunked vs sequential SSD scan on CPU, time and memory           benchmarks/scan.py (+ bench_ssd.py)
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

SECTIONS = {
    "vit_vs_timm": vit_vs_timm.run,
    "scan": scan.run,
    "cost_growth": cost_growth.run,
    "gpu": gpu.run,
    "full_scale": full_scale.run,
    "training_memory": training_memory.run,
    "training_speed": training_speed.run,
}

_GPU_FULL = dict(
    vit=dict(name="vit_base", img_size=64, patch_size=1, batch_sizes=[64, 32, 16, 8, 4, 2, 1]),
    adventurers=["adventurer_tiny", "adventurer_base"],
    adventurer_img=224,
    adventurer_patch=1,
    variants=["reference", "compiled", "mamba_ssm"],
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
            sweep_chunk_sizes=[16, 32, 64, 128, 256],
        ),
        "cost_growth": dict(img_sizes=[32, 64], patch_sizes=[8, 4, 2, 1], batch_size=1, repeats=5),
        "gpu": _GPU_FULL,
        "full_scale": dict(models=[("adventurer_tiny", 224, 1, True), ("adventurer_base", 224, 1, False)]),
        "training_memory": dict(patch_sizes=[2, 1], repeats=5),
        "training_speed": dict(
            cases=[("adventurer_nano", p, "default") for p in (4, 2, 1)] + [("adventurer_nano", 1, "readable_mixer")]
            + [("vit_nano", p, "default") for p in (4, 2, 1)],
            repeats=3,
            profile_case=("adventurer_nano", 1),
        ),
    },
    "quick": {
        "vit_vs_timm": dict(
            configs=[("vit_micro", 8), ("vit_micro", 4), ("vit_tiny", 8)], batch_size=8, repeats=3
        ),
        "scan": dict(lengths=[256, 1024, 4096], repeats=3, max_sequential_length=4096),
        "cost_growth": dict(img_sizes=[32], patch_sizes=[4, 2, 1], batch_size=1, repeats=3),
        "gpu": {
            **_GPU_FULL,
            "adventurers": ["adventurer_tiny"],
            "variants": ["reference", "mamba_ssm"],
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
        "scan": dict(lengths=[64, 128, 256], repeats=1, max_sequential_length=128),
        "cost_growth": dict(img_sizes=[16], patch_sizes=[8, 4], batch_size=1, repeats=2, warmup=0),
        "gpu": dict(
            vit=dict(name="vit_micro", img_size=32, patch_size=4, batch_sizes=[4, 1]),
            adventurers=["adventurer_micro"],
            adventurer_img=32,
            adventurer_patch=4,
            variants=["reference", "mamba_ssm"],
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
# the Markdown report
# ---------------------------------------------------------------------------------------------------


def _f(x, spec=".1f", missing="-"):
    return missing if x is None else format(x, spec)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(map(str, r)) + " |" for r in rows
    ]


def _ops_cell(r) -> str:
    if not r["aten_op_differences"]:
        return "identical"
    pv, tm = r["extra_input_elements_pixelvit_timm"]
    who = "pixelvit fewer" if pv <= tm else "pixelvit MORE"
    return f"{len(r['aten_op_differences'])} differ, {who} elements ({pv:,} vs {tm:,})"


def _md_vit_vs_timm(s) -> list[str]:
    header = [
        "model",
        "patch",
        "tokens",
        "batch",
        "pixelvit img/s",
        "timm img/s",
        "ratio",
        "ratio IQR",
        "CPU-time ratio",
        "aten ops",
    ]
    rows = [
        [r["model"], r["patch_size"], r["tokens"], r["batch_size"], _f(r["pixelvit_images_per_s"]), _f(r["timm_images_per_s"]),
         _f(r["speed_ratio_pixelvit_over_timm"], ".3f"), " - ".join(_f(x, ".3f") for x in r["speed_ratio_iqr"]),
         _f(r["cpu_time_ratio_pixelvit_over_timm"], ".3f"), _ops_cell(r)]
        for r in s["rows"]
    ]  # fmt: skip
    return [
        f"CPU training step (forward + backward + AdamW, fp32, 2 threads), 32x32 images, same weights; medians of "
        f"{s['repeats']} alternated repetitions after {s['warmup']} warm-up. Ratio = timm step time / pixelvit step "
        "time of back-to-back pairs (> 1: pixelvit faster); IQR = its 25th-75th percentile; CPU-time ratio = the "
        "same from process CPU time (not inflated by other jobs taking the cores). aten ops = the ops (with "
        "shapes and strides) of one whole step that differ between the two.",
        "",
        *_table(header, rows),
        "",
        f"Target ({s['target']}): {s['verdict']}.",
    ]


def _md_scan(s) -> list[str]:
    rows = []
    for r in s["rows"]:
        c, q = r["chunked"], r.get("sequential")
        star = "*" if q and q["extrapolated"] else ""
        rows.append(
            [
                r["length"],
                _f(c["fwd_bwd_ms"]),
                _f(q["fwd_bwd_ms"]) + star if q else "-",
                _f(r.get("speedup_fwd_bwd")) + ("x" + star if q else ""),
                _f(c["peak_mb"]),
                _f(c["peak_bytes_per_token"], ".0f"),
                _f(c["saved_bytes_per_token"], ".0f"),
                _f(q["peak_mb"]) + star if q else "-",
                _f(q["saved_mb"]) + star if q else "-",
            ]
        )
    shape = s["shape"]
    lines = [
        f"SSD scan forward+backward, batch {shape['batch']}, {shape['nheads']} heads, headdim {shape['headdim']}, "
        f"d_state {shape['dstate']}, fp32, chunk {s['chunk_size']}; medians of {s['repeats']} alternated repetitions. "
        "B/token = bytes per token.",
        "",
        *_table(
            [
                "length",
                "chunked ms",
                "sequential ms",
                "speed-up",
                "chunked peak MB",
                "chunked peak B/token",
                "chunked saved B/token",
                "sequential peak MB",
                "sequential saved MB",
            ],
            rows,
        ),
    ]
    if any(r.get("sequential", {}).get("extrapolated") for r in s["rows"]):
        lines += ["", "\\* extrapolated linearly from the longest length the loop was run at, not measured."]
    sweep = s.get("chunk_sweep")
    if sweep:
        names = [k for k in sweep if k != "length"]
        lines += [
            "",
            f"Chunk size sweep, chunked fwd+bwd ms at length {sweep['length']}: "
            + ", ".join(f"{n} {sweep[n]['fwd_bwd_ms']:.0f}" for n in names)
            + ".",
        ]
    met = s["speedup_target_met"]
    lines += [
        "",
        f"Target ({s['target']}): speed-up at 4096 "
        + (
            f"{s['speedup_at_4096']:.1f}x, {'met' if met else 'NOT met'}"
            if met is not None
            else "not measured in this run"
        )
        + f"; chunked saved bytes/token max/min over lengths = {s['chunked_saved_bytes_per_token_max_over_min']:.3f} (1 = linear).",
    ]
    return lines


def _per_token(s, arch, index) -> float:
    point = sorted(s["points"], key=lambda p: p["tokens"])[index]
    return point[arch]["saved_mb_per_image"] * 2**20 / point["tokens"]


def _md_cost_growth(s) -> list[str]:
    rows = [
        [
            f"{p['img_size']}x{p['img_size']}",
            p["patch_size"],
            p["tokens"],
            _f(p["vit"]["fwd_bwd_ms_per_image"]),
            _f(p["adventurer"]["fwd_bwd_ms_per_image"]),
            _f(p["time_ratio_vit_over_adventurer"], ".2f"),
            _f(p["vit"]["peak_mb_per_image"]),
            _f(p["adventurer"]["peak_mb_per_image"]),
            _f(p["vit"]["saved_mb_per_image"]),
            _f(p["adventurer"]["saved_mb_per_image"]),
        ]
        for p in sorted(s["points"], key=lambda p: (p["tokens"], p["img_size"]))
    ]
    lines = [
        f"Forward+backward per image, fp32, 2 threads, batch {s['points'][0]['batch_size']}; medians of {s['repeats']} "
        f"alternated repetitions. ViT = {s['models']['vit']}; Adventurer = {s['models']['adventurer']}.",
        "",
        *_table(
            [
                "image",
                "patch",
                "tokens",
                "ViT ms",
                "Adventurer ms",
                "ViT/Adv time",
                "ViT peak MB",
                "Adv peak MB",
                "ViT saved MB",
                "Adv saved MB",
            ],
            rows,
        ),
        "",
        "Memory per token (saved for backward, fewest -> most tokens): "
        + "; ".join(
            f"{arch} {_per_token(s, arch, 0):,.0f} -> {_per_token(s, arch, -1):,.0f} B/token"
            for arch in ("vit", "adventurer")
        )
        + " (constant = linear in tokens).",
        "",
        "Crossover (tokens above which Adventurer is cheaper; " + s["crossover_method"] + "):",
        "",
    ]
    for label, c in s["crossover"].items():
        lines.append(
            f"- {label}: "
            + "; ".join(
                f"{kind} {c[kind]['tokens'] if c[kind]['tokens'] is not None else 'none'} ({c[kind]['note']})"
                for kind in ("time", "peak_memory", "saved_memory")
            )
        )
    return lines


def _md_gpu(s) -> list[str]:
    if "skipped" in s:
        return [f"Skipped: {s['skipped']}. `python -m benchmarks --only gpu` runs it on a CUDA machine."]
    lines = [f"{s['device']}; bf16 matmul peak {s['matmul_peak']['tflops']:.0f} TFLOP/s (measured)."]
    v = s.get("vit", {})
    if "error" in v:
        lines.append(f"ViT: error {v['error']}")
    else:
        lines.append(
            f"{v['model']} at {v['img_size']}px patch {v['patch_size']} ({v['tokens']} tokens), bf16 training step, batch "
            f"{v['batch_size']}: {v['images_per_s']:.1f} img/s, {v['achieved_tflops']:.0f} TFLOP/s = "
            f"{v['fraction_of_matmul_peak']:.0%} of the matmul peak (logits bf16 vs fp32 rel. err "
            f"{v['check']['logits_rel_err_bf16_vs_fp32']:.1e})."
        )
    rows = []
    for a in s.get("adventurer", []):
        for variant, r in a["variants"].items():
            if "images_per_s" in r:
                check = (
                    "reference"
                    if r["check"].get("is_reference")
                    else f"{r['check']['logits_rel_err']:.1e} / {r['check']['grad_rel_err']:.1e}"
                )
                rows.append(
                    [
                        a["model"],
                        variant,
                        r["batch_size"],
                        _f(r["images_per_s"], ".2f"),
                        _f(r["peak_activation_mb_per_image"], ".0f"),
                        _f(r.get("memory_vs_paper_table6_vit"), ".2f"),
                        check,
                    ]
                )
            else:
                rows.append(
                    [
                        a["model"],
                        variant,
                        "-",
                        "-",
                        "-",
                        "-",
                        " ".join((r.get("error") or r.get("skipped")).split())[:160],
                    ]
                )
    if rows:
        a0 = s["adventurer"][0]
        lines += [
            "",
            f"Adventurer at {a0['img_size']}px patch {a0['patch_size']}, bf16 autocast training step; memory = peak "
            "allocated above parameters + optimizer state, per image; paper Table 6 = ViT at the same patch size.",
            "",
            *_table(
                [
                    "model",
                    "scan",
                    "batch",
                    "img/s",
                    "MB/img",
                    "x paper Table 6 ViT",
                    "rel. err logits / grad",
                ],
                rows,
            ),
        ]
    return lines


def _md_full_scale(s) -> list[str]:
    rows = [
        [r["model"], f"{r['img_size']}x{r['img_size']}", r["patch_size"], f"{r['tokens']:,}", _f(r["gflops"], ",.0f"),
         _f(r["seconds"]), _f(r["achieved_gflops_per_s"]), _f(r["matmul_gflops_per_s_before"]),
         _f(r["matmul_gflops_per_s_after"]), _f(r["ratio_to_matmul"], ".2f"), _f(r["ratio_to_matmul_cpu_time"], ".2f"),
         _f(r["peak_rss_mb"], ",.0f"), _f(r["rss_after_imports_mb"], ",.0f"), _f(r["rss_after_model_mb"], ",.0f")]
        for r in s["rows"]
    ]  # fmt: skip
    lines = [
        s["method"],
        "",
        *_table(["model", "image", "patch", "tokens", "GFLOP", "seconds", "GFLOP/s", "matmul GFLOP/s before",
                 "after", "x matmul", "x matmul (CPU time)", "peak RSS MB", "RSS after imports MB",
                 "RSS after model MB"], rows),
    ]
    for row in s["rows"]:
        prof = row.get("profile_one_block")
        if prof:
            top = ", ".join(f"{name} {sec:.2f}" for name, sec in prof["top_ops_self_cpu_s"].items())
            lines += ["", f"Profile of one {row['model']} block at {row['tokens']:,} tokens: {prof['block_self_cpu_s']:.2f} "
                      f"s self CPU time, {prof['matmul_share']:.0%} in matrix products; top ops (s): {top}."]
    for model, verdict in s["verdicts"].items():
        lines += ["", f"Target {model}: " + "; ".join(
            f"{key} {v['target']}: measured {v['measured']:.2f}, {'met' if v['met'] else 'NOT met'}"
            for key, v in verdict.items())]
    return lines


def _md_training_memory(s) -> list[str]:
    rows = [
        [r["patch_size"], f"{r['tokens']:,}", _f(r["vit_saved_mb_per_image"], ".2f"),
         _f(r["adventurer_saved_mb_per_image"], ".2f"), _f(r["adventurer_over_vit"], ".2f"),
         _f(r["adventurer_before_saved_mb_per_image"], ".2f"), _f(r["before_over_vit"], ".2f"),
         _f(r["step_ms_now"], ".0f"), _f(r["step_ms_before"], ".0f"), _f(r["step_speed_ratio_now_over_before"], ".2f")]
        for r in s["rows"]
    ]  # fmt: skip
    return [
        f"{s['models']['vit']} vs {s['models']['adventurer']} (64 x 4), {s['img_size']}x{s['img_size']} images, batch "
        f"{s['batch_size']}, fp32; saved = {s['method']}. \"before\" = the readable mixer and ssd_chunked, as pixelvit "
        f"trained before the memory-lean mixer; step = forward + backward + AdamW, medians of {s['repeats']} alternated "
        "repetitions; speed ratio = before time / now time (> 1: now faster).",
        "",
        *_table(["patch", "tokens", "ViT saved MB/img", "Adventurer saved MB/img", "Adv/ViT", "before MB/img",
                 "before/ViT", "step ms now", "step ms before", "speed ratio"], rows),
        "",
        f"Targets ({s['target']}): memory {'met' if s['memory_target_met'] else 'NOT met'} (worst "
        f"{s['worst_adventurer_over_vit']:.2f}x ViT), step time {'met' if s['speed_target_met'] else 'NOT met'} "
        f"(worst {s['worst_step_speed_ratio']:.2f}x).",
    ]


MARKDOWN = {
    "vit_vs_timm": ("1. pixelvit ViT vs timm, CPU training step", _md_vit_vs_timm),
    "scan": ("2. SSD scan on CPU: chunked vs sequential", _md_scan),
    "cost_growth": ("3. Cost growth: Adventurer vs ViT as tokens grow", _md_cost_growth),
    "gpu": ("4. GPU", _md_gpu),
    "full_scale": ("5. Full scale on CPU: Adventurer at 50,177 tokens", _md_full_scale),
    "training_memory": ("6. Training memory: Adventurer vs ViT", _md_training_memory),
    "training_speed": ("7. Training throughput: Adventurer vs ViT, 1 and 2 threads", training_speed.markdown),
}


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
        title, render = MARKDOWN[name]
        lines += ["", f"## {title}", ""]
        if "error" in section:
            lines.append(f"ERROR: {section['error']}")
        elif "not_selected" in section:
            lines.append(f"Not run: {section['not_selected']}")
        else:
            lines += render(section)
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
    for name, run in SECTIONS.items():
        if args.only and name not in args.only:
            results["sections"][name] = {"not_selected": f"not in --only {' '.join(args.only)}"}
            continue
        print(f"\n== {MARKDOWN[name][0]}")
        t0 = time.perf_counter()
        try:
            section = run(**PROFILES[profile][name])
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
