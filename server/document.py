"""A request's text as it is to be spoken, when it carries markup (SSML, inline [[ phonemes ]]).

Markup readers (server/ssml.py, InlineReader below) turn the request's text
into a `Document`: the *spoken text* (what espeak-ng reads, sentence
splitting sees and spans index while the engine works), where each of its
characters came from in the request (so every span sent back indexes the
request's own characters, tags and all), and annotations on ranges of it:
parts whose phonemes are given (server/pronunciation.py), breaks (exact
silence), styles (prosody rate and volume) and marks where a span must end
(a sentence at `<s>`, `<p>`; a cut at a break or a change of style).

A document grows as its markup is read, all at once or piece by piece
(SynthesizeLive): text, parts and marks are only ever appended, and what a
span covers is final when the span is given out. `DocumentReader` turns
the growing spoken text into spans with a LiveSegmenter (the server's
sentence rule, decided as text arrives), cut at the marks, so a whole
request and the same request sent in pieces speak the same spans.

Plain text without [[ ]] has no document at all: it takes the frontend's
plain path, unchanged.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

from server.errors import InvalidArgument
from server.frontend import IGNORED, speakable
from server.live import LiveSegmenter, Span
from server.pronunciation import INLINE, Part, PhonemeError, ipa_phonemes, placeholder

SENTENCE, CUT, BREAK = "sentence", "cut", "break"


class TextFormat(enum.Enum):
    """How a request's text is read (speakstream.v1.TextFormat)."""

    PLAIN = 1
    SSML = 2


@dataclass(frozen=True)
class Break:
    """Exact silence at a point of the spoken text."""

    seconds: float
    offset: int
    """Where the break is in the request (the start of its tag)."""


@dataclass(frozen=True)
class Style:
    """How the spoken text is said from `start` on (until the next style)."""

    start: int
    speed: float = 1.0
    """Times the request's speed (prosody rate)."""
    gain: float = 1.0
    """Audio multiplied by this (prosody volume)."""


NEUTRAL = Style(0)


class Document:
    """Spoken text, its characters' places in the request, and its annotations; appended to only."""

    def __init__(self, mapped: bool = True):
        """:param mapped: spoken characters have their own request ranges (SSML); False: the spoken
        text has the request's offsets (plain text, whose parts keep their length)."""
        self.text = ""
        self._mapped = mapped
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.parts: list[Part] = []
        self._part_starts: list[int] = []
        self.styles: list[Style] = []
        self._style_starts: list[int] = []
        self.breaks: dict[int, Break] = {}
        self.marks: list[tuple[int, str]] = []
        self.ignored: list[str] = []
        """Tags and attributes that were not acted on (their text was spoken), in the order met."""
        self.request_end = 0
        """Request characters read so far."""

    # -- building ----------------------------------------------------------------

    def add_text(self, text: str, sources: Union[None, int, Sequence[tuple[int, int]]] = None) -> None:
        """Append spoken `text`. `sources` (mapped documents): the request range of each of its
        characters, or the request offset where it is written as is."""
        if self._mapped:
            if isinstance(sources, int):
                self._starts.extend(range(sources, sources + len(text)))
                self._ends.extend(range(sources + 1, sources + len(text) + 1))
            else:
                assert sources is not None, "a mapped document's text comes with its sources"
                self._starts.extend(s for s, _ in sources)
                self._ends.extend(e for _, e in sources)
        self.text += text

    def add_part(self, shown: str, sources: Optional[Sequence[tuple[int, int]]] = None, **part) -> None:
        """Append a part: `shown` stands for it in the spoken text (made a placeholder), `part` are
        Part's `phonemes` or `spell`."""
        start = len(self.text)
        self.add_text(placeholder(shown), sources)
        self.parts.append(Part(start, len(self.text), **part))
        self._part_starts.append(start)

    def mark(self, kind: str) -> None:
        """A span ends here: a sentence (SENTENCE) or not (CUT)."""
        self.marks.append((len(self.text), kind))

    def add_break(self, seconds: float, offset: int) -> None:
        """Exact silence here, `offset` being where its tag is in the request."""
        if len(self.text) in self.breaks:
            # A break right after another gets a place of its own (an invisible character between
            # them, a space once normalized): a break already given out never changes.
            self.add_text(IGNORED, [(offset, offset)] if self._mapped else None)
        self.marks.append((len(self.text), BREAK))
        self.breaks[len(self.text)] = Break(seconds, offset)

    def set_style(self, speed: float, gain: float) -> None:
        """From here on, say the text at `speed` times the request's speed with `gain` (a cut if it changes)."""
        current = self.style_at(len(self.text))
        if (speed, gain) != (current.speed, current.gain):
            self.mark(CUT)
            self.styles.append(Style(len(self.text), speed, gain))
            self._style_starts.append(len(self.text))

    def ignore(self, what: str) -> None:
        """Record a tag or attribute that is not acted on (once)."""
        if what not in self.ignored:
            self.ignored.append(what)

    # -- reading -------------------------------------------------------------------

    @property
    def plain(self) -> bool:
        """Nothing but text at the request's own offsets: the frontend's plain path speaks it."""
        return not self._mapped and not self.parts and not self.breaks and not self.styles

    def speakable(self) -> bool:
        """Whether it has anything to say: a part, a break, or a letter, digit or symbol outside the parts."""
        return bool(self.parts or self.breaks or speakable(self.text))

    def request_span(self, span: Span) -> Span:
        """The request characters a span of the spoken text speaks (a break: where its tag is)."""
        start, end = span
        if start == end and start in self.breaks:
            offset = self.breaks[start].offset
            return offset, offset
        if not self._mapped:
            return span
        if start == end:
            offset = self._starts[start] if start < len(self._starts) else self.request_end
            return offset, offset
        return self._starts[start], self._ends[end - 1]

    def style_at(self, position: int) -> Style:
        """The style the spoken text has at `position`."""
        n = bisect.bisect_right(self._style_starts, position)
        return self.styles[n - 1] if n else NEUTRAL

    def parts_in(self, start: int, end: int) -> list[Part]:
        """The parts within [start, end) (a span never cuts one), in order."""
        first = bisect.bisect_left(self._part_starts, start)
        last = bisect.bisect_left(self._part_starts, end)
        return self.parts[first:last]


class DocumentReader:
    """A growing document's spoken text as spans: a LiveSegmenter's sentences, cut at the marks."""

    def __init__(self, document: Document, segmenter: LiveSegmenter):
        self.document = document
        self.segmenter = segmenter
        self._fed = 0
        self._marks = 0

    def read(self) -> list[tuple[Span, bool]]:
        """(span, ends a sentence) of what can be spoken now; a break is an empty span at its place."""
        doc, items = self.document, []
        while self._marks < len(doc.marks):
            position, kind = doc.marks[self._marks]
            self._marks += 1
            items += self._feed(position)
            span = self.segmenter.cut(sentence=kind == SENTENCE)
            if span is not None:
                items.append((span, not self.segmenter.is_forced(span)))
            if kind == BREAK:
                items.append(((position, position), False))
        return items + self._feed(len(doc.text))

    def flush(self) -> list[tuple[Span, bool]]:
        """read(), then whatever is pending as a span (a sentence end)."""
        items = self.read()
        span = self.segmenter.flush()
        return items + ([(span, True)] if span is not None else [])

    def _feed(self, position: int) -> list[tuple[Span, bool]]:
        text, self._fed = self.document.text[self._fed:position], position
        if not text:
            return []
        return [(span, not self.segmenter.is_forced(span)) for span in self.segmenter.feed(text)]


def document_spans(document: Document) -> tuple[str, list[tuple[Span, bool]]]:
    """A whole document's normalized spoken text and its spans (the same as read live)."""
    reader = DocumentReader(document, LiveSegmenter(max_pending_chars=0))
    items = reader.flush()
    return reader.segmenter.text, items


class InlineReader:
    """Plain text with Piper's [[ phonemes ]] blocks into a document (the request's offsets kept),
    whole or piece by piece: text after an unclosed "[[" waits for its "]]" (or a line break,
    which no block crosses, or the end)."""

    def __init__(self, document: Document, id_map: Mapping[str, Sequence[int]]):
        self.document = document
        self._id_map = id_map
        self._raw = ""
        self._done = 0

    def feed(self, piece: str, final: bool = False) -> None:
        """Read `piece`; `final`: no more text comes, so nothing waits. InvalidArgument names a bad block."""
        self._raw += piece
        raw = self._raw
        while True:
            start = raw.find("[[", self._done)
            if start < 0:
                # A last "[" may be the first half of "[[".
                self._release(len(raw) - (0 if final or not raw.endswith("[") else 1))
                return
            self._release(start)
            match = INLINE.match(raw, start)
            if match is not None:
                try:
                    phonemes = ipa_phonemes(match.group(1), self._id_map)
                except PhonemeError as exc:
                    raise InvalidArgument("text", f"[[ ]] at offset {start}: {exc}") from None
                self.document.add_part(match.group(0), phonemes=phonemes)
                self._done = match.end()
            elif final or "\n" in raw[start:]:
                self._release(start + 1)  # no block starts here; the next "[" may start one
            else:
                return  # the block may still close

    @property
    def offset(self) -> int:
        """Code points received so far."""
        return len(self._raw)

    def _release(self, end: int) -> None:
        if end > self._done:
            self.document.add_text(self._raw[self._done:end])
            self._done = end


def inline_document(text: str, id_map: Mapping[str, Sequence[int]]) -> Optional[Document]:
    """Plain `text`'s document when it has [[ ]] blocks, else None (the plain path)."""
    if "[[" not in text:
        return None
    document = Document(mapped=False)
    InlineReader(document, id_map).feed(text, final=True)
    return None if document.plain else document
