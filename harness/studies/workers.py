"""Worker processes on this machine and the loop each worker runs (see :mod:`harness.studies`)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from .placement import study_places
from .recovery import fail_stale
from .spec import WORKER_INDEX_ENV, StudyConfig
from .trial import SurplusTrial

log = logging.getLogger(__name__)

POLL_S = 1.0


def work(study, objective, target: int, n_jobs: int, *, stale, grace_s: float, on_trial_end, bar) -> None:
    """Run trials until ``target`` have finished, in this process. A trial starts only while
    finished trials and trials holding a place (:mod:`.placement`) are fewer than ``target``; with
    heartbeats, a worker then waits for the last running trials (of any worker) instead of leaving:
    one of them may die and come back as a retry that must be run. Without heartbeats nothing would
    ever tell, so it leaves."""
    import optuna

    heartbeat = stale is not None
    while True:
        if stale is not None:
            fail_stale(study, stale.grace_s, stale)
        fin, held = study_places(study, None, grace_s, queued=False)
        if fin >= target:
            return
        if fin + held >= target:
            if not heartbeat:
                return
            bar.set_postfix_str(f"waiting for {held} running trial{'s' * (held > 1)}")
            time.sleep(POLL_S)
            continue
        # Optuna pops queued trials (retries first) before it samples new ones
        k = min(n_jobs, target - fin - held)
        try:
            study.optimize(objective, n_trials=k, n_jobs=k, gc_after_trial=False, callbacks=[on_trial_end],
                           catch=(SurplusTrial,))
        except optuna.exceptions.UpdateFinishedTrialError as exc:
            # this worker's heartbeat stalled past the grace period and another worker declared the
            # trial dead and queued its retry: the retry counts, this result is dropped
            log.warning("a trial finished after another worker had declared it dead (%s); its retry counts", exc)


def share_cores(workers: int) -> dict[str, str]:
    """The environment of ``workers`` processes on this machine: each gets its share of the cores
    for torch's threads, unless the user set ``OMP_NUM_THREADS``. Every process would otherwise
    start one thread per core, and oversubscribed OpenMP threads spin-wait: 2 workers on 2 cores ran
    47 trials/min that way, 139 with one thread each (benchmarks/STORAGE.md)."""
    env = dict(os.environ)
    if workers > 1 and "OMP_NUM_THREADS" not in env:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // workers)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        import torch

        torch.set_num_threads(threads)
    return env


def start_workers(scfg: StudyConfig, first: int, env: dict[str, str]) -> list[subprocess.Popen]:
    """``--workers N``: start N - 1 more processes of the same command (indices first+1 ..
    first+N-1); this process is worker ``first``. Each has its own session, so that a Ctrl-C
    reaches them once, through this process."""
    procs = []
    for i in range(1, scfg.workers):
        argv = scfg.worker_command(first + i)
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True, env=env))
    return procs


def wait_for(procs: list[subprocess.Popen]) -> None:
    import signal

    for i, p in enumerate(procs, start=1):
        rc = p.wait()
        if rc != 0:
            how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with {rc}"
            log.warning("worker %d (pid %d) %s; its running trial, if any, was failed and retried through its "
                        "heartbeat", i, p.pid, how)


def stop(procs: list[subprocess.Popen], signum: int | None) -> None:
    import signal

    for p in procs:
        if p.poll() is None:
            p.send_signal(signum or signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def worker_argv(parser, args, index: int) -> list[str]:
    """The command line of worker ``index``: this command's options (from the parsed ``args``),
    without --workers, --output-json and progress bars, with --worker-index."""
    import argparse

    skip = {"help", "workers", "worker_index", "output_json", "progress"}
    out = [sys.executable, "-m", "harness", "study"]
    for action in parser._actions:
        if not action.option_strings or action.dest in skip:
            continue
        value = getattr(args, action.dest, None)
        if value is None or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._AppendAction):
            for v in value:
                out += [flag, str(v)]
        elif isinstance(action, argparse._StoreConstAction):
            out.append(flag)
        else:
            out += [flag, str(value)]
    return out + ["--worker-index", str(index), "--no-progress"]



def worker_index(scfg: StudyConfig) -> int:
    """This process's worker index: ``--worker-index``, else the batch system's task index
    (SLURM array, Kubernetes indexed Job), else 0."""
    if scfg.worker_index is not None:
        return scfg.worker_index
    for var in WORKER_INDEX_ENV:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0
