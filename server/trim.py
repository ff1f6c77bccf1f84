"""Giving inference memory back once the server has been idle for a while.

ONNX Runtime's CPU arena keeps the activation memory of the largest runs it
has seen (about 200 MB at concurrency 8), which is right while requests keep
coming — freeing it after every run costs ~13% throughput in page faults —
but wasteful on a server that has gone quiet. After `idle_trim_s` seconds
with no call and no run, the arenas are shrunk and the C heap trimmed; the
next request pays a few milliseconds of page faults once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional

from server.changes import Changes
from server.memory import rss_bytes
from server.pool import SessionPool
from server.scheduler import Scheduler

_LOGGER = logging.getLogger(__name__)


class IdleTrimmer:
    """A background task: after `idle_s` of quiet, SessionPool.trim() once per quiet spell."""

    def __init__(self, scheduler: Scheduler, pool: SessionPool, idle_s: float):
        self._scheduler = scheduler
        self._pool = pool
        self._idle_s = idle_s
        self._task: Optional[asyncio.Task] = None
        self.trims = 0
        """How many times memory was given back."""
        self._trimmed = Changes()

    def start(self) -> None:
        """Begin watching (no-op when idle_s is 0)."""
        if self._idle_s > 0:
            self._task = asyncio.create_task(self._watch(), name="idle-trim")

    async def stop(self) -> None:
        """Stop watching (a trim already handed to its thread still runs to its end there)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait_trims(self, count: int) -> None:
        """Return once memory has been given back `count` times in all."""
        await self._trimmed.wait_until(lambda: self.trims >= count)

    async def _watch(self) -> None:
        scheduler = self._scheduler
        trimmed_after = scheduler.counters.runs_started  # start-up already trimmed (app.start)
        while True:
            await scheduler.wait_until(_ran_since(scheduler, trimmed_after))
            seen = scheduler.counters.runs_started
            await asyncio.sleep(self._idle_s)  # a timer, not synchronisation: quiet for idle_s?
            if scheduler.idle and scheduler.counters.runs_started == seen:
                await self._trim()
                trimmed_after = seen

    async def _trim(self) -> None:
        before = rss_bytes()
        await asyncio.get_running_loop().run_in_executor(None, self._pool.trim)
        self.trims += 1
        self._trimmed.changed()
        _LOGGER.info("idle: gave back %.0f MB of inference memory (RSS %.0f MB)",
                     (before - rss_bytes()) / 2**20, rss_bytes() / 2**20)


def _ran_since(scheduler: Scheduler, runs: int) -> Callable[[], bool]:
    """Whether the scheduler is idle and has started a run since it had started `runs`."""
    return lambda: scheduler.idle and scheduler.counters.runs_started != runs
