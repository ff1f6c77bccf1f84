"""One loaded copy of a voice's model: encode a segment once, decode its audio window by window.

A split voice (server/graph.py) has two ONNX Runtime sessions: the encoder
turns a segment's phoneme ids into the latent z (frames of `hop` samples)
and the per-id durations; the decoder turns any window of z into its audio.
A window is decoded with `context` frames of z on each side, then trimmed,
so the joined windows match a decode of the whole segment (measured: 8
frames give 55-65 dB SNR, 12 are exact; docs/ARCHITECTURE.md). A voice that
could not be split runs whole: encode() returns the segment's audio at once.

Every method blocks while ONNX Runtime runs: call them from worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import onnxruntime as ort

from server.graph import SplitGraph, WholeGraph


@dataclass(frozen=True)
class Scales:
    """The three VITS scales, as the model takes them."""

    noise_scale: float
    length_scale: float
    noise_w: float

    def as_array(self) -> np.ndarray:
        return np.array([self.noise_scale, self.length_scale, self.noise_w], dtype=np.float32)


NEUTRAL = Scales(noise_scale=0.0, length_scale=1.0, noise_w=0.0)


@dataclass(frozen=True)
class Encoded:
    """A segment after the encoder: its latent frames, or, for a whole-graph voice, its audio."""

    frames: int
    """Latent frames (audio samples = frames x hop)."""
    durations: Optional[np.ndarray]
    """Frames per phoneme id (int64), summing to `frames`; None when the voice has none."""
    latent: Optional[np.ndarray] = None
    """z, [1, channels, frames] (split voices)."""
    speaker: Optional[np.ndarray] = None
    """The decoder's speaker conditioning (multi-speaker split voices)."""
    audio: Optional[np.ndarray] = None
    """The whole segment's audio (voices that run whole)."""


class VoiceModel:
    """The sessions of one copy of a voice: encoder and decoder, or the whole graph."""

    def __init__(self, graph: SplitGraph | WholeGraph, make_session, context_frames: int):
        """:param make_session: a graph's file -> ort.InferenceSession with the server's providers and options.
        :param context_frames: frames of z decoded on each side of a window and trimmed off.
        """
        self.split = isinstance(graph, SplitGraph)
        self.context = context_frames
        self._durations = graph.durations
        if isinstance(graph, SplitGraph):
            self.encoder = make_session(graph.encoder)
            self.decoder = make_session(graph.decoder)
            self._latent, self._speaker = graph.latent, graph.speaker
            self._encoder_outputs = [graph.latent, *([graph.durations] if graph.durations else []),
                                     *([graph.speaker] if graph.speaker else [])]
        else:
            self.encoder = make_session(graph.model)
            self.decoder = None
            self._encoder_outputs = [self.encoder.get_outputs()[0].name,
                                     *([graph.durations] if graph.durations else [])]
        self._has_sid = "sid" in {i.name for i in self.encoder.get_inputs()}
        self.provider = self.encoder.get_providers()[0]

    def encode(self, ids: Sequence[int], scales: Scales, speaker_id: int,
               run_options: Optional[ort.RunOptions] = None) -> Encoded:
        """Run the encoder (or the whole graph) on one segment's ids."""
        results = self.encoder.run(self._encoder_outputs, self._feeds(ids, scales, speaker_id), run_options)
        first, rest = results[0], results[1:]
        durations = _frames(rest.pop(0)) if self._durations else None
        if not self.split:
            audio = np.ascontiguousarray(first.reshape(-1), dtype=np.float32)
            frames = int(durations.sum()) if durations is not None else 0
            return Encoded(frames=frames, durations=durations, audio=audio)
        return Encoded(frames=first.shape[2], durations=durations, latent=first,
                       speaker=rest[0] if rest else None)

    def decode(self, encoded: Encoded, start: int, stop: int, hop: int,
               run_options: Optional[ort.RunOptions] = None) -> np.ndarray:
        """Audio of latent frames [start, stop), decoded with context on each side (float32)."""
        low, high = max(0, start - self.context), min(encoded.frames, stop + self.context)
        audio = self._decode(encoded, low, high, run_options)
        return np.ascontiguousarray(audio[(start - low) * hop:(stop - low) * hop], dtype=np.float32)

    def decode_all(self, encoded: Encoded) -> np.ndarray:
        """Audio of every frame of `encoded` in one run (the reference windows are measured against)."""
        return np.ascontiguousarray(self._decode(encoded, 0, encoded.frames, None), dtype=np.float32)

    def _decode(self, encoded: Encoded, low: int, high: int, run_options) -> np.ndarray:
        assert encoded.latent is not None  # a split voice's encoder always gives the latent
        feeds = {self._latent: np.ascontiguousarray(encoded.latent[:, :, low:high])}
        if self._speaker and encoded.speaker is not None:
            feeds[self._speaker] = encoded.speaker
        return self.decoder.run(None, feeds, run_options)[0].reshape(-1)

    def _feeds(self, ids: Sequence[int], scales: Scales, speaker_id: int) -> dict:
        feeds = {
            "input": np.asarray(ids, dtype=np.int64)[np.newaxis, :],
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": scales.as_array(),
        }
        if self._has_sid:
            feeds["sid"] = np.array([speaker_id], dtype=np.int64)
        return feeds


def _frames(durations: np.ndarray) -> np.ndarray:
    """The duration tensor ([1, 1, ids] of whole floats) as int64 frames per id."""
    return np.rint(durations.reshape(-1)).astype(np.int64)
