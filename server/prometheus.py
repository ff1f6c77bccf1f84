"""Prometheus text exposition of the Stats snapshot (--metrics-port), via prometheus_client.

The collector builds one StatsSnapshot per scrape on the server's event loop
(where the registry is written) and translates it, so a scrape and a GetStats
call taken at the same moment hold the same numbers. Request ids are not
labels: one series per request would grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable, Optional
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from speakstream.v1 import stats_pb2 as pb

_LOGGER = logging.getLogger(__name__)

_SCRAPE_TIMEOUT_S = 10.0
_PREFIX = "speakstream_"

# (snapshot latency field, metric name, help)
_HISTOGRAMS = (
    ("time_to_first_audio", "time_to_first_audio_seconds",
     "Time from a call's start to its first audio (calls that produced audio)."),
    ("generation", "generation_seconds", "Total generation time of a call that finished OK."),
    ("inference", "inference_seconds", "Model inference time of one segment (one ONNX Runtime run)."),
    ("phonemization", "phonemization_seconds", "Phonemization time of one segment."),
    ("queue_wait", "queue_wait_seconds", "Time an inference waited for a worker."),
)


class SnapshotCollector(Collector):
    """A prometheus_client collector reading StatsSnapshots built on the server's loop."""

    def __init__(self, build: Callable[[], pb.StatsSnapshot], loop: asyncio.AbstractEventLoop):
        self._build = build
        self._loop = loop

    def describe(self) -> Iterable:
        # Names are known only from a snapshot; no describe keeps registration free of a scrape.
        return []

    def collect(self) -> Iterable:
        """Called on the HTTP server's thread for every scrape."""
        future = asyncio.run_coroutine_threadsafe(self._snapshot(), self._loop)
        return families(future.result(_SCRAPE_TIMEOUT_S))

    async def _snapshot(self) -> pb.StatsSnapshot:
        return self._build()


class PrometheusExporter:
    """An HTTP server answering /metrics from a SnapshotCollector, in a thread of its own."""

    def __init__(self, build: Callable[[], pb.StatsSnapshot], loop: asyncio.AbstractEventLoop):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(build, loop))
        self._httpd: Optional[WSGIServer] = None
        self.port: Optional[int] = None

    def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 picks a free port); returns the port."""
        self._httpd, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = self._httpd.server_port
        return self.port

    async def stop(self) -> None:
        """Stop listening; a scrape in progress finishes first."""
        if self._httpd is not None:
            # shutdown() blocks until serve_forever returns: off the loop,
            # which a scrape in progress may be waiting on.
            await asyncio.get_running_loop().run_in_executor(None, self._httpd.shutdown)
            self._httpd.server_close()
            self._httpd = None


def families(s: pb.StatsSnapshot) -> list[Metric]:
    """Every metric family of `s`, with the conventional Prometheus names."""
    out: list[Metric] = [_gauge("uptime_seconds", "Seconds since the server started.", s.uptime_s),
                         _gauge("metrics_recording", "1 when request metrics are recorded (0 with --no-metrics).",
                                float(s.recording))]
    out += _request_families(s.requests)
    out += [_histogram(name, doc, getattr(s.latency, field)) for field, name, doc in _HISTOGRAMS]
    out += _audio_families(s.audio)
    out += _pool_families(s.pool)
    out += _queue_families(s.queue)
    out += _cache_families(s.cache)
    out += _memory_families(s.memory)
    out += _thread_families(s.threads)
    out += _gpu_families(s.gpu)
    return out


def _request_families(r: pb.RequestStats) -> list:
    total = CounterMetricFamily(_PREFIX + "requests", "Calls finished, by RPC and gRPC status code.",
                                labels=("method", "code"))
    in_flight = GaugeMetricFamily(_PREFIX + "requests_in_flight", "Calls running now, by RPC.",
                                  labels=("method",))
    by_door = CounterMetricFamily(_PREFIX + "door_requests", "Calls finished, by door (grpc, http, ws, wyoming) "
                                  "and gRPC status code.", labels=("door", "code"))
    door_codes: dict[tuple[str, str], int] = {}
    for rpc in r.rpcs:
        in_flight.add_metric((rpc.method,), rpc.in_flight)
        for code, n in sorted(rpc.by_status.items()):
            total.add_metric((rpc.method, code), n)
            door_codes[rpc.door, code] = door_codes.get((rpc.door, code), 0) + n
    for key, n in sorted(door_codes.items()):
        by_door.add_metric(key, n)
    return [
        total, in_flight, by_door,
        _counter("requests_rejected", "Calls refused at admission (RESOURCE_EXHAUSTED).", r.rejected),
        _counter("requests_cancelled", "Calls cancelled by the client.", r.cancelled),
    ]


def _audio_families(a: pb.AudioStats) -> list:
    return [
        _counter("audio_sent_seconds", "Seconds of audio sent to clients.", a.sent_s),
        _counter("audio_synthesized_seconds", "Seconds of audio made by model inference.", a.synthesized_s),
        _counter("inference_busy_seconds", "Seconds spent in model inference.", a.inference_s),
        _gauge("real_time_factor", "Inference seconds per second of synthesized audio.", a.real_time_factor),
        _counter("characters", "Characters of text in finished calls.", a.characters),
    ]


def _pool_families(p: pb.PoolStats) -> list:
    session_labels = ("voice", "session", "provider")
    runs = CounterMetricFamily(_PREFIX + "session_runs", "Runs finished per session.", labels=session_labels)
    busy = CounterMetricFamily(_PREFIX + "session_busy_seconds", "Seconds each session ran.", labels=session_labels)
    failures = CounterMetricFamily(_PREFIX + "session_failures", "Failed runs per session.", labels=session_labels)
    in_flight = GaugeMetricFamily(_PREFIX + "session_in_flight", "Runs on each session now.", labels=session_labels)
    for session in p.sessions:
        labels = (session.voice, str(session.index), session.provider)
        runs.add_metric(labels, session.runs)
        busy.add_metric(labels, session.busy_s)
        failures.add_metric(labels, session.failures)
        in_flight.add_metric(labels, session.in_flight)
    return [
        _gauge("pool_workers", "Inference workers (--pool-size).", p.size),
        _gauge("pool_busy_workers", "Workers running an inference now.", p.busy),
        _gauge("pool_idle_workers", "Workers waiting for work now.", p.idle),
        runs, busy, failures, in_flight,
        _counter("runs_started", "Inferences a worker started.", p.runs_started),
        _counter("runs_completed", "Inferences that ended.", p.runs_completed),
        _counter("runs_failed", "Inferences that failed.", p.runs_failed),
        _counter("runs_dropped_cancelled", "Queued inferences dropped: their call went away.",
                 p.runs_dropped_cancelled),
        _counter("runs_dropped_deadline", "Queued inferences dropped: deadline passed.", p.runs_dropped_deadline),
    ]


def _queue_families(q: pb.QueueStats) -> list:
    return [
        _gauge("queue_depth", "Inferences waiting for a worker.", q.depth),
        _gauge("calls_active", "Calls admitted and not finished.", q.calls),
        _gauge("calls_capacity", "Calls that may be admitted at once.", q.capacity),
        _counter("calls_admitted", "Calls admitted since start.", q.admitted),
    ]


def _cache_families(c: pb.CacheStats) -> list:
    return [
        _gauge("cache_entries", "Segments in the audio cache.", c.entries),
        _gauge("cache_bytes", "Audio bytes held by the cache.", c.bytes),
        _gauge("cache_max_bytes", "Bound on the cache's bytes.", c.max_bytes),
        _counter("cache_hits", "Cache lookups that found audio.", c.hits),
        _counter("cache_misses", "Cache lookups that found none.", c.misses),
    ]


def _memory_families(m: pb.MemoryStats) -> list:
    return [
        _gauge("memory_rss_bytes", "Resident set size.", m.rss_bytes),
        _gauge("memory_peak_rss_bytes", "Highest resident set size so far.", m.peak_rss_bytes),
        _gauge("memory_queued_jobs", "Inferences queued (each holds its ids, then its audio).", m.queued_jobs),
        _gauge("memory_profiling", "1 when allocations are traced (--enable-profiling).", float(m.profiling)),
    ]


def _thread_families(t: pb.ThreadStats) -> list:
    by_kind = GaugeMetricFamily(_PREFIX + "threads", "Python threads by kind.", labels=("kind",))
    for kind, n in sorted(t.by_kind.items()):
        by_kind.add_metric((kind,), n)
    busy = GaugeMetricFamily(_PREFIX + "worker_busy", "1 while the worker runs an inference.", labels=("worker",))
    running = GaugeMetricFamily(_PREFIX + "worker_running_seconds", "How long the current inference has run.",
                                labels=("worker",))
    for w in t.workers:
        busy.add_metric((str(w.index),), float(w.state == pb.WORKER_STATE_RUNNING))
        running.add_metric((str(w.index),), w.running_s)
    return [by_kind, _gauge("os_threads", "Operating-system threads of the process.", t.os_count), busy, running]


def _gpu_families(g: pb.GpuStats) -> list:
    labels = ("gpu", "name")
    util = GaugeMetricFamily(_PREFIX + "gpu_utilization_ratio", "GPU busy fraction, 0 to 1.", labels=labels)
    used = GaugeMetricFamily(_PREFIX + "gpu_memory_used_bytes", "GPU memory in use.", labels=labels)
    total = GaugeMetricFamily(_PREFIX + "gpu_memory_total_bytes", "GPU memory in total.", labels=labels)
    for d in g.devices:
        key = (str(d.index), d.name)
        util.add_metric(key, d.utilization_percent / 100)
        used.add_metric(key, d.memory_used_bytes)
        total.add_metric(key, d.memory_total_bytes)
    return [_gauge("gpu_available", "1 when NVML reports a GPU.", float(g.available)), util, used, total]


def _histogram(name: str, doc: str, h: pb.Histogram) -> HistogramMetricFamily:
    cumulative, buckets = 0, []
    for bound, n in zip((*h.bucket_upper_bounds_s, float("inf")), h.bucket_counts):
        cumulative += n
        buckets.append((floatToGoString(bound), cumulative))
    return HistogramMetricFamily(_PREFIX + name, doc, buckets=buckets, sum_value=h.sum_s)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(_PREFIX + name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(_PREFIX + name, doc, value=value)
