"""What the numbers were measured on, and the two measuring tools every section shares.

* `machine_info()`  - CPU model, cores, load, torch/timm versions, thread and OpenMP settings, GPU.
* `alternate()`     - time several callables in alternation (A B, B A, A B, ...) after a warm-up, so that
                      a neighbour's burst of work on a shared machine slows A and B alike; the ratio of
                      adjacent A and B times is the number to trust, more than either time alone.
* `measure_case()`, `run_in_fresh_process()` - peak memory of a forward+backward, measured in a fresh
                      python process from the kernel's peak-RSS counter, plus the bytes autograd saved
                      for the backward pass (a deterministic count, no noise); see MEMORY_METHOD.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """HEAD, marked when the tree has uncommitted changes. A slow or failing `git status` (it reads every
    file; a fresh worktree on a loaded machine can take seconds) only leaves the mark unknown: it used to
    throw the commit away too, and a results file recorded `git None`."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)

    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    try:
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError) as error:
        return commit.stdout.strip() + f" (uncommitted changes unknown: {type(error).__name__})"
    if status.returncode != 0:
        return commit.stdout.strip() + " (uncommitted changes unknown: git status failed)"
    return commit.stdout.strip() + (" (uncommitted changes)" if status.stdout.strip() else "")


def machine_info() -> dict:
    import timm

    info = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "git_commit": _git_commit(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "memory_gb": round(props.total_memory / 1e9, 1),
            "cuda": torch.version.cuda,
            "capability": f"{props.major}.{props.minor}",
        }
    return info


# ---------------------------------------------------------------------------------------------------
# time: alternated repetitions, medians
# ---------------------------------------------------------------------------------------------------


def alternate(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    timer=None,
    cpu_times: dict | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured in alternation after `warmup` untimed calls of each.

    Repetition i runs the functions in order for even i and in reverse order for odd i (A B, B A, ...),
    so a slow patch of the shared machine hits both sides. `timer(fn) -> seconds` can replace the
    default wall clock (the GPU section passes a CUDA-event timer). If `cpu_times` (a dict) is given, it
    receives the process CPU seconds of each call too: time this process's threads actually ran, which
    a neighbour taking the cores does not inflate (cache and memory-bandwidth sharing still do).
    """
    timer = timer or _wall_time
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    if cpu_times is not None:
        cpu_times.update({name: [] for name in names})
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            cpu_start = time.process_time()
            times[name].append(timer(fns[name]))
            if cpu_times is not None:
                cpu_times[name].append(time.process_time() - cpu_start)
    return times


def _wall_time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values) -> float:
    return float(statistics.median(values))


def spread(values) -> list[float]:
    """[25th, 75th] percentile: how much the repetitions disagreed (the shared machine's noise)."""
    if len(values) < 2:
        return [float(values[0])] * 2
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [float(q[0]), float(q[2])]


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over repetitions of numerator[i] / denominator[i]: each pair was measured back to back."""
    return median(ratios(numerator, denominator))


def ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


# ---------------------------------------------------------------------------------------------------
# memory: measured in a fresh process
# ---------------------------------------------------------------------------------------------------

MEMORY_METHOD = (
    "all memory cases of a section run in ONE fresh python process (not the one that timed them), after a "
    "small warm-up step that loads the libraries. Before each case: gc.collect(), malloc_trim(0) (glibc "
    "gives freed heap back to the OS, so an earlier case's freed memory cannot hide this one's) and a reset "
    "of the kernel's peak-RSS counter (echo 5 > /proc/self/clear_refs). peak_mb = VmHWM after one "
    "forward+backward minus VmRSS before it, inputs and model already built: what the call adds at its "
    "peak (saved activations, gradients, temporaries, allocator slack). saved_mb = bytes of the distinct "
    "storages autograd saved for backward during the forward (torch.autograd.graph.saved_tensors_hooks; "
    "parameters and inputs excluded): exact and noise-free. Linux only (peak_mb is null elsewhere)."
)


class SavedTensorCounter:
    """Context manager: bytes of the distinct storages autograd saves for the backward pass.

    Each storage is counted once (a view and its base share one); `exclude` (parameters, inputs) is not
    counted: those exist whether or not a forward runs.
    """

    def __init__(self, exclude=()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._seen: set[int] = set()
        self.bytes = 0

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._seen and key not in self._exclude:
            self._seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _release_freed_memory():
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_case(loss_fn: Callable[[], torch.Tensor], exclude=()) -> dict:
    """Peak RSS added by `loss_fn().backward()` and the bytes autograd saved; call in a fresh process."""
    can_reset = Path("/proc/self/clear_refs").exists()
    _release_freed_memory()
    if can_reset:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        before_kb = status_kb("VmRSS")
    with SavedTensorCounter(exclude=exclude) as saved:
        loss = loss_fn()
    loss.backward()
    peak_mb = (status_kb("VmHWM") - before_kb) / 1024 if can_reset else None
    return {"peak_mb": peak_mb, "saved_mb": saved.bytes / 2**20}


def run_in_fresh_process(module: str, function: str, kwargs: dict, timeout: float = 1800):
    """`module.function(**kwargs)` in a new python process with 2 threads; its JSON-able return value.

    The child inherits the environment (OMP_WAIT_POLICY included).
    """
    code = (
        "import importlib, json, sys, torch; torch.set_num_threads(2); "
        "fn = getattr(importlib.import_module(sys.argv[1]), sys.argv[2]); "
        "print('RESULT ' + json.dumps(fn(**json.loads(sys.argv[3]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, module, function, json.dumps(kwargs)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"{module}.{function} failed in its subprocess (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )
