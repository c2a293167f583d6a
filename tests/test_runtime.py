"""pixelvit.runtime: `import pixelvit` stops the per-step page faults of glibc's malloc and changes no result.

Each case runs in a fresh process (the settings are process-wide and made at import), once as a user's
process is (`import pixelvit`, nothing set by hand) and once with PIXELVIT_CPU_TUNING=0.
"""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the malloc setting exists only on Linux with glibc")

# Three training steps of a one-block adventurer_nano at patch 1 (1,025 tokens), batch 64: its largest
# activations, (64, 1026, 292) floats = 77 MB, are above glibc's largest mmap threshold (32 MB), so without
# the setting every step maps them anew and faults them in page by page.
TRAIN = textwrap.dedent("""
    import hashlib, json, resource
    import pixelvit, torch
    from pixelvit.models import create_model
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("adventurer_nano", patch_size=1, depth=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step()  # the first step grows the heap: not counted
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(); step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2
    weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    print(json.dumps({"faults_per_step": faults, "weights": weights, "describe": pixelvit.runtime.describe()}))
""")


def run(code, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("PIXELVIT_CPU_TUNING", "GOMP_SPINCOUNT")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env={**environment, "OMP_WAIT_POLICY": "PASSIVE", **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@glibc_only
@pytest.mark.slow
def test_training_steps_do_not_page_fault_and_the_weights_are_bit_identical():
    tuned = run(TRAIN)
    plain = run(TRAIN, PIXELVIT_CPU_TUNING="0")
    # measured: ~0.4 M faults per step without the setting, a few thousand with it (the rest is the kernel's
    # own reclaim on this kind of machine); 77 MB of fresh pages alone is ~19,000 faults per tensor
    assert tuned["faults_per_step"] < plain["faults_per_step"] / 4, (tuned, plain)
    assert tuned["weights"] == plain["weights"]  # where memory comes from changes no number
    assert "malloc keeps freed memory (no page faults per step): on" in tuned["describe"]
    assert "off (PIXELVIT_CPU_TUNING=0)" in plain["describe"]


FREE_AND_ALLOCATE = textwrap.dedent("""
    import json, resource
    ORDER = {order!r}
    if ORDER == "pixelvit first":
        import pixelvit  # noqa: F401
    import torch
    if ORDER == "torch first":
        import pixelvit  # noqa: F401
    for _ in range(3):  # 64 MB, three times: the heap grows to hold it (or a map is made)
        torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):  # what a training step does: free a large tensor and allocate it again
        torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
    print(json.dumps({{"faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5}}))
""")


@glibc_only
@pytest.mark.parametrize("order", ["pixelvit first", "torch first"])
def test_a_freed_large_tensor_is_reused_without_faulting_whichever_is_imported_first(order):
    tuned = run(FREE_AND_ALLOCATE.format(order=order))
    plain = run(FREE_AND_ALLOCATE.format(order="no pixelvit"))
    assert plain["faults_per_step"] > 10_000  # 64 MB of fresh 4 KB pages each time: 16,384 faults
    assert tuned["faults_per_step"] < plain["faults_per_step"] / 4, (tuned, plain)  # measured: 0-3,300


def test_the_thread_setting_says_when_it_came_too_late():
    from pixelvit.runtime import SPIN_COUNT

    code = "import torch, pixelvit, json; print(json.dumps({'d': pixelvit.runtime.describe()}))"
    assert "too late: torch was imported before pixelvit" in run(code)["d"]
    code = "import pixelvit, os, json; print(json.dumps({'d': os.environ.get('GOMP_SPINCOUNT')}))"
    assert run(code)["d"] == SPIN_COUNT
