"""benchmarks/gpu.py (section 4) run end to end on CPU: DEVICE switched to "cpu", tiny sizes, no CUDA call.

A CPU-only machine thus checks every line of the GPU section except the CUDA calls that gpu.py's helpers
(synchronize, cuda_time, memory_allocated, ...) make only on CUDA: the correctness checks, the batch search,
the variants a kernel backend cannot run here (recorded as skipped), the estimates and the Markdown.
"""

import pytest
import torch

from benchmarks import gpu
from pixelvit.costs import estimate
from pixelvit.models import create_model


@pytest.fixture
def on_cpu(monkeypatch):
    monkeypatch.setattr(gpu, "DEVICE", "cpu")
    cuda_calls = []
    for name in ("synchronize", "empty_cache", "memory_allocated", "max_memory_allocated", "reset_peak_memory_stats",
                 "get_device_name"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, name=name, **k: cuda_calls.append(name))
    monkeypatch.setattr(torch.cuda, "Event", lambda *a, **k: cuda_calls.append("Event"))
    yield cuda_calls


def test_the_gpu_section_runs_end_to_end_on_cpu(on_cpu):
    torch.manual_seed(0)
    section = gpu.run(
        vit=dict(name="vit_nano", img_size=8, patch_size=2, batch_sizes=[2]),
        adventurers=["adventurer_nano"], adventurer_img=8, adventurer_patch=2,
        variants=["reference", "mamba_ssm", "fla"], batch_sizes=[2, 1], repeats=1, warmup=0,
        matmul_sizes=(64,), log=lambda *a: None,
    )
    assert on_cpu == []  # no CUDA call on the CPU path
    assert section["device"].startswith("cpu") and section["matmul_peak"]["tflops"] > 0
    vit = section["vit"]
    assert "error" not in vit, vit
    assert vit["images_per_s"] > 0 and vit["tokens"] == 17 and 0 < vit["check"]["logits_rel_err_bf16_vs_fp32"] < 0.05
    (adventurer,) = section["adventurer"]
    reference = adventurer["variants"]["reference"]
    assert reference["check"] == {"is_reference": True} and reference["images_per_s"] > 0, reference
    for kernel in ("mamba_ssm", "fla"):  # a kernel backend cannot run on CPU: skipped, with the reason
        assert "needs CUDA tensors" in adventurer["variants"][kernel]["skipped"]

    # tokens: 4 x 4 patches + the class token through the blocks, + the average token through the mixer
    model = create_model("adventurer_nano", img_size=8, patch_size=2)
    assert adventurer["tokens"] == model.num_tokens == 17
    assert adventurer["tokens_through_mixer"] == model.num_tokens + 1 == 18
    # the estimate is made at the chunk the scan uses on DEVICE
    assert adventurer["estimate_chunk_size"] == 64
    lines = "\n".join(gpu.markdown(section))
    assert "| adventurer_nano | reference | 2 |" in lines and "18 tokens through the mixer" in lines
    assert "scan chunk 64" in lines


def test_the_gpu_estimate_is_made_at_the_gpu_chunk_and_counts_the_mixer_tokens():
    """Adventurer-Tiny at 224 px patch 1: 50,177 tokens through the blocks, 50,178 through the mixer, and the
    scan's FLOPs at chunk 256 (the GPU kernels'), not the CPU's 64. (Before: tokens_through_mixer was 50,177
    and the estimate used chunk 64.)"""
    est = gpu.mixer_estimate("adventurer_tiny", 224, 1, device="cuda")
    assert est["tokens"] == 50177 and est["tokens_through_mixer"] == 50178
    assert est["estimate_chunk_size"] == 256
    assert est["estimated_gflops_per_image"] == estimate("adventurer_tiny", 224, 1, chunk_size=256)["gflops"]
    assert est["estimated_gflops_per_image"] != estimate("adventurer_tiny", 224, 1, chunk_size=64)["gflops"]
