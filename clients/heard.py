"""What a listener has heard so far, from the word timings a stream carries.

For voice agents: when the user interrupts, the agent should remember only
the words that were actually played, not the whole reply it asked for.
Feed every AudioChunk of a call (or of one live context) to `Transcript`
and ask it with the number of samples the sound card has played:

    transcript = Transcript(text)
    async for chunk in call:
        transcript.add(chunk)
        play(chunk.audio)
    ...  # the user barges in
    said = transcript.heard(player.frames_heard())

(clients.player.Player.frames_heard counts what the device has played, not
what it was given: its buffers hold ~20-130 ms more.)

Samples count from the start of the stream at its sample rate, as
AudioChunk.words does (docs/API.md, Timestamps). speakstream-say uses it
for --captions, --timestamps and what it prints as heard after Ctrl-C.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Word:
    """A word of the text, its code-point span and its samples [start, end)."""

    text: str
    start: int
    end: int
    span: tuple[int, int]


@dataclass
class Transcript:
    """The words of one text as their timings arrive, and which of them were heard."""

    text: str
    """The text the spans index: a request's text, or a live context's text pieces joined."""
    words: list[Word] = field(default_factory=list)
    sample_rate: int = 0
    """The rate the samples count at: the stream's, from its chunks."""
    _starts: list[int] = field(default_factory=list)

    def add(self, chunk, text_offset: int = 0, sample_offset: int = 0) -> list[Word]:
        """Take the word timings of one AudioChunk (a speakstream.v1.AudioChunk); returns them.

        A stream that is one part of a longer text and audio (consecutive
        calls) gives where its text starts in `text` and how many samples
        were played before its first one.
        """
        added = []
        if chunk.sample_rate_hz:
            self.sample_rate = chunk.sample_rate_hz
        for timing in chunk.words:
            span = (text_offset + timing.text_span.start, text_offset + timing.text_span.end)
            word = Word(self.text[span[0]:span[1]], sample_offset + timing.start_sample,
                        sample_offset + timing.end_sample, span)
            self.words.append(word)
            self._starts.append(word.start)
            added.append(word)
        return added

    def heard_words(self, played_samples: int, whole: bool = False) -> list[Word]:
        """The words whose first sample has been played (with `whole`: whose last sample too)."""
        if whole:
            return [w for w in self.words if w.end <= played_samples]
        return self.words[:bisect.bisect_right(self._starts, played_samples - 1)]

    def heard(self, played_samples: int, whole: bool = False) -> str:
        """The text heard so far: from the start of the text to the end of the last word heard."""
        words = self.heard_words(played_samples, whole)
        return self.text[:words[-1].span[1]] if words else ""

    def word_at(self, played_samples: int) -> Optional[Word]:
        """The word being spoken at `played_samples` (None in a pause)."""
        index = bisect.bisect_right(self._starts, played_samples) - 1
        if index >= 0 and played_samples < self.words[index].end:
            return self.words[index]
        return None
