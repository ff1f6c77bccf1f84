"""A progress bar for long input: how much of the text has been spoken.

On a terminal it is one line redrawn in place; through a pipe or into a log
it is a plain line at every tenth of the text (and at least every
_PLAIN_INTERVAL_S while it moves, for a book), so nothing is drawn over.
"""

from __future__ import annotations

import bisect
import time
from typing import Optional, TextIO

_WIDTH = 28
_MIN_INTERVAL_S = 0.1  # redraws at most this often (the last one always draws)
_PLAIN_INTERVAL_S = 30.0  # a plain line at least this often while the text moves on


class Progress:
    """Draws ``[#####.....]  42%  3 sentences done`` on `stream`: redrawn in
    place on a terminal, else one line per tenth of the text.

    Each AudioChunk says which span of the text it speaks and where its
    samples sit in the stream. The bar shows the share of the text (in code
    points) and the sentences whose audio lies before a position: the samples
    received (writing a file) or the samples played (show(position)).

    :param text_chars: length of the request text in code points.
    """

    def __init__(self, text_chars: int, stream: TextIO, clock=time.monotonic):
        self._text_chars = max(1, text_chars)
        self._stream = stream
        self._clock = clock
        self._tty = stream.isatty()
        self._tenth: Optional[int] = None  # the tenth of the text the last plain line showed
        self._drawn_at: Optional[float] = None
        self._ends: list[int] = []  # sample offset where each chunk ends
        self._chunks: list[tuple[int, int]] = []  # (sentence_index, text_span.end)
        self._final = False
        self._shown = False
        self._last_line = ""

    def update(self, chunk) -> None:
        """Record one AudioChunk (show() draws)."""
        self._ends.append(chunk.sample_offset + chunk.num_samples)
        self._chunks.append((chunk.sentence_index, chunk.text_span.end))
        self._final = self._final or chunk.final

    def show(self, position: Optional[int] = None, force: bool = False) -> None:
        """Redraw for `position` samples spoken (default: all received)."""
        if not self._tty:
            self._show_plain(position, force)
            return
        now = self._clock()
        if force or self._drawn_at is None or now - self._drawn_at >= _MIN_INTERVAL_S:
            line = self.line(position)
            self._drawn_at = now
            if line != self._last_line:
                self._stream.write("\r" + line)
                self._stream.flush()
                self._last_line = line
                self._shown = True

    def _show_plain(self, position: Optional[int], force: bool) -> None:
        """A line when a new tenth of the text is done (the first at the first chunk),
        when _PLAIN_INTERVAL_S have passed, or when forced; never the same line twice."""
        now = self._clock()
        tenth = 10 * self._done_at(position)[0] // self._text_chars
        due = self._drawn_at is None or now - self._drawn_at >= _PLAIN_INTERVAL_S
        if tenth != self._tenth or due or force:
            line = self.line(position)
            if line != self._last_line:
                self._stream.write(line + "\n")
                self._stream.flush()
                self._last_line = line
                self._drawn_at = now
            self._tenth = tenth

    def close(self, redraw: bool = True) -> None:
        """End the line (after drawing the finished state), so later messages start afresh."""
        if redraw and self._ends:
            self.show(force=True)
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()

    def line(self, position: Optional[int] = None) -> str:
        """The bar for `position` samples spoken (default: all received)."""
        chars, sentences = self._done_at(position)
        share = min(1.0, chars / self._text_chars)
        filled = round(share * _WIDTH)
        plural = "" if sentences == 1 else "s"
        return (f"[{'#' * filled}{'.' * (_WIDTH - filled)}] {share:4.0%}  "
                f"{sentences} sentence{plural} done")

    def _done_at(self, position: Optional[int]) -> tuple[int, int]:
        """(code points spoken, sentences done) once `position` samples are out."""
        if not self._ends:
            return 0, 0
        done = len(self._ends) if position is None else bisect.bisect_right(self._ends, position)
        chars = max((end for _, end in self._chunks[:done]), default=0)
        if done < len(self._chunks):
            return chars, self._chunks[done][0]  # the sentence under way is not done
        last_sentence = self._chunks[-1][0]
        return chars, last_sentence + 1 if self._final else last_sentence
