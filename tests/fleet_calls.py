"""Fleet tests' tools: the three call shapes with what each call saw, steady load, and waiting on a server's Stats."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import grpc

from speakstream.v1 import stats_pb2 as spb
from speakstream.v1 import stats_pb2_grpc as spb_grpc
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

RPCS = ("Synthesize", "SynthesizeStream", "SynthesizeLive")
# Long enough to be in flight for a while on a shared core, short enough for many calls a minute.
TEXT = "The fleet keeps speaking while one of its servers goes away."


@dataclass
class Outcome:
    """One call as its client saw it."""

    request_id: str
    rpc: str
    started: float
    headers_at: Optional[float] = None
    """When its response headers arrived (None: never, e.g. refused): from then on the call is answered,
    and no balancer may send it again."""
    ended: float = 0.0
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    details: str = ""
    sequences: list[int] = field(default_factory=list)
    final: bool = False
    audio: bytes = b""


async def call(stub: pb_grpc.SynthesizerStub, rpc: str, request_id: str, text: str = TEXT,
               timeout_s: float = 60.0, **settings) -> Outcome:
    """One call of `rpc` with `text`: its status, when its headers came, its audio (never raises an RpcError)."""
    outcome = Outcome(request_id, rpc, time.monotonic())
    metadata = (("x-request-id", request_id),)
    if rpc == "Synthesize":
        handle = stub.Synthesize(pb.SynthesizeRequest(text=text, **settings), timeout=timeout_s, metadata=metadata)
    elif rpc == "SynthesizeStream":
        handle = stub.SynthesizeStream(pb.SynthesizeRequest(text=text, **settings), timeout=timeout_s,
                                       metadata=metadata)
    else:
        handle = stub.SynthesizeLive(_live_requests(text, settings), timeout=timeout_s, metadata=metadata)
    try:
        # A refused call ends with a status but no headers; the server's headers carry the request id.
        if any(key == "x-request-id" for key, _ in await handle.initial_metadata() or ()):
            outcome.headers_at = time.monotonic()
        if rpc == "Synthesize":
            outcome.audio = (await handle).audio
        else:
            async for chunk in handle:
                outcome.sequences.append(chunk.sequence)
                outcome.final = outcome.final or chunk.final
                outcome.audio += chunk.audio
        outcome.code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        outcome.code, outcome.details = exc.code(), exc.details() or ""
    outcome.ended = time.monotonic()
    return outcome


async def _live_requests(text: str, settings: dict):
    yield pb.LiveRequest(config=pb.LiveConfig(settings=pb.SynthesizeRequest(**settings)))
    yield pb.LiveRequest(text=text)
    yield pb.LiveRequest(flush=True)


class SteadyLoad:
    """`concurrency` clients calling back to back, each call a different shape in turn, until stopped."""

    def __init__(self, stub: pb_grpc.SynthesizerStub, concurrency: int, prefix: str):
        self.outcomes: list[Outcome] = []
        self._stub = stub
        self._concurrency = concurrency
        self._prefix = prefix
        self._ids = itertools.count()
        self._stopping = False
        self._ended = asyncio.Condition()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        """Start the clients."""
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self._concurrency)]

    async def _client(self, index: int) -> None:
        for n in itertools.count(index):
            if self._stopping:
                return
            outcome = await call(self._stub, RPCS[n % len(RPCS)], f"{self._prefix}-{next(self._ids)}")
            async with self._ended:
                self.outcomes.append(outcome)
                self._ended.notify_all()

    async def wait_for(self, predicate: Callable[[list[Outcome]], bool], timeout_s: float = 120.0) -> None:
        """Return once `predicate(outcomes)` holds; it is checked each time a call ends."""
        async with self._ended:
            await asyncio.wait_for(self._ended.wait_for(lambda: predicate(self.outcomes)), timeout_s)

    async def stop(self) -> list[Outcome]:
        """Let every client finish the call it is in (each has a deadline), then return all outcomes."""
        self._stopping = True
        await asyncio.gather(*self._tasks)
        return self.outcomes


async def snapshot(address: str) -> spb.StatsSnapshot:
    """One Stats snapshot of the server at `address`."""
    async with grpc.aio.insecure_channel(address) as channel:
        return (await spb_grpc.StatsStub(channel).GetStats(spb.GetStatsRequest(), timeout=30)).snapshot


async def wait_stats(address: str, predicate: Callable[[spb.StatsSnapshot], bool],
                     timeout_s: float = 60.0) -> spb.StatsSnapshot:
    """The first snapshot of the server at `address` (WatchStats, every 100 ms) for which `predicate` holds."""
    async with grpc.aio.insecure_channel(address) as channel:
        watch = spb_grpc.StatsStub(channel).WatchStats(spb.WatchStatsRequest(interval_ms=100), timeout=timeout_s)
        async for reply in watch:
            if predicate(reply.snapshot):
                watch.cancel()
                return reply.snapshot
    raise AssertionError(f"{address}: the watch ended before the condition held")


def rpc_total(snap: spb.StatsSnapshot, rpc: str) -> int:
    """Calls of `rpc` the snapshot counts as finished."""
    return next(r.total for r in snap.requests.rpcs if r.method == rpc)
