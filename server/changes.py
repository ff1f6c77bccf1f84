"""Waiting for a condition over state that an owner updates on the event loop."""

from __future__ import annotations

import asyncio
from typing import Callable


class Changes:
    """`await wait_until(predicate)` returns once the predicate holds; the owner calls `changed()` after updates.

    The predicate is checked again on every change. `changed()` is a few
    attribute reads when nobody waits, so owners call it on hot paths
    (every run, every call); it schedules nothing.
    """

    def __init__(self):
        self._event = asyncio.Event()
        self._waiting = 0

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds."""
        self._waiting += 1
        try:
            while not predicate():
                await self._event.wait()
        finally:
            self._waiting -= 1

    def changed(self) -> None:
        """Wake the waiters to check their predicates again."""
        if self._waiting:
            self._event.set()
            self._event = asyncio.Event()
