"""Audio pieces to what a client receives: resampled, split by chunk_ms, encoded, numbered.

Door-neutral: the gRPC servicer turns `OutputChunk`s into AudioChunk messages,
other doors into their own frames. Each call owns one `ChunkWriter`, whose
resampler and encoder carry their state from one chunk to the next (no
clicks at seams, one valid file across a stream's chunks).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Iterable

import numpy as np

from server.encoding import OFF_LOOP_ENCODINGS, encode_whole, stream_encoder
from server.engine import AudioPiece
from server.options import SynthesisOptions
from server.resample import StreamResampler, resample
from server.timings import WordTiming


@dataclass(frozen=True)
class OutputChunk:
    """One chunk of a stream, as every door sends it."""

    audio: bytes
    """Encoded as the call asked."""
    sequence: int
    sample_offset: int
    """Samples (at the output rate) sent before this chunk."""
    num_samples: int
    span: tuple[int, int]
    sentence_index: int
    final: bool
    words: tuple[WordTiming, ...] = ()
    """The words whose first sample is in this chunk, in samples from the stream's start."""
    context_id: str = ""
    context_end: bool = False
    ignored_tags: tuple[str, ...] = ()
    """SSML tags and attributes read since the last chunk and not acted on (server/calls.py)."""


class ChunkWriter:
    """Turns one call's audio pieces into OutputChunks with running offsets.

    Word timings come with a piece relative to its first sample at the
    voice's rate; they are placed in the stream (the samples of every piece
    before), scaled to the output rate, and sent with the chunk their first
    sample falls in, which after resampling may be a later chunk than their
    piece's (the resampler holds back a few samples until more come).
    """

    def __init__(self, options: SynthesisOptions):
        self._options = options
        self._sequence = 0
        self._offset = 0
        self._voice_samples = 0  # samples of every piece so far, at the voice's rate
        self._scale = options.client_rate / options.sample_rate
        self._words: deque[WordTiming] = deque()
        rate = options.client_rate
        self._max_samples = options.chunk_ms * rate // 1000 if options.chunk_ms else 0
        self._resampler = StreamResampler(options.sample_rate, rate)
        self._encoder = stream_encoder(options.encoding, rate)
        self._off_loop = options.encoding in OFF_LOOP_ENCODINGS

    async def chunks(self, piece: AudioPiece) -> AsyncIterator[OutputChunk]:
        """One or more chunks for `piece` (split by chunk_ms); the final piece flushes the encoder."""
        self._words.extend(w.moved(self._voice_samples, self._scale) for w in piece.words)
        self._voice_samples += piece.audio.size
        if self._off_loop:  # the pieces of one call still encode one after the other, in order
            encoded = await asyncio.get_running_loop().run_in_executor(None, self._encode, piece)
        else:
            encoded = self._encode(piece)
        for num_samples, data, final in encoded:
            everything = final or piece.context_end
            yield OutputChunk(audio=data, sequence=self._sequence, sample_offset=self._offset,
                              num_samples=num_samples, span=piece.span,
                              sentence_index=piece.sentence_index, final=final,
                              words=self._words_before(self._offset + num_samples, everything),
                              context_id=piece.context_id, context_end=piece.context_end)
            self._sequence += 1
            self._offset += num_samples

    def _words_before(self, end: int, everything: bool) -> tuple[WordTiming, ...]:
        """The pending words that start before sample `end` (all of them at the end)."""
        out = []
        while self._words and (everything or self._words[0].start < end):
            out.append(self._words.popleft())
        return tuple(out)

    def _encode(self, piece: AudioPiece) -> list[tuple[int, bytes, bool]]:
        """(samples, bytes, final) of each chunk of `piece`: resampled, split by chunk_ms, encoded."""
        samples = self._resampler.process(piece.audio, last=piece.final)
        step = self._max_samples or max(samples.size, 1)
        starts = range(0, max(samples.size, 1), step)
        out = []
        for i, start in enumerate(starts):
            audio = samples[start:start + step]
            final = piece.final and i == len(starts) - 1
            data = self._encoder.encode(audio)
            if final:
                data += self._encoder.finish()
            out.append((audio.size, data, final))
        return out


def stream_words(pieces: Iterable[AudioPiece], options: SynthesisOptions) -> list[WordTiming]:
    """Every word timing of the pieces, in samples from the first, at the output rate."""
    words: list[WordTiming] = []
    offset, scale = 0, options.client_rate / options.sample_rate
    for piece in pieces:
        words.extend(w.moved(offset, scale) for w in piece.words)
        offset += piece.audio.size
    return words


def encode_pieces(pieces: list[AudioPiece], options: SynthesisOptions) -> tuple[np.ndarray, bytes]:
    """The whole audio of a call at the client's rate, and its encoding (CPU work: run it off the loop)."""
    audio = resample(np.concatenate([p.audio for p in pieces]), options.sample_rate, options.client_rate)
    return audio, encode_whole(audio, options.encoding, options.client_rate)
