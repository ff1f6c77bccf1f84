"""Incremental sentence segmentation for SynthesizeLive: text arrives in pieces.

`LiveSegmenter` is pure and synchronous. It holds the concatenated input
(normalized with server.frontend.normalize, which keeps every offset) and
reports sentence spans of it once they are certainly complete: the boundary
is server.frontend.split_sentences's own rule (the same regular expression,
the same espeak-ng decision), accepted only once the first character after
the boundary's whitespace is known. So "Dr. " + "Smith" is decided on the
"S" exactly as "Dr. Smith" would be, and "3." + "50" never splits (no
whitespace). Like espeak-ng and split_sentences, "Dr. Smith" does end a
sentence after "Dr." (an uppercase word follows); "Dr. smith" does not.
Fed one character at a time, it yields the same spans as
split_sentences on the whole text, which is what makes live input speak the
same phoneme ids as SynthesizeStream.

Splits on sentences only; a clause or word-level cut happens only when it is
forced: by flush(), by the max_pending_chars limit (in feed) or by the
max_pending_ms timer (force_split). A forced cut starts a new region: the
text after it is segmented as if it began there.
"""

from __future__ import annotations

import time
from typing import Optional

from server.frontend import _SENTENCE_END, _is_sentence_end, normalize

Span = tuple[int, int]

DEFAULT_MAX_PENDING_MS = 500
DEFAULT_MAX_PENDING_CHARS = 200


class LiveSegmenter:
    """Cuts a growing text into sentence spans (code-point offsets of the whole input)."""

    def __init__(self, max_pending_ms: int = DEFAULT_MAX_PENDING_MS,
                 max_pending_chars: int = DEFAULT_MAX_PENDING_CHARS):
        self.max_pending_s = max_pending_ms / 1000.0
        self.max_pending_chars = max_pending_chars
        self._text = ""
        self._start = 0  # offset of the first pending character
        self._scan = 0  # where the sentence-end search resumes (as finditer would)
        self.pending_since: Optional[float] = None
        """time.monotonic() of the first pending non-blank text, None when nothing is pending."""

    @property
    def text(self) -> str:
        """The concatenated input so far, normalized (same length as what was sent)."""
        return self._text

    @property
    def offset(self) -> int:
        """Code points received so far: the offset the next piece starts at."""
        return len(self._text)

    @property
    def pending(self) -> str:
        """Text received but not yet given out in a span."""
        return self._text[self._start:]

    def feed(self, text: str, now: Optional[float] = None) -> list[Span]:
        """Append `text`; return the spans that are now certainly complete, in order."""
        now = time.monotonic() if now is None else now
        self._text += normalize(text)
        spans = self._complete_sentences()
        if len(self._text) - self._start > self.max_pending_chars > 0:
            spans.extend(self._cut_long())
        if spans:
            self.pending_since = now if self.pending.strip() else None
        elif self.pending_since is None and self.pending.strip():
            self.pending_since = now
        return spans

    def flush(self) -> Optional[Span]:
        """Everything pending as one span (None if it is blank); a new region starts."""
        span = self._cut(len(self._text))
        return span

    def clear(self) -> None:
        """Drop the pending text; its offsets stay counted, a new region starts."""
        self._cut(len(self._text))

    def force_split(self, now: Optional[float] = None) -> Optional[Span]:
        """For the timer: once pending text has waited max_pending_ms, cut it at its
        last word boundary. None when nothing is due or no word is complete yet."""
        now = time.monotonic() if now is None else now
        if self.pending_since is None or now - self.pending_since < self.max_pending_s:
            return None
        cut = self._last_word_boundary()
        if cut is None:
            return None
        span = self._cut(cut)
        if self.pending.strip():
            self.pending_since = now
        return span

    def due_at(self) -> Optional[float]:
        """time.monotonic() at which force_split may cut, None when nothing is pending."""
        return None if self.pending_since is None else self.pending_since + self.max_pending_s

    def _complete_sentences(self) -> list[Span]:
        """split_sentences's loop, resumable, taking only matches that can no longer change."""
        spans, text = [], self._text
        while True:
            match = _SENTENCE_END.search(text, self._scan)
            # Final once the character after the whitespace is known; until then
            # more whitespace or the deciding next character may still come.
            if match is None or (match.group("next") is None and match.end() >= len(text)):
                return spans
            self._scan = match.end()
            if match.group("ws") is not None and not _is_sentence_end(match):
                continue
            end = match.end("ws") if match.group("ws") is not None else match.end()
            if text[self._start:end].strip():
                spans.append((self._start, end))
            self._start = end

    def _cut_long(self) -> list[Span]:
        """Pending text over max_pending_chars: cut at the last word boundary within
        the limit (at the limit when there is none)."""
        spans = []
        while len(self._text) - self._start > self.max_pending_chars:
            limit = self._start + self.max_pending_chars
            cut = self._last_word_boundary(limit) or limit
            span = self._cut(cut)
            if span is not None:
                spans.append(span)
        return spans

    def _last_word_boundary(self, limit: Optional[int] = None) -> Optional[int]:
        """Offset just after the last whitespace of pending text before `limit` that
        follows a word; None when no word of it is complete."""
        limit = len(self._text) if limit is None else limit
        for i in range(limit, self._start, -1):
            if self._text[i - 1].isspace() and self._text[self._start:i].strip():
                return i
        return None

    def _cut(self, cut: int) -> Optional[Span]:
        """Give out pending text up to `cut` (None if blank); segmentation restarts there."""
        start, self._start, self._scan = self._start, cut, cut
        if not self.pending.strip():
            self.pending_since = None
        return (start, cut) if self._text[start:cut].strip() else None
