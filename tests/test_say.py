"""speakstream-say as a user runs it: a subprocess against the shared test server.

Outputs are compared byte for byte with what Synthesize returns for the same
deterministic request (noise_scale = noise_w = 0).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import wave

import pytest

from bench.paced_device import PacedFileDevice
from speakstream.v1 import synthesizer_pb2 as pb

_TIMEOUT = 60
_TEXT = "Hello there. How are you?"
_DETERMINISTIC = ("--noise-scale", "0", "--noise-w", "0")
# Makes `import pyaudio` fail in the child, as on a machine without the extra.
_WITHOUT_PYAUDIO = ("-c", "import sys; sys.modules['pyaudio'] = None; "
                    "from clients.say import main; sys.exit(main(sys.argv[1:]))")


async def _say(*args, stdin: bytes | None = None, env: dict | None = None, python_args=("-m", "clients.say")):
    process = await asyncio.create_subprocess_exec(
        sys.executable, *python_args, *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else dict(os.environ))
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=_TIMEOUT)
    return process.returncode, out, err.decode()


async def _synthesize(stub, text=_TEXT, encoding=pb.AUDIO_ENCODING_LINEAR16) -> bytes:
    request = pb.SynthesizeRequest(text=text, noise_scale=0, noise_w=0, encoding=encoding)
    return (await stub.Synthesize(request, timeout=_TIMEOUT)).audio


async def test_wav_output_equals_what_synthesize_returns(app, stub, tmp_path):
    out = tmp_path / "hi.wav"
    code, _, err = await _say("--server", app.address, *_DETERMINISTIC, _TEXT, "-o", str(out))
    assert code == 0, err
    assert out.read_bytes() == await _synthesize(stub, encoding=pb.AUDIO_ENCODING_WAV)
    with wave.open(str(out)) as wav:
        assert wav.readframes(wav.getnframes()) == await _synthesize(stub)


async def test_raw_output_is_the_servers_pcm_and_needs_no_pyaudio(app, stub):
    code, out, err = await _say("--server", app.address, *_DETERMINISTIC, "--raw", _TEXT,
                                python_args=_WITHOUT_PYAUDIO)
    assert code == 0, err
    assert out == await _synthesize(stub)


async def test_text_comes_from_file_or_stdin(app, stub, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text(_TEXT, encoding="utf-8")
    from_file, from_stdin = tmp_path / "file.wav", tmp_path / "stdin.wav"
    code, _, err = await _say("--server", app.address, *_DETERMINISTIC, "--file", str(text_file),
                              "-o", str(from_file), python_args=_WITHOUT_PYAUDIO)
    assert code == 0, err
    code, _, err = await _say("--server", app.address, *_DETERMINISTIC, "-o", str(from_stdin),
                              stdin=_TEXT.encode())
    assert code == 0, err
    expected = await _synthesize(stub, encoding=pb.AUDIO_ENCODING_WAV)
    assert from_file.read_bytes() == expected and from_stdin.read_bytes() == expected


async def test_progress_bar_counts_sentences(app, tmp_path):
    text = "One sentence here. Another one there. And a third to finish."
    code, _, err = await _say("--server", app.address, "--progress", text, "-o", str(tmp_path / "p.wav"))
    assert code == 0, err
    assert "\r[" in err
    assert "100%  3 sentences done\n" in err


async def test_no_audio_device_exits_4_and_suggests_a_file(app, tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), JACK_NO_START_SERVER="1")  # no .asoundrc: no device
    code, _, err = await _say("--server", app.address, _TEXT, env=env)
    assert code == 4
    assert "no audio output device" in err and "-o out.wav" in err
    code, _, err = await _say("--list-devices", env=env)
    assert code == 4


async def test_playing_without_pyaudio_exits_4_and_names_the_extra(app):
    code, _, err = await _say("--server", app.address, _TEXT, python_args=_WITHOUT_PYAUDIO)
    assert code == 4
    assert "speakstream[playback]" in err and "-o out.wav" in err


async def test_rate_is_passed_through_and_a_refusal_is_reported_with_exit_2(app, tmp_path):
    code, _, _ = await _say("--server", app.address, "--rate", "16000", _TEXT, "-o", str(tmp_path / "16k.wav"))
    assert code == 0
    with wave.open(str(tmp_path / "16k.wav")) as wav:
        assert wav.getframerate() == 16000 and wav.getnframes() > 0
    code, _, err = await _say("--server", app.address, "--rate", "4000", _TEXT, "-o", str(tmp_path / "r.wav"))
    assert code == 2
    assert "INVALID_ARGUMENT" in err and "sample_rate_hz" in err
    assert not (tmp_path / "r.wav").exists()


async def test_empty_text_is_a_usage_error_before_any_call():
    code, _, err = await _say("--server", "127.0.0.1:1", "   ")
    assert code == 2
    assert "no text" in err


async def _stream_pcm(stub, text: str) -> bytes:
    request = pb.SynthesizeRequest(text=text, noise_scale=0, noise_w=0)
    return b"".join([c.audio async for c in stub.SynthesizeStream(request, timeout=_TIMEOUT)])


async def test_live_speaks_stdin_as_it_arrives(app, stub):
    """--live: the first sentence is heard while standard input is still open."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.say", "--live", "--raw", "--server", app.address, *_DETERMINISTIC,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    pieces = ["The owl ", "hoots at mid", "night. The", " fox answers from the hill."]
    for piece in pieces[:3]:  # "night. T" completes the first sentence
        process.stdin.write(piece.encode())
        await process.stdin.drain()
    first = await asyncio.wait_for(process.stdout.read(2), _TIMEOUT)  # stdin is still open
    assert len(first) == 2
    process.stdin.write(pieces[3].encode())
    process.stdin.close()  # end of input: the rest is spoken and the call ends
    rest, err = await asyncio.wait_for(process.communicate(), _TIMEOUT)
    assert process.returncode == 0, err.decode()
    # The same deterministic audio as the whole text through SynthesizeStream.
    assert first + rest == await _stream_pcm(stub, "".join(pieces))


async def test_live_writes_a_wav_and_decodes_utf8_split_across_writes(app, stub, tmp_path):
    out = tmp_path / "live.wav"
    text = "Café naïve. Dr. Smith paid $3.50."
    data = text.encode()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.say", "--live", "-o", str(out), "--server", app.address,
        *_DETERMINISTIC, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    cut = data.index("é".encode()) + 1  # inside the two bytes of "é"
    process.stdin.write(data[:cut])
    await process.stdin.drain()
    process.stdin.write(data[cut:])
    process.stdin.close()
    _, err = await asyncio.wait_for(process.communicate(), _TIMEOUT)
    assert process.returncode == 0, err.decode()
    with wave.open(str(out)) as wav:
        assert wav.readframes(wav.getnframes()) == await _stream_pcm(stub, text)


@pytest.mark.slow
async def test_live_plays_through_the_player_to_the_device(app, stub, tmp_path):
    text = "The tide comes in at dawn. The boats go out at noon."
    with PacedFileDevice(tmp_path) as device:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clients.say", "--live", "--server", app.address, *_DETERMINISTIC,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=device.env())
        for piece in ("The tide comes in", " at dawn. The boats", " go out at noon."):
            process.stdin.write(piece.encode())
            await process.stdin.drain()
        process.stdin.close()
        _, err = await asyncio.wait_for(process.communicate(), _TIMEOUT)
        assert process.returncode == 0, err.decode()
        assert await asyncio.to_thread(device.wait_closed, _TIMEOUT)
        played = device.data
    expected = await _stream_pcm(stub, text)
    start = played.find(expected)  # after PortAudio's start-up silence, every sample, in order
    assert start >= 0 and not any(played[:start]) and not any(played[start + len(expected):])


async def test_live_refuses_a_text_argument_and_a_progress_bar():
    code, _, err = await _say("--live", "--server", "127.0.0.1:1", "hello")
    assert code == 2 and "--live reads standard input" in err
    code, _, err = await _say("--live", "--progress", "--server", "127.0.0.1:1")
    assert code == 2 and "--progress" in err


async def test_help_documents_every_exit_code():
    code, out, _ = await _say("--help")
    assert code == 0
    epilog = out.decode().split("exit codes:")[1]
    for exit_code in ("0", "1", "2", "3", "4", "130", "141"):
        assert f"\n  {exit_code} " in epilog


@pytest.mark.slow
async def test_ctrl_c_cancels_the_call_stops_playback_and_exits_130(app, tmp_path):
    text = "The lighthouse keeper climbed the stairs every night. " * 40
    with PacedFileDevice(tmp_path) as device:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clients.say", "--server", app.address, "--progress", text,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=device.env())
        first = await asyncio.wait_for(process.stderr.read(1), _TIMEOUT)  # the first chunk is in
        assert first == b"\r"
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), _TIMEOUT)
        assert process.returncode == 130
        assert "interrupted" in err.decode()
        # The signal may land before the device starts; either way the process,
        # and with it the device, has stopped long before the text's end.
        played_s = len(device.data) / device.bytes_per_s
    assert played_s < 10  # of about two minutes of speech


async def test_speaker_by_name_reaches_the_server(app, tmp_path):
    code, _, err = await _say("--server", app.address, "--speaker", "alice", _TEXT, "-o", str(tmp_path / "a.wav"))
    assert code == 2
    assert "NOT_FOUND" in err and "speaker:" in err  # the bundled voice has no named speakers


async def test_encoded_file_is_the_streams_bytes_and_decodes_to_the_pcm(app, stub, tmp_path):
    import io

    import numpy as np
    import soundfile

    out = tmp_path / "hi.ogg"
    code, _, err = await _say("--server", app.address, *_DETERMINISTIC, "--encoding", "ogg_opus", _TEXT,
                              "-o", str(out), python_args=_WITHOUT_PYAUDIO)
    assert code == 0, err
    decoded, rate = soundfile.read(io.BytesIO(out.read_bytes()), dtype="int16")
    assert rate == 24000 and decoded.size > 0  # Opus rounds 22,050 Hz up
    out = tmp_path / "hi.mulaw"
    code, _, err = await _say("--server", app.address, *_DETERMINISTIC, "--encoding", "mulaw", "--rate", "8000",
                              _TEXT, "-o", str(out), python_args=_WITHOUT_PYAUDIO)
    assert code == 0, err
    whole = await stub.Synthesize(pb.SynthesizeRequest(text=_TEXT, noise_scale=0, noise_w=0, sample_rate_hz=8000,
                                                       encoding=pb.AUDIO_ENCODING_MULAW), timeout=_TIMEOUT)
    assert out.read_bytes() == whole.audio
    assert np.frombuffer(out.read_bytes(), np.uint8).size == whole.num_samples


async def test_an_encoding_other_than_wav_needs_a_file_and_no_playback(app):
    code, _, err = await _say("--server", app.address, "--encoding", "flac", "--raw", _TEXT)
    assert code == 2 and "--encoding flac" in err
