"""When each word and phoneme of a segment is heard, from the duration predictor's output.

A Piper voice's encoder says how many latent frames each phoneme id lasts
(server/graph.py finds that tensor); each frame is `hop` samples of audio, so
the durations place every id, hence every phoneme, exactly in the segment's
audio: they add up to its length. The ids are Piper's layout, ^ _ p1 _ p2 _
... $ (server/frontend.phoneme_ids): a phoneme owns its ids and the pad after
it; the start (^ _) goes to the first phoneme and the end ($) to the last,
so the first phoneme starts at the segment's first sample and the last ends
at its last. Spaces between words own their frames but are no phoneme of
any word.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from server.alignment import Word


class Timestamps(enum.Enum):
    """What timing a call asked for (speakstream.v1.Timestamps)."""

    NONE = 0
    WORDS = 1
    WORDS_AND_PHONEMES = 2


@dataclass(frozen=True)
class PhonemeTiming:
    """One phoneme and its samples [start, end)."""

    phoneme: str
    start: int
    end: int


@dataclass(frozen=True)
class WordTiming:
    """A word of the request text (code-point span) and its samples [start, end)."""

    span: tuple[int, int]
    start: int
    end: int
    phonemes: tuple[PhonemeTiming, ...] = ()

    def moved(self, offset: int, scale: float = 1.0) -> WordTiming:
        """The same timing `offset` samples later, then scaled to another rate (rounded)."""
        def at(sample: int) -> int:
            return round((sample + offset) * scale)

        return WordTiming(self.span, at(self.start), at(self.end),
                          tuple(PhonemeTiming(p.phoneme, at(p.start), at(p.end)) for p in self.phonemes))


def word_timings(phonemes: str, words: Sequence[Word], durations: np.ndarray, hop: int,
                 id_map: Mapping[str, Sequence[int]], with_phonemes: bool) -> tuple[WordTiming, ...]:
    """Timings of `words` in a segment's audio, in samples from its start.

    :param phonemes: the segment's phonemes (one character each), whose ids the model ran.
    :param durations: frames per id, as the encoder gave them.
    """
    frames = phoneme_frames(phonemes, durations, id_map)
    if frames is None:
        return ()
    timings = []
    for word in words:
        if not word.phonemes:
            continue
        sounds = word.phonemes[:max(1, word.sounds)]
        start, end = frames[sounds[0]][0] * hop, frames[sounds[-1]][1] * hop
        own = tuple(PhonemeTiming(phonemes[i], frames[i][0] * hop, frames[i][1] * hop)
                    for i in word.phonemes) if with_phonemes else ()
        timings.append(WordTiming(word.span, start, end, own))
    return tuple(timings)


def phoneme_frames(phonemes: str, durations: np.ndarray,
                   id_map: Mapping[str, Sequence[int]]) -> Optional[list[tuple[int, int]]]:
    """(first frame, end frame) of each phoneme; None when the durations do not fit the ids."""
    pad = len(id_map["_"])
    counts = [len(id_map[p]) + pad if p in id_map else 0 for p in phonemes]
    lead, tail = len(id_map["^"]) + pad, len(id_map["$"])
    if lead + sum(counts) + tail != durations.size:
        return None
    ends = np.cumsum(durations)
    spoken = [i for i, p in enumerate(phonemes) if p != " " and counts[i]]
    frames, position = [], lead
    for count in counts:
        frames.append((int(ends[position - 1]) if position else 0, int(ends[position + count - 1]) if count else
                       (int(ends[position - 1]) if position else 0)))
        position += count
    if spoken:
        frames[spoken[0]] = (0, frames[spoken[0]][1])
        frames[spoken[-1]] = (frames[spoken[-1]][0], int(ends[-1]))
    return frames
