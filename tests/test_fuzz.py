"""Fuzzing the live server with hypothesis: random Unicode text and random knobs, in and out of range.

Every call has a deadline; no call may end INTERNAL, time out (a hang), or with a status the API
does not document for bad input; afterwards the pool is whole (same sessions, no failures) and idle.
CI runs FUZZ_EXAMPLES examples (default 30, ~20 s); `make fuzz` runs many more.
"""

from __future__ import annotations

import asyncio
import math
import os

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from speakstream.v1 import synthesizer_pb2 as pb

_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
# CI replays the same examples every run; a longer run asked for (make fuzz) explores anew.
_DERANDOMIZE = "FUZZ_EXAMPLES" not in os.environ
_DEADLINE_S = 30.0  # generous: a call this slow is a hang
# The fields a refusal may name, and the codes a refusal may carry.
_FIELDS = ("text", "speed", "noise_scale", "noise_w", "sentence_silence_s", "chunk_ms", "encoding",
           "sample_rate_hz", "voice", "speaker_id", "audio")
_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)

# Every category but lone surrogates (they cannot be sent, see test_bad_input), plus a bias
# towards the troublemakers: format characters, marks, emoji, spaces, other scripts.
_TROUBLE = st.sampled_from(list(
    "\u200b\u200c\u200d\u2060\ufeff\u00ad\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"
    "\u0300\u0301\u0308\u0336\u20dd\x00\x07\x1b\x7f\r\n\t \u00a0\u2003\u3000\u2028\u2029"
    "😀👍🏽👨\u200d👩🍕\ue000\U000f0000.,!?;:-\"'()…你好مرحباनमस्तेПриветשלום"))
_TEXT = st.text(st.one_of(st.characters(exclude_categories=("Cs",)), _TROUBLE,
                          st.characters(min_codepoint=0x20, max_codepoint=0x7e)), max_size=60)
_RANGES = {"speed": (0.25, 4.0), "noise_scale": (0.0, 2.0), "noise_w": (0.0, 2.0), "sentence_silence_s": (0.0, 1.0)}


def _mostly(valid, anything, valid_share=6, any_share=1):
    """`valid` most of the time, so that most examples reach synthesis; else `anything`."""
    return st.sampled_from([True] * valid_share + [False] * any_share).flatmap(
        lambda ok: valid if ok else anything)


@st.composite
def _requests(draw):
    fields = {"text": draw(st.one_of(_TEXT, st.text(st.sampled_from("abc"), min_size=200, max_size=400)))}
    for name, (low, high) in _RANGES.items():
        value = draw(_mostly(st.one_of(st.none(), st.floats(low, high, width=32)), st.floats(width=32), 12, 1))
        if value is not None:
            fields[name] = value
    fields["chunk_ms"] = draw(_mostly(st.one_of(st.just(0), st.integers(20, 2_000)), st.integers(0, 2**32 - 1)))
    # Values that stay valid or invalid whatever encodings and rates are added later.
    fields["encoding"] = draw(_mostly(st.sampled_from([0, 1, 2, 3]), st.sampled_from([15, 99])))
    fields["sample_rate_hz"] = draw(_mostly(st.sampled_from([0, 22_050]), st.sampled_from([7_999, 48_001, 1])))
    fields["voice"] = draw(_mostly(st.sampled_from(["", "en_US-joe-medium"]), st.just("nobody")))
    speaker = draw(_mostly(st.one_of(st.none(), st.just(0)), st.integers(-2, 3)))
    if speaker is not None:
        fields["speaker_id"] = speaker
    # Slow and long together make minutes of audio; keep each example to seconds.
    if len(fields["text"]) > 60 and isinstance(fields.get("speed"), float):
        fields["speed"] = max(fields["speed"], 1.0) if math.isfinite(fields["speed"]) else fields["speed"]
    return pb.SynthesizeRequest(**fields), draw(st.booleans())


async def _call(stub, request: pb.SynthesizeRequest, streaming: bool) -> bytes:
    if streaming:
        chunks = [c async for c in stub.SynthesizeStream(request, timeout=_DEADLINE_S)]
        assert chunks and chunks[-1].final
        return b"".join(c.audio for c in chunks)
    response = await stub.Synthesize(request, timeout=_DEADLINE_S)
    assert response.num_samples > 0
    return response.audio


@pytest.fixture(scope="module")
def before(app) -> dict:
    """What the fuzzing must not change, taken before it."""
    sessions = app.pool.loaded(app.voices.default)
    return {"indices": [s.index for s in sessions.slots], "runs_failed": app.scheduler.counters.runs_failed,
            "internal": app.metrics.count(status="INTERNAL"),
            "deadline": app.metrics.count(status="DEADLINE_EXCEEDED")}


@pytest.mark.slow
@pytest.mark.timeout(7200)  # the whole run, for make fuzz; each call has its own 30 s deadline
@settings(max_examples=_EXAMPLES, deadline=None, database=None, derandomize=_DERANDOMIZE,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=_requests())
async def test_random_text_and_knobs_never_get_internal_or_hang(before, stub, case):
    request, streaming = case
    try:
        audio = await _call(stub, request, streaming)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in _CODES, (exc.code(), exc.details(), request)
        assert exc.details().split(":")[0] in _FIELDS, (exc.details(), request)
        event(f"refused: {exc.details().split(':')[0]}")
        return
    event("audio")
    if request.encoding == pb.AUDIO_ENCODING_FLOAT32:
        assert np.isfinite(np.frombuffer(audio, dtype="<f4")).all()


async def test_after_fuzzing_the_pool_is_whole_and_idle(app, before):
    """Runs after the fuzz test (file order)."""
    await asyncio.wait_for(app.scheduler.wait_idle(), 60)
    sessions = app.pool.loaded(app.voices.default)
    assert len(sessions.slots) == app.settings.sessions
    assert [s.index for s in sessions.slots] == before["indices"]  # none replaced
    assert all(s.failures == 0 and s.in_flight == 0 for s in sessions.slots)
    assert app.scheduler.counters.runs_failed == before["runs_failed"]
    assert app.metrics.count(status="INTERNAL") == before["internal"]
    assert app.metrics.count(status="DEADLINE_EXCEEDED") == before["deadline"]
    assert app.scheduler.active_calls == 0 and app.scheduler.running == {}
