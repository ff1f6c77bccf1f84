"""The player's jitter buffer and callback, against a fake PyAudio (the device boundary only).

The fake device calls the callback when the test says so, which makes every
underrun, silence and resume happen at a known block: no sleeps, no timing.
"""

from __future__ import annotations

import itertools
import tracemalloc
import types

import numpy as np
import pytest

import fastaudio
from clients.player import AudioUnavailable, Player, PlayerConfig, list_output_devices
from clients.progress import Progress

_RATE = 22_050
_BLOCK = 441  # frames per callback: 20 ms at 22,050 Hz
_TIMEOUT = 10


class FakeStream:
    """A PortAudio stream whose callback runs only when pull() is called."""

    def __init__(self, module, callback, frames_per_buffer, **kwargs):
        self.module, self.callback, self.frames = module, callback, frames_per_buffer
        self.kwargs = kwargs
        self.data = bytearray()
        self.started = self.stopped = self.closed = False
        self.complete = False

    def start_stream(self):
        self.started = True

    def stop_stream(self):
        self.stopped = True

    def close(self):
        self.closed = True

    def is_active(self):
        return self.started and not self.complete and not self.closed

    def get_output_latency(self):
        return 0.04

    def pull(self) -> int:
        """One callback: what PortAudio would do with a block (copy it out)."""
        out, flag = self.callback(None, self.frames, {}, 0)
        assert isinstance(out, bytes) and len(out) == 2 * self.frames
        self.data += out
        self.complete = flag == self.module.paComplete
        return flag


def fake_pyaudio(devices=("Speakers",)):
    """A stand-in for the pyaudio module with the given output devices."""
    module = types.SimpleNamespace(paInt16=8, paContinue=0, paComplete=1, paAbort=2, streams=[])

    class PyAudio:
        def get_device_count(self):
            return len(devices)

        def get_device_info_by_index(self, index):
            return {"index": index, "name": devices[index], "maxOutputChannels": 2,
                    "hostApi": 0, "defaultSampleRate": 48000.0}

        def get_default_output_device_info(self):
            if not devices:
                raise OSError(-9996, "No Default Output Device Available")
            return self.get_device_info_by_index(0)

        def get_host_api_info_by_index(self, index):
            return {"name": "FakeAPI"}

        def open(self, stream_callback, frames_per_buffer, **kwargs):
            stream = FakeStream(module, stream_callback, frames_per_buffer, **kwargs)
            module.streams.append(stream)
            return stream

        def terminate(self):
            pass

    module.PyAudio = PyAudio
    return module


def _pcm(frames: int, start: int = 1) -> bytes:
    """Int16 samples that are never zero, so silence cannot hide in them."""
    values = (np.arange(frames) % 20000) + start
    return values.astype("<i2").tobytes()


def _zeros(frames: int) -> bytes:
    return bytes(2 * frames)


@pytest.fixture
def pyaudio():
    return fake_pyaudio()


def _player(pyaudio, **config) -> Player:
    config.setdefault("quiet", False)
    return Player(PlayerConfig(**config), pyaudio_module=pyaudio)


def test_playback_waits_for_the_prebuffer_then_plays_every_sample_and_pads_the_last_block(pyaudio):
    audio = _pcm(6 * _BLOCK + 100)  # 124 ms
    with _player(pyaudio, prebuffer_ms=100) as player:
        player.open(_RATE)
        stream = pyaudio.streams[0]
        player.write(audio[:2 * 1000])  # 45 ms: under the prebuffer
        assert player.wait_idle(_TIMEOUT)
        assert not stream.started
        player.write(audio[2 * 1000:])
        assert player.wait_idle(_TIMEOUT)
        assert stream.started
        player.end()
        assert player.wait_idle(_TIMEOUT)
        flags = [stream.pull() for _ in range(7)]
        stats = player.finish()
    assert flags == [pyaudio.paContinue] * 6 + [pyaudio.paComplete]
    assert bytes(stream.data) == audio + _zeros(_BLOCK - 100)
    assert stats.underruns == 0 and stats.silence_frames == 0
    assert stats.first_sound_at is not None and stats.first_sound_at >= stats.started_at
    assert stream.stopped and stream.closed


def test_short_input_starts_at_the_end_of_the_stream_without_waiting_for_the_prebuffer(pyaudio):
    audio = _pcm(50)
    with _player(pyaudio, prebuffer_ms=500) as player:
        player.open(_RATE)
        stream = pyaudio.streams[0]
        player.write(audio)
        assert player.wait_idle(_TIMEOUT)
        assert not stream.started
        player.end()
        assert player.wait_idle(_TIMEOUT)
        assert stream.started
        assert stream.pull() == pyaudio.paComplete
        player.finish()
    assert bytes(stream.data) == audio + _zeros(_BLOCK - 50)


def test_slow_producer_underrun_plays_silence_then_every_later_sample(pyaudio):
    first, second = _pcm(6 * _BLOCK + 100, start=1), _pcm(12 * _BLOCK + 7, start=7)
    silent_pulls = 5  # the producer "pauses" for 5 blocks: longer than what was buffered
    with _player(pyaudio, prebuffer_ms=100, max_prebuffer_ms=400) as player:
        player.open(_RATE)
        stream = pyaudio.streams[0]
        player.write(first)
        assert player.wait_idle(_TIMEOUT)
        assert [stream.pull() for _ in range(7)] == [pyaudio.paContinue] * 7  # the 7th runs dry
        assert player.stats().underruns == 1
        for _ in range(silent_pulls):
            stream.pull()
        player.write(second)
        player.end()
        assert player.wait_idle(_TIMEOUT)
        pulls = 0
        while stream.pull() != pyaudio.paComplete:
            pulls += 1
            assert pulls < 100
        stats = player.finish()
    gap = _BLOCK - 100 + silent_pulls * _BLOCK
    expected = first + _zeros(gap) + second + _zeros(_BLOCK - 7)
    assert bytes(stream.data) == expected  # silence is zeros; nothing repeated, nothing lost
    assert stats.underruns == 1
    assert stats.silence_frames == gap
    assert stats.prebuffer_ms == pytest.approx(200, abs=0.1)  # doubled once


def test_after_an_underrun_playback_resumes_only_with_the_grown_prebuffer(pyaudio):
    with _player(pyaudio, prebuffer_ms=100, max_prebuffer_ms=300) as player:
        player.open(_RATE)
        stream = pyaudio.streams[0]
        player.write(_pcm(5 * _BLOCK))
        assert player.wait_idle(_TIMEOUT)
        for _ in range(6):
            stream.pull()
        assert player.stats().underruns == 1
        player.write(_pcm(9 * _BLOCK))  # 180 ms: short of the new 200 ms
        assert player.wait_idle(_TIMEOUT)
        stream.pull()
        assert stream.data[-2 * _BLOCK:] == _zeros(_BLOCK)  # still silent
        player.write(_pcm(2 * _BLOCK))
        assert player.wait_idle(_TIMEOUT)
        stream.pull()
        assert stream.data[-2 * _BLOCK:] == _pcm(_BLOCK)  # resumed at the first new sample
        for _ in range(11):
            stream.pull()  # drain, and run dry again
        assert player.stats().underruns == 2
        player.write(_pcm(20 * _BLOCK))
        assert player.wait_idle(_TIMEOUT)
        assert player.stats().prebuffer_ms == pytest.approx(300, abs=0.1)  # capped


def _traced_peak(cycle, cycles):
    for _ in range(50):
        cycle()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in itertools.repeat(None, cycles):
            cycle()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start


@pytest.mark.skipif(fastaudio.IMPLEMENTATION != "cython",
                    reason="the numpy fallback's read_into allocates; the extension's does not")
def test_the_playing_callback_allocates_nothing(pyaudio):
    cycles = 150
    with _player(pyaudio, prebuffer_ms=0) as player:
        player.open(_RATE)
        stream = pyaudio.streams[0]
        player.write(_pcm((cycles + 60) * _BLOCK))
        assert player.wait_idle(_TIMEOUT)
        callback, time_info = stream.callback, {}

        def cycle():
            callback(None, _BLOCK, time_info, 0)

        def empty_cycle():
            pass

        empty_peak = _traced_peak(empty_cycle, cycles)
        peak = _traced_peak(cycle, cycles)
        assert player.stats().underruns == 0
    assert peak <= empty_peak


def test_no_output_device_is_audio_unavailable():
    empty = fake_pyaudio(devices=())
    assert not Player.is_available(pyaudio_module=empty)
    with pytest.raises(AudioUnavailable, match="no audio output device"):
        with Player(PlayerConfig(quiet=False), pyaudio_module=empty):
            pass


def test_device_is_picked_by_index_or_part_of_its_name():
    pyaudio = fake_pyaudio(devices=("Built-in Speakers", "USB Headset"))
    assert [d.name for d in list_output_devices(pyaudio)] == ["Built-in Speakers", "USB Headset"]
    for wanted in ("1", "headset"):
        with Player(PlayerConfig(device=wanted, quiet=False), pyaudio_module=pyaudio) as player:
            assert player.device.name == "USB Headset"
    with pytest.raises(AudioUnavailable, match="no output device matches 'hdmi'"):
        with Player(PlayerConfig(device="hdmi", quiet=False), pyaudio_module=pyaudio):
            pass


def test_abort_releases_a_feeder_waiting_for_room(pyaudio):
    with pytest.raises(KeyboardInterrupt):
        with _player(pyaudio, prebuffer_ms=100, max_prebuffer_ms=200, ring_ms=300) as player:
            player.open(_RATE)
            player.write(_pcm(30 * _BLOCK))  # 600 ms into a 300 ms ring: the feeder waits
            assert not player.wait_idle(0.05)
            raise KeyboardInterrupt
    assert not player._feeder.is_alive()
    assert pyaudio.streams[0].closed


def test_config_refuses_a_ring_too_small_for_the_prebuffer():
    with pytest.raises(ValueError, match="ring_ms"):
        PlayerConfig(max_prebuffer_ms=4000, ring_ms=4000)


class _Chunk(types.SimpleNamespace):
    pass


def _chunk(offset, samples, sentence, end, final=False):
    return _Chunk(sample_offset=offset, num_samples=samples, sentence_index=sentence,
                  text_span=types.SimpleNamespace(start=0, end=end), final=final)


def test_progress_counts_the_sentences_spoken_up_to_a_position():
    import io

    out = io.StringIO()
    progress = Progress(100, out, clock=itertools.count().__next__)
    for chunk in (_chunk(0, 1000, 0, 30), _chunk(1000, 500, 1, 60), _chunk(1500, 800, 2, 100, final=True)):
        progress.update(chunk)
    assert progress.line(position=0).endswith("0%  0 sentences done")
    assert progress.line(position=1000).endswith("30%  1 sentence done")
    assert progress.line(position=1600).endswith("60%  2 sentences done")
    assert progress.line().endswith("100%  3 sentences done")
    progress.show(1000)
    progress.close()
    assert out.getvalue().endswith("100%  3 sentences done\n")


def test_the_benchmarks_jitter_model_counts_a_late_chunk_once_and_grows_the_prebuffer():
    from bench.playback import prebuffer_sweep, simulate

    # (arrival s, audio s): 0.5 s of audio, then the next chunk 0.8 s later.
    trace = [(0.0, 0.5), (0.8, 0.5), (0.85, 0.05), (1.0, 1.0)]
    assert simulate(trace, prebuffer_ms=100) == {"underruns": 1, "start_delay_ms": 0.0}
    assert simulate(trace, prebuffer_ms=1000)["underruns"] == 0
    assert simulate(trace, prebuffer_ms=1000)["start_delay_ms"] == pytest.approx(800)  # 1 s buffered
    sweep = prebuffer_sweep([trace], prebuffers=(100, 1000))
    assert sweep["100"]["streams_with_underrun"] == 1 and sweep["1000"]["underruns"] == 0
