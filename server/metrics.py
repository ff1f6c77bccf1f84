"""The metrics registry: request counters by RPC, door and status, latency histograms, audio totals.

Everything here is written on the event loop only (worker threads hand their
timings back to it), so recording takes no lock: a counter is an int, a
histogram a list of bucket counts. Readers on other threads (the Prometheus
scrape) ask the loop for a snapshot instead of reading these directly.

One set of bucket bounds serves every histogram, in GetStats and in
Prometheus alike, so the two report the same counts and sums.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from typing import Callable, Iterable, Optional

import grpc

from server.changes import Changes
from server.errors import SpeakstreamError
from server.requestlog import log_request
from speakstream.v1 import synthesizer_pb2

_LOGGER = logging.getLogger(__name__)

# Seconds. Phonemizing a segment takes ~1 ms, a run 20 ms to 2 s, a long
# call minutes; about four bounds per decade keep interpolated quantiles
# within a bucket's width of the truth.
BUCKET_BOUNDS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5,
    10.0, 20.0, 30.0, 60.0, 120.0,
)

# Every RPC of the Synthesizer service, listed in every snapshot even before its
# first call; read from the contract so an RPC added there is listed too.
SYNTHESIZER_RPCS: tuple[str, ...] = tuple(
    method.name for method in synthesizer_pb2.DESCRIPTOR.services_by_name["Synthesizer"].methods)
# The door of the Synthesizer service's RPCs; the other doors (server/doors/) name
# their calls "<door>:<what>" ("http:/v1/audio/speech", "wyoming:synthesize").
GRPC_DOOR = "grpc"
# Calls that list voices or models and make no audio: no generation time.
LISTING_CALLS = frozenset({"ListVoices", "http:/v1/models", "http:/v1/audio/voices", "wyoming:describe"})


class Histogram:
    """Fixed-bucket histogram: O(log buckets) record, exact count, sum and max."""

    __slots__ = ("bounds", "counts", "count", "sum", "max")

    def __init__(self, bounds: Iterable[float] = BUCKET_BOUNDS_S):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def record(self, value: float) -> None:
        """Add one observation (a value <= bounds[i] lands in bucket i)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value

    def quantile(self, q: float) -> float:
        """Estimated q-quantile (0..1): linear within the bucket holding the rank, at most max."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, in_bucket in enumerate(self.counts):
            if in_bucket and seen + in_bucket >= rank:
                low = self.bounds[i - 1] if i else 0.0
                high = self.bounds[i] if i < len(self.bounds) else self.max
                estimate = low + (high - low) * (rank - seen) / in_bucket
                return min(estimate, self.max)
            seen += in_bucket
        return self.max


class CallRecord:
    """One call being tracked; the servicer fills in what it learns."""

    __slots__ = ("rpc", "door", "status", "request_id", "voice", "characters", "samples", "sample_rate",
                 "started", "first_audio_at")

    def __init__(self, rpc: str, door: str = GRPC_DOOR):
        self.rpc = rpc
        self.door = door
        self.status: Optional[str] = None
        """Set by a door that answers an error itself (a gRPC status name, "INVALID_ARGUMENT")."""
        self.request_id = ""
        self.voice = ""
        self.characters = 0
        self.samples = 0
        self.sample_rate = 0
        self.started = time.monotonic()
        self.first_audio_at: Optional[float] = None

    def audio(self, samples: int, sample_rate: int) -> None:
        """Count audio the call produced; the first call marks the time to first audio."""
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        self.samples += samples
        self.sample_rate = sample_rate

    @property
    def audio_s(self) -> float:
        """Seconds of audio produced so far."""
        return self.samples / self.sample_rate if self.sample_rate else 0.0


class Metrics:
    """Counters and histograms since start; record from the event loop only."""

    def __init__(self, enabled: bool = True):
        """:param enabled: False (--no-metrics) skips recording; gauges elsewhere still read."""
        self.enabled = enabled
        self.started = time.monotonic()
        self.time_to_first_audio = Histogram()
        self.generation = Histogram()
        self.inference = Histogram()
        self.phonemization = Histogram()
        self.queue_wait = Histogram()
        self.by_rpc_status: dict[tuple[str, str], int] = {}
        self.in_flight: dict[str, int] = dict.fromkeys(SYNTHESIZER_RPCS, 0)
        self.doors: dict[str, str] = dict.fromkeys(SYNTHESIZER_RPCS, GRPC_DOOR)
        """Every call name seen or registered -> its door."""
        self.sent_audio_s = 0.0
        self.synthesized_audio_s = 0.0
        self.characters = 0
        self._changes = Changes()

    # -- hot path: one call per run / segment / call -----------------------

    def record_queue_wait(self, seconds: float) -> None:
        """A worker took a job that waited `seconds` in the queue."""
        if self.enabled:
            self.queue_wait.record(seconds)

    def record_inference(self, seconds: float) -> None:
        """A run returned audio after `seconds`."""
        if self.enabled:
            self.inference.record(seconds)

    def record_phonemization(self, seconds: float) -> None:
        """The frontend produced one segment in `seconds`."""
        if self.enabled:
            self.phonemization.record(seconds)

    def record_synthesized(self, samples: int, sample_rate: int) -> None:
        """A run made `samples` of audio."""
        if self.enabled and sample_rate:
            self.synthesized_audio_s += samples / sample_rate

    def register(self, door: str, calls: Iterable[str]) -> None:
        """List a door's calls in every snapshot from now on, before their first call."""
        for name in calls:
            self.doors[name] = door
            self.in_flight.setdefault(name, 0)

    @contextlib.asynccontextmanager
    async def track(self, rpc: str, context=None, door: str = GRPC_DOOR):
        """Count, time and log one call of `rpc`; yields its CallRecord.

        The outcome is the status the call ends with: OK, the code it was
        aborted with, CANCELLED when the client went away (the servicer sees
        CancelledError or, at a yield, GeneratorExit), or DEADLINE_EXCEEDED
        when that happened because its deadline passed. Another door passes
        no gRPC `context`: its call's outcome is the status it set on the
        record (an error it answered itself), the code of the
        SpeakstreamError that escaped, or CANCELLED.
        """
        call = CallRecord(rpc, door)
        self.doors.setdefault(rpc, door)
        self.in_flight[rpc] = self.in_flight.get(rpc, 0) + 1
        code = "OK"
        try:
            yield call
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED" if context is None else _cancel_code(context)
            raise
        except BaseException as exc:
            code = _error_code(exc) if context is None else _abort_code(context)
            raise
        finally:
            self._finish(call, call.status or code)

    def _finish(self, call: CallRecord, code: str) -> None:
        ended = time.monotonic()
        self.in_flight[call.rpc] -= 1
        if self.enabled:
            key = (call.rpc, code)
            self.by_rpc_status[key] = self.by_rpc_status.get(key, 0) + 1
            if call.first_audio_at is not None:
                self.time_to_first_audio.record(call.first_audio_at - call.started)
            if code == "OK" and call.rpc not in LISTING_CALLS:
                self.generation.record(ended - call.started)
            self.sent_audio_s += call.audio_s
            self.characters += call.characters
        log_request(call, code, ended)
        self._changes.changed()

    # -- readers ------------------------------------------------------------

    @property
    def in_flight_total(self) -> int:
        """Calls being tracked now."""
        return sum(self.in_flight.values())

    def count(self, rpc: Optional[str] = None, status: Optional[str] = None, door: Optional[str] = None) -> int:
        """Calls finished, optionally of one RPC, one status name and/or one door."""
        return sum(n for (r, s), n in self.by_rpc_status.items()
                   if (rpc is None or r == rpc) and (status is None or s == status)
                   and (door is None or self.doors.get(r) == door))

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds; it is re-checked whenever a call finishes."""
        await self._changes.wait_until(predicate)


# The server's deadline is the request's arrival plus its timeout, so it
# trails the client's by the request's transit time: when the client's
# deadline fires first, its cancel arrives with a little time still left here.
_DEADLINE_SLACK_S = 0.5


def _cancel_code(context) -> str:
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= _DEADLINE_SLACK_S else "CANCELLED"


def _abort_code(context) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN"


def _error_code(exc: BaseException) -> str:
    """The status name of an error that ended another door's call."""
    return exc.code.name if isinstance(exc, SpeakstreamError) else "INTERNAL"
