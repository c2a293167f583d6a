"""Low-level ops. `ssd`: the Mamba-2 SSD scan (reference implementations, fast CPU paths and a kernel
dispatcher). `ssd_autograd`: the chunked scan with a hand-derived backward. `mixer`: the Mamba-2 mixer
streamed for inference. `mixer_autograd`: the mixer as one autograd Function with a hand-written backward
(the CPU training path)."""

from pixelvit.ops.ssd import (
    CPU_CHUNK_SIZE,
    GPU_CHUNK_SIZE,
    available_backends,
    default_chunk_size,
    describe_backends,
    select_backend,
    ssd_chunked,
    ssd_fast,
    ssd_scan,
    ssd_sequential,
    ssd_streaming,
)
from pixelvit.ops.ssd_autograd import ssd_trainable

__all__ = [
    "CPU_CHUNK_SIZE",
    "GPU_CHUNK_SIZE",
    "available_backends",
    "default_chunk_size",
    "describe_backends",
    "select_backend",
    "ssd_chunked",
    "ssd_fast",
    "ssd_scan",
    "ssd_sequential",
    "ssd_streaming",
    "ssd_trainable",
]
