"""Exact counters after a known set of calls, Prometheus agreeing with GetStats, and
ProfileMemory on a server started with profiling: each on a server of its own, so no
other test's traffic is counted."""

from __future__ import annotations

import asyncio
import logging
import tracemalloc
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.app import start
from server.config import Settings
from speakstream.v1 import stats_pb2 as spb
from speakstream.v1 import stats_pb2_grpc as spb_grpc
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_TIMEOUT = 60
_RATE = 22050
_LONG_TEXT = " ".join(f"Sentence number {i} of a long text goes on for a while, so that it keeps "
                      "the pool busy." for i in range(40))
_HISTOGRAMS = ("time_to_first_audio", "generation", "inference", "phonemization", "queue_wait")


@pytest.fixture
async def counted_server():
    """One inference slot and no queue (a second call is refused), Prometheus on a free port."""
    app = await start(Settings(port=0, pool_size=1, max_queue=0, grace_s=0, metrics_port=0))
    async with grpc.aio.insecure_channel(app.address) as channel:
        yield app, pb_grpc.SynthesizerStub(channel), spb_grpc.StatsStub(channel)
    await app.stop(grace=0)


async def _expect(code: grpc.StatusCode, call) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()


async def _first_chunk_then_cancel(stub, request_id: str, while_held=None) -> int:
    """Start a long stream, read one chunk, await `while_held()`, cancel; the samples read."""
    call = stub.SynthesizeStream(pb.SynthesizeRequest(text=_LONG_TEXT), metadata=(("x-request-id", request_id),),
                                 timeout=_TIMEOUT)
    chunk = await asyncio.wait_for(call.read(), _TIMEOUT)
    if while_held is not None:
        await while_held()
    call.cancel()
    return chunk.num_samples


async def _settled(app) -> None:
    """Wait until no call is tracked and the scheduler is idle."""
    await asyncio.wait_for(app.metrics.wait_until(lambda: app.metrics.in_flight_total == 0), _TIMEOUT)
    await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)


async def _run_known_calls(app, stub) -> dict:
    """3 OK synthesis calls + 1 ListVoices, 4 invalid, 1 rejected, 1 past its deadline, 2 cancelled."""
    texts, samples = [], 0
    for text in ("Hello there.", "How are you today? Fine, thanks."):
        texts.append(text)
        samples += sum([c.num_samples async for c in stub.SynthesizeStream(pb.SynthesizeRequest(text=text),
                                                                           timeout=_TIMEOUT)])
    texts.append("One whole response.")
    samples += (await stub.Synthesize(pb.SynthesizeRequest(text=texts[-1]), timeout=_TIMEOUT)).num_samples
    await stub.ListVoices(pb.ListVoicesRequest(), timeout=_TIMEOUT)

    invalid = [pb.SynthesizeRequest(text=""), pb.SynthesizeRequest(text="Too fast.", speed=9)]
    await _expect(grpc.StatusCode.INVALID_ARGUMENT, stub.Synthesize(invalid[0], timeout=_TIMEOUT))
    await _expect(grpc.StatusCode.NOT_FOUND, stub.Synthesize(pb.SynthesizeRequest(text="Who?", voice="nobody"),
                                                             timeout=_TIMEOUT))
    await _expect(grpc.StatusCode.INVALID_ARGUMENT,
                  stub.SynthesizeStream(invalid[1], timeout=_TIMEOUT).read())
    await _expect(grpc.StatusCode.INVALID_ARGUMENT,
                  stub.SynthesizeStream(pb.SynthesizeRequest(text="Wav?", sample_rate_hz=4000),
                                        timeout=_TIMEOUT).read())
    texts += ["", "Who?", "Too fast.", "Wav?"]

    def rejected():  # while the only slot is held
        return _expect(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       stub.Synthesize(pb.SynthesizeRequest(text="One too many."), timeout=_TIMEOUT))

    cancelled_samples = await _first_chunk_then_cancel(stub, "cancel-1", rejected)
    await _settled(app)
    cancelled_samples += await _first_chunk_then_cancel(stub, "cancel-2")
    await _settled(app)
    await _expect(grpc.StatusCode.DEADLINE_EXCEEDED, stub.Synthesize(pb.SynthesizeRequest(text=_LONG_TEXT),
                                                                     timeout=0.3))
    await _settled(app)
    texts += ["One too many.", _LONG_TEXT, _LONG_TEXT, _LONG_TEXT]
    return {"characters": sum(map(len, texts)), "ok_samples": samples, "cancelled_samples": cancelled_samples}


@pytest.mark.slow
async def test_counters_match_a_known_set_of_calls_and_prometheus_agrees(counted_server, caplog):
    app, stub, stats = counted_server
    caplog.set_level(logging.INFO, logger="server.requests")
    known = await _run_known_calls(app, stub)
    snapshot = (await stats.GetStats(spb.GetStatsRequest(include_buckets=True), timeout=_TIMEOUT)).snapshot
    _check_counters(snapshot, known)
    logged = [r.request for r in caplog.records if r.name == "server.requests"]
    assert len(logged) == snapshot.requests.total  # one line per call
    _check_histograms(snapshot, calls_with_audio=sum(entry["ttfa_ms"] is not None for entry in logged))
    scraped = await _scrape(app.metrics_port)
    again = (await stats.GetStats(spb.GetStatsRequest(include_buckets=True), timeout=_TIMEOUT)).snapshot
    assert again.requests == snapshot.requests and again.latency == snapshot.latency  # nothing ran between
    _check_prometheus_agrees(scraped, snapshot)


def _check_counters(s: spb.StatsSnapshot, known: dict) -> None:
    by_rpc = {r.method: dict(r.by_status) for r in s.requests.rpcs}
    assert by_rpc == {
        "Synthesize": {"OK": 1, "INVALID_ARGUMENT": 1, "NOT_FOUND": 1, "RESOURCE_EXHAUSTED": 1,
                       "DEADLINE_EXCEEDED": 1},
        "SynthesizeStream": {"OK": 2, "INVALID_ARGUMENT": 2, "CANCELLED": 2},
        "ListVoices": {"OK": 1},
        "SynthesizeLive": {},  # listed before its first call, as every Synthesizer RPC
    }
    r = s.requests
    assert (r.total, r.in_flight, r.rejected, r.cancelled) == (12, 0, 1, 2)
    assert dict(r.by_status) == {"OK": 4, "INVALID_ARGUMENT": 3, "NOT_FOUND": 1, "RESOURCE_EXHAUSTED": 1,
                                 "DEADLINE_EXCEEDED": 1, "CANCELLED": 2}
    assert all(rpc.in_flight == 0 for rpc in r.rpcs)
    assert s.audio.characters == known["characters"]
    # Sent audio: the OK calls exactly, plus at least what the cancelled calls' clients read.
    assert s.audio.sent_s >= (known["ok_samples"] + known["cancelled_samples"]) / _RATE
    assert s.audio.synthesized_s > 0 and s.audio.inference_s > 0
    assert s.audio.real_time_factor == pytest.approx(s.audio.inference_s / s.audio.synthesized_s)
    assert s.queue.calls == 0 and s.queue.depth == 0 and s.pool.busy == 0


def _check_histograms(s: spb.StatsSnapshot, calls_with_audio: int) -> None:
    lat, pool = s.latency, s.pool
    assert lat.generation.count == 3  # the OK synthesis calls, once each
    # Every call that had audio once: the OK ones, the cancelled ones (after their first chunk),
    # and the one past its deadline if its first segment was ready in time.
    assert lat.time_to_first_audio.count == calls_with_audio
    assert calls_with_audio in (3 + 2, 3 + 2 + 1)
    assert lat.queue_wait.count == pool.runs_started  # every run started, once
    # Every run that returned audio; a run stopped by its call's cancel or deadline returns none.
    assert pool.runs_completed - 3 <= lat.inference.count <= pool.runs_completed
    assert lat.inference.sum_s == pytest.approx(s.audio.inference_s)
    # One phonemization per sentence spoken, and a sentence takes one or more runs
    # (an encoder job, then decoder windows): at least one of each per call with audio.
    assert calls_with_audio <= lat.phonemization.count <= lat.inference.count
    for field in _HISTOGRAMS:
        h = getattr(lat, field)
        assert sum(h.bucket_counts) == h.count, field


async def _scrape(port: int) -> dict:
    """{sample name: {frozenset(labels): value}} of one /metrics scrape, parsed by prometheus_client."""
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=_TIMEOUT) as response:
            return response.read().decode()

    text = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, fetch), _TIMEOUT)
    samples: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def _one(scraped: dict, name: str, **labels) -> float:
    return scraped[name][frozenset(labels.items())]


def _check_prometheus_agrees(scraped: dict, s: spb.StatsSnapshot) -> None:
    for rpc in s.requests.rpcs:
        for code, n in rpc.by_status.items():
            assert _one(scraped, "speakstream_requests_total", method=rpc.method, code=code) == n
        assert _one(scraped, "speakstream_requests_in_flight", method=rpc.method) == rpc.in_flight
    assert sum(scraped["speakstream_requests_total"].values()) == s.requests.total
    assert _one(scraped, "speakstream_requests_rejected_total") == s.requests.rejected
    assert _one(scraped, "speakstream_requests_cancelled_total") == s.requests.cancelled
    for field, name in (("time_to_first_audio", "time_to_first_audio_seconds"), ("generation", "generation_seconds"),
                        ("inference", "inference_seconds"), ("phonemization", "phonemization_seconds"),
                        ("queue_wait", "queue_wait_seconds")):
        h = getattr(s.latency, field)
        metric = f"speakstream_{name}"
        assert _one(scraped, f"{metric}_count") == h.count, field
        assert _one(scraped, f"{metric}_sum") == pytest.approx(h.sum_s, rel=1e-12), field
        cumulative = 0
        for bound, n in zip(h.bucket_upper_bounds_s, h.bucket_counts):
            cumulative += n
            assert _one(scraped, f"{metric}_bucket", le=_le(bound)) == cumulative, (field, bound)
        assert _one(scraped, f"{metric}_bucket", le="+Inf") == h.count
    assert _one(scraped, "speakstream_audio_sent_seconds_total") == pytest.approx(s.audio.sent_s, rel=1e-12)
    assert _one(scraped, "speakstream_characters_total") == s.audio.characters
    assert _one(scraped, "speakstream_runs_started_total") == s.pool.runs_started
    assert _one(scraped, "speakstream_runs_completed_total") == s.pool.runs_completed
    assert _one(scraped, "speakstream_pool_workers") == s.pool.size
    assert _one(scraped, "speakstream_calls_capacity") == s.queue.capacity
    assert _one(scraped, "speakstream_calls_admitted_total") == s.queue.admitted
    assert _one(scraped, "speakstream_cache_hits_total") == s.cache.hits
    assert _one(scraped, "speakstream_cache_misses_total") == s.cache.misses
    assert _one(scraped, "speakstream_gpu_available") == 0
    for session in s.pool.sessions:
        labels = {"voice": session.voice, "session": str(session.index), "provider": session.provider}
        assert _one(scraped, "speakstream_session_runs_total", **labels) == session.runs
    assert _one(scraped, "speakstream_memory_rss_bytes") > 0


def _le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)


async def test_metrics_off_records_no_requests_but_still_reads_gauges():
    app = await start(Settings(port=0, pool_size=1, grace_s=0, metrics=False))
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            await pb_grpc.SynthesizerStub(channel).Synthesize(pb.SynthesizeRequest(text="Uncounted."),
                                                              timeout=_TIMEOUT)
            s = (await spb_grpc.StatsStub(channel).GetStats(spb.GetStatsRequest(), timeout=_TIMEOUT)).snapshot
    finally:
        await app.stop(grace=0)
    assert not s.recording
    assert s.requests.total == 0 and s.latency.inference.count == 0
    assert s.pool.runs_started > 0 and s.memory.rss_bytes > 0


@pytest.fixture
async def profiling_server():
    """A server with allocation tracing on (--enable-profiling)."""
    app = await start(Settings(port=0, pool_size=1, grace_s=0, enable_profiling=True))
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            yield app, spb_grpc.StatsStub(channel)
    finally:
        await app.stop(grace=0)
    assert not tracemalloc.is_tracing()  # stopping the server stops tracing


@pytest.mark.slow
async def test_profile_memory_returns_the_sites_that_grew(profiling_server):
    app, stats = profiling_server
    call = stats.ProfileMemory(spb.ProfileMemoryRequest(duration_ms=1000, top_n=5), timeout=_TIMEOUT)
    task = asyncio.ensure_future(call)
    kept = []
    while not task.done():  # allocate steadily through the window: 64 KiB per 10 ms
        kept.append(bytearray(64 * 1024))  # the line the profile should find
        await asyncio.sleep(0.01)
    response = await asyncio.wait_for(task, _TIMEOUT)
    assert 1 <= len(response.sites) <= 5
    assert response.duration_s >= 1.0
    growth = [site.size_diff_bytes for site in response.sites]
    assert growth == sorted(growth, reverse=True)
    top = response.sites[0]
    assert Path(top.file).name == Path(__file__).name
    assert top.size_diff_bytes >= 1024 * 1024 and top.count_diff > 0
    assert response.traced_bytes > 0 and response.traced_peak_bytes >= response.traced_bytes
    assert len(kept) > 20


@pytest.mark.parametrize("request_fields, field", [
    ({"duration_ms": 5}, "duration_ms"),
    ({"duration_ms": 100, "top_n": 5000}, "top_n"),
])
async def test_profile_memory_names_the_field_out_of_range(profiling_server, request_fields, field):
    _, stats = profiling_server
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stats.ProfileMemory(spb.ProfileMemoryRequest(**request_fields), timeout=_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field)
