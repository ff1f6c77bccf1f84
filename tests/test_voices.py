"""Voices from --voice-dir: listing, multi-speaker by id and by name, broken files, preload, idle unload.

The extra voices are tiny Piper-shaped ONNX models generated here
(tests/voicegen.py); the server, pool, scheduler and channels are the real ones.
"""

from __future__ import annotations

import logging
import sys

import grpc
import numpy as np
import pytest
from external_tools import REPO, run
from voicegen import SPEAKERS, write_voice

from server.config import Settings
from server.pool import SessionPool
from server.voices import VoiceRegistry
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_TIMEOUT = 60
_TEXT = "One voice, three speakers."


def _request(**fields) -> pb.SynthesizeRequest:
    return pb.SynthesizeRequest(text=_TEXT, noise_scale=0.0, noise_w=0.0, **fields)


@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory):
    """tiny (three speakers), solo (one speaker, no sid input) and broken (a model without its config)."""
    directory = tmp_path_factory.mktemp("voices")
    write_voice(directory, "tiny", SPEAKERS)
    write_voice(directory, "solo")
    (directory / "broken.onnx").write_bytes(b"not a model")
    return directory


@pytest.fixture(scope="module")
async def voices_app(voice_dir):
    from server.app import start

    app = await start(Settings(port=0, pool_size=2, grace_s=0.5, voice_dir=voice_dir))
    yield app
    await app.stop(grace=0)


@pytest.fixture(scope="module")
async def voices_stub(voices_app):
    async with grpc.aio.insecure_channel(voices_app.address) as channel:
        yield pb_grpc.SynthesizerStub(channel)


def test_a_voice_dir_with_two_voices_and_a_broken_file_loads_two_and_reports_one(voice_dir, caplog):
    with caplog.at_level(logging.ERROR, logger="server.voices"):
        registry = VoiceRegistry.load(voice_dir)
    assert sorted(v.name for v in registry) == ["en_US-joe-medium", "solo", "tiny"]
    assert list(registry.skipped) == ["broken"]
    assert str(voice_dir / "broken.onnx.json") in registry.skipped["broken"]
    assert [r.getMessage() for r in caplog.records if "broken" in r.getMessage()] == [
        f"skipping voice broken: voice config not found: {voice_dir / 'broken.onnx.json'}"]


async def test_list_voices_shows_every_voice_with_its_speakers(voices_stub):
    voices = {v.name: v for v in (await voices_stub.ListVoices(pb.ListVoicesRequest(), timeout=_TIMEOUT)).voices}
    assert sorted(voices) == ["en_US-joe-medium", "solo", "tiny"]
    tiny = voices["tiny"]
    assert (tiny.language, tiny.sample_rate_hz, tiny.quality, tiny.num_speakers, tiny.is_default) == \
        ("en_US", 22050, "medium", 3, False)
    assert [(s.id, s.name) for s in tiny.speakers] == [(0, "alice"), (1, "bob"), (2, "carol")]
    assert voices["solo"].num_speakers == 1 and not voices["solo"].speakers
    assert [name for name, v in voices.items() if v.is_default] == ["en_US-joe-medium"]


async def test_speaker_by_name_and_by_id_give_the_same_audio(voices_stub):
    by_name = await voices_stub.Synthesize(_request(voice="tiny", speaker="bob"), timeout=_TIMEOUT)
    by_id = await voices_stub.Synthesize(_request(voice="tiny", speaker_id=1), timeout=_TIMEOUT)
    both = await voices_stub.Synthesize(_request(voice="tiny", speaker="bob", speaker_id=1), timeout=_TIMEOUT)
    other = await voices_stub.Synthesize(_request(voice="tiny", speaker="carol"), timeout=_TIMEOUT)
    assert by_name.num_samples > 0
    assert by_name.audio == by_id.audio == both.audio
    assert other.num_samples == by_name.num_samples and other.audio != by_name.audio  # speakers differ


async def test_a_stream_in_a_generated_voice_has_contiguous_chunks(voices_stub):
    chunks = [c async for c in voices_stub.SynthesizeStream(_request(voice="solo", chunk_ms=20),
                                                            timeout=_TIMEOUT)]
    assert [c.sample_offset for c in chunks] == list(np.cumsum([0] + [c.num_samples for c in chunks[:-1]]))
    assert chunks[-1].final


@pytest.mark.parametrize("fields, code, field", [
    (dict(voice="tiny", speaker="dave"), grpc.StatusCode.NOT_FOUND, "speaker"),
    (dict(speaker="alice"), grpc.StatusCode.NOT_FOUND, "speaker"),  # the default voice has no named speakers
    (dict(voice="tiny", speaker_id=3), grpc.StatusCode.NOT_FOUND, "speaker_id"),
    (dict(voice="tiny", speaker="bob", speaker_id=2), grpc.StatusCode.INVALID_ARGUMENT, "speaker"),
    (dict(voice="broken"), grpc.StatusCode.NOT_FOUND, "voice"),
])
async def test_unknown_or_conflicting_speakers_are_refused_naming_the_field(voices_stub, fields, code, field):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await voices_stub.Synthesize(_request(**fields), timeout=_TIMEOUT)
    assert info.value.code() == code
    assert info.value.details().startswith(f"{field}:")


async def test_voice_b_is_served_while_voice_a_streams(voices_stub):
    long_text = " ".join(["The default voice keeps talking for a good while, sentence after sentence."] * 6)
    stream = voices_stub.SynthesizeStream(pb.SynthesizeRequest(text=long_text), timeout=_TIMEOUT)
    first = await stream.read()
    assert not first.final
    other = await voices_stub.Synthesize(_request(voice="tiny", speaker="alice"), timeout=_TIMEOUT)
    assert other.num_samples > 0
    rest = []
    while (chunk := await stream.read()) is not grpc.aio.EOF:
        rest.append(chunk)
    assert rest and rest[-1].final  # voice A was still streaming when voice B's answer came


@pytest.fixture
def corrupt_dir(tmp_path):
    """tiny, and `corrupt`: a valid config beside a model file that is not ONNX."""
    write_voice(tmp_path, "tiny", SPEAKERS)
    write_voice(tmp_path, "corrupt")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x00garbage")
    return tmp_path


async def test_preload_skips_a_voice_whose_model_does_not_load(corrupt_dir, caplog):
    from server.app import start

    with caplog.at_level(logging.ERROR, logger="server.voices"):
        app = await start(Settings(port=0, grace_s=0, voice_dir=corrupt_dir, preload=True))
    try:
        assert sorted(v.name for v in app.voices) == ["en_US-joe-medium", "tiny"]
        assert str(corrupt_dir / "corrupt.onnx") in app.voices.skipped["corrupt"]
        assert any("skipping voice corrupt" in r.getMessage() for r in caplog.records)
        assert app.pool.loaded(app.voices.get("tiny")) is not None  # loaded at start-up
    finally:
        await app.stop(grace=0)


async def test_without_preload_a_corrupt_model_fails_its_calls_naming_the_file(corrupt_dir):
    from server.app import start

    app = await start(Settings(port=0, grace_s=0, voice_dir=corrupt_dir))
    try:
        assert app.pool.loaded(app.voices.get("tiny")) is None  # lazy
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = pb_grpc.SynthesizerStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Synthesize(_request(voice="corrupt"), timeout=_TIMEOUT)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert info.value.details().startswith("voice: corrupt")
            assert str(corrupt_dir / "corrupt.onnx") in info.value.details()
            assert (await stub.Synthesize(_request(voice="tiny"), timeout=_TIMEOUT)).num_samples > 0
    finally:
        await app.stop(grace=0)


@pytest.mark.slow
@pytest.mark.parametrize("default, bad_file", [("broken", "broken.onnx.json"), ("corrupt", "corrupt.onnx")])
async def test_a_broken_default_voice_fails_start_up_naming_the_file(voice_dir, corrupt_dir, default, bad_file):
    directory = voice_dir if default == "broken" else corrupt_dir
    result = await run([sys.executable, "-m", "server", "--port", "0", "--voice-dir", str(directory),
                        "--voice", default], cwd=REPO, timeout_s=120)
    assert result.code == 2, result.explain()
    assert str(directory / bad_file) in result.err
    assert "listening" not in result.out


async def test_an_idle_voice_is_unloaded_but_never_during_a_run(voice_dir):
    registry = VoiceRegistry.load(voice_dir)
    pool = SessionPool(Settings(intra_op_threads=1))
    tiny = pool.sessions(registry.get("tiny"))
    pool.sessions(registry.default)
    t0 = tiny.last_used
    assert pool.unload_idle(10, keep=registry.default.name, now=t0 + 5) == []
    slot = tiny._pick()  # a run starts, as VoiceSessions.run does
    assert pool.unload_idle(10, keep=registry.default.name, now=tiny.last_used + 60) == []
    tiny._after_run(slot, 0.01, failed=False)
    assert pool.unload_idle(10, keep=registry.default.name, now=tiny.last_used + 11) == ["tiny"]
    assert pool.loaded(registry.get("tiny")) is None
    assert pool.loaded(registry.default) is not None  # the default voice stays
    assert pool.sessions(registry.get("tiny")) is not tiny  # loaded again on next use


async def test_the_idle_reaper_runs_only_with_voice_idle_s(voice_dir):
    from server.app import start

    app = await start(Settings(port=0, grace_s=0, voice_dir=voice_dir, voice_idle_s=30))
    try:
        assert app.voice_reaper is not None and not app.voice_reaper.done()
    finally:
        await app.stop(grace=0)
    assert app.voice_reaper.cancelled() or app.voice_reaper.done()
