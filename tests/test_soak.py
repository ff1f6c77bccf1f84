"""Soak: many mixed requests against a real server process, with random cancels.

Unary and streamed calls, SynthesizeLive, short and long texts, cancels at random points, at a
steady concurrency within the server's capacity. Zero unexpected statuses (only OK, and CANCELLED
for the calls the client cancels), and the server's own RSS (/proc of its process) grows at most
5% from the end of the warm-up to the end. The server runs with its default settings (one
inference at a time). CI runs SOAK_N requests after the warm-up (default 120, ~40 s); `make soak` runs 10,000
(~25 minutes on 2 cores).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
from typing import Optional

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import start_server

from speakstream.v1 import stats_pb2, stats_pb2_grpc
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_N = int(os.environ.get("SOAK_N", "120"))
_WARMUP = max(50, _N // 10)  # random requests after the systematic warm-up
_CONCURRENCY = 6
_TIMEOUT = 60
_SHORT = ["Hi.", "Yes.", "Thank you.", "One moment please.", "Goodbye!"]
_LONG = ["The quick brown fox jumps over the lazy dog, again and again, until it tires. "
         "Then it rests for a while. After that, it runs home through the quiet wood.",
         "Please hold while I transfer your call to the next available agent. "
         "Your call is important to us, and we will be with you shortly."]


def _rss(pid: int) -> int:
    """Resident set size of a process, bytes (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


_SPEEDS = (0.8, 1.0, 1.3)
_KINDS = ("unary", "stream", "live")
_WARMUP_CASES = len(_SHORT + _LONG) * len(_SPEEDS) * 2 + len(_KINDS) * len(_LONG) * len(_SPEEDS) * 2


def _request(text: str, speed: float, deterministic: bool) -> pb.SynthesizeRequest:
    """Deterministic requests are served from the audio cache the second time."""
    noise = {"noise_scale": 0.0, "noise_w": 0.0} if deterministic else {}
    return pb.SynthesizeRequest(text=text, speed=speed, **noise)


class _Soak:
    def __init__(self, channel, seed: int):
        self.stub = pb_grpc.SynthesizerStub(channel)
        self.rng = random.Random(seed)
        self.outcomes: collections.Counter = collections.Counter()
        self.unexpected: list = []

    def _request(self) -> pb.SynthesizeRequest:
        text = self.rng.choice(_LONG if self.rng.random() < 0.2 else _SHORT)
        return _request(text, self.rng.choice(_SPEEDS), self.rng.random() < 0.5)

    async def one(self, kind: str = "", request: Optional[pb.SynthesizeRequest] = None) -> None:
        kind = kind or self.rng.choices(["unary", "stream", "cancel", "live"], [3, 4, 2, 1])[0]
        try:
            await getattr(self, "_" + kind)(request or self._request())
            self.outcomes[kind, "OK"] += 1
        except grpc.aio.AioRpcError as exc:
            self.outcomes[kind, exc.code().name] += 1
            if not (kind == "cancel" and exc.code() == grpc.StatusCode.CANCELLED):
                self.unexpected.append((kind, exc.code(), exc.details()))

    async def _unary(self, request) -> None:
        response = await self.stub.Synthesize(request, timeout=_TIMEOUT)
        assert response.num_samples > 0

    async def _stream(self, request) -> None:
        chunks = [c async for c in self.stub.SynthesizeStream(request, timeout=_TIMEOUT)]
        assert chunks[-1].final

    async def _cancel(self, request) -> None:
        call = self.stub.SynthesizeStream(request, timeout=_TIMEOUT)
        for _ in range(self.rng.randrange(3)):  # before any chunk, after one, or after two
            if await call.read() is grpc.aio.EOF:
                return
        call.cancel()
        raise grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, None, None)  # counted as the cancel it is

    async def _live(self, request) -> None:
        call = self.stub.SynthesizeLive(timeout=_TIMEOUT)
        await call.write(pb.LiveRequest(config=pb.LiveConfig(settings=pb.SynthesizeRequest(
            speed=request.speed, noise_scale=request.noise_scale, noise_w=request.noise_w))))
        for word in request.text.split(" "):
            await call.write(pb.LiveRequest(text=word + " "))
        await call.done_writing()
        chunks = [c async for c in call]
        assert chunks and chunks[-1].final

    async def warm_up(self) -> None:
        """Every text at every speed, both ways: the audio cache fills with every deterministic
        segment. Twice the soak's concurrency: ONNX Runtime's arena and the allocator reach at
        least the working size the soak itself needs (more calls in flight, more buffers)."""
        combos = [(text, speed, det) for text in _SHORT + _LONG for speed in _SPEEDS for det in (True, False)]
        cases = [(_KINDS[i % len(_KINDS)], _request(*combo)) for i, combo in enumerate(combos)]
        # The long texts (the largest runs and responses) by every kind of call, all clients at once.
        cases += [(kind, _request(text, speed, det)) for kind in _KINDS for text in _LONG
                  for speed in _SPEEDS for det in (True, False)]
        self.rng.shuffle(cases)

        async def worker():
            while cases:
                await self.one(*cases.pop())

        await asyncio.gather(*(worker() for _ in range(2 * _CONCURRENCY)))

    async def run(self, n: int, pid: int, samples: list) -> None:
        queue = iter(range(n))

        async def worker():
            for i in queue:
                await self.one()
                if i % 100 == 99:
                    samples.append(_rss(pid) // 2**20)

        await asyncio.gather(*(worker() for _ in range(_CONCURRENCY)))


async def _wait_idle(channel) -> stats_pb2.StatsSnapshot:
    """The server's own Stats, once no call is in flight (the last ones end as we ask)."""
    stats = stats_pb2_grpc.StatsStub(channel)
    call = stats.WatchStats(stats_pb2.WatchStatsRequest(interval_ms=100), timeout=_TIMEOUT)
    async for response in call:
        snapshot = response.snapshot
        if snapshot.queue.calls == 0 and snapshot.queue.depth == 0 and snapshot.pool.busy == 0:
            call.cancel()
            return snapshot
    raise AssertionError("the server never went idle")


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_soak_mixed_requests_with_random_cancels():
    # Default settings (one inference at a time), as deployed; the queue holds every client.
    process, address = await start_server("--max-queue", "16", "--log-level", "WARNING")
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            soak, samples = _Soak(channel, seed=11), []
            await soak.warm_up()
            await soak.run(_WARMUP, process.pid, samples)
            cache_warm = (await _wait_idle(channel)).cache.bytes
            rss_warm = _rss(process.pid)
            await soak.run(_N - _WARMUP, process.pid, samples)
            snapshot = await _wait_idle(channel)
            rss_end = _rss(process.pid)
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                     timeout=_TIMEOUT)
        growth = rss_end / rss_warm - 1
        print(f"\nsoak: {_N} requests {dict(soak.outcomes)}; server RSS {rss_warm / 2**20:.1f} MiB after "
              f"warm-up, {rss_end / 2**20:.1f} MiB at the end ({growth:+.1%}); audio cache (bounded by --cache-mb) "
              f"{cache_warm / 2**20:.1f} -> {snapshot.cache.bytes / 2**20:.1f} MiB; MiB every 100 requests: {samples}")
        assert soak.unexpected == []
        assert sum(soak.outcomes.values()) == _N + _WARMUP_CASES
        assert growth <= 0.05
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert snapshot.pool.runs_failed == 0
        assert all(s.failures == 0 for s in snapshot.pool.sessions)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), _TIMEOUT)
