"""The Stats servicer: snapshots of every metric, a shared sampler for watchers, memory profiles.

A snapshot is built on the event loop from the metrics registry (requests,
histograms, audio) and from the live parts (scheduler, sessions, cache,
memory, threads, GPU). GetStats builds one per call; WatchStats calls share
one sampler task; the Prometheus exporter asks the loop for one per scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
import tracemalloc
from typing import AsyncGenerator, AsyncIterator, Callable, Optional

import grpc

from server.cache import AudioCache
from server.gpu import GpuMonitor
from server.memory import peak_rss_bytes, rss_bytes
from server.metrics import GRPC_DOOR, SYNTHESIZER_RPCS, Histogram, Metrics
from server.pool import SessionPool
from server.scheduler import Scheduler
from speakstream.v1 import stats_pb2 as pb
from speakstream.v1 import stats_pb2_grpc as pb_grpc

_LOGGER = logging.getLogger(__name__)

WATCH_INTERVAL_MS = (100, 60_000)
DEFAULT_WATCH_INTERVAL_MS = 1_000
PROFILE_DURATION_MS = (10, 600_000)
DEFAULT_PROFILE_DURATION_MS = 5_000
PROFILE_TOP_N = (1, 1_000)
DEFAULT_PROFILE_TOP_N = 20

_HISTOGRAM_FIELDS = tuple(f.name for f in pb.LatencyStats.DESCRIPTOR.fields)
_THREAD_KIND = re.compile(r"(.*?)(?:[-_]\d.*)?$", re.DOTALL)  # matches every name
# Frames that are tracemalloc's own bookkeeping or import machinery, not the server's.
_PROFILE_FILTERS = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


class SnapshotBuilder:
    """Builds a StatsSnapshot from the registry and the running parts; call on the loop."""

    def __init__(self, metrics: Metrics, scheduler: Scheduler, pool: SessionPool,
                 cache: AudioCache, gpu: GpuMonitor, profiling: bool = False):
        self._metrics = metrics
        self._scheduler = scheduler
        self._pool = pool
        self._cache = cache
        self._gpu = gpu
        self._profiling = profiling

    def build(self, include_buckets: bool = True) -> pb.StatsSnapshot:
        """Every metric, now; the histograms' buckets only if `include_buckets`."""
        snapshot = pb.StatsSnapshot(
            uptime_s=time.monotonic() - self._metrics.started,
            requests=self._requests(),
            latency=self._latency(include_buckets),
            audio=self._audio(),
            pool=self._pool_stats(),
            queue=self._queue(),
            cache=self._cache_stats(),
            memory=self._memory(),
            threads=self._threads(),
            gpu=self._gpu_stats(),
            recording=self._metrics.enabled,
        )
        snapshot.time.GetCurrentTime()
        return snapshot

    def _requests(self) -> pb.RequestStats:
        m = self._metrics
        stats = pb.RequestStats(total=m.count(), in_flight=m.in_flight_total,
                                rejected=self._scheduler.counters.calls_rejected,
                                cancelled=m.count(status="CANCELLED"))
        rpcs = dict.fromkeys(SYNTHESIZER_RPCS)
        rpcs.update(dict.fromkeys(m.doors))  # the doors' calls, registered when each door started
        rpcs.update(dict.fromkeys(rpc for rpc, _ in m.by_rpc_status))
        for rpc in rpcs:
            door = m.doors.get(rpc, GRPC_DOOR)
            entry = stats.rpcs.add(method=rpc, total=m.count(rpc), in_flight=m.in_flight.get(rpc, 0), door=door)
            stats.by_door[door] = stats.by_door[door] + entry.total
            for (r, status), n in m.by_rpc_status.items():
                if r == rpc:
                    entry.by_status[status] = n
                    stats.by_status[status] = stats.by_status[status] + n
        return stats

    def _latency(self, include_buckets: bool) -> pb.LatencyStats:
        m = self._metrics
        return pb.LatencyStats(
            time_to_first_audio=histogram_proto(m.time_to_first_audio, include_buckets),
            generation=histogram_proto(m.generation, include_buckets),
            inference=histogram_proto(m.inference, include_buckets),
            phonemization=histogram_proto(m.phonemization, include_buckets),
            queue_wait=histogram_proto(m.queue_wait, include_buckets),
        )

    def _audio(self) -> pb.AudioStats:
        m = self._metrics
        inference_s = m.inference.sum
        rtf = inference_s / m.synthesized_audio_s if m.synthesized_audio_s else 0.0
        return pb.AudioStats(sent_s=m.sent_audio_s, synthesized_s=m.synthesized_audio_s,
                             inference_s=inference_s, real_time_factor=rtf, characters=m.characters)

    def _pool_stats(self) -> pb.PoolStats:
        scheduler, counters = self._scheduler, self._scheduler.counters
        busy = len(scheduler.running)
        stats = pb.PoolStats(
            size=scheduler.pool_size, busy=busy, idle=scheduler.pool_size - busy,
            runs_started=counters.runs_started, runs_completed=counters.runs_completed,
            runs_failed=counters.runs_failed, runs_dropped_cancelled=counters.runs_dropped_cancelled,
            runs_dropped_deadline=counters.runs_dropped_deadline)
        for sessions in self._pool.all():
            for slot in list(sessions.slots):
                stats.sessions.add(voice=sessions.voice.name, index=slot.index, provider=slot.provider,
                                   runs=slot.runs, busy_s=slot.busy_s, failures=slot.failures,
                                   in_flight=slot.in_flight)
        return stats

    def _queue(self) -> pb.QueueStats:
        s = self._scheduler
        return pb.QueueStats(depth=s.queue_depth, calls=s.active_calls, capacity=s.capacity,
                             admitted=s.counters.calls_admitted)

    def _cache_stats(self) -> pb.CacheStats:
        c = self._cache
        return pb.CacheStats(entries=len(c), bytes=c.bytes, max_bytes=c.max_bytes, hits=c.hits, misses=c.misses)

    def _memory(self) -> pb.MemoryStats:
        rss = rss_bytes()
        # The kernel updates the high-water mark lazily; it can trail RSS now.
        return pb.MemoryStats(rss_bytes=rss, peak_rss_bytes=max(rss, peak_rss_bytes()),
                              cache_bytes=self._cache.bytes, queued_jobs=self._scheduler.queue_depth,
                              profiling=self._profiling and tracemalloc.is_tracing())

    def _threads(self) -> pb.ThreadStats:
        stats = pb.ThreadStats(count=threading.active_count(), os_count=_os_threads())
        for thread in threading.enumerate():
            match = _THREAD_KIND.match(thread.name)
            assert match is not None  # the pattern matches every string
            kind = match.group(1) or thread.name
            stats.by_kind[kind] = stats.by_kind[kind] + 1
        now = time.monotonic()
        running = dict(self._scheduler.running)
        for index in range(self._scheduler.pool_size):
            job = running.get(index)
            if job is None:
                stats.workers.add(index=index, state=pb.WORKER_STATE_IDLE)
            else:
                stats.workers.add(index=index, state=pb.WORKER_STATE_RUNNING, request_id=job.owner,
                                  running_s=max(0.0, now - job.started))
        return stats

    def _gpu_stats(self) -> pb.GpuStats:
        reading = self._gpu.read()
        stats = pb.GpuStats(available=reading.available, reason=reading.reason)
        for d in reading.devices:
            stats.devices.add(index=d.index, name=d.name, utilization_percent=d.utilization_percent,
                              memory_utilization_percent=d.memory_utilization_percent,
                              memory_used_bytes=d.memory_used_bytes, memory_total_bytes=d.memory_total_bytes)
        return stats


def histogram_proto(h: Histogram, include_buckets: bool = True) -> pb.Histogram:
    """The Histogram message of `h`: count, sum, mean, estimated quantiles, max, buckets."""
    message = pb.Histogram(
        count=h.count, sum_s=h.sum, mean_s=h.sum / h.count if h.count else 0.0,
        p50_s=h.quantile(0.50), p95_s=h.quantile(0.95), p99_s=h.quantile(0.99), max_s=h.max)
    if include_buckets:
        message.bucket_upper_bounds_s.extend(h.bounds)
        message.bucket_counts.extend(h.counts)
    return message


def without_buckets(snapshot: pb.StatsSnapshot) -> pb.StatsSnapshot:
    """A copy of `snapshot` whose histograms carry no buckets."""
    copy = pb.StatsSnapshot()
    copy.CopyFrom(snapshot)
    for field in _HISTOGRAM_FIELDS:
        histogram = getattr(copy.latency, field)
        histogram.ClearField("bucket_upper_bounds_s")
        histogram.ClearField("bucket_counts")
    return copy


def _os_threads() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:  # not Linux
        pass
    return 0


class _Watcher:
    """One WatchStats call: its interval, when it is next due, the snapshot waiting for it."""

    __slots__ = ("interval_s", "due", "pending")

    def __init__(self, interval_s: float, due: float):
        self.interval_s = interval_s
        self.due = due
        self.pending: Optional[pb.StatsSnapshot] = None


class SnapshotSampler:
    """One task that builds snapshots for every watcher, on a time grid shared by all.

    A watcher gets a snapshot at once, then at each multiple of its interval
    from the sampler's start, so watchers at 200 ms and 400 ms share every
    other snapshot. The task runs only while someone watches.
    """

    def __init__(self, build: Callable[[], pb.StatsSnapshot]):
        self._build = build
        self._watchers: set[_Watcher] = set()
        self._changed: Optional[asyncio.Condition] = None
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._closed = False
        self._epoch = 0.0
        self.samples = 0
        """Snapshots built since start (for tests and curiosity)."""

    @property
    def watchers(self) -> int:
        """WatchStats calls being served."""
        return len(self._watchers)

    @property
    def running(self) -> bool:
        """Whether the sampler task is alive."""
        return self._task is not None and not self._task.done()

    async def stopped(self) -> None:
        """Return once the sampler task has ended (at once when it is not running)."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def watch(self, interval_s: float) -> AsyncGenerator[pb.StatsSnapshot, None]:
        """Snapshots every `interval_s` until the caller stops iterating or the sampler closes."""
        if self._closed:
            return
        if self._changed is None or self._wake is None:  # made together, on the loop
            self._changed, self._wake = asyncio.Condition(), asyncio.Event()
        watcher = _Watcher(interval_s, due=time.monotonic())
        self._watchers.add(watcher)
        if not self.running:
            self._epoch = watcher.due
            self._task = asyncio.create_task(self._run(), name="stats-sampler")
        self._wake.set()
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(lambda: watcher.pending is not None or self._closed)
                    snapshot, watcher.pending = watcher.pending, None
                if snapshot is None:  # closed
                    return
                yield snapshot
        finally:
            self._watchers.discard(watcher)
            self._wake.set()

    async def close(self) -> None:
        """Stop the task and end every watcher's stream (the server is draining)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    async def _run(self) -> None:
        assert self._wake is not None  # watch() makes it before it starts this task
        while self._watchers:
            wait_s = min(w.due for w in self._watchers) - time.monotonic()
            if wait_s > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_s)
                continue
            await self._deliver()

    async def _deliver(self) -> None:
        try:
            snapshot = self._build()
        except Exception:  # a broken reading must not end every watcher's stream
            _LOGGER.exception("stats snapshot failed")
            snapshot = None
        self.samples += 1
        now = time.monotonic()
        for watcher in self._watchers:
            if watcher.due <= now:
                if snapshot is not None:
                    watcher.pending = snapshot
                watcher.due = self._next_due(watcher.interval_s, now)
        assert self._changed is not None  # watch() makes it before it starts the task calling this
        async with self._changed:
            self._changed.notify_all()

    def _next_due(self, interval_s: float, now: float) -> float:
        """The first grid point of `interval_s` after `now`."""
        ticks = int((now - self._epoch) / interval_s) + 1
        return self._epoch + ticks * interval_s


class StatsServicer(pb_grpc.StatsServicer):
    """speakstream.v1.Stats over a SnapshotBuilder and a SnapshotSampler."""

    def __init__(self, builder: SnapshotBuilder, profiling: bool = False):
        """:param profiling: whether the server traces allocations (--enable-profiling)."""
        self._builder = builder
        self.sampler = SnapshotSampler(builder.build)
        self._profiling = profiling

    async def GetStats(self, request: pb.GetStatsRequest, context) -> pb.GetStatsResponse:
        """A snapshot taken now."""
        return pb.GetStatsResponse(snapshot=self._builder.build(request.include_buckets))

    async def WatchStats(self, request: pb.WatchStatsRequest, context) -> AsyncIterator[pb.WatchStatsResponse]:
        """Snapshots every interval_ms until cancelled."""
        interval_ms = request.interval_ms or DEFAULT_WATCH_INTERVAL_MS
        if not WATCH_INTERVAL_MS[0] <= interval_ms <= WATCH_INTERVAL_MS[1]:
            await _abort_range(context, "interval_ms", interval_ms, WATCH_INTERVAL_MS)
        async with contextlib.aclosing(self.sampler.watch(interval_ms / 1000)) as snapshots:
            async for snapshot in snapshots:  # shared by every watcher: copied before changing
                yield pb.WatchStatsResponse(
                    snapshot=snapshot if request.include_buckets else without_buckets(snapshot))

    async def ProfileMemory(self, request: pb.ProfileMemoryRequest, context) -> pb.ProfileMemoryResponse:
        """Allocation sites that grew most during the window (tracemalloc)."""
        if not (self._profiling and tracemalloc.is_tracing()):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "memory profiling is off; start the server with --enable-profiling")
        duration_ms = request.duration_ms or DEFAULT_PROFILE_DURATION_MS
        top_n = request.top_n or DEFAULT_PROFILE_TOP_N
        if not PROFILE_DURATION_MS[0] <= duration_ms <= PROFILE_DURATION_MS[1]:
            await _abort_range(context, "duration_ms", duration_ms, PROFILE_DURATION_MS)
        if not PROFILE_TOP_N[0] <= top_n <= PROFILE_TOP_N[1]:
            await _abort_range(context, "top_n", top_n, PROFILE_TOP_N)
        return await profile_memory(duration_ms / 1000, top_n)


async def profile_memory(duration_s: float, top_n: int) -> pb.ProfileMemoryResponse:
    """Snapshot allocations, wait `duration_s`, snapshot again, return the top growth by line."""
    loop = asyncio.get_running_loop()
    # Snapshots and the comparison walk every traced block: off the loop.
    before = await loop.run_in_executor(None, _take_snapshot)
    started = time.monotonic()
    await asyncio.sleep(duration_s)  # the window being measured
    after = await loop.run_in_executor(None, _take_snapshot)
    measured_s = time.monotonic() - started
    return await loop.run_in_executor(None, _growth, before, after, top_n, measured_s)


def _take_snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces(_PROFILE_FILTERS)


def _growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top_n: int,
            measured_s: float) -> pb.ProfileMemoryResponse:
    diffs = after.compare_to(before, "lineno")
    current, peak = tracemalloc.get_traced_memory()
    response = pb.ProfileMemoryResponse(size_diff_bytes=sum(d.size_diff for d in diffs),
                                        traced_bytes=current, traced_peak_bytes=peak, duration_s=measured_s)
    for diff in sorted(diffs, key=lambda d: d.size_diff, reverse=True)[:top_n]:
        frame = diff.traceback[0]
        response.sites.add(file=frame.filename, line=frame.lineno or 0, size_diff_bytes=diff.size_diff,
                           size_bytes=diff.size, count_diff=diff.count_diff, count=diff.count)
    return response


async def _abort_range(context, field: str, value: int, bounds: tuple[int, int]) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{field}: must be between {bounds[0]:,} and {bounds[1]:,} (0 for the default), got {value}")
