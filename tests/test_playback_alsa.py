"""The real stack: PyAudio -> PortAudio -> ALSA -> ALSA's `file` PCM, paced at real time.

The "sound card" is bench.paced_device.PacedFileDevice: ALSA's `file`
plugin writes into a FIFO drained at 22,050 frames/s, so PortAudio's callback
runs as it would on hardware, and every byte that reached the device is kept.

Two kinds of zeros surround the audio on the device, both accounted for:
- leading: at start, PortAudio (pa_linux_alsa.c) fills the ALSA buffer with
  silence before the first callback, so the device receives one buffer of
  zeros (2 periods, 40 ms here) before the first sample;
- trailing: the last callback block is zero-padded to its 20 ms.
Nothing else may differ: the bytes in between equal the server's PCM.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
import pytest

from bench.paced_device import PacedFileDevice
from clients.player import Player, PlayerConfig
from speakstream.v1 import synthesizer_pb2 as pb

pytestmark = pytest.mark.slow

_TIMEOUT = 60
_RATE = 22_050
_BLOCK_BYTES = 2 * 441  # one 20 ms callback block
_PRIMING_MAX_BYTES = 2 * _RATE // 5  # PortAudio's start-up silence: well under 200 ms


def _split_zeros(device: bytes, audio: bytes) -> tuple[int, int]:
    """(leading, trailing) zero bytes around `audio` in `device`, asserting the rest is exact."""
    first_sound = next(i for i, b in enumerate(device) if b)
    lead = first_sound - next(i for i, b in enumerate(audio) if b)
    assert lead >= 0 and lead % 2 == 0
    assert device[lead:lead + len(audio)] == audio
    assert not any(device[:lead]) and not any(device[lead + len(audio):])
    return lead, len(device) - lead - len(audio)


async def test_say_plays_exactly_the_servers_audio_through_alsa_without_underruns(app, stub, tmp_path):
    # A text no other test asks for, so the stream is synthesized live, not served
    # from the server's audio cache; Synthesize is asked only afterwards.
    text = "Good evening. The kettle is on, and the tea will be ready soon."
    with PacedFileDevice(tmp_path, sample_rate=_RATE) as device:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clients.say", "--server", app.address, "--noise-scale", "0",
            "--noise-w", "0", "--stats", "--stats-json", text,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=device.env())
        _, err = await asyncio.wait_for(process.communicate(), _TIMEOUT)
        assert process.returncode == 0, err.decode()
        assert await asyncio.to_thread(device.wait_closed, _TIMEOUT)
        played = device.data
    request = pb.SynthesizeRequest(text=text, noise_scale=0, noise_w=0)
    expected = (await stub.Synthesize(request, timeout=_TIMEOUT)).audio
    lead, trail = _split_zeros(played, expected)
    assert lead <= _PRIMING_MAX_BYTES
    assert trail < _BLOCK_BYTES
    report = err.decode().strip().splitlines()
    stats = json.loads(report[-1])
    assert stats["underruns"] == 0 and stats["silence_ms"] == 0
    assert stats["audio_s"] == pytest.approx(len(expected) / 2 / _RATE, abs=1e-3)
    assert stats["max_buffer_fill_ms"] > 0
    assert 0 <= stats["first_chunk_to_first_sound_ms"] <= stats["time_to_first_sound_ms"]
    human = "\n".join(report[:-1])
    for label in ("time to first chunk", "time to first sound", "underruns", "max buffer fill"):
        assert label in human


def _tone(seconds: float, start: int) -> bytes:
    """Int16 samples that are never zero, so silence cannot hide in them."""
    return ((np.arange(int(seconds * _RATE)) % 3000) + start).astype("<i2").tobytes()


def test_slow_producer_through_alsa_plays_silence_then_every_later_sample(tmp_path, monkeypatch):
    first, second = _tone(0.4, start=1), _tone(0.3, start=5000)
    gap_bytes = 2 * _RATE // 2  # the producer pauses until the device has had 0.5 s more
    with PacedFileDevice(tmp_path, sample_rate=_RATE) as device:
        monkeypatch.setenv("HOME", str(device.home))  # ALSA reads ~/.asoundrc at Pa_Initialize
        with Player(PlayerConfig(prebuffer_ms=100)) as player:
            player.open(_RATE)
            player.write(first)
            assert device.wait_bytes(len(first) + gap_bytes, _TIMEOUT)
            assert player.stats().underruns == 1
            player.write(second)
            stats = player.finish()
        assert device.wait_closed(_TIMEOUT)
        played = device.data
    start = played.index(first)
    resume = played.index(second, start + len(first))
    assert not any(played[:start])
    silence = played[start + len(first):resume]
    assert not any(silence)  # zeros, not garbage or repeats
    assert len(silence) >= gap_bytes - start
    assert not any(played[resume + len(second):])  # every later sample, then padding only
    assert stats.underruns == 1
    assert stats.prebuffer_ms == pytest.approx(200, abs=0.1)
