"""The CIFAR-10 scaling campaign (issue 16): a resumable queue of pixelvit.train runs that spans sessions.

    python tools/cifar_campaign.py pilot     # 50 steps of every kind of run: images/s now -> results/cifar10_nano/pilot.json
    python tools/cifar_campaign.py plan      # each run: done / partial / pending, hours left; running: img/s, ends ~HH:MM; latest epoch top-1
    python tools/cifar_campaign.py start     # `run` in the background (1 thread, nice 15, own session), prints its pid
    python tools/cifar_campaign.py start --parallel 2   # two such workers sharing the queue (an idle 2-core machine)
    python tools/cifar_campaign.py run       # train the queue in order, in this process
    python tools/cifar_campaign.py collect   # results/cifar10_nano/: runs.csv, summary.csv, extend_vs_scale.csv, figures, README.md

What runs: the nano models (64 wide x 4 deep) on `cifar10_jpeg` (../shared/data) at 32 x 32, top-1 on all
10,000 test images, the same recipe and number of steps for every run (BUDGETS below):

* the sweep: Adventurer at patch 8 / 4 / 2 / 1 and ViT at 8 / 4 / 2, seeds 0 1 2 (patch 1: seed 0 first);
* the extending-vs-scaling ablation (the paper's Table 5, pixelvit.extend): Adventurer at patch 8 with its
  4 x 4 token grid interpolated 2x / 4x / 8x (64 / 256 / 1,024 tokens, no information finer than 8 x 8)
  against the sweep's patch 4 / 2 / 1 runs with the same token counts, which serve as the "scale" rows.

Why it can stop at any moment: every run is an ordinary pixelvit.train run in its own folder under
~/.cache/pixelvit/runs/cifar10_nano (outside the work tree), checkpointed every 25 steps and at every
epoch end; `run` skips finished runs and resumes a stopped one from its last checkpoint, exactly
(pixelvit.train's resume). Runs whose rows are already committed in results/cifar10_nano/runs.csv are
skipped too, so a machine without that cache does not redo finished work (a run cut short on such a
machine starts again). Several `run`s (workers) may share the queue: each takes the lock of the job it trains
(runs dir / locks / NAME.lock), and the others pass that job by, so no two processes ever write one folder.
The queue is ordered so that what finishes first is most useful: seed 0 of the cheap grid, the other
seeds, the ablation, then the expensive patch-1 runs.

One thread only (torch.set_num_threads(1), OMP_NUM_THREADS=1) and nice 15: the campaign shares 2 cores
with interactive work and tests.

On a CUDA machine the same campaign at a larger budget (bf16 autocast, batch 256, 30 epochs, ViT at
patch 1 too), into ~/.cache/pixelvit/runs/cifar10_nano_gpu and results/cifar10_nano_gpu:

    python tools/cifar_campaign.py --budget gpu run && python tools/cifar_campaign.py --budget gpu collect
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported anywhere in this process
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
DATASET, IMG_SIZE = "cifar10_jpeg", 32
TRAIN_IMAGES = 50_000
MODELS = {"adventurer": "adventurer_nano", "vit": "vit_nano"}


@dataclass(frozen=True)
class Budget:
    """What every run of one campaign gets; the same for every model, patch size and seed."""

    name: str
    epochs: int
    batch: int
    lr: float  # AdamW peak; 10 % warmup, cosine to 1e-5, label smoothing 0.1, crop + flip (pixelvit.train)
    device: str
    vit_patch1: bool  # ViT at patch 1 (1,024 tokens of attention): only where a GPU makes it affordable
    workers: int = 0  # DataLoader workers (0: decode in the training process, best on 1-2 cores)

    @property
    def steps(self) -> int:
        return self.epochs * (TRAIN_IMAGES // self.batch)

    @property
    def runs_dir(self) -> Path:  # outside the work tree; kept on the machine between sessions when it is
        default = f"~/.cache/pixelvit/runs/cifar10_nano{'' if self.name == 'cpu' else '_' + self.name}"
        return Path(os.environ.get("PIXELVIT_CAMPAIGN_RUNS", default)).expanduser()

    @property
    def results(self) -> Path:
        return REPO / "results" / f"cifar10_nano{'' if self.name == 'cpu' else '_' + self.name}"


BUDGETS = {
    # 2 shared CPU cores, one thread: 3 epochs (2,343 steps of 64), 3x the committed one-epoch sweeps, with a
    # test pass after every epoch to show whether the ranking at epoch 1 holds. The pilot (results/cifar10_nano/
    # pilot.json: 2.2 img/s at patch 1 ... 161 img/s for ViT at patch 8, 1 thread under a load of ~7) puts the
    # queue up to the first patch-1 run at ~53 single-thread hours under that load: many sessions, so the
    # queue is ordered for what finishes first to be useful, and every run resumes where it stopped.
    "cpu": Budget("cpu", epochs=3, batch=64, lr=2e-3, device="cpu", vit_patch1=False),
    # a CUDA machine (bf16 autocast, pixelvit.train's default there): 30 epochs of 256, lr scaled by
    # sqrt(256 / 64), ViT at patch 1 too. Not yet run: no GPU numbers are committed.
    "gpu": Budget("gpu", epochs=30, batch=256, lr=4e-3, device="cuda", vit_patch1=True, workers=4),
}
BUDGET = BUDGETS["cpu"]  # main() selects with --budget


@dataclass(frozen=True)
class Job:
    """One run of the campaign. method: scale (an ordinary patch size), extend (patch 8, token grid
    interpolated `factor` times per side) or upsample (patch 8 on images upsampled `factor` times)."""

    model: str
    patch: int
    seed: int
    method: str = "scale"
    factor: int = 1  # extend: the token grid is interpolated this many times per side

    @property
    def tokens(self) -> int:
        """Patch tokens (the class token not counted, as in the paper's tables)."""
        return (IMG_SIZE // self.patch * self.factor) ** 2

    @property
    def name(self) -> str:
        kind = f"p{self.patch}" + (f"-{self.method}{self.factor}" if self.method != "scale" else "")
        return f"{self.model}-{kind}-seed{self.seed}"

    def config(self, steps: int | None = None, **overrides):
        from pixelvit.train import TrainConfig

        b = BUDGET
        extra = {self.method: self.factor} if self.method != "scale" else {}  # extend=f or upsample=f
        values = dict(model=self.model, dataset=DATASET, img_size=IMG_SIZE, patch_size=self.patch,
                      steps=steps or b.steps, batch_size=b.batch, lr=b.lr, seed=self.seed, device=b.device,
                      runs_dir=str(b.runs_dir), eval_every=TRAIN_IMAGES // b.batch, checkpoint_every=25,
                      num_workers=b.workers, **extra)
        values.update(overrides)
        return TrainConfig(**values)


def queue() -> list[Job]:
    """Every run, most useful first: complete cells cheaply (cheapest first within seed 0, then seeds 1
    and 2 of the cheap cells), the ablation's seed 0, patch 2's other seeds, patch 1 beside the ablation's
    1,024-token run, the ablation's other seeds, the rest."""
    adv, vit = MODELS["adventurer"], MODELS["vit"]
    jobs = [Job(vit, 8, 0), Job(vit, 4, 0), Job(adv, 8, 0), Job(adv, 4, 0), Job(vit, 2, 0), Job(adv, 2, 0)]
    jobs += [Job(model, p, s) for s in (1, 2) for model, p in ((vit, 8), (vit, 4), (adv, 8))]
    jobs += [Job(adv, 4, s) for s in (1, 2)] + [Job(vit, 2, s) for s in (1, 2)]
    jobs += [Job(adv, 8, 0, "extend", 2), Job(adv, 8, 0, "extend", 4)]
    jobs += [Job(adv, 2, s) for s in (1, 2)]
    # the two 1,024-token runs of the must-show (patch 1, and extending patch 8 eight times) side by side:
    # each is ~7 single-thread hours, so with two workers they finish sessions sooner than one after the other
    jobs += [Job(adv, 1, 0), Job(adv, 8, 0, "extend", 8)]
    jobs += [Job(adv, 8, s, "extend", f) for s in (1, 2) for f in (2, 4)]
    jobs += [Job(adv, 1, s) for s in (1, 2)]
    # upsampling the image and keeping the patch: scaling in disguise (pixelvit.extend's docstring), checked
    jobs += [Job(adv, 8, 0, "upsample", f) for f in (2, 4)]
    if BUDGET.vit_patch1:
        jobs += [Job(vit, 1, s) for s in (0, 1, 2)]
    return jobs


# ---------------------------------------------------------------------------------------------
# Where each run stands
# ---------------------------------------------------------------------------------------------
def manifest() -> dict[str, str]:
    """{job name: its run folder}, written by `run` as each job starts (runs dir / manifest.json).

    The folder name holds a hash of the whole config, model config included, so a later change to the
    code (a new config field, say) would give the same job another folder. The manifest keeps every job
    in the folder it started in, and `start` keeps running the code it started with (see pinned_code).
    """
    path = BUDGET.runs_dir / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def run_dir(job: Job) -> Path:
    """The job's run folder. Hashed for the budget's device and one process, not this machine's, so `plan`
    and `collect` of the GPU campaign work on a machine without a GPU too."""
    from pixelvit.train import config_hash, run_dir_of

    known = manifest().get(job.name)
    if known:
        return Path(known)
    config = job.config()
    return Path(run_dir_of(config, config_hash(config, device_type=BUDGET.device, world_size=1)))


def committed_rows() -> dict[str, dict]:
    """Rows of results/cifar10_nano/runs.csv by job name (same budget only): runs finished in an earlier
    session, perhaps on another machine."""
    import csv

    path = BUDGET.results / "runs.csv"
    if not path.exists():
        return {}
    with open(path) as handle:
        return {row["name"]: row for row in csv.DictReader(handle) if int(row["steps"]) == BUDGET.steps}


def state(job: Job, committed: dict) -> tuple[str, int]:
    """("done" | "committed" | "partial" | "pending", steps done)."""
    folder = run_dir(job)
    if (folder / "result.json").exists():
        return "done", BUDGET.steps
    if job.name in committed:
        return "committed", BUDGET.steps
    pointer = folder / "checkpoints" / "latest.json"
    if pointer.exists():
        return "partial", int(json.loads(pointer.read_text())["step"])
    return "pending", 0


def pilot_speeds() -> dict[str, float]:
    path = BUDGET.results / "pilot.json"
    if not path.exists():
        return {}
    return {row["kind"]: row["images_per_s"] for row in json.loads(path.read_text())["rows"]}


def measured_speeds(committed: dict) -> dict[str, float]:
    """Training images/s of the finished runs, median by kind: they ran the whole budget on this machine,
    so they estimate the rest better than the pilot's 50 steps under whatever load the pilot met."""
    import statistics

    by_kind: dict[str, list[float]] = {}
    for job in queue():
        row = finished_row(job, committed)
        if row is not None:
            by_kind.setdefault(kind(job), []).append(float(row["images_per_s"]))
    return {name: statistics.median(values) for name, values in by_kind.items()}


def kind(job: Job) -> str:
    return f"{job.model} p{job.patch}" + (f" {job.method} x{job.factor}" if job.method != "scale" else "")


def estimated_speed(job: Job, pilot: dict, measured: dict) -> float | None:
    """Training images/s to expect: finished runs of the same kind, or of the scaled kind with the same token
    count (an extended run costs what that one costs); else the pilot's, times the median of how much faster
    the finished runs went than the pilot measured them (the load the pilot met is not the load now)."""
    own, same_tokens = kind(job), f"{job.model} p{job.patch // job.factor}"
    for name in (own, same_tokens):
        if name in measured:
            return measured[name]
    import statistics

    base = pilot.get(own) or pilot.get(same_tokens)
    ratios = [measured[name] / pilot[name] for name in measured if pilot.get(name)]
    return base * statistics.median(ratios) if base and ratios else base


def hours_left(job: Job, steps_done: int, speed: float | None) -> float | None:
    if not speed:
        return None
    b = BUDGET
    evals = b.epochs * 10_000 / (3 * speed)  # a test pass per epoch, forward only (~1/3 of a training step)
    return ((b.steps - steps_done) * b.batch / speed + evals * (1 - steps_done / b.steps)) / 3600


def read_metrics(folder: Path) -> list[dict]:
    """The run's metrics.jsonl (pixelvit.runs.MetricsLog): one record per training log line or evaluation."""
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def current_speed(job: Job) -> float | None:
    """images/s of the job's latest logged training steps, None before the first line."""
    for record in reversed(read_metrics(run_dir(job))):
        if record.get("kind") == "train" and record.get("images_per_s"):
            return float(record["images_per_s"])
    return None


def finish_estimate(job: Job, steps_done: int) -> str:
    """', 22.0 img/s now, ends ~22:18 UTC' for a running job: at the speed it trains at now, on this machine
    under its present load, which is what decides whether it finishes within this session."""
    speed = current_speed(job)
    if not speed:
        return ""
    ends = time.gmtime(time.time() + hours_left(job, steps_done, speed) * 3600)
    return f", {speed:.1f} img/s now, ends ~{time.strftime('%H:%M', ends)} UTC"


def latest_evaluation(job: Job) -> str:
    """'epoch 1: 45.73 top-1' for an unfinished run that has evaluated: interim, never a result."""
    for record in reversed(read_metrics(run_dir(job))):
        if record.get("kind") == "eval" and record.get("top1") is not None:
            return f"epoch {record['epoch']:g}: {record['top1']:.2f} top-1"
    return ""


def plan(_args=None) -> int:
    committed = committed_rows()
    pilot, measured = pilot_speeds(), measured_speeds(committed)
    total = 0.0
    print(f"runs dir: {BUDGET.runs_dir}   budget {BUDGET.name}: {BUDGET.steps} steps x {BUDGET.batch} images "
          f"({BUDGET.epochs} epochs) per run")
    for index, job in enumerate(queue(), 1):
        status, steps = state(job, committed)
        left = hours_left(job, steps, estimated_speed(job, pilot, measured)) if status in ("partial", "pending") else 0.0
        total += left or 0.0
        hours = "?" if left is None else f"{left:5.1f} h"
        pid = worker_of(job) if status in ("partial", "pending") else None
        status = "running" if pid else status
        interim = latest_evaluation(job) if status in ("running", "partial") else ""
        notes = ([f"pid {pid}{finish_estimate(job, steps)}"] if pid else []) + ([interim] if interim else [])
        print(f"{index:2d}. {job.name:42s} {job.tokens:5d} tokens  {status:9s} {steps:5d}/{BUDGET.steps}  {hours}"
              + (f"  ({'; '.join(notes)})" if notes else ""))
    print(f"estimated single-thread hours left: {total:.1f} (at the images/s of finished runs; see estimated_speed); "
          "with `start --parallel 2` on an idle 2-core machine about half")
    return 0


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def log(message: str):
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}"  # the pid tells workers apart
    print(line, flush=True)


def one_thread():
    """One intra-op and one inter-op thread on CPU (the machine's other core stays free for tests)."""
    import torch

    if BUDGET.device != "cpu":
        return
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or parallel work already started) in this process
        pass


def lock_file(job: Job) -> Path:
    return BUDGET.runs_dir / "locks" / f"{job.name}.lock"


def claim(job: Job):
    """Take the job's lock without waiting: an open file (release() gives it back), or None when another
    worker holds it. flock: the kernel drops the lock of a worker that is killed, so nothing stays stuck.
    The holder's pid is written into the file for `plan` to read without touching the lock."""
    import fcntl

    path = lock_file(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def release(handle):
    handle.truncate(0)  # no pid: nobody trains this job now
    handle.close()


def worker_of(job: Job) -> int | None:
    """The pid of the live worker training this job, or None."""
    try:
        pid = int(lock_file(job).read_text())
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:  # exists, owned by another user
        pass
    return pid


def remember(job: Job, folder: Path):
    """Add the job's folder to manifest.json (read, change, write under a lock: workers share the file)."""
    import fcntl

    from pixelvit.io import atomic_write_json

    with open(BUDGET.runs_dir / "manifest.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        known = manifest()
        if job.name not in known:
            atomic_write_json(BUDGET.runs_dir / "manifest.json", {**known, job.name: str(folder)})


def device_missing() -> bool:
    """True, after one line saying what to do, when the budget trains on CUDA and this machine has none."""
    import torch

    if BUDGET.device == "cuda" and not torch.cuda.is_available():
        print("cifar_campaign: the gpu budget trains on CUDA and this machine has no CUDA GPU: run it on a GPU "
              "machine, or continue the cpu campaign here (`start`, no --budget)", file=sys.stderr)
        return True
    return False


def run(args) -> int:
    """Train every job nobody has finished or is training, in queue order; a worker of a shared queue."""
    import fcntl

    from pixelvit.train import train

    if device_missing():
        return 2
    one_thread()
    BUDGET.runs_dir.mkdir(parents=True, exist_ok=True)
    # Shared by this version's workers; a `run` of the campaign's first version took it exclusively and
    # knows no job locks, so the two never train side by side.
    campaign_lock = open(BUDGET.runs_dir / "campaign.lock", "a")
    try:
        fcntl.flock(campaign_lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"cifar_campaign: an older `run` holds {BUDGET.runs_dir / 'campaign.lock'}; stop that process "
              "(its run resumes from its last checkpoint) and start again", file=sys.stderr)
        return 2
    import torch

    import pixelvit

    log(f"run: pixelvit from {Path(pixelvit.__file__).parent}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), budget {BUDGET.name}, runs in {BUDGET.runs_dir}")
    committed, elsewhere = committed_rows(), []
    for job in queue():
        if state(job, committed)[0] in ("done", "committed"):
            continue
        held = claim(job)
        if held is None:
            elsewhere.append(job.name)
            continue
        try:
            status, steps = state(job, committed)  # again, under the lock: another worker may just have finished it
            if status == "done":
                continue
            log(f"{job.name}: {'resuming at step ' + str(steps) if steps else 'starting'} ({job.tokens} tokens)")
            folder = run_dir(job)
            remember(job, folder)
            try:
                result = train(dataclasses.replace(job.config(), out=str(folder)), progress=False)
            except Exception as error:  # most likely the code or the machine, not this run: stop, keep the queue
                log(f"{job.name}: FAILED, worker stopped (start again once fixed): {type(error).__name__}: {error}")
                return 1
        finally:
            release(held)
        log(f"{job.name}: top-1 {result.top1:.2f} % after {result.steps} steps, {result.images_per_s:.1f} img/s")
    log(f"worker finished; still being trained by other workers: {', '.join(elsewhere)}" if elsewhere
        else "queue finished")
    return 0


def detach(command: list[str], cwd, env: dict, log, nice: int = 15):
    """Start `command` in its own session (it outlives this shell) at low priority, and return its Popen.

    Linux puts every new session in its own autogroup and shares the CPU fairly between autogroups, so a
    process's own nice value only ranks it inside its group: a detached worker at nice 15 still took a
    full share from the tests and benchmarks beside it (a 2-thread benchmark ran 3-4x slower). Its
    autogroup gets the same nice (/proc/PID/autogroup, see `man 7 sched`), where the kernel has autogroups.
    """
    import subprocess

    process = subprocess.Popen(["nice", "-n", str(nice), *command], cwd=cwd, env=env, stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:  # Popen has returned, so the child has called setsid: its autogroup is its own
        Path(f"/proc/{process.pid}/autogroup").write_text(str(nice))
    except OSError:  # no autogroups here (or not Linux): the nice value alone decides
        pass
    return process


def start(args) -> int:
    """`run` as a detached background process (own session, nice 15, one thread) that survives this shell.

    It runs a copy of a commit (git archive), not the work tree: hours of training must not pick up
    someone's half-finished edit. The first `start` pins the commit it copied (runs dir / code/PINNED);
    later starts, in later sessions too, run that same code, so every run of the campaign is trained,
    hashed and resumed by one version of pixelvit. `start --new-code` pins the current HEAD instead.
    `--parallel N` starts N workers (one thread each) that share the queue (see `run`).
    """
    import subprocess

    if device_missing():
        return 2

    pinned = BUDGET.runs_dir / "code" / "PINNED"
    if pinned.exists() and not args.new_code:
        revision = pinned.read_text().strip()
    else:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout.strip()
    source = BUDGET.runs_dir / "code" / revision[:12]
    if not source.exists():
        partial = source.with_name(source.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", revision], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive, check=True)
        partial.rename(source)
    pinned.write_text(revision + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": str(source),  # this copy of pixelvit, ahead of the installed (editable) one
           "PIXELVIT_SHARED_DATA": os.environ.get("PIXELVIT_SHARED_DATA", str(REPO.parent / "shared" / "data"))}
    log_path = BUDGET.runs_dir / "campaign.log"
    pids = []
    with open(log_path, "a") as out:
        out.write(f"--- start: commit {revision}, code in {source}, {args.parallel} worker(s)\n")
        out.flush()
        for _ in range(args.parallel):
            process = detach([sys.executable, str(source / "tools" / "cifar_campaign.py"), "--budget", BUDGET.name,
                              "run"], cwd=source, env=env, log=out)
            pids.append(str(process.pid))
            time.sleep(2)  # the first worker claims its job before the next one looks at the queue
    print(f"campaign running in the background: pid {', '.join(pids)}, commit {revision[:12]}, log {log_path}")
    return 0


# ---------------------------------------------------------------------------------------------
# The pilot: how fast is each kind of run right now, on this machine, under its current load
# ---------------------------------------------------------------------------------------------
def pilot(args) -> int:
    import tempfile

    from pixelvit.train import train

    if device_missing():
        return 2
    one_thread()
    kinds = {}
    for job in queue():
        if job.method == "scale" or (job.method == "extend" and job.factor < 8):  # the rest cost what scale costs
            kinds.setdefault(kind(job), job)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pixelvit-pilot-") as tmp:
        for name, job in kinds.items():
            # fewer steps where a step is slow: the pilot measures a rate, not a result
            steps = args.steps if job.tokens <= 64 else max(10, args.steps // (2 if job.tokens <= 256 else 4))
            config = job.config(steps=steps, runs_dir=tmp, eval_every=0, checkpoint_every=0, eval_samples=256)
            started = time.perf_counter()
            result = train(config, progress=False)
            rows.append({"kind": name, "tokens": job.tokens, "steps": steps, "images_per_s": round(result.images_per_s, 2),
                         "wall_s": round(time.perf_counter() - started, 1), "load_1min": os.getloadavg()[0]})
            log(f"pilot {name}: {result.images_per_s:.1f} img/s (load {os.getloadavg()[0]:.1f})")
    for row in rows:
        row["hours_per_epoch"] = round(TRAIN_IMAGES / row["images_per_s"] / 3600, 2)
    import torch

    record = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "steps": args.steps, "batch_size": BUDGET.batch,
              "torch_threads": torch.get_num_threads(), "nice": os.nice(0), "cpu_count": os.cpu_count(),
              "note": "training images/s over the pilot's steps (no evaluation), 1 thread, under the "
                      "session's load (other helpers' tests on the same 2 cores)", "rows": rows}
    BUDGET.results.mkdir(parents=True, exist_ok=True)
    from pixelvit.io import atomic_write_json

    atomic_write_json(BUDGET.results / "pilot.json", record)
    print(json.dumps(record, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------
# Collecting: tables, figures and a README from the finished runs (nothing from unfinished ones)
# ---------------------------------------------------------------------------------------------
RUN_COLUMNS = ["name", "model", "method", "patch_size", "factor", "tokens", "seed", "steps", "epochs", "top1",
               "eval_loss", "top1_by_epoch", "wall_s", "images_per_s", "device", "config_hash"]
SUMMARY_COLUMNS = ["model", "method", "patch_size", "factor", "tokens", "n", "mean", "sd", "min", "max", "seeds"]


def finished_row(job: Job, committed: dict) -> dict | None:
    """The run's row when it finished (from its folder, else from the committed runs.csv), else None."""
    folder = run_dir(job)
    if not (folder / "result.json").exists():
        return committed.get(job.name)
    result = json.loads((folder / "result.json").read_text())
    digest = result["config_hash"]
    per_epoch = [f"{record['epoch']:g}:{record['top1']:.2f}" for record in read_metrics(folder)
                 if record.get("kind") == "eval" and record.get("top1") is not None]
    return {"name": job.name, "model": job.model, "method": job.method, "patch_size": job.patch,
            "factor": job.factor, "tokens": job.tokens, "seed": job.seed, "steps": result["steps"],
            "epochs": round(result["epochs"], 3), "top1": round(result["top1"], 2),
            "eval_loss": round(result["eval_loss"], 4), "top1_by_epoch": " ".join(per_epoch),
            "wall_s": round(result["wall_s"], 1), "images_per_s": round(result["images_per_s"], 2),
            "device": result["device"], "config_hash": digest}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean, sample standard deviation (n - 1), range and n over seeds, per (model, method, patch, factor)."""
    import statistics

    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["model"], row["method"], int(row["patch_size"]), int(row["factor"]), int(row["tokens"]))
        cells.setdefault(key, []).append(row)
    out = []
    for (model, method, patch, factor, tokens), members in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2], kv[0][3])):
        values = [float(r["top1"]) for r in members]
        out.append({"model": model, "method": method, "patch_size": patch, "factor": factor, "tokens": tokens,
                    "n": len(values), "mean": round(statistics.mean(values), 2),
                    "sd": round(statistics.stdev(values), 2) if len(values) > 1 else "",
                    "min": min(values), "max": max(values),
                    "seeds": " ".join(str(r["seed"]) for r in sorted(members, key=lambda r: int(r["seed"])))})
    return out


def extend_vs_scale_rows(summary: list[dict]) -> list[dict]:
    """Adventurer at equal token counts: scale = patch 8 / 4 / 2 / 1, extend = patch 8 interpolated x1 / 2 / 4 / 8.

    The 16-token row is the same patch-8 runs under both names, as in the paper's Table 5.
    """
    adv = [r for r in summary if r["model"] == MODELS["adventurer"]]
    rows = []
    for r in adv:
        if r["method"] == "scale":
            rows.append({**r, "method": "scale"})
            if r["patch_size"] == 8:
                rows.append({**r, "method": "extend"})
        else:
            rows.append(dict(r))
    return sorted(rows, key=lambda r: (r["tokens"], r["method"]))


def write_csv(rows: list[dict], columns: list[str], path: Path):
    import csv

    from pixelvit.io import atomic_write

    with atomic_write(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def collect(_args=None) -> int:
    committed = committed_rows()
    jobs = queue()
    rows = [row for job in jobs if (row := finished_row(job, committed)) is not None]
    BUDGET.results.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    ablation = extend_vs_scale_rows(summary)
    write_csv(rows, RUN_COLUMNS, BUDGET.results / "runs.csv")
    write_csv(summary, SUMMARY_COLUMNS, BUDGET.results / "summary.csv")
    write_csv(ablation, SUMMARY_COLUMNS, BUDGET.results / "extend_vs_scale.csv")
    if rows:
        plot_sweep(rows, summary, BUDGET.results / "sweep.png")
    if ablation:  # only once an Adventurer run has finished
        plot_extend_vs_scale(ablation, BUDGET.results / "extend_vs_scale.png")
    (BUDGET.results / "README.md").write_text(report(jobs, rows, summary, ablation, committed))
    print(f"{len(rows)} of {len(jobs)} runs finished -> {BUDGET.results}")
    return 0


def plot_sweep(rows: list[dict], summary: list[dict], path: Path):
    """Left: test top-1 vs tokens, mean +- sd over seeds (dots: single seeds). Right: top-1 after each epoch."""
    from pixelvit.io import atomic_write, new_figure

    figure = new_figure(figsize=(11, 4.2))
    left, right = figure.subplots(1, 2)
    colours = {MODELS["adventurer"]: "tab:blue", MODELS["vit"]: "tab:orange"}
    for model, colour in colours.items():
        cells = [r for r in summary if r["model"] == model and r["method"] == "scale"]
        if not cells:
            continue
        tokens = [c["tokens"] for c in cells]
        left.errorbar(tokens, [c["mean"] for c in cells], yerr=[c["sd"] or 0 for c in cells], marker="o",
                      capsize=4, color=colour, label=f"{model} (mean +- sd)")
        singles = [r for r in rows if r["model"] == model and r["method"] == "scale"]
        left.scatter([int(r["tokens"]) for r in singles], [float(r["top1"]) for r in singles], s=12,
                     color=colour, alpha=0.5)
        for cell in cells:
            left.annotate(f"p{cell['patch_size']} n={cell['n']}", (cell["tokens"], cell["mean"]),
                          textcoords="offset points", xytext=(5, -12), fontsize=8, color=colour)
        for patch in sorted({int(r["patch_size"]) for r in singles}, reverse=True):
            curves = [parse_epochs(r["top1_by_epoch"]) for r in singles if int(r["patch_size"]) == patch]
            epochs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if epochs:
                means = [sum(c[e] for c in curves) / len(curves) for e in epochs]
                right.plot(epochs, means, marker=".", color=colour, alpha=0.35 + 0.15 * (8 // patch).bit_length(),
                           label=f"{model} p{patch}")
    plain_log2(left)
    left.set(xlabel="patch tokens per image (log scale)", ylabel="CIFAR-10 test top-1 (%)",
             title="Smaller patches, same steps")
    left.legend(fontsize=8)
    if not right.get_legend_handles_labels()[0]:
        right.text(0.5, 0.5, "no per-epoch evaluations yet", ha="center", transform=right.transAxes)
    right.set(xlabel="epoch", ylabel="test top-1 (%)", title="During training (seed means)")
    right.set_xticks(range(1, BUDGET.epochs + 1))
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7, ncol=2)
    figure.suptitle(f"nano models (64 x 4) on CIFAR-10 at 32 x 32, {BUDGET.steps} steps of {BUDGET.batch} ({BUDGET.epochs} epochs), "
                    "10,000 test images; measured here on CPU", fontsize=10)
    figure.tight_layout()
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)


def plain_log2(axis):
    """Log-2 x axis with plain numbers (16, 64, 256) instead of powers of two."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_formatter(ScalarFormatter())
    axis.xaxis.set_minor_formatter(NullFormatter())


def parse_epochs(text: str) -> dict[float, float]:
    return {float(e): float(t) for e, t in (item.split(":") for item in str(text or "").split())}


def plot_extend_vs_scale(ablation: list[dict], path: Path):
    """Ours (measured) beside the paper's Table 5 (as reported), top-1 against tokens by method."""
    from pixelvit import paper
    from pixelvit.io import atomic_write, new_figure

    figure = new_figure(figsize=(11, 4.2))
    ours, theirs = figure.subplots(1, 2)
    styles = {"scale": ("tab:blue", "o", "-"), "extend": ("tab:red", "s", "--"), "upsample": ("tab:green", "^", ":")}
    for method, (colour, marker, line) in styles.items():
        cells = [r for r in ablation if r["method"] == method]
        if cells:
            ours.errorbar([c["tokens"] for c in cells], [c["mean"] for c in cells],
                          yerr=[c["sd"] or 0 for c in cells], color=colour, marker=marker, linestyle=line,
                          capsize=4, label=method)
        for model in ("Adventurer-Base 224", "DeiT-Base 128"):
            points = [r for r in paper.extend_vs_scale() if r["method"] == method and r["model"] == model]
            if points:
                theirs.plot([p["tokens"] for p in points], [p["top1"] for p in points], color=colour,
                            marker=marker, linestyle=line, alpha=1.0 if model.startswith("Adv") else 0.5,
                            label=f"{model}, {method}")
    for axis in (ours, theirs):
        plain_log2(axis)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    ours.set(xlabel="patch tokens per image", ylabel="CIFAR-10 test top-1 (%)",
             title="adventurer_nano, CIFAR-10 32 px (measured here)\nextend: patch 8, token grid interpolated")
    theirs.set(xlabel="tokens", ylabel="ImageNet-1k top-1 (%)",
               title=f"Table 5, {paper.REPORTED}\n(not measured here)")
    figure.tight_layout()
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)


def cell(summary: list[dict], model: str, method: str, tokens: int) -> dict | None:
    return next((r for r in summary if r["model"] == model and r["method"] == method and r["tokens"] == tokens), None)


def describe(c: dict) -> str:
    spread = f" +- {c['sd']:.2f}" if c["sd"] != "" else ""
    return f"{c['mean']:.2f}{spread} (n={c['n']})"


def rise_verdicts(summary: list[dict]) -> list[str]:
    """Adventurer, patch 8 -> 4 -> 2 -> 1: does the seed mean rise at every step, relative to the spread?"""
    model, lines = MODELS["adventurer"], []
    for coarse, fine in ((8, 4), (4, 2), (2, 1)):
        a, b = (cell(summary, model, "scale", (IMG_SIZE // p) ** 2) for p in (coarse, fine))
        if a is None or b is None:
            lines.append(f"* patch {coarse} -> {fine}: pending (not every run has finished)")
            continue
        gap = b["mean"] - a["mean"]
        sds = [c["sd"] for c in (a, b) if c["sd"] != ""]
        spread = f"largest seed sd {max(sds):.2f}" if sds else "one seed each: no spread measured yet"
        verdict = f"rises by {gap:+.2f} points" if gap > 0 else f"does NOT rise: falls by {-gap:.2f} points"
        clear = ""
        if sds:
            clear = "; larger than the spread" if abs(gap) > max(sds) else "; within the spread"
        lines.append(f"* patch {coarse} -> {fine}: {describe(a)} -> {describe(b)}: {verdict} ({spread}{clear})")
    return lines


def ablation_verdict(ablation: list[dict]) -> str:
    baseline = (IMG_SIZE // 8) ** 2  # patch 8: the same runs under both names
    both = sorted({r["tokens"] for r in ablation if r["method"] == "extend"} &
                  {r["tokens"] for r in ablation if r["method"] == "scale"} - {baseline})
    if not both:
        return f"Pending: no token count above {baseline} has finished runs of both methods yet."
    tokens = both[-1]
    scale = next(r for r in ablation if r["method"] == "scale" and r["tokens"] == tokens)
    extend = next(r for r in ablation if r["method"] == "extend" and r["tokens"] == tokens)
    gap = scale["mean"] - extend["mean"]
    verdict = "scaling beats extending" if gap > 0 else "scaling does NOT beat extending"
    return (f"At {tokens} tokens, the largest count with finished runs of both: scale {describe(scale)} vs "
            f"extend {describe(extend)}: {verdict} by {gap:+.2f} points.")


def pinned_commit() -> str:
    path = BUDGET.runs_dir / "code" / "PINNED"
    return path.read_text().strip() if path.exists() else ""


def markdown_table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]


def report(jobs: list[Job], rows: list[dict], summary: list[dict], ablation: list[dict], committed: dict) -> str:
    finished = {r["name"] for r in rows}
    lines = [
        "# CIFAR-10 scaling campaign (issue 16)",
        "",
        "Written by `python tools/cifar_campaign.py collect`; do not edit by hand. Measured here, on CPU.",
        "",
        f"Budget, the same for every run: {BUDGET.steps} steps of {BUDGET.batch} images ({BUDGET.epochs} epochs of the 50,000 training "
        f"images), AdamW lr {BUDGET.lr:g} (10 % warmup, cosine), label smoothing 0.1, crop + flip; `{DATASET}` at "
        f"{IMG_SIZE} x {IMG_SIZE}; top-1 on all 10,000 test images, evaluated after every epoch. "
        "Models: `adventurer_nano` and `vit_nano` (64 wide x 4 deep). Tokens are patch tokens (the class "
        "token not counted). Mean and sample sd over seeds; n = number of seeds finished.",
        "",
        f"## Status: {len(finished)} of {len(jobs)} runs finished (collected {time.strftime('%Y-%m-%d %H:%M %Z')})",
        "",
        "Only finished runs enter the tables below; nothing is reported for a run still in progress. "
        "To continue the queue (skips finished runs, resumes the one in progress from its last checkpoint): "
        "`python tools/cifar_campaign.py start`; then `plan` to watch it and `collect` to rewrite this folder. "
        f"Runs live in `{BUDGET.runs_dir.as_posix().replace(str(Path.home()), '~')}`"
        + (f"; the campaign's code is pinned at commit {pinned_commit()[:12]}." if pinned_commit() else "."),
        "",
        "| # | run | tokens | state |",
        "|---|---|---|---|",
    ]
    for index, job in enumerate(jobs, 1):
        status, steps = state(job, committed)
        text = {"done": "finished", "committed": "finished (earlier session)"}.get(
            status, f"in progress: step {steps} of {BUDGET.steps}" if status == "partial" else "pending")
        lines.append(f"| {index} | {job.name} | {job.tokens} | {text} |")
    lines += ["", "## Top-1 (%) by model and patch size (summary.csv)", ""]
    lines += markdown_table(summary, SUMMARY_COLUMNS) if summary else ["No run has finished yet."]
    lines += ["", "### Does Adventurer rise at every step 8 -> 4 -> 2 -> 1?", ""] + rise_verdicts(summary)
    lines += ["", "## Extending vs scaling (extend_vs_scale.csv)", "",
              "`scale`: a smaller patch. `extend`: patch 8, its 4 x 4 token grid bilinearly interpolated 2x / 4x / 8x "
              "per side (pixelvit.extend), so the sequence is as long as the scaled one and costs as much, but "
              "no token carries detail finer than an 8 x 8 patch. The "
              f"{(IMG_SIZE // 8) ** 2}-token row is the same patch-8 runs under both names. `upsample`: patch 8 on the "
              "image upsampled 2x / 4x (bicubic); each token then covers the same original pixels as the scaled "
              "patch 4 / 2, so it is expected to match `scale`, not `extend` (pixelvit.extend explains why).", ""]
    lines += markdown_table(ablation, SUMMARY_COLUMNS) if ablation else ["No Adventurer run has finished yet."]
    lines += ["", ablation_verdict(ablation), "", "Files: runs.csv (one row per finished run, with top-1 after "
              "each epoch), summary.csv, extend_vs_scale.csv, sweep.png, extend_vs_scale.png, pilot.json.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    global BUDGET
    parser = argparse.ArgumentParser(prog="tools/cifar_campaign.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu",
                        help="cpu: this course's 2-core machines; gpu: a CUDA machine (bf16, batch 256, 30 epochs)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("plan", help="list every run with its state and estimated hours")
    commands.add_parser("run", help="train the queue in this process")
    start_parser = commands.add_parser("start", help="`run` in the background (detached, nice 15, 1 thread)")
    start_parser.add_argument("--new-code", action="store_true",
                              help="run the current commit instead of the one the campaign started with")
    start_parser.add_argument("--parallel", type=int, default=1, choices=range(1, 9), metavar="N",
                              help="N workers side by side, one thread each, sharing the queue (default 1; "
                                   "2 on an idle 2-core machine)")
    pilot_parser = commands.add_parser("pilot", help="measure images/s of each kind of run")
    pilot_parser.add_argument("--steps", type=int, default=50)
    commands.add_parser("collect", help="write results/cifar10_nano from the finished runs")
    args = parser.parse_args(argv)
    BUDGET = BUDGETS[args.budget]
    return {"plan": plan, "run": run, "start": start, "pilot": pilot, "collect": collect}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
