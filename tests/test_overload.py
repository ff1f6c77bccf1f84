"""Overload and cancellation storms against a real server: it sheds load fast,
finishes what it admitted, stays answerable, and loses nothing."""

import asyncio
import random
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import start
from server.config import Settings
from server.memory import rss_bytes
from speakstream.v1 import stats_pb2, stats_pb2_grpc
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_TIMEOUT = 60
_TEXT = "Hello there, my friend. How are you today? I hope the weather is kind to you."


@pytest.fixture
async def busy_server():
    """One inference slot and a queue of two: capacity three calls."""
    app = await start(Settings(port=0, pool_size=1, max_queue=2, grace_s=0))
    async with grpc.aio.insecure_channel(app.address) as channel:
        yield app, channel
    await app.stop(grace=0)


async def _stream(stub, text=_TEXT):
    chunks = []
    async for chunk in stub.SynthesizeStream(pb.SynthesizeRequest(text=text), timeout=_TIMEOUT):
        chunks.append(chunk)
    return chunks


async def _probe(channel, counters, stop: asyncio.Event) -> list[int]:
    """Health Check and GetStats round trips until told to stop: for each, how
    many inferences finished while it was in flight.

    A probe that waits behind inference work (queued for a worker, or behind
    the admission limit) sees at least one run finish; one that is answered
    at once sees none, unless a run happens to end in the same moment.
    Counting runs instead of timing the probe makes the check independent
    of how fast this machine is.
    """
    health = health_pb2_grpc.HealthStub(channel)
    stats = stats_pb2_grpc.StatsStub(channel)
    runs_during = []
    while not stop.is_set():
        before = counters.runs_completed
        await health.Check(health_pb2.HealthCheckRequest(), timeout=_TIMEOUT)
        await stats.GetStats(stats_pb2.GetStatsRequest(), timeout=_TIMEOUT)
        runs_during.append(counters.runs_completed - before)
    return runs_during


@pytest.mark.slow
async def test_four_times_capacity_sheds_the_surplus_and_finishes_the_rest(busy_server):
    app, channel = busy_server
    stub = pb_grpc.SynthesizerStub(channel)
    stop = asyncio.Event()
    probe = asyncio.ensure_future(_probe(channel, app.scheduler.counters, stop))
    calls = 4 * app.scheduler.capacity
    results = await asyncio.gather(*(_stream(stub) for _ in range(calls)), return_exceptions=True)
    stop.set()
    runs_during = await asyncio.wait_for(probe, _TIMEOUT)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    served = [r for r in results if isinstance(r, list)]
    assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    assert len(served) >= app.scheduler.capacity and len(refused) >= calls - 2 * app.scheduler.capacity
    for chunks in served:  # every admitted stream has all of its audio
        assert chunks[-1].final and {c.sentence_index for c in chunks} == {0, 1, 2}
    # Probes keep being answered while the one slot is busy: most of them
    # before any inference ends (each would span a run if it waited for one).
    assert len(runs_during) >= 5
    assert sum(1 for n in runs_during if n > 0) <= len(runs_during) // 4, runs_during


@pytest.mark.slow
async def test_a_storm_of_cancelled_streams_leaves_the_pool_idle_and_memory_flat(busy_server):
    app, channel = busy_server
    stub = pb_grpc.SynthesizerStub(channel)
    rng = random.Random(7)

    async def cancelled_stream():
        call = stub.SynthesizeStream(pb.SynthesizeRequest(text=_TEXT), timeout=_TIMEOUT)
        try:
            for _ in range(rng.randrange(3)):  # cancel before any chunk, after one, or after two
                if await asyncio.wait_for(call.read(), _TIMEOUT) is grpc.aio.EOF:
                    break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        call.cancel()

    async def storm(streams: int) -> None:
        for _ in range(streams // 8):
            await asyncio.gather(*(cancelled_stream() for _ in range(8)))

    await storm(40)  # warm-up: the arena and the allocator reach their working size
    await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)
    rss_before = rss_bytes()
    threads_before = threading.active_count()
    await storm(200)
    await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)
    assert app.scheduler.running == {} and app.scheduler.active_calls == 0
    assert all(job.future.done() for job in app.scheduler._heap)
    sessions = app.pool.loaded(app.voices.default)
    assert all(slot.in_flight == 0 for slot in sessions.slots)
    assert threading.active_count() <= threads_before + 2  # no stuck threads piling up
    assert rss_bytes() <= 1.10 * rss_before
    # And it still serves.
    assert (await _stream(stub))[-1].final
