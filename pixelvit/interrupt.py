"""Stop training cleanly on Ctrl-C or SIGTERM: finish the step, save a checkpoint, then stop.

Without this, Ctrl-C raises KeyboardInterrupt wherever Python happens to be (perhaps halfway through
an optimizer update) and every step since the last checkpoint is lost. While `StopRequests` listens,
the first SIGINT (Ctrl-C, or Jupyter's interrupt button) or SIGTERM (a scheduler or session ending)
only sets a flag; the training loop looks at it after every step, saves a checkpoint and raises
`TrainingInterrupted`, which says how to resume. A second signal goes to the handler that was there
before, so Ctrl-C twice stops at once.

Hand-written because timm has nothing like it and the training frameworks that do (Lightning,
Accelerate) would own the whole loop. Python runs signal handlers only in the main thread, so
elsewhere (a training loop started from a thread) nothing is installed and signals act as usual.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from tqdm.auto import tqdm

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a signal after saving a checkpoint; the message says how to resume.

    A KeyboardInterrupt, so `except Exception` (a sweep, a notebook helper) does not swallow it.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # what a shell reports for a process the signal ended: 130, 143


class StopRequests:
    """stop.listen(); after each step: if stop.requested(processes, device), save and raise stop.interrupted(...);
    at the end (and in `finally`): stop.close()."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}  # signal -> the handler to put back
        self.pid = os.getpid()

    def listen(self):
        """Catch SIGINT and SIGTERM from now on (in the main thread; elsewhere Python cannot)."""
        if threading.current_thread() is threading.main_thread() and not self.previous:
            self.previous = {signum: signal.signal(signum, self._request) for signum in SIGNALS}

    def close(self):
        """Put the handlers from before `listen` back (again: nothing happens)."""
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _request(self, signum, frame):
        if os.getpid() != self.pid:  # a forked data-loading worker inherited the handler: the parent stops it
            return
        self.signum = signum
        self.close()  # the next signal acts at once
        tqdm.write(f"{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                   "(send it again to stop at once, losing the steps since the last checkpoint)", file=sys.stderr)

    def requested(self, processes, device) -> bool:
        """Whether any process got a signal (under DDP every process must stop after the same step)."""
        if not processes.distributed:
            return self.signum is not None
        return processes.sum([self.signum is not None], device)[0] > 0

    def interrupted(self, step: int, steps: int, run_dir) -> TrainingInterrupted:
        signum = self.signum or signal.SIGTERM
        cause = signal.Signals(signum).name if self.signum else "a signal to another process"
        return TrainingInterrupted(
            f"stopped by {cause} at step {step} of {steps}; the checkpoint is in {run_dir}/checkpoints: "
            "train the same config again (the same command, or the same cell) to resume exactly", signum)
