"""The Stats service on the shared test server: snapshots, WatchStats timing and sharing,
ProfileMemory refused when off, the request log line, and speakstream-stats."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import sys
import time
import urllib.request

import grpc
import pytest
from external_tools import grpcurl_examples, grpcurl_path, run
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.metrics import Metrics
from server.requestlog import JsonFormatter
from server.stats import SnapshotBuilder
from speakstream.v1 import stats_pb2 as spb
from speakstream.v1 import stats_pb2_grpc as spb_grpc
from speakstream.v1 import synthesizer_pb2 as pb

_TIMEOUT = 60


@pytest.fixture
def stats(channel):
    """A Stats stub on the shared channel."""
    return spb_grpc.StatsStub(channel)


async def _watch(stats, interval_ms: int, count: int) -> list[tuple[float, spb.StatsSnapshot]]:
    """`count` snapshots of a WatchStats call with the time each arrived; then the call is cancelled."""
    call = stats.WatchStats(spb.WatchStatsRequest(interval_ms=interval_ms), timeout=_TIMEOUT)
    received = []
    while len(received) < count:
        response = await asyncio.wait_for(call.read(), _TIMEOUT)
        received.append((time.monotonic(), response.snapshot))
    call.cancel()
    return received


async def test_get_stats_describes_the_running_server(app, stub, stats):
    # Worker threads start with the first request.
    await stub.Synthesize(pb.SynthesizeRequest(text="Threads, please."), timeout=_TIMEOUT)
    snapshot = (await stats.GetStats(spb.GetStatsRequest(), timeout=_TIMEOUT)).snapshot
    assert snapshot.uptime_s > 0 and snapshot.time.seconds > 0
    assert snapshot.recording
    # stats.proto: one entry per Synthesizer RPC, listed even before its first call; so on this
    # server and on a fresh registry that has seen no call at all.
    every_rpc = [m.name for m in pb.DESCRIPTOR.services_by_name["Synthesizer"].methods]
    assert [r.method for r in snapshot.requests.rpcs] == every_rpc
    fresh = SnapshotBuilder(Metrics(), app.scheduler, app.pool, app.synthesizer.cache, app.gpu).build()
    assert [(r.method, r.total, r.in_flight) for r in fresh.requests.rpcs] == [(m, 0, 0) for m in every_rpc]
    assert snapshot.pool.size == app.settings.pool_size
    assert snapshot.pool.busy + snapshot.pool.idle == app.settings.pool_size
    assert [w.index for w in snapshot.threads.workers] == list(range(app.settings.pool_size))
    assert {"infer", "frontend", "MainThread"} <= set(snapshot.threads.by_kind)
    assert snapshot.threads.os_count >= snapshot.threads.count
    assert {s.voice for s in snapshot.pool.sessions} == {app.voices.default.name}
    assert snapshot.queue.capacity == app.settings.pool_size + app.settings.max_queue
    assert snapshot.cache.max_bytes == app.settings.cache_mb * 1024 * 1024
    assert snapshot.memory.rss_bytes > 50 * 1024 * 1024
    assert snapshot.memory.peak_rss_bytes >= snapshot.memory.rss_bytes
    assert not snapshot.memory.profiling
    # Buckets only on request.
    assert not snapshot.latency.inference.bucket_counts


async def test_get_stats_with_buckets_gives_one_count_per_bound_plus_inf(stub, stats):
    await stub.Synthesize(pb.SynthesizeRequest(text="Buckets, please."), timeout=_TIMEOUT)
    request = spb.GetStatsRequest(include_buckets=True)
    latency = (await stats.GetStats(request, timeout=_TIMEOUT)).snapshot.latency
    for field in ("time_to_first_audio", "generation", "inference", "phonemization", "queue_wait"):
        h = getattr(latency, field)
        assert len(h.bucket_counts) == len(h.bucket_upper_bounds_s) + 1, field
        assert sum(h.bucket_counts) == h.count > 0, field
        assert h.p50_s <= h.p95_s <= h.p99_s <= h.max_s, field
        assert h.mean_s == pytest.approx(h.sum_s / h.count), field


async def test_gpu_section_says_no_gpu_here(stats):
    gpu = (await stats.GetStats(spb.GetStatsRequest(), timeout=_TIMEOUT)).snapshot.gpu
    assert not gpu.available
    assert gpu.reason.startswith("no GPU")
    assert not gpu.devices


async def test_worker_shows_the_request_id_of_the_inference_it_runs(app, stub, stats):
    text = " ".join(f"Sentence {i} keeps a worker busy for a little while." for i in range(30))
    call = stub.SynthesizeStream(pb.SynthesizeRequest(text=text), metadata=(("x-request-id", "busy-worker"),),
                                 timeout=_TIMEOUT)
    await asyncio.wait_for(call.read(), _TIMEOUT)
    seen = set()
    # A long stream has an inference running or queued at every moment until it ends;
    # read until a snapshot catches one running (each read is one snapshot, not a wait).
    for _ in range(200):
        snapshot = (await stats.GetStats(spb.GetStatsRequest(), timeout=_TIMEOUT)).snapshot
        seen |= {w.request_id for w in snapshot.threads.workers if w.state == spb.WORKER_STATE_RUNNING}
        if "busy-worker" in seen:
            break
        await asyncio.wait_for(call.read(), _TIMEOUT)
    call.cancel()
    assert "busy-worker" in seen
    await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)


async def test_health_and_reflection_include_stats(channel):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service="speakstream.v1.Stats"), timeout=_TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in reflection.ServerReflectionInfo(iter([request]), timeout=_TIMEOUT)]
    assert "speakstream.v1.Stats" in {s.name for s in responses[0].list_services_response.service}


@pytest.mark.slow
async def test_watch_stats_yields_at_the_requested_interval(stats):
    interval_s = 0.25
    received = await _watch(stats, int(interval_s * 1000), 7)
    # Server-side sampling times sit on the grid (the first snapshot comes at once, off the grid).
    sampled = [s.time.ToNanoseconds() / 1e9 for _, s in received[1:]]
    for gap in (b - a for a, b in zip(sampled, sampled[1:])):
        assert gap == pytest.approx(interval_s, abs=0.06)
    # Receive times: the client sees the same cadence, with network and scheduling jitter.
    arrivals = [t for t, _ in received[1:]]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert statistics.mean(gaps) == pytest.approx(interval_s, rel=0.15)
    assert all(0.5 * interval_s <= g <= 1.5 * interval_s for g in gaps), gaps


@pytest.mark.slow
async def test_watchers_share_one_sampler(app, stats):
    sampler = app.stats.sampler
    samples_before = sampler.samples
    fast, slow = await asyncio.gather(_watch(stats, 200, 7), _watch(stats, 400, 4))
    fast_times = {s.time.ToNanoseconds() for _, s in fast}
    slow_times = [s.time.ToNanoseconds() for _, s in slow]
    # After its immediate first snapshot, every one the slow watcher gets is one the fast one got too.
    assert set(slow_times[1:]) <= fast_times
    await asyncio.wait_for(sampler.stopped(), _TIMEOUT)
    assert sampler.samples - samples_before <= len(fast_times | set(slow_times)) + 1


async def test_watch_stats_stops_on_cancel(app, stats):
    call = stats.WatchStats(spb.WatchStatsRequest(interval_ms=100), timeout=_TIMEOUT)
    await asyncio.wait_for(call.read(), _TIMEOUT)
    assert app.stats.sampler.running
    call.cancel()
    await asyncio.wait_for(app.stats.sampler.stopped(), _TIMEOUT)
    assert app.stats.sampler.watchers == 0
    assert not app.stats.sampler.running


@pytest.mark.parametrize("interval_ms", [50, 60_001])
async def test_watch_stats_rejects_an_interval_out_of_range(stats, interval_ms):
    call = stats.WatchStats(spb.WatchStatsRequest(interval_ms=interval_ms), timeout=_TIMEOUT)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(call.read(), _TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "interval_ms" in info.value.details()


async def test_profile_memory_is_failed_precondition_unless_enabled(stats):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stats.ProfileMemory(spb.ProfileMemoryRequest(duration_ms=100), timeout=_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--enable-profiling" in info.value.details()


async def test_every_call_logs_one_request_line_with_its_id(stub, caplog):
    caplog.set_level(logging.INFO, logger="server.requests")
    text = "Log this one."
    chunks = [c async for c in stub.SynthesizeStream(
        pb.SynthesizeRequest(text=text), metadata=(("x-request-id", "log-me-1"),), timeout=_TIMEOUT)]
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Synthesize(pb.SynthesizeRequest(text=""), metadata=(("x-request-id", "log-me-2"),),
                              timeout=_TIMEOUT)
    records = {r.request["request_id"]: r for r in caplog.records
               if r.name == "server.requests" and r.request["request_id"].startswith("log-me-")}
    assert set(records) == {"log-me-1", "log-me-2"}
    ok, bad = records["log-me-1"], records["log-me-2"]
    assert ok.levelno == logging.INFO
    message = ok.getMessage()
    for part in ("id=log-me-1", "rpc=SynthesizeStream", "voice=en_US-joe-medium", f"chars={len(text)}",
                 "status=OK", "ttfa_ms=", "total_ms=", "audio_s="):
        assert part in message, message
    audio_s = sum(c.num_samples for c in chunks) / 22050
    assert ok.request["audio_s"] == pytest.approx(audio_s, abs=0.001)
    assert 0 < ok.request["ttfa_ms"] <= ok.request["total_ms"]
    assert "status=INVALID_ARGUMENT" in bad.getMessage() and "ttfa_ms=-" in bad.getMessage()
    # The same record as one JSON object (--log-format json).
    entry = json.loads(JsonFormatter().format(ok))
    assert entry["request_id"] == "log-me-1" and entry["status"] == "OK" and entry["level"] == "INFO"
    assert entry["chars"] == len(text) and entry["logger"] == "server.requests"


async def test_stats_command_prints_a_table(app):
    result = await run([sys.executable, "-m", "clients.stats", "--server", app.address])
    assert result.code == 0, result.explain()
    for part in ("requests", "time to first audio", "inference (segment)", "queue wait", "real-time factor",
                 "workers", "cache", "RSS", "worker 0", "no GPU"):
        assert part in result.out, result.out


async def test_stats_command_prints_json(app):
    result = await run([sys.executable, "-m", "clients.stats", "--server", app.address, "--json"])
    assert result.code == 0, result.explain()
    snapshot = json.loads(result.out)
    assert "available" not in snapshot["gpu"]  # false: proto3 JSON leaves it out
    assert snapshot["gpu"]["reason"].startswith("no GPU")
    assert snapshot["latency"]["inference"]["bucketCounts"]


async def test_stats_command_watches_a_number_of_snapshots(app):
    result = await run([sys.executable, "-m", "clients.stats", "--server", app.address,
                        "--watch", "--interval-ms", "100", "--count", "3", "--json"])
    assert result.code == 0, result.explain()
    lines = result.out.strip().splitlines()
    assert len(lines) == 3
    assert all("uptimeS" in json.loads(line) for line in lines)


async def test_stats_command_reports_an_unreachable_server():
    result = await run([sys.executable, "-m", "clients.stats", "--server", "127.0.0.1:1", "--timeout", "5"])
    assert result.code == 3
    assert "cannot reach" in result.err


async def test_stats_command_reports_a_bad_interval(app):
    result = await run([sys.executable, "-m", "clients.stats", "--server", app.address,
                        "--watch", "--interval-ms", "5"])
    assert result.code == 2
    assert "interval_ms" in result.err


@pytest.mark.parametrize("flags, named", [
    (("--log-format", "xml"), "--log-format"),
    (("--metrics-port", "70000"), "metrics-port"),
])
async def test_observability_flags_are_checked_before_loading_models(flags, named):
    result = await run([sys.executable, "-m", "server", *flags])
    assert result.code == 2, result.explain()
    assert named in result.err


async def _line(stream, prefix: str) -> str:
    """The first line of `stream` that contains `prefix` (each read with a timeout)."""
    while True:
        line = (await asyncio.wait_for(stream.readline(), _TIMEOUT)).decode()
        if not line:
            raise AssertionError(f"stream ended before a line with {prefix!r}")
        if prefix in line:
            return line


@pytest.mark.slow
async def test_server_process_logs_json_lines_and_serves_metrics():
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "--port", "0", "--grace-s", "0", "--log-format", "json",
        "--metrics-port", "0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        metrics_line = json.loads(await _line(process.stderr, "Prometheus metrics on"))
        metrics_url = metrics_line["message"].split()[-1]
        address = (await _line(process.stdout, "listening on")).split()[-1]
        async with grpc.aio.insecure_channel(address) as channel:
            from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

            await pb_grpc.SynthesizerStub(channel).Synthesize(
                pb.SynthesizeRequest(text="Logged as JSON."), metadata=(("x-request-id", "json-1"),),
                timeout=_TIMEOUT)
        request_line = json.loads(await _line(process.stderr, '"json-1"'))
        scrape = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
            None, lambda: urllib.request.urlopen(metrics_url, timeout=_TIMEOUT).read().decode()), _TIMEOUT)
    finally:
        process.terminate()
        _, rest = await asyncio.wait_for(process.communicate(), _TIMEOUT)
    assert request_line["logger"] == "server.requests" and request_line["status"] == "OK"
    assert request_line["rpc"] == "Synthesize" and request_line["chars"] == len("Logged as JSON.")
    assert 'speakstream_requests_total{code="OK",method="Synthesize"} 1.0' in scrape
    for line in rest.decode().splitlines():  # every other line is JSON too
        json.loads(line)


def _operations_examples() -> list[tuple[tuple[str, ...], str]]:
    """Every grpcurl command of the Metrics section of docs/OPERATIONS.md, with the status it expects."""
    return grpcurl_examples("OPERATIONS.md", "Metrics")


def test_operations_doc_has_grpcurl_examples_for_every_stats_rpc():
    commands = " ".join(" ".join(argv) for argv, _ in _operations_examples())
    for rpc in ("Stats/GetStats", "Stats/WatchStats", "Stats/ProfileMemory"):
        assert rpc in commands


@pytest.mark.parametrize("argv, expected_status", _operations_examples(), ids=lambda v: " ".join(v)[-60:]
                         if isinstance(v, tuple) else v)
async def test_operations_doc_example_runs(app, argv, expected_status):
    result = await run([grpcurl_path(), *(app.address if a == "localhost:50051" else a for a in argv[1:])])
    if expected_status:
        assert f"Code: {expected_status}" in result.err, result.explain()
    else:
        assert result.code == 0, result.explain()
        assert result.out.strip()
    if "Stats/WatchStats" in argv:  # snapshots came before -max-time ended the stream
        assert result.out.count('"uptimeS"') >= 2, result.explain()
