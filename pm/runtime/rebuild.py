"""Stores rebuilt from the journal side by side, in worker processes (a fold is CPU-bound Python).

A PM assigned partitions that have no store (a new machine, a lost or deleted state dir) folds
each one's journal from its start: ~10 us of Python per entry, so one process folds about 100,000
entries a second whatever the cores. With more than one core, the large partitions are split: the
PM folds its share itself while worker processes (`WorkerFolds`) fold the rest, each
into its own store directory, and hand back what the PM keeps in memory from a catch-up (the outputs
of the journal's tail, `UnconfirmedOutputs`). The PM then opens those stores the usual way: caught
up from their anchor, so a worker's store is checked like any other.

Only for an app the PM loaded by name (`module:attr`, `PM_APP` or the default): a worker imports it
again. A worker dies with its PM (Linux `PR_SET_PDEATHSIG`), and the PM stops one that has not answered
long after its own share was folded (`WORKER_PATIENCE`); a store it leaves half folded holds whole
windows and its anchor, and the next catch-up goes on from there.
"""

from __future__ import annotations

import ctypes
import io
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pm.app import load_app
from pm.collector import quiet_collector
from pm.config import Config
from pm.kafka import make_consumer
from pm.registry import Registry
from pm.runtime.recovery import CatchUpError, PartitionRecovery
from pm.runtime.state import Position, UnconfirmedOutputs

# A partition is folded by a worker from this many journal records (by its watermarks): below it,
# starting a process (~1 s of imports) costs more than the fold it saves.
WORKER_MIN_RECORDS = 50_000
# At most this many worker processes, whatever the cores.
MAX_WORKERS = 8
# A worker folds a share like the PM's own: one still running this many times the PM's time later (and at
# least the catch-up timeout) is taken for stuck (an app import that hangs, a deadlock), not slow.
WORKER_PATIENCE = 10


@dataclass
class WorkerResult:
    """What a worker's fold of one partition hands back to the PM."""

    partition: int
    entries: int
    outputs: list[tuple[Position, tuple[bytes, ...]]] = field(default_factory=list)
    log: str = ""


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker needs to fold one partition (pickled to the worker)."""

    config: Config
    partition: int
    journal_topic_id: str | None
    rebuild: bool
    anchor_timeout: float
    catch_up_timeout: float


def _cores() -> float:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 quota (a container's limit)."""
    cores = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cores


def worker_count(partitions: int, wanted: int = -1) -> int:
    """Workers for `partitions` large missing stores (the PM folds one share itself): `wanted`, or with -1
    one per whole CPU but the PM's."""
    if wanted < 0:
        wanted = int(_cores()) - 1
    return max(0, min(wanted, partitions - 1, MAX_WORKERS))


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive its PM (it would hold a store's lock): SIGKILL when the PM dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, ctypes.c_ulong(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker ends with its folds
        pass
    # Ctrl-C in the PM's terminal reaches its whole process group: the PM stops after its fold, so must
    # the worker (its own session is not an option: it would leave the terminal's job control).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent:  # the PM died before the line above ran
        os._exit(1)


def fold_partition(job: WorkerJob, registry: Registry) -> WorkerResult:
    """In a worker: open the partition's store, caught up to the end of its journal partition, and close it."""
    unconfirmed = UnconfirmedOutputs()
    log = io.StringIO()
    consumer = make_consumer(
        job.config, "journal-reader", f"{job.config.topic_prefix}pm-rebuild-{os.getpid()}"
    )
    try:
        recovery = PartitionRecovery(
            job.config,
            registry,
            consumer,
            job.partition,
            journal_topic_id=job.journal_topic_id,
            rebuild=job.rebuild,
            anchor_timeout=job.anchor_timeout,
            catch_up_timeout=job.catch_up_timeout,
            unconfirmed=unconfirmed,
            log=log,
        )
        store = recovery.open()
        store.close()
    finally:
        consumer.close()
    return WorkerResult(job.partition, recovery.folded, unconfirmed.items(), log.getvalue())


class WorkerFolds:
    """Worker processes folding partitions; `results` waits for them (the PM folds its own meanwhile).

    A worker is a new Python running `main` (not `multiprocessing`, which re-runs the PM's main
    script in the child: an embedding script without a `__main__` guard cannot take that). It imports
    pm and the app, then waits for its jobs on stdin (so a PM can start workers before it knows their
    jobs: their ~1 s of imports overlaps its group join); its results come out on stdout (pickled: it
    is the PM's own child, on the PM's `sys.path`, so it imports the same app). `submit` hands the jobs
    out; a worker given none exits at once.
    """

    def __init__(self, workers: int, app_spec: str) -> None:
        self.partitions: list[int] = []
        # The PM's own path, its "" (the directory it started in, `python -m pm`) made absolute.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
        self._workers: list[subprocess.Popen[bytes]] = []
        self._submitted = False
        try:
            for _ in range(workers):
                self._workers.append(
                    subprocess.Popen(
                        # -P: not the current directory first on the path, only the PM's own (PYTHONPATH).
                        [
                            sys.executable,
                            "-P",
                            "-c",
                            "from pm.runtime.rebuild import main; main()",
                            str(os.getpid()),
                            app_spec,
                        ],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        env=env,
                    )
                )
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        return len(self._workers)

    def submit(self, jobs: list[WorkerJob], workers: int | None = None) -> None:
        """Share `jobs` among the first `workers` (all by default); the others get none and exit."""
        used = self.size if workers is None else min(workers, self.size)
        self.partitions = [job.partition for job in jobs]
        self._submitted = True
        for index, worker in enumerate(self._workers):
            assert worker.stdin is not None
            try:
                worker.stdin.write(pickle.dumps(jobs[index::used] if index < used else []))
                worker.stdin.close()
            except BrokenPipeError:  # it died starting (an app that does not import): `results` says so
                pass

    def results(self, timeout: float | None = None) -> dict[int, WorkerResult]:
        """Each partition's result; `CatchUpError` when a worker failed (its error is on stderr) or, with
        `timeout`, has not answered within that many seconds (stuck: it is killed, its store keeps whole
        windows and the next catch-up goes on from them)."""
        done: dict[int, WorkerResult] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for worker in self._workers:
                output = _read_all(worker, deadline)
                if output is None:
                    raise CatchUpError(
                        f"a rebuild worker (pid {worker.pid}) did not finish within {timeout:.0f}s: stopped; "
                        "a restart goes on from its stores"
                    )
                code = worker.wait()
                if code != 0:
                    raise CatchUpError(
                        f"a rebuild worker (pid {worker.pid}) exited with {code} (its error is above): a restart goes on from its stores"
                    )
                try:
                    results: list[WorkerResult] = pickle.loads(output)
                except Exception as exc:  # anything else than our pickle (unpickling raises many kinds)
                    raise CatchUpError(
                        f"a rebuild worker (pid {worker.pid}) answered something else ({exc})"
                    ) from exc
                for result in results:
                    done[result.partition] = result
        finally:
            self.close()
        return done

    def close(self) -> None:
        """Stop the workers still running (an error in the PM, or never given jobs): their stores keep whole
        windows."""
        for worker in self._workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
            for pipe in (worker.stdin, worker.stdout):
                if pipe is not None and not pipe.closed:
                    pipe.close()


def _read_all(worker: subprocess.Popen[bytes], deadline: float | None) -> bytes | None:
    """The worker's whole stdout (up to its end), or None at `deadline` (None: no deadline)."""
    assert worker.stdout is not None
    if deadline is None:
        return worker.stdout.read()
    fd = worker.stdout.fileno()
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def main() -> None:
    """A worker (arguments: the PM's pid, the app): fold the pickled jobs on stdin, results pickled on stdout."""
    _die_with_parent(int(sys.argv[1]))
    # The results' channel is kept apart: anything else writing to stdout (a print in an app's import,
    # a C library) goes to stderr instead of into the pickle.
    results_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    registry = Registry(load_app(sys.argv[2]).processes)  # loaded while the PM may still be joining its group
    quiet_collector()
    jobs: list[WorkerJob] = pickle.loads(sys.stdin.buffer.read())
    results = [fold_partition(job, registry) for job in jobs]
    results_out.write(pickle.dumps(results))
    results_out.close()
