"""Voices split at their decoder (server/graph.py, server/inference.py): found by structure,
windows that join into the whole decode, and voices that cannot be split running whole."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from voicegen import FRAMES_PER_ID, SPEAKERS, VITS_HOP, write_vits_voice, write_voice

from bench.texts import TEXTS
from server import graph
from server.config import Settings
from server.frontend import Frontend
from server.inference import Scales
from server.pool import VoiceSessions
from server.voices import Voice, bundled_voice

_DETERMINISTIC = Scales(noise_scale=0.0, length_scale=1.0, noise_w=0.0)


def _voice(path) -> Voice:
    from server.voices import VoiceRegistry

    return next(v for v in VoiceRegistry.load(path.parent, "") if v.name == path.stem)


def _snr_db(audio: np.ndarray, reference: np.ndarray) -> float:
    noise = np.sum((audio.astype(np.float64) - reference) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise)


@pytest.fixture(scope="module")
def bundled_sessions():
    """The bundled voice split (windows as the server decodes them) and whole."""
    voice = bundled_voice()
    split = VoiceSessions(voice, Settings(port=0, intra_op_threads=1))
    whole = VoiceSessions(voice, Settings(port=0, intra_op_threads=1, decoder_windows=False))
    return voice, split, whole


def test_the_bundled_voice_is_cut_at_its_decoders_first_convolution():
    model = onnx.load(str(bundled_voice().model_path))
    latent, speaker = graph.find_decoder_input(model.graph)
    consumers = [n for n in model.graph.node if latent in n.input]
    # z feeds the decoder's first convolution (and nothing else), and that conv leads to the upsampling.
    assert [n.op_type for n in consumers] == ["Conv"]
    assert speaker is None  # one speaker: nothing else enters the decoder
    assert graph.find_durations(model.graph) is not None


def test_windowed_audio_matches_the_whole_graph_on_every_bench_text(bundled_sessions):
    voice, split, whole = bundled_sessions
    assert split.split and not whole.split and split.hop == 256
    frontend = Frontend(100, 40)
    for name, text in TEXTS.items():
        for segment in frontend.segments(text, voice.config):
            reference = whole.run(segment.ids, _DETERMINISTIC, 0)
            encoded = split.encode(segment.ids, _DETERMINISTIC, 0)
            bounds = [0, 16, 48, 112, encoded.frames]  # the server's first windows: 16, 32, 64, then the rest
            windows = [split.decode(encoded, a, b) for a, b in zip(bounds, bounds[1:]) if a < b]
            joined = np.concatenate(windows)
            assert joined.size == reference.size == encoded.frames * split.hop
            assert _snr_db(joined, reference) >= 45, (name, segment.phonemes)


def test_durations_account_for_every_sample(bundled_sessions):
    voice, split, whole = bundled_sessions
    assert split.timestamps and whole.timestamps
    segment = next(Frontend(100, 40).segments("Hello there, how can I help you today?", voice.config))
    for speed in (0.5, 1.0, 2.0):
        scales = Scales(0.0, 1.0 / speed, 0.0)
        encoded = split.encode(segment.ids, scales, 0)
        assert encoded.durations.shape == (len(segment.ids),)
        assert int(encoded.durations.sum()) == encoded.frames
        assert whole.run(segment.ids, scales, 0).size == encoded.frames * split.hop


def test_a_multi_speaker_vits_voice_carries_the_speaker_into_its_decoder(tmp_path):
    voice = _voice(write_vits_voice(tmp_path, "tiny_vits", SPEAKERS))
    split = VoiceSessions(voice, Settings(port=0, window_context_frames=2))
    whole = VoiceSessions(voice, Settings(port=0, decoder_windows=False))
    assert split.split and split.hop == VITS_HOP and split.timestamps
    ids = list(range(3, 23))
    audio = {}
    for speaker in SPEAKERS.values():
        encoded = split.encode(ids, _DETERMINISTIC, speaker)
        assert encoded.frames == FRAMES_PER_ID * len(ids)
        windows = [split.decode(encoded, a, min(a + 7, encoded.frames)) for a in range(0, encoded.frames, 7)]
        audio[speaker] = np.concatenate(windows)
        # The decoder's receptive field is one frame each side: two frames of context make it exact.
        np.testing.assert_array_equal(audio[speaker], whole.run(ids, _DETERMINISTIC, speaker))
    assert not np.array_equal(audio[0], audio[1])


def test_a_voice_without_a_decoder_runs_whole_and_says_why(tmp_path, caplog):
    voice = _voice(write_voice(tmp_path, "sine"))
    loaded = graph.load(str(voice.model_path))
    assert isinstance(loaded, graph.WholeGraph) and "ConvTranspose" in loaded.reason
    with caplog.at_level("INFO", logger="server.pool"):
        sessions = VoiceSessions(voice, Settings(port=0))
    assert not sessions.split and not sessions.timestamps
    assert any("runs whole" in r.getMessage() and "ConvTranspose" in r.getMessage() for r in caplog.records)
    assert any("timestamps unavailable" in r.getMessage() for r in caplog.records)
    assert sessions.run([1, 0, 5, 0, 2], _DETERMINISTIC, 0).size == 5 * 64


def test_split_graphs_are_made_once_and_read_back_from_the_cache(tmp_path, monkeypatch):
    path = write_vits_voice(tmp_path, "cached_vits", SPEAKERS)
    first = graph.load(str(path), cache_dir=tmp_path / "cache")
    folders = list((tmp_path / "cache").iterdir())
    assert len(folders) == 1 and {p.name for p in folders[0].iterdir()} >= {"encoder.onnx", "decoder.onnx"}

    def no_parsing(*args, **kwargs):
        raise AssertionError("the model was parsed again")

    monkeypatch.setattr(onnx, "load", no_parsing)
    assert graph.load(str(path), cache_dir=tmp_path / "cache") == first


def test_an_unwritable_graph_cache_falls_back_to_a_temporary_folder(tmp_path, caplog):
    path = write_vits_voice(tmp_path, "tmp_vits")
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache folder should be")
    with caplog.at_level("WARNING", logger="server.graph"):
        loaded = graph.load(str(path), cache_dir=blocked)
    assert isinstance(loaded, graph.SplitGraph) and not loaded.encoder.startswith(str(tmp_path))
    assert any("cannot write the graph cache" in r.getMessage() for r in caplog.records)
