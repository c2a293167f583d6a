"""Training the queue: one lock per job, workers that share the queue, and `start` in the background.

`run` trains every job that is neither finished nor held by another worker, in queue order; `start`
launches N such workers detached from the shell, on a pinned copy of the code.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

from campaign import jobs
from campaign.folders import committed_rows, remember, run_dir, state


def log(message: str):
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}"  # the pid tells workers apart
    print(line, flush=True)


def one_thread():
    """One intra-op and one inter-op thread on CPU (the machine's other core stays free for tests)."""
    import torch

    if jobs.BUDGET.device != "cpu":
        return
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or parallel work already started) in this process
        pass


def device_missing() -> bool:
    """True, after one line saying what to do, when the budget trains on CUDA and this machine has none."""
    import torch

    if jobs.BUDGET.device == "cuda" and not torch.cuda.is_available():
        print("cifar_campaign: the gpu budget trains on CUDA and this machine has no CUDA GPU: run it on a GPU "
              "machine, or continue the cpu campaign here (`start`, no --budget)", file=sys.stderr)
        return True
    return False


def lock_file(job: jobs.Job) -> Path:
    return jobs.BUDGET.runs_dir / "locks" / f"{job.name}.lock"


def claim(job: jobs.Job):
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


def worker_of(job: jobs.Job) -> int | None:
    """The pid of the live worker training this job, or None."""
    try:
        pid = int(lock_file(job).read_text())
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:  # exists, owned by another user
        pass
    return pid


def run(args) -> int:
    """Train every job nobody has finished or is training, in queue order; a worker of a shared queue.

    Like pixelvit.sweep.run_sweep, each job is one pixelvit.train.train call in its hash-named folder, which
    resumes a stopped run and returns a finished one's stored result. It does not call run_sweep, which
    trains a fixed list in one process and writes its table and figure at the end, because a worker must
    (1) skip a job another worker holds (its lock, `claim`), (2) keep a job in the folder it started in
    although the code's hash may move (`remember`, manifest.json), (3) skip runs committed from another
    machine (`committed_rows`), and (4) stop on a failure with the queue intact. The table and figures come
    from `collect` (campaign.report) over every worker's runs, drawn with pixelvit.viz like a sweep's.
    """
    import fcntl

    from pixelvit.train import train

    if device_missing():
        return 2
    one_thread()
    jobs.BUDGET.runs_dir.mkdir(parents=True, exist_ok=True)
    # Shared by this version's workers; a `run` of the campaign's first version took it exclusively and
    # knows no job locks, so the two never train side by side.
    campaign_lock = open(jobs.BUDGET.runs_dir / "campaign.lock", "a")
    try:
        fcntl.flock(campaign_lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"cifar_campaign: an older `run` holds {jobs.BUDGET.runs_dir / 'campaign.lock'}; stop that process "
              "(its run resumes from its last checkpoint) and start again", file=sys.stderr)
        return 2
    import torch

    import pixelvit

    log(f"run: pixelvit from {Path(pixelvit.__file__).parent}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), budget {jobs.BUDGET.name}, runs in {jobs.BUDGET.runs_dir}")
    committed, elsewhere = committed_rows(), []
    for job in jobs.queue():
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
        if os.environ.get(COMMIT_ENV):
            commit_rows(job, result.top1, Path(os.environ[COMMIT_ENV]))
    log(f"worker finished; still being trained by other workers: {', '.join(elsewhere)}" if elsewhere
        else "queue finished")
    return 0


COMMIT_ENV = "PIXELVIT_CAMPAIGN_COMMIT"  # set by `start --commit-rows`: the work tree whose results/ a worker commits


def commit_rows(job: jobs.Job, top1: float, tree: Path, attempts: int = 30) -> bool:
    """After a finished run: `collect` into the work tree `tree` and commit that results folder, nothing else.

    So a finished run's row is in git at once, whether or not anyone collects before the session (and its
    run folders in ~/.cache) ends. Only the budget's results folder is added and committed (`git commit
    --only`): whatever else is staged in the shared work tree stays staged. Workers take turns (a lock
    beside the runs); a busy index (another process's .git/index.lock) is retried for a minute. A commit
    that fails is logged and the queue goes on: the next finished run's commit carries this row too.
    """
    import fcntl
    import subprocess

    from campaign import report

    folder = jobs.BUDGET.results.relative_to(jobs.REPO)
    with open(jobs.BUDGET.runs_dir / "commit.lock", "w") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        code, jobs.REPO = jobs.REPO, tree
        try:
            report.collect()
        finally:
            jobs.REPO = code
        message = (f"{folder}: {job.name} finished (top-1 {top1:.2f}); rows, table and figure regenerated by "
                   f"`python tools/cifar_campaign.py --budget {jobs.BUDGET.name} collect` in a campaign worker")
        for _ in range(attempts):
            added = subprocess.run(["git", "add", "--", str(folder)], cwd=tree, capture_output=True, text=True)
            done = added.returncode == 0 and subprocess.run(
                ["git", "commit", "--only", "-q", "-m", message, "--", str(folder)], cwd=tree, capture_output=True,
                text=True)
            if done and done.returncode == 0:
                log(f"{job.name}: committed {folder}")
                return True
            if "index.lock" not in (added.stderr + (done.stderr if done else "")):
                break
            time.sleep(2)
    log(f"{job.name}: could not commit {folder} (run `collect` and commit it by hand): "
        f"{(added.stderr + (done.stderr + done.stdout if done else '')).strip()[:300]}")
    return False


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

    pinned = jobs.BUDGET.runs_dir / "code" / "PINNED"
    if pinned.exists() and not args.new_code:
        revision = pinned.read_text().strip()
    else:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=jobs.REPO, capture_output=True, text=True,
                                  check=True).stdout.strip()
    source = jobs.BUDGET.runs_dir / "code" / revision[:12]
    if not source.exists():
        partial = source.with_name(source.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", revision], cwd=jobs.REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive, check=True)
        partial.rename(source)
    pinned.write_text(revision + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": str(source),  # this copy of pixelvit, ahead of the installed (editable) one
           "PIXELVIT_SHARED_DATA": os.environ.get("PIXELVIT_SHARED_DATA", str(jobs.REPO.parent / "shared" / "data"))}
    if getattr(args, "commit_rows", False):
        env[COMMIT_ENV] = str(jobs.REPO)  # this work tree: each finished run's rows are committed here (commit_rows)
    log_path = jobs.BUDGET.runs_dir / "campaign.log"
    pids = []
    with open(log_path, "a") as out:
        out.write(f"--- start: commit {revision}, code in {source}, {args.parallel} worker(s)\n")
        out.flush()
        for _ in range(args.parallel):
            process = detach([sys.executable, str(source / "tools" / "cifar_campaign.py"), "--budget", jobs.BUDGET.name,
                              "run"], cwd=source, env=env, log=out)
            pids.append(str(process.pid))
            time.sleep(2)  # the first worker claims its job before the next one looks at the queue
    print(f"campaign running in the background: pid {', '.join(pids)}, commit {revision[:12]}, log {log_path}")
    return 0
