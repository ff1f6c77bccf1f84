"""The Node.js client (clients/node) against the real server: its own test suite, and parity with speakstream-say."""

from __future__ import annotations

import json
import sys
import wave

from external_tools import NODE_DIR, REPO, command, node_modules, run

_TEXT = "The quick brown fox jumps over the lazy dog. It was not amused, and said so, twice."
_DETERMINISTIC = ("--noise-scale", "0", "--noise-w", "0")


def _wav_format(path) -> tuple[tuple[int, int, int], int, bytes]:
    with wave.open(str(path)) as wav:
        frames = wav.getnframes()
        return (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()), frames, wav.readframes(frames)


async def test_npm_test_passes_against_the_test_server(app):
    node_modules()
    result = await run([command("npm"), "test"], cwd=NODE_DIR, env={"SPEAKSTREAM_ADDRESS": app.address})
    assert result.code == 0, result.explain()
    # node's test runner closes with its counts; nothing may fail or be cancelled.
    assert "# fail 0" in result.out and "# cancelled 0" in result.out, result.explain()
    passed = int(result.out.split("# pass ")[1].split()[0])
    assert passed >= 10, result.explain()


async def test_node_and_python_clients_write_wavs_of_equal_length(app, tmp_path):
    node_modules()
    node_wav, python_wav = tmp_path / "node.wav", tmp_path / "python.wav"
    node = await run([command("node"), str(NODE_DIR / "say.js"), "--server", app.address, *_DETERMINISTIC,
                      "-o", str(node_wav), _TEXT])
    assert node.code == 0, node.explain()
    python = await run([sys.executable, "-m", "clients.say", "--server", app.address, *_DETERMINISTIC,
                        "-o", str(python_wav), _TEXT], cwd=REPO)
    assert python.code == 0, python.explain()
    node_format, node_frames, node_pcm = _wav_format(node_wav)
    python_format, python_frames, python_pcm = _wav_format(python_wav)
    assert node_format == python_format == (1, 2, 22050)
    assert node_frames == python_frames
    assert 3.0 < node_frames / 22050 < 9.0
    # The noise scales reached the server as zeros (not as "unset"): same settings, same audio.
    assert node_pcm == python_pcm


async def test_node_words_are_the_timestamps_speakstream_say_writes(app, tmp_path):
    node_modules()
    words_file = tmp_path / "words.json"
    node = await run([command("node"), str(NODE_DIR / "say.js"), "--server", app.address, *_DETERMINISTIC, "--words",
                      "-o", str(tmp_path / "node.wav"), _TEXT])
    assert node.code == 0, node.explain()
    python = await run([sys.executable, "-m", "clients.say", "--server", app.address, *_DETERMINISTIC,
                        "-o", str(tmp_path / "python.wav"), "--timestamps", str(words_file), _TEXT], cwd=REPO)
    assert python.code == 0, python.explain()
    expected = json.loads(words_file.read_text(encoding="utf-8"))
    printed = [line.split("\t") for line in node.out.splitlines()]
    assert [word for _, _, word in printed] == [w["word"] for w in expected]
    assert len(expected) == 17
    for (start, end, _), w in zip(printed, expected):  # seconds to 3 decimals
        assert abs(float(start) - w["start"]) <= 0.0005 + 1e-9 and abs(float(end) - w["end"]) <= 0.0005 + 1e-9
