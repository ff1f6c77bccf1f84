"""speakstream-say's word timings: --timestamps, --captions, what was heard after Ctrl-C, and the player's clock.

The files are compared with what the server itself says (Synthesize's
words); captions and "heard" are checked against the paced ALSA device
(bench/paced_device.py), which records when each byte reached it.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import signal
import subprocess
import sys
import threading
import time
import wave

import numpy as np
import pytest

from bench.paced_device import PacedFileDevice, raise_priority
from clients.player import Player, PlayerConfig
from speakstream.v1 import synthesizer_pb2 as pb
from tests.test_playback import fake_pyaudio

_TIMEOUT = 60
_RATE = 22_050
_TEXT = "Hello there. How are you? I am fine."
_DETERMINISTIC = ("--noise-scale", "0", "--noise-w", "0")
# Makes `import pyaudio` fail in the child: files only, no sound card.
_WITHOUT_PYAUDIO = ("-c", "import sys; sys.modules['pyaudio'] = None; "
                    "from clients.say import main; sys.exit(main(sys.argv[1:]))")
_BOUND_S = 0.030  # issue 17: each caption within 30 ms of the device receiving the word's first sample
# The timed tests give the child and the measuring threads a higher priority where allowed
# (raise_priority: real-time, else nice -10): on a two-core machine whose cores other jobs kept
# busy, ordinary threads woke 40-60 ms late now and then, in the child or in the measurement, and
# a lower nice value does not outrank other containers' work.


async def _say(*args, stdin: bytes | None = None, python_args=_WITHOUT_PYAUDIO):
    process = await asyncio.create_subprocess_exec(
        sys.executable, *python_args, *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=_TIMEOUT)
    return process.returncode, out, err.decode()


def _pcm(path) -> bytes:
    with wave.open(str(path)) as wav:
        return wav.readframes(wav.getnframes())


async def _server_words(stub, text: str, rate: int = 0) -> list[dict]:
    """The --timestamps records for one call, from what Synthesize says."""
    response = await stub.Synthesize(pb.SynthesizeRequest(text=text, noise_scale=0, noise_w=0, sample_rate_hz=rate,
                                                          timestamps=pb.TIMESTAMPS_WORDS), timeout=_TIMEOUT)
    rate = response.sample_rate_hz
    return [{"word": text[w.text_span.start:w.text_span.end], "start": round(w.start_sample / rate, 6),
             "end": round(w.end_sample / rate, 6), "start_sample": w.start_sample, "end_sample": w.end_sample,
             "text_start": w.text_span.start, "text_end": w.text_span.end} for w in response.words]


@pytest.mark.parametrize("flags, name, rate", [((), "t.wav", _RATE), (("--rate", "16000"), "t.wav", 16000),
                                               ((), "t.opus", 24000)])
async def test_timestamps_file_holds_the_servers_words_at_the_audios_rate(app, stub, tmp_path, flags, name, rate):
    words_file = tmp_path / "words.json"
    code, _, err = await _say("--server", app.address, *_DETERMINISTIC, *flags, "-o", str(tmp_path / name),
                              "--timestamps", str(words_file), _TEXT)
    assert code == 0, err
    assert f"wrote {words_file}: 8 words" in err
    words = json.loads(words_file.read_text(encoding="utf-8"))
    assert [w["word"] for w in words] == ["Hello", "there", "How", "are", "you", "I", "am", "fine"]
    assert words == await _server_words(stub, _TEXT, rate)  # Ogg/Opus: PCM at 24 kHz, encoded here


async def test_a_text_in_several_calls_has_the_timestamps_and_audio_of_one_call(app, tmp_path):
    """Spans and samples of each call are placed in the whole text and the whole audio (the
    silence the client puts between calls included): three calls give what one call gives."""
    runs = {}
    for calls, flags in (("one", ()), ("three", ("--max-chars-per-call", "15"))):
        out, words_file = tmp_path / f"{calls}.wav", tmp_path / f"{calls}.json"
        code, _, err = await _say("--server", app.address, *_DETERMINISTIC, *flags, "--stats-json", "-o", str(out),
                                  "--timestamps", str(words_file), _TEXT)
        assert code == 0, err
        assert json.loads(err.splitlines()[-1])["calls"] == (1 if calls == "one" else 3)
        runs[calls] = (_pcm(out), words_file.read_text(encoding="utf-8"))
    assert runs["three"] == runs["one"]
    words = json.loads(runs["one"][1])
    assert all(_TEXT[w["text_start"]:w["text_end"]] == w["word"] for w in words)


async def test_live_timestamps_index_all_of_standard_input_across_calls(app, tmp_path):
    whole, live = tmp_path / "whole.json", tmp_path / "live.json"
    code, _, err = await _say("--server", app.address, *_DETERMINISTIC, "-o", str(tmp_path / "w.wav"),
                              "--timestamps", str(whole), _TEXT)
    assert code == 0, err
    code, _, err = await _say("--live", "--server", app.address, *_DETERMINISTIC, "--max-chars-per-call", "20",
                              "--stats-json", "-o", str(tmp_path / "l.wav"), "--timestamps", str(live),
                              stdin=_TEXT.encode())
    assert code == 0, err
    assert json.loads(err.splitlines()[-1])["calls"] == 3
    assert live.read_text(encoding="utf-8") == whole.read_text(encoding="utf-8")


async def test_captions_need_playback_and_standard_output(tmp_path):
    code, _, err = await _say("--server", "127.0.0.1:1", "--captions", "-o", str(tmp_path / "x.wav"), _TEXT)
    assert code == 2 and err.count("\n") == 1
    assert "--captions prints each word when the sound card plays it: it needs playback" in err
    code, _, err = await _say("--server", "127.0.0.1:1", "--captions", "--raw", "--play", _TEXT)
    assert code == 2 and "--raw fills with audio" in err


async def test_an_unwritable_timestamps_file_is_exit_1_before_any_call():
    # An unreachable server would be exit 3: the file is opened first.
    code, _, err = await _say("--server", "127.0.0.1:1", "--timestamps", "/nonexistent/dir/w.json", "-o",
                              "/tmp/x.wav", _TEXT)
    assert code == 1
    assert err == "speakstream-say: cannot write /nonexistent/dir/w.json: No such file or directory\n"


async def test_help_documents_the_words_flags_and_the_file_format():
    code, out, _ = await _say("--help")
    assert code == 0
    text = out.decode()
    for phrase in ("--captions", "--timestamps FILE", '"start_sample"', '"text_start"', "heard: ...",
                   "what was\n       heard is printed"):
        assert phrase in text, phrase


@pytest.mark.slow
async def test_timestamps_after_ctrl_c_are_valid_json_of_the_words_received(app, tmp_path):
    text = "The lighthouse keeper climbed the stairs every night. " * 40
    words_file = tmp_path / "cut.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, *_WITHOUT_PYAUDIO, "--server", app.address, "--progress", "--chunk-ms", "200",
        "-o", str(tmp_path / "cut.wav"), "--timestamps", str(words_file), text,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    first = await asyncio.wait_for(process.stderr.readline(), _TIMEOUT)  # a progress line: audio is in
    assert first.startswith(b"[")
    process.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(process.communicate(), _TIMEOUT)
    assert process.returncode == 130, err.decode()
    assert "heard:" not in err.decode()  # nothing was played
    words = json.loads(words_file.read_text(encoding="utf-8"))
    assert 0 < len(words) < 8 * 40
    assert all(text[w["text_start"]:w["text_end"]] == w["word"] for w in words)
    assert [w["word"] for w in words] == (["The", "lighthouse", "keeper", "climbed", "the", "stairs", "every",
                                           "night"] * 40)[:len(words)]
    starts = [w["start_sample"] for w in words]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


# ---- through the paced ALSA device -----------------------------------------------------


class _Lines:
    """A child's standard output read line by line in a thread, each line with time.monotonic() as it arrived."""

    def __init__(self, stream):
        self.lines: list[tuple[float, str]] = []
        self._stream = stream
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        raise_priority(threading.get_native_id())
        for line in iter(self._stream.readline, b""):
            self.lines.append((time.monotonic(), line.decode().rstrip("\n")))

    def join(self):
        self._thread.join(_TIMEOUT)


def _received_at(device_reads: list[tuple[float, int]], byte: int) -> float:
    """When the device received byte number `byte` (the read that brought it); inf: never."""
    index = bisect.bisect_right([total for _, total in device_reads], byte)
    return device_reads[index][0] if index < len(device_reads) else math.inf


def _lead(device: bytes, pcm: bytes) -> int:
    """Bytes the device received before the audio (PortAudio's priming silence), checking what follows is the audio."""
    lead = next(i for i, b in enumerate(device) if b) - next(i for i, b in enumerate(pcm) if b)
    shared = min(len(pcm), len(device) - lead)
    assert lead >= 0 and shared > 0 and device[lead:lead + shared] == pcm[:shared]
    return lead


@pytest.mark.slow
async def test_captions_are_printed_within_30_ms_of_the_device_receiving_each_words_first_sample(app, tmp_path):
    """The issue's bound, through PyAudio -> PortAudio -> ALSA -> the paced device. The text goes in
    three calls, so the words' places in the whole audio (silence between calls included) are
    on trial too. A prebuffer longer than the audio starts the device once every call is done:
    the server (in this process) is then idle and does not delay the device's own clock. The
    child and the measuring threads ask for a higher priority (see raise_priority above)."""
    text = "Good evening. The ferry to the island leaves at seven, and the last one returns at ten."
    out, words_file = tmp_path / "out.wav", tmp_path / "words.json"
    with PacedFileDevice(tmp_path, prioritized=True) as device:
        process = subprocess.Popen(
            [sys.executable, "-m", "clients.say", "--server", app.address, *_DETERMINISTIC, "--captions",
             "--prebuffer-ms", "8000", "--max-prebuffer-ms", "8000", "--max-chars-per-call", "40",
             "--play", "-o", str(out), "--timestamps", str(words_file), "--stats-json", text],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=device.env())
        priority = raise_priority(process.pid)  # before the child starts a thread: they inherit it
        captions = _Lines(process.stdout)
        err = await asyncio.to_thread(process.stderr.read)
        assert await asyncio.to_thread(process.wait, _TIMEOUT) == 0, err.decode()
        captions.join()
        assert await asyncio.to_thread(device.wait_closed, _TIMEOUT)
        played, reads = device.data, device.reads
    stats = json.loads(err.decode().splitlines()[-1])
    assert stats["calls"] == 3 and stats["underruns"] == 0
    words = json.loads(words_file.read_text(encoding="utf-8"))
    assert [line for _, line in captions.lines] == [w["word"] for w in words]
    assert len(words) == 17
    pcm = _pcm(out)
    lead = _lead(played, pcm)
    assert played[lead:lead + len(pcm)] == pcm  # every sample reached the device
    late = [(w["word"], round(1000 * (printed - _received_at(reads, lead + 2 * w["start_sample"])), 1))
            for (printed, _), w in zip(captions.lines, words)]
    assert all(abs(ms) <= 1000 * _BOUND_S for _, ms in late), (
        f"priority {priority}: " + " ".join(f"{word}:{ms}" for word, ms in late))


@pytest.mark.slow
async def test_ctrl_c_during_playback_prints_what_the_device_had_played(app, tmp_path):
    """As above, the device starts once the call is done (the prebuffer), so the device's bytes
    are the file's, after PortAudio's priming: no underrun's silence in between."""
    text = "The lighthouse keeper climbed the stairs every night, and the lamp was lit for the boats."
    shown = 6  # captions to see before Ctrl-C
    out, words_file = tmp_path / "out.wav", tmp_path / "words.json"
    with PacedFileDevice(tmp_path, prioritized=True) as device:
        process = subprocess.Popen(
            [sys.executable, "-m", "clients.say", "--server", app.address, "--captions", "--prebuffer-ms", "8000",
             "--max-prebuffer-ms", "8000", "--play", "-o", str(out), "--timestamps", str(words_file), text],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=device.env())
        raise_priority(process.pid)  # before the child starts a thread: they inherit it
        captions = [await asyncio.to_thread(process.stdout.readline) for _ in range(shown)]
        signalled_at = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(process.communicate, timeout=_TIMEOUT)
        played, reads = device.data, device.reads
    assert process.returncode == 130
    lines = err.decode().splitlines()
    assert lines[0] == (f"speakstream-say: interrupted: call cancelled; playback stopped; "
                        f"{out} holds the audio up to here")
    assert lines[1].startswith("heard: ") and len(lines) == 2
    heard = lines[1][len("heard: "):]
    words = json.loads(words_file.read_text(encoding="utf-8"))
    ends = [w["text_end"] for w in words]
    assert [c.decode().strip() for c in captions] == [w["word"] for w in words[:shown]]
    # What was heard ends at a word: the captions shown, or one more word begun before the signal landed.
    assert heard in (text[:ends[shown - 1]], text[:ends[shown]])
    heard_count = shown if heard == text[:ends[shown - 1]] else shown + 1
    # And it agrees with the device: the last word heard reached it, the next one had not
    # when the signal was sent.
    lead = _lead(played, _pcm(out))
    assert lead + 2 * words[heard_count - 1]["start_sample"] < len(played)
    assert _received_at(reads, lead + 2 * words[heard_count]["start_sample"]) > signalled_at - _BOUND_S


# ---- the player's clock, against a fake PyAudio and a fake clock ------------------------


class _Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _tone(frames: int) -> bytes:
    return ((np.arange(frames) % 20000) + 1).astype("<i2").tobytes()


def test_the_player_hears_frames_on_the_devices_clock_with_underrun_silence_in_between():
    block = 441
    clock = _Clock(100.0)
    pyaudio = fake_pyaudio()
    with Player(PlayerConfig(prebuffer_ms=0, quiet=False), pyaudio_module=pyaudio, clock=clock) as player:
        assert player.heard_at(0) is None and player.frames_heard() == 0
        player.open(_RATE)
        stream = pyaudio.streams[0]
        player.write(_tone(10 * block))
        assert player.wait_idle(_TIMEOUT)
        # Started at 100.0; the fake reports 40 ms of latency, plus one block of priming.
        start = 100.0 + 0.04 + block / _RATE
        assert player.heard_at(0) == pytest.approx(start)
        assert player.heard_at(3 * block + 5) == pytest.approx(start + (3 * block + 5) / _RATE)
        assert player.heard_at(10 * block) is None  # not in the ring
        for _ in range(11):  # the ring runs dry: the 11th block is silence
            stream.pull()
        assert player.stats().underruns == 1
        assert player.heard_at(5 * block) == pytest.approx(start + 5 * block / _RATE)  # before the gap: as it was
        stream.pull()  # one more block of silence while waiting for audio
        player.write(_tone(2 * block))
        assert player.wait_idle(_TIMEOUT)  # resumed (the prebuffer is tiny)
        gap = 2 * block  # the zero-filled 11th block and one silent block
        assert player.heard_at(10 * block) == pytest.approx(start + (10 * block + gap) / _RATE)
        stream.pull()
        stream.pull()
        # frames_heard: device frames begun by then (asked mid-frame), less the silence between them.
        for device_frame, frames in ((-1, 0), (0, 1), (100, 101), (10 * block - 1, 10 * block),
                                     (10 * block + 5, 10 * block),  # in the gap
                                     (10 * block + gap + 7, 10 * block + 8),
                                     (60 * _RATE, 12 * block)):  # never more than the device was given
            assert player.frames_heard(start + (device_frame + 0.5) / _RATE) == frames, device_frame
        clock.now = start + (10 * block + gap + 100.5) / _RATE
        player.abort()  # Ctrl-C: nothing after this moment is heard
        assert player.frames_heard(start + 60.0) == 10 * block + 101
        assert player.heard_at(0) is None


def test_a_dac_time_later_than_the_priming_is_believed():
    clock = _Clock(50.0)
    pyaudio = fake_pyaudio()
    with Player(PlayerConfig(prebuffer_ms=0, quiet=False), pyaudio_module=pyaudio, clock=clock) as player:
        player.open(_RATE)
        player.write(_tone(4410))
        assert player.wait_idle(_TIMEOUT)
        clock.now = 50.001  # the first callback: PortAudio says its block is heard 250 ms later
        pyaudio.streams[0].callback(None, 441, {"current_time": 7.0, "output_buffer_dac_time": 7.25}, 0)
        assert player.heard_at(441) == pytest.approx(50.251 + 441 / _RATE)


@pytest.mark.slow
def test_the_players_clock_follows_the_paced_device_across_an_underrun(tmp_path, monkeypatch):
    """In process, through ALSA: a producer that pauses makes the device play silence; the
    frames after it are heard when the device receives them, not one gap too early."""
    first, second = _tone(int(0.4 * _RATE)), _tone(int(0.6 * _RATE))
    gap_bytes = 2 * _RATE // 2
    with PacedFileDevice(tmp_path, sample_rate=_RATE, prioritized=True) as device:
        monkeypatch.setenv("HOME", str(device.home))
        with Player(PlayerConfig(prebuffer_ms=100)) as player:
            player.open(_RATE)
            player.write(first)
            assert device.wait_bytes(len(first) + gap_bytes, _TIMEOUT)
            player.write(second)
            assert player.wait_idle(_TIMEOUT)
            frames = [len(first) // 2 + n for n in (0, 4410, 8820)]
            predicted = [player.heard_at(frame) for frame in frames]
            stats = player.finish()
        assert device.wait_closed(_TIMEOUT)
        played, reads = device.data, device.reads
    assert stats.underruns == 1
    resume = played.index(second)  # PortAudio's priming, the first tone, the silence, the second tone
    for frame, at in zip(frames, predicted):
        received = _received_at(reads, resume + 2 * (frame - len(first) // 2))
        assert abs(at - received) <= _BOUND_S, (frame, at - received)
