"""Admission and real-time ordering of inference work.

Calls are admitted up to `pool_size + max_queue` at once; the next one gets
RESOURCE_EXHAUSTED before any work is done. Admitted calls submit inference
jobs, and `pool_size` workers run them earliest-due first: a job is due when
the audio its stream has already produced would run out, so every stream's
first segment (due on arrival) goes ahead of other streams' later segments,
and a long text cannot starve short requests.

A job whose call was cancelled or whose deadline passed is dropped before it
runs; a running one is stopped through ONNX Runtime's RunOptions.terminate.
The worker, not the call, owns a running job, so a cancelled call can never
leave a worker or a session slot behind.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional

import onnxruntime as ort

from server.changes import Changes
from server.errors import DeadlineExceeded, Overloaded, Unavailable
from server.metrics import Metrics

_LOGGER = logging.getLogger(__name__)

RunFn = Callable[[ort.RunOptions], object]


@dataclass
class RunRecord:
    """One inference: whose, when queued, started, due and ended (None while it runs)."""

    owner: str
    submitted: float
    started: float
    due: float
    ended: Optional[float] = None
    cancelled: Optional[float] = None
    """When its call cancelled it while it ran (then RunOptions.terminate stopped it)."""
    terminated: bool = False
    """Stopped through RunOptions.terminate (its call was cancelled)."""


@dataclass(order=True)
class Job:
    """One inference waiting for a worker, ordered by due time then arrival."""

    due: float
    seq: int
    run: RunFn = field(compare=False)
    future: asyncio.Future = field(compare=False)
    owner: str = field(compare=False, default="")
    deadline: Optional[float] = field(compare=False, default=None)
    run_options: ort.RunOptions = field(compare=False, default_factory=ort.RunOptions)
    running: bool = field(compare=False, default=False)
    record: Optional[RunRecord] = field(compare=False, default=None)  # while the run log is on
    submitted: float = field(compare=False, default=0.0)  # time.monotonic() when queued
    started: float = field(compare=False, default=0.0)  # ... when a worker took it

    def cancel(self) -> None:
        """Drop the job if queued; stop it if running."""
        if self.running:
            self.run_options.terminate = True
            if self.record is not None and self.record.cancelled is None:
                self.record.cancelled = time.monotonic()
        if not self.future.done():
            self.future.cancel()


@dataclass
class Counters:
    """What the scheduler has done since start."""

    calls_admitted: int = 0
    calls_rejected: int = 0
    runs_started: int = 0
    runs_completed: int = 0
    runs_failed: int = 0
    runs_dropped_cancelled: int = 0
    runs_dropped_deadline: int = 0


class Scheduler:
    """Bounded admission plus an earliest-due-first queue served by `pool_size` workers."""

    def __init__(self, pool_size: int, max_queue: int, metrics: Metrics):
        """:param pool_size: inferences in flight at once (one worker thread each).
        :param metrics: where queue waits and run times are recorded.
        """
        self.pool_size = pool_size
        self.metrics = metrics
        self.max_queue = max_queue
        self.active_calls = 0
        self.counters = Counters()
        self.running: dict[int, Job] = {}  # worker index -> job it runs
        self.run_log: Optional[deque[RunRecord]] = None
        """Every run's RunRecord while switched on by log_runs() (tests, diagnostics); None: off."""
        self._heap: list[Job] = []
        self._seq = itertools.count()
        # One release per job pushed, one acquire per job popped: a worker
        # that acquires always finds a job in the heap.
        self._pushed = asyncio.Semaphore(0)
        self._changes = Changes()
        self._executor = ThreadPoolExecutor(pool_size, thread_name_prefix="infer")
        self._workers: list[asyncio.Task] = []
        self._draining = False

    async def start(self) -> None:
        """Start the workers on the running loop."""
        self._workers = [asyncio.create_task(self._work(i), name=f"infer-{i}")
                         for i in range(self.pool_size)]

    async def close(self) -> None:
        """Stop the workers and the threads; queued jobs are cancelled."""
        for job in self._heap:
            job.cancel()
        for job in self.running.values():
            job.cancel()
        self._heap.clear()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    def log_runs(self, maxlen: int = 4096) -> deque[RunRecord]:
        """Switch on the run log (the last `maxlen` runs) and return it."""
        if self.run_log is None:
            self.run_log = deque(maxlen=maxlen)
        return self.run_log

    def drain(self) -> None:
        """Refuse new calls (UNAVAILABLE); admitted ones carry on."""
        self._draining = True

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for a worker (cancelled ones leave at their turn)."""
        return len(self._heap)

    @property
    def capacity(self) -> int:
        """Calls that may be admitted at once."""
        return self.pool_size + self.max_queue

    @property
    def idle(self) -> bool:
        """No call admitted and no inference running."""
        return self.active_calls == 0 and not self.running

    async def wait_idle(self) -> None:
        """Return once no call is admitted and no inference runs."""
        await self.wait_until(lambda: self.idle)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds; it is checked again whenever a call or a run ends."""
        await self._changes.wait_until(predicate)

    @contextmanager
    def admit(self):
        """Hold a place for one call, or raise Overloaded/Unavailable at once."""
        if self._draining:
            raise Unavailable("server is shutting down; retry on another instance")
        if self.active_calls >= self.capacity:
            self.counters.calls_rejected += 1
            raise Overloaded(f"server is at capacity ({self.capacity} calls in progress); retry later")
        self.active_calls += 1
        self.counters.calls_admitted += 1
        try:
            yield
        finally:
            self.active_calls -= 1
            self._changes.changed()

    def submit(self, run: RunFn, due: float, deadline: Optional[float] = None, owner: str = "") -> Job:
        """Queue `run` (called in a worker thread with its RunOptions); await job.future.

        :param due: time.monotonic() by which the result is wanted; earliest runs first.
        :param deadline: time.monotonic() after which the job is dropped unrun.
        """
        job = Job(due=due, seq=next(self._seq), run=run, owner=owner,
                  future=asyncio.get_running_loop().create_future(), deadline=deadline,
                  submitted=time.monotonic())
        heapq.heappush(self._heap, job)
        self._pushed.release()
        return job

    async def _next_job(self) -> Job:
        while True:
            await self._pushed.acquire()
            job = heapq.heappop(self._heap)
            if self._runnable(job):
                return job

    def _runnable(self, job: Job) -> bool:
        if job.future.done():  # cancelled while queued
            self.counters.runs_dropped_cancelled += 1
            return False
        if job.deadline is not None and time.monotonic() >= job.deadline:
            self.counters.runs_dropped_deadline += 1
            job.future.set_exception(DeadlineExceeded("deadline passed while queued for inference"))
            return False
        return True

    async def _work(self, index: int) -> None:
        while True:
            await self._run(index, await self._next_job())

    async def _run(self, index: int, job: Job) -> None:
        """Run one job and settle its future; its result is not kept here afterwards
        (a worker waiting for its next job holds nothing of the last one's memory)."""
        self._begin(index, job)
        try:
            result, run_s = await asyncio.get_running_loop().run_in_executor(
                self._executor, _timed, job.run, job.run_options)
        except Exception as exc:  # noqa: BLE001 - delivered to the call that owns the job
            self.counters.runs_failed += not job.run_options.terminate
            _settle(job, exc=exc)
        else:
            self.metrics.record_inference(run_s)
            _settle(job, result=result)
        finally:
            self._end(index, job)

    def _begin(self, index: int, job: Job) -> None:
        job.running = True
        self.running[index] = job
        self.counters.runs_started += 1
        job.started = time.monotonic()
        self.metrics.record_queue_wait(job.started - job.submitted)
        if self.run_log is not None:
            job.record = RunRecord(job.owner, job.submitted, job.started, job.due)
            self.run_log.append(job.record)

    def _end(self, index: int, job: Job) -> None:
        job.running = False
        del self.running[index]
        self.counters.runs_completed += 1
        if job.record is not None:
            job.record.ended, job.record.terminated = time.monotonic(), job.run_options.terminate
        self._changes.changed()


def _timed(run: RunFn, run_options: ort.RunOptions) -> tuple[object, float]:
    """run(run_options) and its duration, measured on the worker thread."""
    start = time.monotonic()
    audio = run(run_options)
    return audio, time.monotonic() - start


def _settle(job: Job, result=None, exc: Optional[BaseException] = None) -> None:
    if job.future.done():  # the call went away while the job ran
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)
