"""SynthesizeLive end to end: text in pieces in, audio out, against the real server."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import numpy as np
import pytest

from server.options import DEFAULT_SENTENCE_SILENCE_S
from speakstream.v1 import synthesizer_pb2 as pb

_THREE_SENTENCES = (
    "The first sentence is short. "
    "The second one is a little longer than the first. "
    "And the third sentence, which closes this small paragraph, is the longest of the three by far."
)
_ABBREVIATED = "Dr. Smith paid $3.50. Then Mr. Jones, No. 5 on the list, left vs. Mrs. Brown."
_TIMEOUT = 60


def _config(deterministic=True, **fields):
    noise = {"noise_scale": 0.0, "noise_w": 0.0} if deterministic else {}
    live = {k: fields.pop(k) for k in ("max_pending_ms", "max_pending_chars") if k in fields}
    return pb.LiveRequest(config=pb.LiveConfig(settings=pb.SynthesizeRequest(**noise, **fields), **live))


def _start(stub, request_id=None):
    metadata = (("x-request-id", request_id),) if request_id else None
    return stub.SynthesizeLive(metadata=metadata, timeout=_TIMEOUT)


async def _read(call):
    chunk = await asyncio.wait_for(call.read(), _TIMEOUT)
    assert chunk is not grpc.aio.EOF
    return chunk


async def _drain(call):
    chunks = []
    while True:
        chunk = await asyncio.wait_for(call.read(), _TIMEOUT)
        if chunk is grpc.aio.EOF:
            return chunks
        chunks.append(chunk)


async def _stream(stub, text):
    request = pb.SynthesizeRequest(text=text, noise_scale=0.0, noise_w=0.0)
    return [c async for c in stub.SynthesizeStream(request, timeout=_TIMEOUT)]


async def _live_char_by_char(stub, text):
    call = _start(stub)
    await call.write(_config())
    for char in text:
        await call.write(pb.LiveRequest(text=char))
    await call.done_writing()
    return await _drain(call)


def _spoken(chunks):
    """(start, end, sentence) of what the chunks speak, in order; a segment decoded in
    several windows (or served whole from the cache) counts once."""
    spoken = []
    for c in chunks:
        span = (c.text_span.start, c.text_span.end, c.sentence_index)
        if c.num_samples and (not spoken or spoken[-1] != span):
            spoken.append(span)
    return spoken


@pytest.mark.parametrize("text", [_THREE_SENTENCES, _ABBREVIATED, "Say hel\u200blo to Zoë now. Bye."])
async def test_char_by_char_speaks_the_same_audio_as_synthesize_stream(stub, text):
    whole = await _stream(stub, text)
    live = await _live_char_by_char(stub, text)
    assert b"".join(c.audio for c in live) == b"".join(c.audio for c in whole)
    assert _spoken(live) == _spoken(whole)
    assert [c.sequence for c in live] == list(range(len(live)))
    assert [c.final for c in live] == [False] * (len(live) - 1) + [True]


def _longest_silence(chunks) -> int:
    """Longest run of exact zero samples (LINEAR16): inserted sentence silence is
    exact zeros, the voice's own pauses are not."""
    audio = np.frombuffer(b"".join(c.audio for c in chunks), dtype="<i2")
    edges = np.flatnonzero(np.diff(np.concatenate(([0], (audio == 0).view(np.int8), [0]))))
    return int(np.max(edges[1::2] - edges[::2])) if edges.size else 0


async def test_dr_and_a_decimal_are_one_sentence_in_both_rpcs(stub):
    text = "Dr. Smith paid $3.50."
    silence = round(DEFAULT_SENTENCE_SILENCE_S * 22050)
    whole = await _stream(stub, text)
    live = await _live_char_by_char(stub, text)
    for chunks in (whole, live):
        # One sentence: index 0 throughout (its first segment is cut short for
        # the time to first audio, at a word boundary), never cut at "Dr." or "3.".
        spoken = _spoken(chunks)
        assert {index for _, _, index in spoken} == {0}
        assert spoken[0][0] == 0 and spoken[-1][1] == len(text)
        assert not {end for _, end, _ in spoken} & {text.index(".") + 1, text.index("3.") + 2}
        assert _longest_silence(chunks) < silence  # no sentence_silence_s after "Dr."
    assert b"".join(c.audio for c in live) == b"".join(c.audio for c in whole)
    # The check can fail: a real sentence end has the silence in its audio.
    assert _longest_silence(await _stream(stub, "Dr. Smith paid. Then he left.")) >= silence


async def test_flush_mid_sentence_speaks_the_fragment_at_once(stub):
    call = _start(stub)
    await call.write(_config())
    await call.write(pb.LiveRequest(text="Let me think about"))
    await call.write(pb.LiveRequest(flush=True))
    chunk = await _read(call)  # while the send side is still open
    assert chunk.num_samples > 0 and not chunk.final
    assert (chunk.text_span.start, chunk.text_span.end) == (0, 18)
    await call.write(pb.LiveRequest(text=" it. Done."))
    await call.done_writing()
    rest = await _drain(call)
    assert rest[-1].final and rest[-1].text_span.end == 28
    assert await call.code() == grpc.StatusCode.OK


async def test_run_on_starts_speaking_by_the_max_pending_ms_timer(stub):
    words = ["word"] * 400
    call = _start(stub)
    await call.write(_config(max_pending_ms=100, max_pending_chars=5000))
    for word in words[:20]:
        await call.write(pb.LiveRequest(text=word + " "))
    # Now send nothing, flush nothing and keep the send side open: no
    # punctuation and 100 characters, far below max_pending_chars, so the only
    # rule that can make the server speak is its max_pending_ms timer, which
    # runs from the first pending word (LiveSegmenter.due_at, unit-tested).
    # Time to first audio against max_pending_ms is measured by the bench.
    chunk = await _read(call)
    assert chunk.num_samples > 0 and chunk.text_span.start == 0
    assert 0 < chunk.text_span.end <= 100 and chunk.text_span.end % 5 == 0  # at a word boundary
    for word in words[20:]:
        await call.write(pb.LiveRequest(text=word + " "))
    await call.done_writing()
    rest = await _drain(call)
    assert rest[-1].final and rest[-1].text_span.end == 2000
    # The forced cut is not a sentence end: one sentence, no silence inserted.
    assert {c.sentence_index for c in [chunk, *rest]} == {0}
    assert _longest_silence([chunk, *rest]) < round(DEFAULT_SENTENCE_SILENCE_S * 22050)


def _runs(app, request_id):
    return sum(1 for run in app.scheduler.run_log if run.owner == request_id)


_MANY = " ".join(f"This is sentence number {n} of a long reply." for n in range(30)) + " "


async def test_clear_drops_pending_work_and_keeps_the_stream_open(app, stub, settings):
    request_id = uuid.uuid4().hex
    call = _start(stub, request_id)
    await call.write(_config(deterministic=False))
    await call.write(pb.LiveRequest(text=_MANY + "And"))
    first = await _read(call)
    assert first.text_span.start == 0
    await call.write(pb.LiveRequest(clear=True))
    await call.write(pb.LiveRequest(text="New turn."))
    await call.write(pb.LiveRequest(flush=True))
    new_start = len(_MANY) + 3
    while (chunk := await _read(call)).text_span.start < new_start:
        pass  # audio that left before the clear arrived
    assert chunk.text_span.end == new_start + len("New turn.")
    await call.done_writing()
    await _drain(call)
    await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)
    # 30 sentences and the new turn would be 31 runs; the clear left the
    # first, those in flight (lookahead), a few more if the clear came late,
    # and the new turn's.
    assert _runs(app, request_id) <= settings.lookahead_chunks + 8 < 31


async def test_cancel_stops_all_work(app, stub, settings):
    request_id = uuid.uuid4().hex
    call = _start(stub, request_id)
    await call.write(_config(deterministic=False))
    await call.write(pb.LiveRequest(text=_MANY))
    await _read(call)
    call.cancel()
    # Idle = no call admitted and no inference running: the cancelled call has let go.
    await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)
    runs = _runs(app, request_id)
    assert runs <= settings.lookahead_chunks + 8 < 30
    assert app.scheduler.idle


@pytest.mark.parametrize("first, field", [
    (pb.LiveRequest(text="Hello."), "config"),
    (pb.LiveRequest(config=pb.LiveConfig(settings=pb.SynthesizeRequest(text="Hi."))), "config.settings.text"),
    (pb.LiveRequest(config=pb.LiveConfig(settings=pb.SynthesizeRequest(speed=9))), "speed"),
    (pb.LiveRequest(config=pb.LiveConfig(max_pending_ms=10)), "config.max_pending_ms"),
    (pb.LiveRequest(config=pb.LiveConfig(max_pending_chars=1)), "config.max_pending_chars"),
])
async def test_bad_first_message_is_invalid_argument_naming_the_field(stub, first, field):
    call = _start(stub)
    await call.write(first)
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _drain(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()


async def test_repeated_config_is_invalid_argument(stub):
    call = _start(stub)
    await call.write(_config())
    await call.write(_config())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _drain(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config" in info.value.details()


async def test_text_over_max_chars_is_invalid_argument(stub, settings):
    call = _start(stub)
    await call.write(_config())
    await call.write(pb.LiveRequest(text="a " * (settings.max_chars // 2 + 1)))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _drain(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text" in info.value.details()


async def test_clear_after_flush_drops_the_flushed_turns_audio_not_yet_sent(app, stub):
    request_id = uuid.uuid4().hex
    call = _start(stub, request_id)
    await call.write(_config(deterministic=False))
    await call.write(pb.LiveRequest(text=_MANY))
    await call.write(pb.LiveRequest(flush=True))
    first = await _read(call)
    assert first.num_samples > 0
    await call.write(pb.LiveRequest(clear=True))
    await call.write(pb.LiveRequest(text="After the barge-in."))
    await call.done_writing()
    rest = await _drain(call)
    # The flushed reply stops (30 sentences would be minutes of audio); the new text is spoken.
    assert sum(c.num_samples for c in [first, *rest]) < 20 * 22050
    assert any(c.text_span.start >= len(_MANY) for c in rest if c.num_samples)
    await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)
    assert _runs(app, request_id) < 20
