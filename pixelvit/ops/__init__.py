"""Low-level ops. `ssd`: the Mamba-2 SSD scan (reference implementations and a kernel dispatcher)."""

from pixelvit.ops.ssd import (
    CPU_CHUNK_SIZE,
    available_backends,
    describe_backends,
    select_backend,
    ssd_chunked,
    ssd_scan,
    ssd_sequential,
)

__all__ = [
    "CPU_CHUNK_SIZE",
    "available_backends",
    "describe_backends",
    "select_backend",
    "ssd_chunked",
    "ssd_scan",
    "ssd_sequential",
]
