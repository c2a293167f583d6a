"""`python -m benchmarks`: see benchmarks/suite.py."""

import os

# Before torch is imported: idle OpenMP threads sleep instead of spinning. With the default policy a
# 2-thread run on a shared 2-core machine was ~10x slower (the spinning threads steal each other's core).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402

import pixelvit  # noqa: E402, F401  (before torch, as a user's process: pixelvit.runtime's settings take effect)
from benchmarks.suite import main  # noqa: E402

sys.exit(main())
