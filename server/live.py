"""Incremental sentence segmentation for SynthesizeLive: text arrives in pieces.

`LiveSegmenter` is pure and synchronous. It holds the concatenated input
(normalized with server.frontend.normalize, which keeps every offset) and
reports sentence spans of it once they are certainly complete: the boundary
is server.frontend.split_sentences's own rule (the same regular expression,
the same decision, abbreviations included), accepted only once the first
character after the boundary's whitespace is known. So "Dr. " + "Smith" is
decided on the "S" exactly as "Dr. Smith" would be (a title before a name:
not an end), and "3." + "50" never splits (no whitespace). A forced cut
never falls right after such an abbreviation either ("Dr. " alone is not
spoken while the name is still coming). Fed one character at a time, it
yields the same spans as split_sentences on the whole text, which is what
makes live input speak the same phoneme ids as SynthesizeStream.

Splits on sentences only; a clause or word-level cut happens only when it is
forced: by flush(), by the max_pending_chars limit (in feed) or by the
max_pending_ms timer (force_split). A forced cut starts a new region: the
text after it is segmented as if it began there. A timer or length cut is not
a sentence end (is_forced): the call speaks on without sentence silence, in
the same sentence. Except a timer cut where split_sentences would end a
sentence but for the unknown next character ("Hello there. " and a pause;
not an ellipsis, not "Dr. ", which waits as before): that is a sentence end,
so silence follows and the next text starts a new sentence. The timer waits
while audio sent earlier is still playing (force_split's playing_until): a
cut is forced only when the listener would otherwise soon hear nothing.

normalize() decides some characters by their neighbours (a format character
inside a word is dropped, elsewhere it is a space), so the last characters
received are normalized again, with what came before them, each time a
piece arrives (a bounded tail: a run of over _NORMALIZE_CONTEXT invisible
characters may be decided differently than in the whole text).
"""

from __future__ import annotations

import time
from typing import Optional

from server.frontend import _SENTENCE_END, ends_with_abbreviation, is_sentence_end, normalize

Span = tuple[int, int]

DEFAULT_MAX_PENDING_MS = 500
DEFAULT_MAX_PENDING_CHARS = 200
MAX_PENDING_MS_RANGE = (50, 10_000)
# At least a few words per forced cut: 1 would make every character an inference.
MAX_PENDING_CHARS_RANGE = (20, 10_000)
_NORMALIZE_CONTEXT = 64


class LiveSegmenter:
    """Cuts a growing text into sentence spans (code-point offsets of the whole input).

    Fed one character at a time, with no timer or length cut, it yields
    split_sentences's spans of the whole text; a timer cut after ". " + a
    pause is a sentence end too (see the module's docstring).
    """

    def __init__(self, max_pending_ms: int = DEFAULT_MAX_PENDING_MS,
                 max_pending_chars: int = DEFAULT_MAX_PENDING_CHARS):
        self.max_pending_s = max_pending_ms / 1000.0
        self.max_pending_chars = max_pending_chars
        self._raw = ""  # as received
        self._text = ""  # normalized; what was given out in spans never changes
        self._forced: set[int] = set()  # ends of spans cut by the timer or the length
        self._start = 0  # offset of the first pending character
        self._scan = 0  # where the sentence-end search resumes (as finditer would)
        self._uncuttable = False  # the timer was due but no boundary: wait for more text
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
        self._normalize_with(text)
        self._uncuttable = False
        spans = self._complete_sentences()
        if len(self._text) - self._start > self.max_pending_chars > 0:
            spans.extend(self._cut_long())
        if spans:
            self.pending_since = now if self.pending.strip() else None
        elif self.pending_since is None and self.pending.strip():
            self.pending_since = now
        return spans

    def is_forced(self, span: Span) -> bool:
        """Whether `span` was cut by the timer or the length limit (mid-sentence)."""
        return span[1] in self._forced

    def _normalize_with(self, text: str) -> None:
        """Append `text`, normalizing it and the tail before it again (never what
        was given out), with enough context before them to decide their first
        characters (the word before a format character, a run of combining marks)."""
        redo = max(self._start, len(self._raw) - _NORMALIZE_CONTEXT)
        self._raw += text
        context = max(0, redo - _NORMALIZE_CONTEXT)
        self._text = self._text[:redo] + normalize(self._raw[context:])[redo - context:]

    def flush(self) -> Optional[Span]:
        """Everything pending as one span (None if it is blank); a new region starts."""
        span = self._cut(len(self._text))
        return span

    def cut(self, sentence: bool) -> Optional[Span]:
        """Everything pending as one span, where markup ends one (server/document.py): a sentence
        end when `sentence` (`</s>`) or when the pending text ends like one ("Hello." before a
        break); otherwise a cut like the timer's (is_forced: no silence, the sentence goes on)."""
        end = len(self._text)
        ends = sentence or self._ends_like_sentence()
        span = self._cut(end)
        if span is not None and not ends:
            self._forced.add(end)
        return span

    def _ends_like_sentence(self) -> bool:
        """Whether pending text ends with a sentence end, were whitespace and more text to follow."""
        text = self._text if self._text[-1:].isspace() else self._text + " "
        match = _SENTENCE_END.search(text, self._scan)
        return (match is not None and match.end() == len(text)
                and (match.group("ws") is None or is_sentence_end(match, self._start)))

    def clear(self) -> None:
        """Drop the pending text; its offsets stay counted, a new region starts."""
        self._cut(len(self._text))

    def force_split(self, now: Optional[float] = None,
                    playing_until: Optional[float] = None) -> Optional[Span]:
        """For the timer: once due (see due_at), cut pending text at its last word
        boundary. None when nothing is due or no word is complete yet; in the
        latter case due_at is None until more text comes (nothing to wait for)."""
        now = time.monotonic() if now is None else now
        due = self.due_at(playing_until)
        if due is None or now < due:
            return None
        cut = self._last_word_boundary()
        if cut is None:
            self._uncuttable = True
            return None
        ends_sentence = self._sentence_end_but_next(cut)
        span = self._cut(cut)
        if not ends_sentence:
            self._forced.add(cut)
        if self.pending.strip():
            self.pending_since = now
        return span

    def _sentence_end_but_next(self, cut: int) -> bool:
        """Whether pending text ends at `cut` with a sentence end that only waits for
        the next character ("Hello there. " + a pause): marks and whitespace
        running to the end of the text, not an ellipsis (nor an abbreviation,
        which _last_word_boundary never cuts after), or a blank line."""
        match = _SENTENCE_END.search(self._text, self._scan)
        if match is None or match.end() != cut or cut != len(self._text):
            return False
        return match.group("ws") is None or is_sentence_end(match, self._start)

    def due_at(self, playing_until: Optional[float] = None) -> Optional[float]:
        """time.monotonic() at which force_split may cut, None when nothing is pending:
        max_pending_ms after the first pending character, and no sooner than
        max_pending_ms before `playing_until` (when audio sent so far runs out);
        None too after force_split found nothing to cut, until the next feed."""
        if self.pending_since is None or self._uncuttable:
            return None
        due = self.pending_since + self.max_pending_s
        return due if playing_until is None else max(due, playing_until - self.max_pending_s)

    def _complete_sentences(self) -> list[Span]:
        """split_sentences's loop, resumable, taking only matches that can no longer change."""
        spans: list[Span] = []
        text = self._text
        while True:
            match = _SENTENCE_END.search(text, self._scan)
            # Final once the character after the whitespace is known; until then
            # more whitespace or the deciding next character may still come.
            if match is None or (match.group("next") is None and match.end() >= len(text)):
                return spans
            self._scan = match.end()
            if match.group("ws") is not None and not is_sentence_end(match, self._start):
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
            self._forced.add(cut)
            if span is not None:
                spans.append(span)
        return spans

    def _last_word_boundary(self, limit: Optional[int] = None) -> Optional[int]:
        """Offset just after the last whitespace of pending text before `limit` that
        follows a word other than an abbreviation ("Dr. " waits for its name);
        None when there is none."""
        limit = len(self._text) if limit is None else limit
        for i in range(limit, self._start, -1):
            if (self._text[i - 1].isspace() and self._text[self._start:i].strip()
                    and not ends_with_abbreviation(self._text, i, self._start)):
                return i
        return None

    def _cut(self, cut: int) -> Optional[Span]:
        """Give out pending text up to `cut` (None if blank); segmentation restarts there."""
        start, self._start, self._scan = self._start, cut, cut
        if not self.pending.strip():
            self.pending_since = None
        return (start, cut) if self._text[start:cut].strip() else None
