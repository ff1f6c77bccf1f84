"""speakstream-say with texts longer than one call may carry: a server of its own with a small --max-chars.

The text goes in consecutive calls cut at sentence ends; the output must be
each call's audio, in order, with exactly the server's sentence silence
between them, and no call over the server's limit (it would refuse it).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import wave
from pathlib import Path

import pytest
import soundfile

from bench.paced_device import PacedFileDevice
from server.config import Settings
from server.frontend import split_sentences
from speakstream.v1 import synthesizer_pb2 as pb
from tests.servers import serving

_MAX_CHARS = 600
_TIMEOUT = 300
_DETERMINISTIC = ("--noise-scale", "0", "--noise-w", "0")
_CHAPTER = (Path(__file__).resolve().parents[1] / "clients" / "samples" / "chapter.txt").read_text(encoding="utf-8")
_SILENCE_S = 0.2  # the server's default sentence_silence_s


def _first_sentences(text: str, chars: int, longest: int = 10_000) -> str:
    """The sentences of `text` (each shorter than `longest`) up to the first end at or after `chars`."""
    out = []
    for start, end in split_sentences(text):
        if end - start < longest:
            out.append(text[start:end])
        if sum(map(len, out)) >= chars:
            return "".join(out)
    raise AssertionError("text too short")


_TEXT = _first_sentences(_CHAPTER, 2400)  # ~2,600 characters: 5 calls of at most 600


@pytest.fixture(scope="module")
async def small_server():
    """(app, stub) of a server taking at most _MAX_CHARS characters per call."""
    async with serving(Settings(port=0, pool_size=2, max_queue=16, grace_s=0.5, max_chars=_MAX_CHARS)) as served:
        yield served


async def _say(*args, stdin: bytes | None = None, env: dict | None = None):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.say", *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env or dict(os.environ))
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=_TIMEOUT)
    return process.returncode, out, err.decode()


def _calls(text: str, max_chars: int) -> list[str]:
    """The texts of the calls: as many whole sentences as fit in max_chars (the server's split)."""
    calls, start, end = [], 0, 0
    for _, sentence_end in split_sentences(text):
        if sentence_end - start > max_chars:
            calls.append(text[start:end])
            start = end
        end = sentence_end
    return calls + [text[start:]]


async def _pcm(stub, text: str) -> bytes:
    request = pb.SynthesizeRequest(text=text, noise_scale=0, noise_w=0)
    return (await stub.Synthesize(request, timeout=_TIMEOUT)).audio


def _silence(rate: int = 22050) -> bytes:
    return bytes(2 * round(_SILENCE_S * rate))


@pytest.mark.slow
async def test_a_text_over_the_servers_limit_is_one_wav_of_its_calls_with_sentence_silence_between(
        small_server, tmp_path):
    app, stub = small_server
    out = tmp_path / "long.wav"
    code, _, err = await _say("--server", app.address, *_DETERMINISTIC, "--max-chars-per-call", str(_MAX_CHARS),
                              "--progress", "--stats-json", "-o", str(out), stdin=_TEXT.encode())
    assert code == 0, err
    calls = _calls(_TEXT, _MAX_CHARS)
    assert len(calls) >= 4 and all(len(c) <= _MAX_CHARS for c in calls)
    expected = _silence().join([await _pcm(stub, call) for call in calls])
    with wave.open(str(out)) as wav:
        assert wav.readframes(wav.getnframes()) == expected
    stats = json.loads(err.strip().splitlines()[-1])
    assert stats["calls"] == len(calls)
    assert stats["sentences"] == len(split_sentences(_TEXT))
    # Progress over the whole text, as plain lines through a pipe: one at each tenth (more
    # only on a very slow machine, every 30 s), the last at 100%.
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert "\r" not in err and len(lines) == len(set(lines))
    percents = [int(line.split("]")[1].split("%")[0]) for line in lines]
    assert percents == sorted(percents) and percents[-1] == 100
    assert len({p // 10 for p in percents}) >= 10  # the text's 100% comes in one last chunk at most
    assert lines[-1].endswith(f"100%  {len(split_sentences(_TEXT))} sentences done")
    assert f"wrote {out}: {len(expected) // 2} samples" in err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["long.flac", "long.ogg"])
async def test_flac_and_ogg_of_several_calls_are_one_file_with_its_true_length(small_server, tmp_path, name):
    app, stub = small_server
    out = tmp_path / name
    code, _, err = await _say("--server", app.address, *_DETERMINISTIC, "--max-chars-per-call", str(_MAX_CHARS),
                              "-o", str(out), stdin=_TEXT.encode())
    assert code == 0, err
    samples = int(err.split(": ")[1].split()[0])  # "wrote PATH: N samples (S s)"
    info = soundfile.info(str(out))
    assert info.frames == samples
    decoded, _ = soundfile.read(str(out), dtype="int16")
    assert decoded.size == samples
    if name.endswith(".flac"):  # lossless: exactly the calls' PCM and the silences
        expected = _silence().join([await _pcm(stub, call) for call in _calls(_TEXT, _MAX_CHARS)])
        assert decoded.tobytes() == expected
    else:
        assert info.samplerate == 24000 and info.subtype == "OPUS"  # the voice's 22,050 Hz, up to Opus's rate


@pytest.mark.slow
async def test_live_input_over_the_limit_goes_on_in_new_calls_cut_at_sentence_ends(small_server):
    app, stub = small_server
    text = _first_sentences(_CHAPTER, 1300, longest=150)  # short sentences: no length cut on the server
    code, out, err = await _say("--live", "--raw", "--server", app.address, *_DETERMINISTIC,
                                "--max-chars-per-call", str(_MAX_CHARS), "--stats-json", stdin=text.encode())
    assert code == 0, err
    # Each call ends at the first sentence end past half the limit.
    calls, start = [], 0
    for _, end in split_sentences(text):
        if end - start >= _MAX_CHARS // 2:
            calls.append(text[start:end])
            start = end
    calls += [text[start:]] if text[start:].strip() else []
    assert len(calls) >= 3 and all(len(c) <= _MAX_CHARS for c in calls)
    stream = []
    for call in calls:  # an async comprehension inside a list comprehension needs Python 3.11
        request = pb.SynthesizeRequest(text=call, noise_scale=0, noise_w=0)
        stream.append(b"".join([c.audio async for c in stub.SynthesizeStream(request, timeout=_TIMEOUT)]))
    assert out == _silence().join(stream)
    stats = json.loads(err.strip().splitlines()[-1])
    assert stats["calls"] == len(calls) and stats["sentences"] == len(split_sentences(text))


@pytest.mark.slow
async def test_playing_several_calls_leaves_no_gap(small_server, tmp_path):
    """The next call starts while the audio before it plays: the device gets every sample, in order."""
    app, stub = small_server
    text = _first_sentences(_CHAPTER, 300, longest=120)
    with PacedFileDevice(tmp_path) as device:
        code, _, err = await _say("--server", app.address, *_DETERMINISTIC, "--max-chars-per-call", "120",
                                  "--stats-json", text, env=device.env())
        assert code == 0, err
        assert await asyncio.to_thread(device.wait_closed, _TIMEOUT)
        played = device.data
    stats = json.loads(err.strip().splitlines()[-1])
    assert stats["calls"] >= 3 and stats["underruns"] == 0
    expected = _silence().join([await _pcm(stub, call) for call in _calls(text, 120)])
    start = played.find(expected)  # after PortAudio's start-up silence, every sample, in order
    assert start >= 0 and not any(played[:start]) and not any(played[start + len(expected):])


async def test_more_text_per_call_than_the_server_takes_is_a_one_line_usage_error(small_server, tmp_path):
    app, _ = small_server
    code, _, err = await _say("--server", app.address, "--max-chars-per-call", "2000", "-o", str(tmp_path / "x.wav"),
                              stdin=_TEXT.encode())
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--max-chars-per-call 2000" in err and "the limit is 600" in err
    # Over the server's receive limit (4 bytes per character + 64 KiB): refused by gRPC before the
    # server reads it, and still the input's fault.
    code, _, err = await _say("--server", app.address, "--max-chars-per-call", "100000", "-o", str(tmp_path / "y.wav"),
                              stdin=("word " * 20_000).encode())
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--max-chars-per-call 100000" in err and "RESOURCE_EXHAUSTED" not in err.split("(")[0]
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "y.wav").exists()
