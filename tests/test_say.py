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


async def test_progress_through_a_pipe_is_plain_lines_counting_sentences(app, tmp_path):
    text = "One sentence here. Another one there. And a third to finish."
    code, _, err = await _say("--server", app.address, "--progress", text, "-o", str(tmp_path / "p.wav"))
    assert code == 0, err
    assert "\r" not in err  # standard error is a pipe: no redrawing
    lines = err.splitlines()
    assert lines[0].startswith("[") and lines[-2].endswith("100%  3 sentences done")
    assert lines[-1].startswith("wrote ")


def test_progress_on_a_terminal_redraws_one_line():
    import io
    import types

    from clients.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    progress = Progress(100, out, clock=iter(range(0, 100, 1)).__next__)
    for n, end in enumerate((30, 60, 100)):
        progress.update(types.SimpleNamespace(sample_offset=1000 * n, num_samples=1000, sentence_index=n,
                                              text_span=types.SimpleNamespace(start=0, end=end), final=end == 100))
        progress.show()
    progress.close()
    assert out.getvalue().count("\r[") == 3 and out.getvalue().count("\n") == 1
    assert out.getvalue().endswith("100%  3 sentences done\n")


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
        first = await asyncio.wait_for(process.stderr.readline(), _TIMEOUT)  # the first chunk is in
        assert first.startswith(b"[")
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), _TIMEOUT)
        assert process.returncode == 130
        assert "interrupted: call cancelled; playback stopped" in err.decode()
        # The signal may land before the device starts; either way the process,
        # and with it the device, has stopped long before the text's end.
        played_s = len(device.data) / device.bytes_per_s
    assert played_s < 10  # of about two minutes of speech


async def test_speaker_by_name_reaches_the_server(app, tmp_path):
    code, _, err = await _say("--server", app.address, "--speaker", "alice", _TEXT, "-o", str(tmp_path / "a.wav"))
    assert code == 2
    assert "NOT_FOUND" in err and "speaker:" in err  # the bundled voice has no named speakers


async def test_g711_file_is_what_synthesize_encodes(app, stub, tmp_path):
    import numpy as np

    out = tmp_path / "hi.mulaw"
    code, _, err = await _say("--server", app.address, *_DETERMINISTIC, "--encoding", "mulaw", "--rate", "8000",
                              _TEXT, "-o", str(out), python_args=_WITHOUT_PYAUDIO)
    assert code == 0, err
    whole = await stub.Synthesize(pb.SynthesizeRequest(text=_TEXT, noise_scale=0, noise_w=0, sample_rate_hz=8000,
                                                       encoding=pb.AUDIO_ENCODING_MULAW), timeout=_TIMEOUT)
    assert out.read_bytes() == whole.audio
    assert np.frombuffer(out.read_bytes(), np.uint8).size == whole.num_samples
    out = tmp_path / "hi.alaw"  # the name says A-law
    code, _, err = await _say("--server", app.address, *_DETERMINISTIC, "--rate", "8000", _TEXT, "-o", str(out),
                              python_args=_WITHOUT_PYAUDIO)
    assert code == 0, err
    whole = await stub.Synthesize(pb.SynthesizeRequest(text=_TEXT, noise_scale=0, noise_w=0, sample_rate_hz=8000,
                                                       encoding=pb.AUDIO_ENCODING_ALAW), timeout=_TIMEOUT)
    assert out.read_bytes() == whole.audio


async def test_an_encoding_other_than_wav_needs_a_file_and_no_playback(app):
    code, _, err = await _say("--server", app.address, "--encoding", "flac", "--raw", _TEXT)
    assert code == 2 and "--encoding flac" in err


@pytest.mark.parametrize("name, magic", [("hi.flac", b"fLaC"), ("hi.ogg", b"OggS"), ("hi.opus", b"OggS")])
async def test_flac_and_ogg_files_named_so_open_with_their_true_length(app, stub, tmp_path, name, magic):
    import soundfile

    out = tmp_path / name  # no --encoding: the name says it
    code, _, err = await _say("--server", app.address, *_DETERMINISTIC, _TEXT, "-o", str(out),
                              python_args=_WITHOUT_PYAUDIO)
    assert code == 0, err
    assert out.read_bytes()[:4] == magic
    samples = int(err.split(": ")[1].split()[0])  # "wrote PATH: N samples (S s)"
    info = soundfile.info(str(out))
    assert info.frames == samples and info.samplerate == (22050 if magic == b"fLaC" else 24000)
    decoded, _ = soundfile.read(str(out), dtype="int16")
    assert decoded.size == samples
    if magic == b"fLaC":  # lossless: the server's PCM
        assert decoded.tobytes() == await _synthesize(stub)


async def test_an_encoding_that_contradicts_the_files_name_is_a_one_line_usage_error(tmp_path):
    code, _, err = await _say("--server", "127.0.0.1:1", "--encoding", "wav", _TEXT, "-o", str(tmp_path / "x.flac"))
    assert code == 2 and err.count("\n") == 1
    assert "--encoding wav contradicts -o" in err
    code, _, err = await _say("--server", "127.0.0.1:1", "--encoding", "flac", _TEXT, "-o", str(tmp_path / "x.opus"))
    assert code == 2 and "--encoding flac contradicts" in err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cut.wav", "cut.flac"])
async def test_ctrl_c_while_writing_leaves_a_valid_file_of_the_audio_so_far(app, tmp_path, name):
    import soundfile

    out = tmp_path / name
    text = "The lighthouse keeper climbed the stairs every night. " * 40
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.say", "--server", app.address, "--progress", "--chunk-ms", "200",
        "-o", str(out), text, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    first = await asyncio.wait_for(process.stderr.readline(), _TIMEOUT)  # a progress line: audio is in the file
    assert first.startswith(b"[")
    process.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(process.communicate(), _TIMEOUT)
    assert process.returncode == 130
    assert f"interrupted: call cancelled; {out} holds the audio up to here" in err.decode()
    assert "playback" not in err.decode() and "Traceback" not in err.decode()
    info = soundfile.info(str(out))
    assert 0 < info.frames < 22050 * 60  # some of the ~2 minutes
    assert soundfile.read(str(out), dtype="int16")[0].size == info.frames
    if name.endswith(".wav"):
        assert out.stat().st_size == 44 + 2 * info.frames  # the header holds the true length


async def test_an_unwritable_output_is_one_line_without_a_traceback(app):
    code, _, err = await _say("--server", app.address, _TEXT, "-o", "/nonexistent/dir/x.wav",
                              python_args=_WITHOUT_PYAUDIO)
    assert code == 1
    assert err == "speakstream-say: cannot write /nonexistent/dir/x.wav: No such file or directory\n"


async def test_raw_to_a_terminal_is_a_one_line_usage_error():
    import pty

    controller, terminal = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clients.say", "--server", "127.0.0.1:1", "--raw", _TEXT,
            stdout=terminal, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(process.communicate(), _TIMEOUT)
    finally:
        os.close(terminal)
        os.close(controller)
    assert process.returncode == 2
    assert err.decode().count("\n") == 1 and "--raw: standard output is a terminal" in err.decode()


async def test_the_server_address_comes_from_speakstream_address(app, tmp_path):
    out = tmp_path / "env.wav"
    env = dict(os.environ, SPEAKSTREAM_ADDRESS=app.address)
    code, _, err = await _say(_TEXT, "-o", str(out), env=env)  # no --server
    assert code == 0, err
    assert out.stat().st_size > 1000
    code, help_text, _ = await _say("--help", env=env)
    assert "$SPEAKSTREAM_ADDRESS" in help_text.decode()


async def test_list_voices_and_an_unknown_voice_points_at_it(app):
    code, out, err = await _say("--server", app.address, "--list-voices")
    assert code == 0, err
    assert out.decode().splitlines() == ["* en_US-joe-medium  en_US  22050 Hz  medium  1 speaker"]
    code, _, err = await _say("--server", app.address, "--voice", "nobody", _TEXT, "-o", "x.wav")
    assert code == 2 and err.count("\n") == 1
    assert "NOT_FOUND" in err and "speakstream-say --list-voices" in err


async def test_a_file_that_is_not_utf8_is_a_usage_error(tmp_path):
    text_file = tmp_path / "latin1.txt"
    text_file.write_bytes("Caf\u00e9 au lait.".encode("latin-1"))
    code, _, err = await _say("--server", "127.0.0.1:1", "--file", str(text_file), "-o", str(tmp_path / "x.wav"))
    assert code == 2 and err.count("\n") == 1
    assert "--file: not UTF-8 text (byte 0xe9 at offset 3)" in err


async def test_live_a_pause_after_a_sentence_keeps_the_sentence_silence(app, stub):
    """ "Hello there. " and a pause: the server's timer speaks it as a sentence, so the
    next one follows after sentence silence, as in the whole text."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.say", "--live", "--raw", "--stats-json", "--server", app.address,
        *_DETERMINISTIC, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    process.stdin.write(b"Hello there. ")
    await process.stdin.drain()
    # Audio before any more text: the server's timer has spoken the first sentence (the pause).
    first = await asyncio.wait_for(process.stdout.read(2), _TIMEOUT)
    process.stdin.write(b"How are you?")
    process.stdin.close()
    rest, err = await asyncio.wait_for(process.communicate(), _TIMEOUT)
    assert process.returncode == 0, err.decode()
    assert first + rest == await _stream_pcm(stub, _TEXT)  # with its silence between the sentences
    assert '"sentences": 2' in err.decode()


async def test_help_describes_long_texts_and_the_new_flags():
    code, out, _ = await _say("--help")
    assert code == 0
    text = out.decode()
    for phrase in ("long texts:", "--max-chars-per-call", "--list-voices", "--encoding", "a line per tenth",
                   "holds the audio up to there"):
        assert phrase in text, phrase


def test_progress_through_a_pipe_adds_a_line_every_30_seconds_while_a_book_moves_on():
    import io
    import types

    from clients.progress import Progress

    out, now = io.StringIO(), [0.0]
    progress = Progress(1000, out, clock=lambda: now[0])
    for n in range(40):  # 1% of the text every 10 s
        now[0] = 10.0 * n
        progress.update(types.SimpleNamespace(sample_offset=1000 * n, num_samples=1000, sentence_index=n,
                                              text_span=types.SimpleNamespace(start=0, end=10 * (n + 1)), final=False))
        progress.show()
    lines = out.getvalue().splitlines()
    # The first chunk, then every 30 s (3 chunks), and at 10%, 20%, 30%, 40%.
    assert [line.split("]")[1].split("%")[0].strip() for line in lines] == [
        "1", "4", "7", "10", "13", "16", "19", "20", "23", "26", "29", "30", "33", "36", "39", "40"]
