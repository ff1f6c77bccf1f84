"""SynthesizeLive turn contexts: one stream carrying a conversation, a turn cut off while the next starts."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from server.frontend import Frontend
from server.voices import bundled_voice
from speakstream.v1 import synthesizer_pb2 as pb

_TIMEOUT = 60
_TURN_1 = ("Thanks for calling. Your order has shipped and should arrive on Thursday, "
           "and you can follow the parcel with the link in the email we sent you this morning. "
           "Is there anything else I can help you with today?")
_TURN_2 = "Of course, let me check that for you."


def _start(stub, request_id):
    return stub.SynthesizeLive(metadata=(("x-request-id", request_id),), timeout=_TIMEOUT)


def _config(deterministic=True):
    noise = {"noise_scale": 0.0, "noise_w": 0.0} if deterministic else {}
    return pb.LiveRequest(config=pb.LiveConfig(settings=pb.SynthesizeRequest(**noise)))


async def _read(call):
    chunk = await asyncio.wait_for(call.read(), _TIMEOUT)
    assert chunk is not grpc.aio.EOF
    return chunk


async def _drain(call) -> list:
    chunks = []
    while (chunk := await asyncio.wait_for(call.read(), _TIMEOUT)) is not grpc.aio.EOF:
        chunks.append(chunk)
    return chunks


def _floor_s(text: str) -> float:
    """Bare ONNX Runtime, whole graph, the first segment the server cuts from `text` (median of 5)."""
    voice = bundled_voice()
    segment = next(Frontend(100, 40).segments(text, voice.config))
    session = ort.InferenceSession(str(voice.model_path), providers=["CPUExecutionProvider"])
    feeds = {"input": np.array([segment.ids], np.int64), "input_lengths": np.array([len(segment.ids)], np.int64),
             "scales": np.array([0.0, 1.0, 0.0], np.float32)}
    session.run(None, feeds)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.mark.slow
async def test_cancelling_a_context_mid_sentence_stops_it_and_the_next_one_speaks_at_once(app, stub, run_log):
    request_id = uuid.uuid4().hex
    call = _start(stub, request_id)
    await call.write(_config())
    await call.write(pb.LiveRequest(text=_TURN_1, context_id="turn-1"))
    first = await _read(call)
    assert first.context_id == "turn-1" and first.num_samples > 0 and not first.context_end
    # The user barges in: the agent starts turn 2 and cuts turn 1 off mid-sentence.
    await call.write(pb.LiveRequest(text=_TURN_2, context_id="turn-2"))
    await call.write(pb.LiveRequest(flush=True, context_id="turn-2"))
    await call.write(pb.LiveRequest(clear=True, context_id="turn-1"))
    chunks = [first]
    while not (chunks[-1].context_id == "turn-2" and chunks[-1].context_end):
        chunks.append(await _read(call))
    turn_2_first_audio = next(n for n, c in enumerate(chunks) if c.context_id == "turn-2" and c.num_samples)
    ack = next(n for n, c in enumerate(chunks) if c.context_id == "turn-1" and c.context_end)
    # No audio of turn 1 after its acknowledgement, which carries none; turn 2 follows, whole.
    assert chunks[ack].num_samples == 0 and ack < turn_2_first_audio
    assert not any(c.context_id == "turn-1" for c in chunks[ack + 1:])
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    await call.done_writing()
    rest = await _drain(call)
    assert rest[-1].final and not any(c.num_samples for c in rest)
    # Turn 1's inference stopped: the run going at the clear was terminated and none started after.
    await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)
    runs = [r for r in run_log if r.owner == f"{request_id}/turn-1"]
    stopped = [r for r in runs if r.cancelled is not None]
    assert all(r.terminated for r in stopped)
    cancelled_at = min((r.cancelled for r in stopped), default=None)
    if cancelled_at is not None:
        assert all(r.started <= cancelled_at for r in runs)
    assert len(runs) < 12  # far from the whole of turn 1


async def test_turn_two_first_audio_after_the_barge_in_is_within_the_floor_of_its_first_segment(app, stub):
    floor = _floor_s(_TURN_2)
    request_id = uuid.uuid4().hex
    call = _start(stub, request_id)
    await call.write(_config(deterministic=False))  # nothing from the cache: turn 2 is synthesized
    await call.write(pb.LiveRequest(text=_TURN_1, context_id="a"))
    await _read(call)
    await call.write(pb.LiveRequest(text=_TURN_2, context_id="b"))
    await call.write(pb.LiveRequest(flush=True, context_id="b"))
    cleared = time.perf_counter()
    await call.write(pb.LiveRequest(clear=True, context_id="a"))
    while True:
        chunk = await _read(call)
        if chunk.context_id == "b" and chunk.num_samples:
            first_audio_s = time.perf_counter() - cleared
            break
    call.cancel()
    assert first_audio_s <= 1.25 * floor, (first_audio_s, floor)


async def test_contexts_are_spoken_in_order_each_ending_with_context_end(stub):
    call = _start(stub, uuid.uuid4().hex)
    await call.write(_config())
    for name, text in (("one", "First turn."), ("two", "Second turn."), ("three", "Third turn.")):
        await call.write(pb.LiveRequest(text=text, context_id=name))
        await call.write(pb.LiveRequest(flush=True, context_id=name))
    await call.done_writing()
    chunks = await _drain(call)
    order = [c.context_id for c in chunks if c.num_samples]
    assert order == sorted(order, key=["one", "two", "three"].index) and set(order) == {"one", "two", "three"}
    ends = [c.context_id for c in chunks if c.context_end]
    assert ends == ["one", "two", "three"]
    assert chunks[-1].final


async def test_text_for_an_ended_context_is_invalid_argument_naming_it(stub):
    call = _start(stub, uuid.uuid4().hex)
    await call.write(_config())
    await call.write(pb.LiveRequest(text="Done.", context_id="x"))
    await call.write(pb.LiveRequest(flush=True, context_id="x"))
    await call.write(pb.LiveRequest(text="More?", context_id="x"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _drain(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("context_id:")


async def test_the_default_context_and_named_ones_take_turns(stub):
    call = _start(stub, uuid.uuid4().hex)
    await call.write(_config())
    await call.write(pb.LiveRequest(text="Default first."))
    await call.write(pb.LiveRequest(flush=True))
    await call.write(pb.LiveRequest(text="Named next.", context_id="n"))
    await call.write(pb.LiveRequest(flush=True, context_id="n"))
    await call.write(pb.LiveRequest(text="Default again."))
    await call.done_writing()
    chunks = await _drain(call)
    spoken = []
    for c in chunks:
        if c.num_samples and (not spoken or spoken[-1] != c.context_id):
            spoken.append(c.context_id)
    assert spoken == ["", "n", ""]
