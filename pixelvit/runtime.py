"""Two process-wide CPU settings that `import pixelvit` makes, because no user should have to know them.

1. **glibc's malloc keeps freed memory** (Linux with glibc only). By default glibc gives every freed block
   above its mmap threshold (at most 32 MB) back to the kernel, and the next training step faults the same
   pages in again: an Adventurer-nano training step at patch 1 (batch 64) took ~2 million page faults and
   ~4 s of system time in a 9-11 s step. `mallopt(M_MMAP_MAX, 0)` serves large blocks from the heap
   instead, and a trim threshold of 2 GB (the largest mallopt takes) keeps the heap's free top for the next step: the same step runs
   ~1.7x faster on one thread (`python -m benchmarks --only training`). PyTorch's CPU performance guide
   recommends jemalloc or TCMalloc for the same reason; those must be preloaded before the process starts
   (LD_PRELOAD), which a notebook user cannot do, while mallopt works from inside the running process, at
   any time: later allocations follow it. The cost: the process keeps its peak heap until it exits
   (the resident size no longer shrinks after a large step; the peak itself is not higher).

2. **OpenMP threads spin briefly before they sleep.** With OMP_WAIT_POLICY=PASSIVE (pixelvit's Makefile
   sets it: with the default policy, threads spin for up to ~3 ms and a shared 2-core machine ran 10x
   slower), a thread sleeps the moment a parallel region ends and every one of the thousands of small
   ops in a step pays to wake it up: two threads trained Adventurer no faster than one. GOMP_SPINCOUNT
   (below) lets a thread spin ~0.1 ms first: long enough to catch the next op, short enough to yield the
   core to another process. libgomp reads it once, when it is loaded (with torch), so pixelvit can set it
   only when `import pixelvit` comes before `import torch`; `describe()` says whether it did.

`PIXELVIT_CPU_TUNING=0` in the environment turns both off (set it before `import pixelvit`). Neither
setting changes a single number a model computes: only where memory comes from and how threads wait
(tests/test_runtime.py checks the weights after training steps are bit-identical with and without).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

SWITCH = "PIXELVIT_CPU_TUNING"
SPIN_COUNT = "10000"  # libgomp spins ~100,000 times per millisecond: ~0.1 ms before a waiting thread sleeps

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: 2 GB, the largest; a free top below it stays in the heap

# what configure() did, for describe(); empty until configure() has run
_state: dict[str, str] = {}


def enabled() -> bool:
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _libgomp_loaded() -> bool:
    """Whether libgomp is already mapped into this process (then GOMP_SPINCOUNT is read and fixed)."""
    try:
        with open("/proc/self/maps") as maps:
            return "libgomp" in maps.read()
    except OSError:  # not Linux: assume it is if torch is imported
        return "torch" in sys.modules


def _keep_freed_memory() -> str:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"not applicable ({platform.system()} {platform.libc_ver()[0] or 'without glibc'})"
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError) as error:
        return f"failed ({error})"
    return "on" if ok else "failed (mallopt returned 0)"


def _spin_before_sleeping() -> str:
    if "GOMP_SPINCOUNT" in os.environ:
        return f"set by the environment (GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']})"
    if _libgomp_loaded():
        return ("too late: torch was imported before pixelvit (import pixelvit first, or set "
                f"GOMP_SPINCOUNT={SPIN_COUNT} before starting Python)")
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return f"on (GOMP_SPINCOUNT={SPIN_COUNT})"


def configure() -> None:
    """Apply both settings once (called by `import pixelvit`); does nothing when PIXELVIT_CPU_TUNING=0."""
    if _state:
        return
    if not enabled():
        _state.update(malloc=f"off ({SWITCH}=0)", threads=f"off ({SWITCH}=0)")
        return
    threads = _spin_before_sleeping()
    _state.update(malloc=_keep_freed_memory(), threads=threads)


def describe() -> str:
    """Two lines saying whether each setting is on, e.g. for notebook 00 and `pixelvit.ops.describe_backends`."""
    configure()
    return (f"CPU runtime ({SWITCH}=0 turns it off, see pixelvit.runtime):\n"
            f"  malloc keeps freed memory (no page faults per step): {_state['malloc']}\n"
            f"  OpenMP threads spin ~0.1 ms before sleeping:         {_state['threads']}")
