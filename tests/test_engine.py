"""Engine behaviour through the real server: overload, deadlines, cancellation,
fairness between streams, seams between segments, provider selection."""

import asyncio

import grpc
import numpy as np
import pytest
from servers import serving

from server.config import Settings
from server.pool import cuda_options, providers_for
from speakstream.v1 import synthesizer_pb2 as pb

_TIMEOUT = 60
_LONG_TEXT = " ".join(
    f"Sentence number {i} of a long text goes on for a while, so that it keeps the pool busy." for i in range(40)
)


@pytest.fixture
async def small_server():
    """A server with one inference slot and no queue: the second call is one too many."""
    async with serving(Settings(port=0, pool_size=1, max_queue=0, grace_s=0)) as served:
        yield served


async def test_queue_full_gets_resource_exhausted_before_any_work(small_server):
    app, stub = small_server
    holder = stub.SynthesizeStream(pb.SynthesizeRequest(text=_LONG_TEXT), timeout=_TIMEOUT)
    await asyncio.wait_for(holder.read(), _TIMEOUT)  # admitted and streaming
    admitted = app.scheduler.counters.calls_admitted
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Synthesize(pb.SynthesizeRequest(text="One too many."), timeout=_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert app.scheduler.counters.calls_admitted == admitted  # never admitted: no work
    assert app.scheduler.counters.calls_rejected == 1
    assert all(run.owner != "" for run in app.scheduler.run_log)
    holder.cancel()


async def test_cancel_mid_stream_terminates_the_running_inference_at_once(small_server):
    app, stub = small_server
    call = stub.SynthesizeStream(pb.SynthesizeRequest(text=_LONG_TEXT),
                                 metadata=(("x-request-id", "cancel-me"),), timeout=_TIMEOUT)
    await asyncio.wait_for(call.read(), _TIMEOUT)  # the first window is out
    log = app.scheduler.run_log
    # Cancel while one of the call's later inferences (of its second segment or after) runs.
    await asyncio.wait_for(app.scheduler.wait_until(
        lambda: any(job.owner == "cancel-me" for job in app.scheduler.running.values())
        and sum(1 for run in log if run.owner == "cancel-me") >= 3), _TIMEOUT)
    call.cancel()
    await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)
    runs = [run for run in log if run.owner == "cancel-me"]
    stopped = [run for run in runs if run.cancelled is not None]
    # The inference running at the cancel was terminated, and ended within 20 ms of it
    # (ONNX Runtime checks the flag between nodes); nothing of the call ran afterwards.
    assert len(stopped) == 1 and stopped[0].terminated, runs
    assert stopped[0].ended - stopped[0].cancelled <= 0.020, stopped
    assert all(run.started <= stopped[0].cancelled for run in runs)
    assert app.scheduler.running == {} and all(j.future.done() for j in app.scheduler._heap)
    sessions = app.pool.loaded(app.voices.default)
    assert all(slot.in_flight == 0 for slot in sessions.slots)
    # The slot is usable again at once.
    response = await stub.Synthesize(pb.SynthesizeRequest(text="Still here."), timeout=_TIMEOUT)
    assert response.num_samples > 0


async def test_deadline_in_the_queue_gives_deadline_exceeded_and_no_run(small_server):
    app, stub = small_server
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Synthesize(pb.SynthesizeRequest(text=_LONG_TEXT), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)
    # The call's later segments were never run: far fewer runs than segments.
    assert app.scheduler.counters.runs_started < 10


@pytest.mark.slow
async def test_short_requests_are_not_starved_by_a_long_stream(app, stub):
    long_call = stub.SynthesizeStream(pb.SynthesizeRequest(text=_LONG_TEXT),
                                      metadata=(("x-request-id", "long"),), timeout=_TIMEOUT)
    await asyncio.wait_for(long_call.read(), _TIMEOUT)
    for i in range(6):
        short_id = f"short-{i}"
        short = stub.SynthesizeStream(pb.SynthesizeRequest(text="A short reply."),
                                      metadata=(("x-request-id", short_id),), timeout=_TIMEOUT)
        await asyncio.wait_for(short.read(), _TIMEOUT)
        runs = list(app.scheduler.run_log)
        first = next(run for run in runs if run.owner == short_id)
        overtaking = [run for run in runs
                      if run.owner == "long" and first.submitted <= run.started < first.started]
        # Earliest due first: while the short request waited, the long stream
        # ran only segments due before it (its playback was about to run dry).
        assert all(run.due <= first.due for run in overtaking), (first, overtaking)
        while await asyncio.wait_for(short.read(), _TIMEOUT) is not grpc.aio.EOF:
            pass
        await asyncio.wait_for(long_call.read(), _TIMEOUT)  # keep the long stream flowing
    long_call.cancel()


async def test_segment_seams_do_not_click(stub):
    text = ("This one long sentence, which rambles on with clause after clause and word after word, "
            "is cut into several segments by the server, and the joins between them must not click "
            "or pop in the listener's ear, however many of them there are along the way.")
    request = pb.SynthesizeRequest(text=text, noise_scale=0.0, noise_w=0.0, encoding=pb.AUDIO_ENCODING_FLOAT32)
    chunks = [c async for c in stub.SynthesizeStream(request, timeout=_TIMEOUT)]
    assert len(chunks) >= 3 and {c.sentence_index for c in chunks} == {0}
    pieces = [np.frombuffer(c.audio, dtype="<f4") for c in chunks]
    inside = max(np.max(np.abs(np.diff(p))) for p in pieces)
    seams = [abs(float(b[0]) - float(a[-1])) for a, b in zip(pieces, pieces[1:])]
    # Chunks join segments (cut at words) and decoder windows (cut anywhere, even
    # mid-vowel): no join jumps more than the audio does from one sample to the next.
    assert max(seams) <= inside


def test_cpu_device_uses_only_the_cpu_provider():
    assert providers_for(Settings(device="cpu"), ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        ("CPUExecutionProvider", {})]


def test_auto_without_a_gpu_driver_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr("server.pool.has_cuda_driver", lambda: False)
    providers = providers_for(Settings(device="auto"), ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert [name for name, _ in providers] == ["CPUExecutionProvider"]


def test_auto_with_a_gpu_puts_cuda_first_with_tuned_options(monkeypatch):
    # No GPU exists here: the driver probe is the one thing replaced.
    monkeypatch.setattr("server.pool.has_cuda_driver", lambda: True)
    settings = Settings(device="auto", cuda_device_id=1, gpu_mem_limit_mb=512)
    providers = providers_for(settings, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert [name for name, _ in providers] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers[0][1] == cuda_options(settings) == {
        "device_id": "1",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "do_copy_in_default_stream": "1",
        "gpu_mem_limit": str(512 * 1024 * 1024),
    }


def test_cuda_demanded_without_the_provider_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
        providers_for(Settings(device="cuda"), ["CPUExecutionProvider"])
