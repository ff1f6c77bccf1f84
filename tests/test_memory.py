"""Inference memory: the arena setting, warm-up, and memory given back when the server goes quiet."""

import asyncio

import pytest
from servers import serving

from server.config import Settings
from server.frontend import Frontend
from server.memory import rss_bytes
from server.pool import _filler_ids
from server.voices import bundled_voice
from speakstream.v1 import synthesizer_pb2 as pb

_TIMEOUT = 60
_MB = 2**20
# About 100 phonemes in one segment: ~90 MB of activations in the arena.
_TEXT = ("The arena keeps the memory of the largest inference it has run, which is what "
         "a busy server wants and a quiet one does not need at all.")


@pytest.fixture
async def quiet_server():
    """A server that gives memory back after 0.2 s without calls."""
    async with serving(Settings(port=0, pool_size=1, idle_trim_s=0.2, grace_s=0)) as served:
        yield served


async def test_a_quiet_server_gives_arena_memory_back(quiet_server):
    app, stub = quiet_server
    trims = app.trimmer.trims
    await stub.Synthesize(pb.SynthesizeRequest(text=_TEXT), timeout=_TIMEOUT)
    busy = rss_bytes()
    await asyncio.wait_for(app.trimmer.wait_trims(trims + 1), _TIMEOUT)
    assert rss_bytes() < busy - 30 * _MB
    # Still serves, and memory comes back again after the next quiet spell.
    response = await stub.Synthesize(pb.SynthesizeRequest(text="Hello again."), timeout=_TIMEOUT)
    assert response.num_samples > 0
    await asyncio.wait_for(app.trimmer.wait_trims(trims + 2), _TIMEOUT)


async def test_no_trim_while_a_call_is_in_progress(quiet_server):
    app, stub = quiet_server
    trims = app.trimmer.trims
    call = stub.SynthesizeStream(pb.SynthesizeRequest(text=_TEXT * 6), timeout=_TIMEOUT)
    chunks = 0
    async for chunk in call:  # ~1.5 s of inference: far longer than idle_trim_s
        chunks += 1
        if not chunk.final:
            assert app.trimmer.trims == trims, "memory was trimmed while a call was in progress"
    assert chunks > 5


def test_filler_ids_have_the_voice_layout():
    voice = bundled_voice()
    ids = _filler_ids(voice, 5)
    id_map = voice.config.phoneme_id_map
    assert ids[:2] == [*id_map["^"], *id_map["_"]] and ids[-1:] == list(id_map["$"])
    assert len(ids) == 2 + 2 * 5 + 1
    real = next(iter(Frontend(100, 40).segments("Hi.", voice.config))).ids
    assert real[:2] == tuple(ids[:2]) and real[-1] == ids[-1]


@pytest.mark.parametrize("field, value", [("arena_extend", "doubling"), ("idle_trim_s", -1.0)])
def test_bad_memory_settings_are_refused_with_the_field_named(field, value):
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})


async def test_a_finished_call_frees_its_latents_without_waiting_for_the_garbage_collector(app, stub):
    """A call's engine, segments and latents go when the call ends, by reference counting:
    a reference cycle would keep them (tens of MB of ONNX Runtime memory under load)
    until a full collection, and the idle trim could not give them back."""
    import gc

    from server.engine import CallEngine
    from server.inference import Encoded

    def alive() -> tuple[int, int]:
        objects = gc.get_objects()
        return sum(isinstance(o, CallEngine) for o in objects), sum(isinstance(o, Encoded) for o in objects)

    text = "A call whose memory must go with it. It has two sentences, so several windows."
    gc.collect()
    gc.disable()
    try:
        before = alive()
        for _ in range(4):
            async for _chunk in stub.SynthesizeStream(pb.SynthesizeRequest(text=text), timeout=_TIMEOUT):
                pass
        await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)
        assert alive() == before
    finally:
        gc.enable()
