"""Admission and real-time ordering of inference work.

Calls are admitted up to `pool_size + max_queue` at once; the next one gets
RESOURCE_EXHAUSTED before any work is done. Admitted calls submit inference
jobs, and `pool_size` workers run them earliest-due first: a job is due when
the audio its stream has already produced would run out, so every stream's
first segment (due on arrival) goes ahead of other streams' later segments,
and a long text cannot starve short requests.

A job whose call was cancelled or whose deadline passed is dropped before it
runs; a running one is stopped through ONNX Runtime's RunOptions.terminate.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import onnxruntime as ort

from server.errors import DeadlineExceeded, Overloaded, Unavailable

_LOGGER = logging.getLogger(__name__)


@dataclass(order=True)
class Job:
    """One inference waiting for a worker, ordered by due time then arrival."""

    due: float
    seq: int
    run: Callable[[ort.RunOptions], np.ndarray] = field(compare=False)
    future: asyncio.Future = field(compare=False)
    deadline: Optional[float] = field(compare=False, default=None)
    run_options: ort.RunOptions = field(compare=False, default_factory=ort.RunOptions)
    running: bool = field(compare=False, default=False)

    def cancel(self) -> None:
        """Drop the job if queued; stop it if running."""
        if self.running:
            self.run_options.terminate = True
        if not self.future.done():
            self.future.cancel()


class Scheduler:
    """Bounded admission plus an earliest-due-first queue served by `pool_size` workers."""

    def __init__(self, pool_size: int, max_queue: int):
        """:param pool_size: inferences in flight at once (one worker thread each)."""
        self.pool_size = pool_size
        self.max_queue = max_queue
        self.active_calls = 0
        self.runs_started = 0
        self.runs_completed = 0
        self.runs_dropped = 0
        self._heap: list[Job] = []
        self._seq = itertools.count()
        # One release per job pushed, one acquire per job popped: a worker
        # that acquires always finds a job in the heap.
        self._pushed: Optional[asyncio.Semaphore] = None
        self._executor = ThreadPoolExecutor(pool_size, thread_name_prefix="infer")
        self._workers: list[asyncio.Task] = []
        self._draining = False

    async def start(self) -> None:
        """Start the workers on the running loop."""
        self._pushed = asyncio.Semaphore(0)
        self._workers = [asyncio.create_task(self._work(i), name=f"infer-{i}")
                         for i in range(self.pool_size)]

    async def close(self) -> None:
        """Stop the workers and the threads; queued jobs are cancelled."""
        for job in self._heap:
            job.cancel()
        self._heap.clear()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    def drain(self) -> None:
        """Refuse new calls (UNAVAILABLE); admitted ones carry on."""
        self._draining = True

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for a worker."""
        return len(self._heap)

    @property
    def capacity(self) -> int:
        """Calls that may be admitted at once."""
        return self.pool_size + self.max_queue

    @contextmanager
    def admit(self):
        """Hold a place for one call, or raise Overloaded/Unavailable at once."""
        if self._draining:
            raise Unavailable("server is shutting down; retry on another instance")
        if self.active_calls >= self.capacity:
            raise Overloaded(f"server is at capacity ({self.capacity} calls in progress); retry later")
        self.active_calls += 1
        try:
            yield
        finally:
            self.active_calls -= 1

    def submit(self, run: Callable[[ort.RunOptions], np.ndarray], due: float,
               deadline: Optional[float] = None) -> Job:
        """Queue `run` (called in a worker thread with its RunOptions); await job.future."""
        job = Job(due=due, seq=next(self._seq), run=run,
                  future=asyncio.get_running_loop().create_future(), deadline=deadline)
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
            self.runs_dropped += 1
            return False
        if job.deadline is not None and time.monotonic() >= job.deadline:
            self.runs_dropped += 1
            job.future.set_exception(DeadlineExceeded("deadline passed while queued for inference"))
            return False
        return True

    async def _work(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._next_job()
            job.running = True
            self.runs_started += 1
            try:
                audio = await loop.run_in_executor(self._executor, job.run, job.run_options)
            except Exception as exc:  # delivered to the call that owns the job
                if not job.future.done():
                    job.future.set_exception(exc)
            else:
                if not job.future.done():
                    job.future.set_result(audio)
            finally:
                job.running = False
                self.runs_completed += 1
