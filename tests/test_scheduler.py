"""The scheduler on its own: admission, earliest-due-first order, deadlines, cancellation.

Jobs here are plain functions gated by threading.Events, so the order and the
timing of every step is decided by the test, not by the clock.
"""

import asyncio
import threading
import time

import pytest

from server.errors import DeadlineExceeded, Overloaded, Unavailable
from server.metrics import Metrics
from server.scheduler import Scheduler

_TIMEOUT = 10


@pytest.fixture
async def scheduler():
    scheduler = Scheduler(pool_size=1, max_queue=2, metrics=Metrics())
    await scheduler.start()
    yield scheduler
    await scheduler.close()


def _blocker():
    """A job that runs until released, and an event set once it has started."""
    started, release = threading.Event(), threading.Event()

    def run(run_options):
        started.set()
        assert release.wait(_TIMEOUT)
        return "blocker"

    return run, started, release


async def _started(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, _TIMEOUT)


async def test_jobs_run_earliest_due_first(scheduler):
    run, started, release = _blocker()
    scheduler.submit(run, due=0)
    await _started(started)
    order = []
    jobs = [scheduler.submit(lambda ro, d=d: order.append(d) or d, due=d) for d in (3.0, 1.0, 2.0)]
    release.set()
    assert await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), _TIMEOUT) == [3.0, 1.0, 2.0]
    assert order == [1.0, 2.0, 3.0]


async def test_a_job_whose_deadline_passed_in_the_queue_is_never_run(scheduler):
    run, started, release = _blocker()
    scheduler.submit(run, due=0)
    await _started(started)
    ran = []
    job = scheduler.submit(lambda ro: ran.append(1), due=1, deadline=time.monotonic())
    release.set()
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(job.future, _TIMEOUT)
    assert ran == []
    assert scheduler.counters.runs_dropped_deadline == 1
    assert scheduler.counters.runs_started == 1


async def test_a_cancelled_queued_job_is_dropped(scheduler):
    run, started, release = _blocker()
    scheduler.submit(run, due=0)
    await _started(started)
    ran = []
    job = scheduler.submit(lambda ro: ran.append(1), due=1)
    job.cancel()
    after = scheduler.submit(lambda ro: "after", due=2)
    release.set()
    assert await asyncio.wait_for(after.future, _TIMEOUT) == "after"
    assert ran == [] and scheduler.counters.runs_dropped_cancelled == 1


async def test_cancelling_a_running_job_sets_ort_terminate(scheduler):
    saw_terminate = threading.Event()
    started = threading.Event()

    def run(run_options):
        started.set()
        deadline = time.monotonic() + _TIMEOUT
        while not run_options.terminate and time.monotonic() < deadline:
            time.sleep(0.001)  # stands in for ORT's own terminate check
        if run_options.terminate:
            saw_terminate.set()
        raise RuntimeError("terminated")

    job = scheduler.submit(run, due=0)
    await _started(started)
    job.cancel()
    await asyncio.wait_for(scheduler.wait_idle(), _TIMEOUT)
    assert saw_terminate.is_set()
    assert scheduler.counters.runs_failed == 0  # a stop asked for is not a failure
    assert scheduler.running == {}


async def test_admission_refuses_beyond_pool_plus_queue(scheduler):
    with scheduler.admit(), scheduler.admit(), scheduler.admit():
        assert scheduler.active_calls == scheduler.capacity == 3
        with pytest.raises(Overloaded):
            with scheduler.admit():
                pass
    assert scheduler.active_calls == 0
    assert (scheduler.counters.calls_admitted, scheduler.counters.calls_rejected) == (3, 1)


async def test_draining_refuses_new_calls_but_keeps_admitted_ones(scheduler):
    with scheduler.admit():
        scheduler.drain()
        with pytest.raises(Unavailable):
            with scheduler.admit():
                pass
        assert scheduler.active_calls == 1


async def test_a_failing_job_reports_its_error_and_frees_the_worker(scheduler):
    def boom(ro):
        raise ValueError("broken model")

    job = scheduler.submit(boom, due=0)
    with pytest.raises(ValueError):
        await asyncio.wait_for(job.future, _TIMEOUT)
    ok = scheduler.submit(lambda ro: "ok", due=1)
    assert await asyncio.wait_for(ok.future, _TIMEOUT) == "ok"
    assert scheduler.counters.runs_failed == 1
