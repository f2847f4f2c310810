"""One evaluation over several processes (and GPUs, and machines): every rank simulates its own
contiguous slice of the test set, every meter stays a raw sum, the sums are gathered once per
evaluation and every ratio is computed from the totals. Simulation is independent per image and
every meter is a sum over images, so the sharded evaluation gives the single-process numbers:
integer counts exactly, float sums to rounding.

How a run becomes several processes (``harness run … --nproc N``, or ``torchrun``/SLURM/Kubernetes,
which set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``):

* every rank runs the same run: plan, data, traced network, the method's preparation;
* the ANN comes from rank 0 (trained or read from the cache there, then broadcast), so every rank
  converts the same network, and after the preparation every rank's network is checked against
  rank 0's (a digest of :meth:`~harness.api.Evaluable.tensors`);
* each evaluation (the method's, the ANN baseline's, the ones a method makes while it prepares)
  takes the rank's slice of the split; rank 0 alone writes the record, the MLflow run and the
  artifacts.

Slices are whole evaluation batches (the batches a single process would run), contiguous, in
order, none repeated and none padded: ``DistributedSampler`` pads a split to a multiple of the world
size by repeating samples, which would inflate every count. Keeping the batches whole also keeps
each image's arithmetic the single process's (a batch of another size may take another kernel).

With ``--nproc N`` the process the user started is rank 0: it trains (or loads) the ANN with every
core first, then starts ranks 1…N−1 (``python -m harness.rank``, the same run's settings)
and watches them. A rank that dies or fails ends the run with one message naming it (rank 0 is
told by a watchdog thread, or by the failed collective), the MLflow run is marked FAILED, and the
other ranks are stopped; Ctrl-C stops every rank. Collectives time out after ``--dist-timeout``.

The collectives use gloo, also when the ranks simulate on GPUs: what is exchanged is the meters'
sums, which live on the CPU, so NCCL would only add copies. Written here because torch.distributed
gives the collectives, not the sharding of an evaluation into whole batches, the rank-0-only
bookkeeping or a launcher that names the rank that died (torchrun's names it in a traceback table
and leaves the MLflow run open).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, HarnessError

LAUNCHED = "HARNESS_RANK_OF"  # set in the environment of the ranks that `--nproc` starts
READY = "harness/ready/"


class RankFailed(HarnessError):
    """A rank of a sharded run died, failed or cannot be reached: the run failed as a whole."""

    exit_code = 4


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"the environment variable {name}={text!r} is not an integer") from None


def shard_bounds(n: int, batch: int, rank: int, size: int) -> tuple[int, int]:
    """The samples ``[start, stop)`` of rank ``rank`` of ``size``: the ``ceil(n / batch)`` batches
    of a single process's loop dealt out in contiguous runs whose lengths differ by at most one."""
    batches = -(-n // batch)
    first, last = batches * rank // size, batches * (rank + 1) // size
    return min(first * batch, n), min(last * batch, n)


def describe_exit(rank: int, size: int, code: int) -> str:
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    elif code - 128 in (signal.SIGINT, signal.SIGTERM):
        how = f"was stopped by {signal.Signals(code - 128).name}"
    else:
        how = f"exited with code {code} (its error is printed above)"
    return f"rank {rank} of {size} {how}"


@dataclass
class World:
    """This process's place in a run: ``rank`` of ``size`` (``size`` 1: no distribution)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: float = 1800.0
    launcher: bool = False  # this process starts and watches ranks 1…size−1 (--nproc)
    procs: list[subprocess.Popen] = field(default_factory=list, repr=False)
    failure: str | None = None
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _restore: list[Callable[[], Any]] = field(default_factory=list, repr=False)
    started: bool = False
    _warned: set = field(default_factory=set, repr=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # ---- joining -----------------------------------------------------------------------------
    def start(self, settings: dict[str, Any]) -> None:
        """Join the run's process group; a launcher first starts the other ranks with ``settings``
        (the run's :class:`~harness.config.RunConfig` as a dict). Idempotent."""
        if not self.distributed or self.started:
            return
        import torch
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=self.timeout_s)
        if self.launcher:
            threads = _env_int("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // self.size)
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            self._restore.append(lambda: torch.set_num_threads(before))
            store = dist.TCPStore("127.0.0.1", 0, self.size, is_master=True, timeout=timeout, wait_for_workers=False)
            self._spawn(settings, store.port, threads)
            self._wait_ready(store)
            dist.init_process_group("gloo", store=store, rank=0, world_size=self.size, timeout=timeout)
        elif os.environ.get(LAUNCHED):
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), self.size,
                                  is_master=False, timeout=timeout)
            store.set(f"{READY}{self.rank}", "1")
            dist.init_process_group("gloo", store=store, rank=self.rank, world_size=self.size, timeout=timeout)
        else:  # torchrun, SLURM, Kubernetes: the usual environment
            dist.init_process_group("gloo", init_method="env://", rank=self.rank, world_size=self.size,
                                    timeout=timeout)
        self.started = True

    def _spawn(self, settings: dict[str, Any], port: int, threads: int) -> None:
        payload = json.dumps(settings, default=list)
        for rank in range(1, self.size):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(self.size), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads),
                       **{LAUNCHED: str(os.getpid())})
            self.procs.append(subprocess.Popen([sys.executable, "-m", "harness.rank", payload], env=env))
        main = threading.current_thread() is threading.main_thread()
        if main:  # off the main thread no handler can be set: the failed collective tells rank 0 instead
            previous = signal.signal(signal.SIGUSR1, self._on_rank_failed)
            self._restore.append(lambda: signal.signal(signal.SIGUSR1, previous))
        threading.Thread(target=self._watch, args=(threading.main_thread().ident if main else None,), daemon=True,
                         name="harness-rank-watchdog").start()

    def _wait_ready(self, store) -> None:
        """Rank 0 waits for the others here, in Python (a blocked ``init_process_group`` would not
        hear that a rank died while starting)."""
        keys = [f"{READY}{r}" for r in range(1, self.size)]
        deadline = time.monotonic() + self.timeout_s
        while not store.check(keys):
            if self.failure:
                raise RankFailed(f"{self.failure} while starting; the run failed")
            if time.monotonic() > deadline:
                raise RankFailed(f"the other ranks did not start within --dist-timeout {self.timeout_s:g} s")
            time.sleep(0.05)

    def _watch(self, main_ident: int | None) -> None:
        while not self._stopping.is_set():
            for rank, proc in enumerate(self.procs, start=1):
                code = proc.poll()
                if code not in (None, 0):
                    self.failure = describe_exit(rank, self.size, code)
                    if main_ident is not None and not self._stopping.is_set():
                        signal.pthread_kill(main_ident, signal.SIGUSR1)
                    return
            if all(p.poll() == 0 for p in self.procs):
                return
            time.sleep(0.1)

    def _on_rank_failed(self, signum, frame) -> None:
        if not self._stopping.is_set():
            raise RankFailed(f"{self.failure}; the run failed")

    # ---- leaving -----------------------------------------------------------------------------
    def close(self, ok: bool) -> None:
        """Leave the process group. A launcher waits for its ranks (ok) or stops them (not ok); a
        rank that did not end cleanly fails the run."""
        if not self.started:
            self._stop_procs()
            return
        import torch.distributed as dist

        failed = None
        if self.launcher and ok:
            for rank, proc in enumerate(self.procs, start=1):
                try:
                    code = proc.wait(timeout=self.timeout_s)
                except subprocess.TimeoutExpired:
                    code = None
                if code != 0 and failed is None:
                    failed = (describe_exit(rank, self.size, code) if code is not None
                              else f"rank {rank} of {self.size} did not end within {self.timeout_s:g} s")
        self._stop_procs()
        if dist.is_initialized():
            dist.destroy_process_group()
        self.started = False
        if failed:
            raise RankFailed(f"{failed}; the run failed")

    def _stop_procs(self) -> None:
        self._stopping.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        while self._restore:
            self._restore.pop()()

    # ---- collectives -------------------------------------------------------------------------
    def _collective(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RuntimeError as exc:
            deadline = time.monotonic() + 5  # the watchdog names the rank that died
            while self.launcher and self.failure is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.failure:
                raise RankFailed(f"{self.failure} while {what}; the run failed") from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RankFailed(f"rank {self.rank}: {what} failed ({first}): another rank of the run stopped or "
                             "cannot be reached (its own log says why)") from None

    def gather(self, obj: Any, what: str) -> list[Any]:
        """Every rank's ``obj``, in rank order (``[obj]`` without distribution)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        self._collective(what, lambda: dist.all_gather_object(out, obj))
        return out

    def broadcast(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.main else None]
        self._collective(what, lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def check_same_network(self, ev: Any, label: str) -> None:
        """Every rank prepared the network rank 0 prepared (the same ``ev.tensors()``: names and values)."""
        if not self.distributed:
            return
        digests = self.gather(tensor_digest(ev.tensors()), f"comparing the {label} networks of the ranks")
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            from .errors import InvariantError

            raise InvariantError(f"the {label} run", [
                f"rank{'s' if len(odd) > 1 else ''} {', '.join(map(str, odd))} prepared a network that differs from "
                "rank 0's (a preparation that is not deterministic: its random numbers or kernels); the ranks "
                "would evaluate different networks"])

    def shard(self, loader):
        """The rank's whole batches of ``loader`` (a map-style DataLoader without shuffling)."""
        if not self.distributed:
            return loader
        from torch.utils.data import DataLoader, Subset

        n, batch = len(loader.dataset), loader.batch_size
        batches = -(-n // batch)
        if batches < self.size and self.main and (n, batch) not in self._warned:
            self._warned.add((n, batch))
            import logging

            logging.getLogger(__name__).warning(
                "%d test images make %d batch%s of %d for %d processes: %d of them have nothing to simulate "
                "(lower --eval-batch-size)", n, batches, "" if batches == 1 else "es", batch, self.size,
                self.size - batches)
        start, stop = shard_bounds(n, batch, self.rank, self.size)
        return DataLoader(Subset(loader.dataset, range(start, stop)), batch_size=batch)


def tensor_digest(tensors: dict[str, Any]) -> str:
    """SHA-256 of named tensors: names, dtypes, shapes and bytes."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def world_for(nproc: int, timeout_s: float) -> World:
    """The world of this process: the environment's (torchrun, SLURM, a rank ``--nproc`` started),
    or the one ``--nproc`` asks this process to launch."""
    size, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    if size is not None and rank is not None and size > 1:
        if not 0 <= rank < size:
            raise ConfigError(f"RANK={rank} is outside [0, WORLD_SIZE={size})")
        if nproc > 1 and not os.environ.get(LAUNCHED):
            raise ConfigError(f"--nproc {nproc} in a run that a launcher already started (WORLD_SIZE={size}): the "
                              "launcher starts the processes; leave --nproc out")
        return World(rank, size, _env_int("LOCAL_RANK") or 0, timeout_s)
    return World(0, nproc, 0, timeout_s, launcher=nproc > 1)
