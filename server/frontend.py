"""Text frontend: normalize, split into sentences, phonemize, cut into inference segments.

Phonemes come from espeak-ng through piper-phonemize, the frontend Piper voices
were trained with, so the ids match training exactly (checked against
shared/vectors in the tests). Sentences are split here, the way espeak-ng
splits them, so each sentence can be phonemized on its own (lazily, as the
stream needs it) and keep the text span it came from. One exception: a title
or abbreviation before a name or number ("Dr. Smith", "No. 5") does not end
a sentence here, though espeak-ng ends one there; the span is phonemized as
one inference input, its espeak-ng sentences concatenated the way Piper's
training preprocessing joined the sentences of an utterance.

A sentence longer than a segment allows is cut at a clause mark, else at a
word boundary. A request's first segment is cut short on purpose: the time
to first audio is the time to synthesize that segment.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from piper_phonemize import phonemize_espeak

from server.alignment import Word, align, cached_word_phonemes
from server.lexicon import Lexicon, LexiconFile, find
from server.pronunciation import Part
from server.voices import Voice, VoiceConfig

if TYPE_CHECKING:
    from server.document import Document, Style

_BOS, _EOS, _PAD = "^", "$", "_"
_CLAUSE_MARKS = frozenset(",;:")
# Shortest first clause cut off on its own ("ʃˈʊɹ," is 5): a lone "Oh," is left with its sentence.
_MIN_CLAUSE = 5
# Punctuation espeak-ng gives as a phoneme (a pause) after the word before it.
_PAUSE_MARKS = ",.;:!?"

# A sentence ends after . ! or ? (and any closing quotes or brackets) followed
# by whitespace, or at a blank line. A "." followed by a lowercase word is an
# abbreviation or an ellipsis, not an end ("Wait... what", "St. in"); espeak-ng
# makes the same call.
_SENTENCE_END = re.compile(
    r"""(?:[.!?]+["'”’)\]]*(?P<ws>\s+)(?P<next>\S)?)|(?:\n[ \t\r\f\v]*\n\s*)"""
)

# Where speakstream does not end a sentence though espeak-ng does: a "." right
# after one of these words (whole word, exact case) followed by whitespace and
# then, for the titles, an uppercase letter (a name: "Dr. Smith", "St. Louis");
# for the number words, a digit ("No. 5", "Fig. 3"); for "vs", anything. Spoken
# as separate sentences they would get sentence_silence_s in the middle of a
# name ("Doctor [pause] Smith"). Jr. and Sr. are left out: they follow a name,
# so before a capital they usually do end a sentence. A blank line still ends
# one ("Dr.\n\nSmith").
TITLES = frozenset({
    "Mr", "Mrs", "Ms", "Mx", "Dr", "Prof", "Rev", "Fr", "St", "Mt",
    "Gen", "Capt", "Lt", "Col", "Sgt", "Gov", "Sen", "Rep", "Hon", "Pres",
})
NUMBER_WORDS = frozenset({"No", "Nos", "Vol", "vol", "Fig", "fig", "pp", "Ch", "Art", "Sec"})
ANY_NEXT = frozenset({"vs", "Vs"})
_ABBREVIATIONS = TITLES | NUMBER_WORDS | ANY_NEXT
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")

# espeak-ng is one global C state: calls from several threads must not overlap.
_ESPEAK_LOCK = threading.Lock()


@dataclass(frozen=True)
class Segment:
    """One inference: phoneme ids for the model and what text they speak."""

    ids: tuple[int, ...]
    """Model input: ^ _ p1 _ p2 _ ... $ as the voice's id map gives them."""
    phonemes: str
    """The phonemes, for logs and tests."""
    span: tuple[int, int]
    """Character offsets of the request text this segment speaks."""
    sentence_index: int
    """Which sentence of the request this segment belongs to, from 0."""
    ends_sentence: bool
    """True for the last segment of a sentence (silence may follow it)."""
    words: tuple[Word, ...] = ()
    """The words it speaks, their phonemes as indices into `phonemes`; only when timestamps
    were asked for (a word cut in two by a segment limit stays with its first part)."""
    length_scale: Optional[float] = None
    """Its own length scale (SSML `prosody rate`); None: the request's."""
    gain: float = 1.0
    """Its audio is multiplied by this (SSML `prosody volume`)."""
    silence_s: Optional[float] = None
    """A break (SSML `<break>`): this much exact silence, no phonemes (`ids` empty)."""


# Characters that are dropped before espeak-ng sees the text (see normalize).
IGNORED = "\u2060"
# Combining marks kept on one base character; a flood of them (zalgo text) is
# cut to this many, as Unicode's stream-safe format (UAX #15) does at 30.
MAX_COMBINING_MARKS = 30
_SPEAKABLE_CATEGORIES = ("L", "N", "S")  # letters, digits, symbols (espeak-ng names emoji and signs)


def normalize(text: str) -> str:
    """Make any text safe for the frontend, keeping every offset.

    The result has the same length as the input, so spans computed on it are
    spans of what the client sent. Control characters, private-use and
    unassigned code points become spaces (line breaks stay line breaks);
    space variants become " "; invisible format characters (zero-width,
    bidi controls, soft hyphen) become IGNORED inside a word, so
    "hel\u200blo" is still one word, and spaces elsewhere; combining marks
    beyond MAX_COMBINING_MARKS on one character become IGNORED.
    """
    categories = [unicodedata.category(c) for c in text]
    word_after = _word_after(text, categories)
    out, marks, word_before = [], 0, False
    for i, (char, category) in enumerate(zip(text, categories)):
        marks = marks + 1 if category[0] == "M" else 0
        if marks > MAX_COMBINING_MARKS:
            out.append(IGNORED)
        elif category == "Cf":
            out.append(IGNORED if word_before and word_after[i] else " ")
            continue  # invisible: the character before it stays the one before the next
        else:
            out.append(_normalize_char(char, category))
        word_before = char.isalnum() or category[0] == "M"
    return "".join(out)


def _normalize_char(char: str, category: str) -> str:
    if char in "\n\t":
        return char
    if category in ("Cc", "Zl", "Zp", "Co", "Cn", "Cs"):
        return "\n" if char in "\r\u2028\u2029" else " "
    if category == "Zs":
        return " "
    return char


def _word_after(text: str, categories: list[str]) -> list[bool]:
    """For each position: whether the first non-format character after it is part of a word."""
    result, word = [False] * len(text), False
    for i in range(len(text) - 1, -1, -1):
        result[i] = word
        if categories[i] != "Cf":
            word = text[i].isalnum() or categories[i][0] == "M"
    return result


def speakable(text: str) -> bool:
    """Whether text has anything espeak-ng can speak: a letter, digit or symbol (normalize keeps those)."""
    return any(unicodedata.category(c)[0] in _SPEAKABLE_CATEGORIES for c in text)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Spans of the sentences in `text`; each span keeps its trailing whitespace."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if match.group("ws") is not None and not is_sentence_end(match, start):
            continue
        end = match.end("ws") if match.group("ws") is not None else match.end()
        if text[start:end].strip():
            spans.append((start, end))
        start = end
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def is_sentence_end(match: re.Match, low: int = 0) -> bool:
    """Whether a _SENTENCE_END match with whitespace ends a sentence: espeak-ng's
    decision, except after an abbreviation (see TITLES).

    Decided by the marks, the first character after the whitespace and the
    word before the marks, looked for no further back than `low` (where the
    current sentence began).
    """
    marks = match.group(0)[: match.start("ws") - match.start()]
    bare = marks.rstrip("\"'”’)]")
    if bare.endswith(".."):
        return False  # an ellipsis continues the sentence
    nxt = match.group("next")
    if bare.endswith(".") and nxt is not None and nxt.islower():
        return False  # "St. in", "e.g. this": espeak-ng continues too
    if marks == "." and nxt is not None and not _BLANK_LINE.search(match.group("ws")):
        return not abbreviation_before(match.string, match.start(), low, nxt)
    return True


def abbreviation_before(text: str, dot: int, low: int, nxt: str) -> bool:
    """Whether the word ending at `text[dot]` (a ".") is an abbreviation that
    `nxt`, the next non-blank character, shows to continue the sentence."""
    word = _word_before(text, dot, low)
    if word in TITLES:
        return nxt.isupper()
    if word in NUMBER_WORDS:
        return nxt.isdigit()
    return word in ANY_NEXT


def ends_with_abbreviation(text: str, end: int, low: int = 0) -> bool:
    """Whether `text[low:end]` ends with one of the abbreviations above, its "."
    and maybe whitespace: a cut there could part a title from its name."""
    while end > low and text[end - 1].isspace():
        end -= 1
    return end > low and text[end - 1] == "." and _word_before(text, end - 1, low) in _ABBREVIATIONS


def _word_before(text: str, end: int, low: int) -> str:
    """The run of letters ending at `end`, or "" when it is not a whole word
    (a letter, digit or "." before it, as in "U.S.Dr" or "A1Dr")."""
    start = end
    while start > low and (text[start - 1].isalpha() or text[start - 1] == IGNORED):
        start -= 1
    if start > low and (text[start - 1].isalnum() or text[start - 1] == "."):
        return ""
    return text[start:end].replace(IGNORED, "")


def phonemize(text: str, espeak_voice: str) -> list[list[str]]:
    """espeak-ng phonemes of `text`, one list per sentence, empty sentences dropped."""
    text = text.replace(IGNORED, "")
    with _ESPEAK_LOCK:
        sentences = phonemize_espeak(text, espeak_voice)
    return [s for s in sentences if s]


def sentence_phonemes(text: str, espeak_voice: str) -> list[str]:
    """Phonemes of one sentence span as one inference input.

    espeak-ng may find several sentences in it (it ends one after "Dr." before
    a capital); they are concatenated without a separator, as Piper's training
    preprocessing flattened the sentences of an utterance into one ^...$
    sequence, so the voice has learnt such input.
    """
    return [p for sentence in phonemize(text, espeak_voice) for p in sentence]


def phoneme_ids(phonemes: Sequence[str], id_map) -> tuple[int, ...]:
    """Piper's id rule: ^ _ then each phoneme followed by _, then $.

    Phonemes the voice does not know are dropped, as Piper does.
    """
    pad = id_map[_PAD]
    ids = list(id_map[_BOS]) + list(pad)
    for phoneme in phonemes:
        mapped = id_map.get(phoneme)
        if mapped is not None:
            ids.extend(mapped)
            ids.extend(pad)
    ids.extend(id_map[_EOS])
    return tuple(ids)


class Frontend:
    """Turns request text into a lazy stream of inference segments."""

    def __init__(self, max_phonemes_per_chunk: int = 400, first_chunk_phonemes: int = 60,
                 lexicon: Optional[LexiconFile] = None, first_clause_cut: bool = False):
        """:param first_chunk_phonemes: target size of a request's first segment.
        :param lexicon: the server's lexicon file (--lexicon).
        :param first_clause_cut: end a turn's first segment at its first clause mark
            ("Sure, | I can help.") even when the sentence fits first_chunk_phonemes."""
        self.max_phonemes = max_phonemes_per_chunk
        self.first_phonemes = min(first_chunk_phonemes, max_phonemes_per_chunk)
        self.lexicon = lexicon
        self.first_clause_cut = first_clause_cut

    def lexicons(self, voice: Voice, request: Optional[Lexicon] = None) -> tuple[Lexicon, ...]:
        """What a request's text is looked up in: its own entries, then the lexicon file's for its voice."""
        own = self.lexicon.for_voice(voice.name, voice.config.phoneme_id_map) if self.lexicon else None
        return tuple(lexicon for lexicon in (request, own) if lexicon is not None)

    def segments(self, text: str, config: VoiceConfig, length_scale: float = 1.0) -> Iterator[Segment]:
        """Segments of `text` in speaking order; phonemizes one sentence per step.

        :param length_scale: the request's; slower speech makes longer audio per
            phoneme, so the caps shrink with it to bound a run's memory.
        """
        text = normalize(text)
        index = 0
        for span in split_sentences(text):
            segments = self.span_segments(text, span, index, index == 0, config, length_scale)
            if segments:
                index += 1
            yield from segments

    def span_segments(self, text: str, span: tuple[int, int], index: int, first: bool,
                      config: VoiceConfig, length_scale: float = 1.0, words: bool = False, *,
                      document: Optional[Document] = None, lexicons: Sequence[Lexicon] = ()) -> list[Segment]:
        """Segments of one sentence span of `text` (normalized), all with `index`.

        :param first: cut the first segment short (first_chunk_phonemes), as
            for a request's first sentence; empty when the span has no phonemes.
        :param words: find which words each phoneme speaks (server/alignment.py), for timestamps.
        :param document: the markup `text` is the spoken text of (server/document.py): its parts,
            breaks and styles apply, and spans are mapped back to the request's characters.
        :param lexicons: looked up in the text espeak-ng would read, the first ones first.
        """
        if document is not None and span[0] == span[1]:
            return self._break(document, span, index)
        style = document.style_at(span[0]) if document is not None else None
        if style is not None:
            length_scale /= max(style.speed, 1e-3)
        parts = _parts(text, span, document, lexicons)
        limits = self._limits(length_scale)
        first_limit = limits[0] if first else limits[1]
        if parts:
            phonemes, found = _marked_phonemes(text, span, parts, config, words)
        else:
            phonemes = sentence_phonemes(text[span[0]:span[1]], config.espeak_voice)
            found = None
        if not phonemes:
            return []
        early = first and self.first_clause_cut
        segments = list(self._cut(phonemes, text, span, index, (first_limit, limits[1], early), config))
        if words:
            if found is None:
                voice = config.espeak_voice
                found = align(text, span, phonemes, lambda word: cached_word_phonemes(word, voice, phonemize))
            segments = _with_words(segments, found)
        if document is not None:
            segments = [_placed(s, document, document.style_at(span[0]), length_scale) for s in segments]
        return segments

    @staticmethod
    def _break(document: Document, span: tuple[int, int], index: int) -> list[Segment]:
        """A break's segment: its silence, an empty span where its tag is."""
        silence = document.breaks[span[0]].seconds
        return [Segment(ids=(), phonemes="", span=document.request_span(span), sentence_index=index,
                        ends_sentence=False, silence_s=silence)]

    def _limits(self, length_scale: float) -> tuple[int, int]:
        scale = max(length_scale, 1e-3)
        return (max(8, round(self.first_phonemes / scale)), max(16, round(self.max_phonemes / scale)))

    def _cut(self, phonemes, text, span, index, limits, config) -> Iterator[Segment]:
        pieces = cut_phonemes(phonemes, *limits)
        spans = _split_span(text, span, [len(p) for p in pieces], pieces)
        for n, (piece, piece_span) in enumerate(zip(pieces, spans)):
            yield Segment(
                ids=phoneme_ids(piece, config.phoneme_id_map),
                phonemes="".join(piece),
                span=piece_span,
                sentence_index=index,
                ends_sentence=n == len(pieces) - 1,
            )


def _marked_phonemes(text: str, span: tuple[int, int], parts: list[Part], config: VoiceConfig,
                     words: bool) -> tuple[list[str], list[Word]]:
    """The phonemes of a span with parts: espeak-ng's for the text between them, the parts' own
    (given, or spelled a character at a time), joined as Piper joins [[ ]] blocks (a space where
    the text has whitespace); with `words`, the words they speak, a part being one word."""
    phonemes: list[str] = []
    found: list[Word] = []
    cursor = span[0]
    for part in parts:
        _add_run(text, (cursor, part.start), phonemes, found, config, words)
        _space_at(text, part.start, phonemes)
        first = len(phonemes)
        phonemes.extend(part.phonemes or _spelled(part.spell, config.espeak_voice))
        spoken = tuple(i for i in range(first, len(phonemes)) if phonemes[i] != " ")
        if words and spoken:
            found.append(Word((part.start, part.end), spoken, len(spoken)))
        cursor = part.end
    _add_run(text, (cursor, span[1]), phonemes, found, config, words)
    return phonemes, found


def _parts(text: str, span: tuple[int, int], document: Optional[Document],
           lexicons: Sequence[Lexicon]) -> list[Part]:
    """The document's parts within the span and, between them, the lexicons' entries found."""
    given = document.parts_in(*span) if document is not None else []
    if not lexicons:
        return given
    parts: list[Part] = []
    cursor = span[0]
    for part in given:
        parts.extend(Part(hit.start, hit.end, hit.phonemes) for hit in find(text, cursor, part.start, lexicons))
        parts.append(part)
        cursor = part.end
    parts.extend(Part(hit.start, hit.end, hit.phonemes) for hit in find(text, cursor, span[1], lexicons))
    return parts


def _add_run(text: str, run: tuple[int, int], phonemes: list[str], found: list[Word], config: VoiceConfig,
             words: bool) -> None:
    """Append espeak-ng's phonemes of the text between parts (and its words). Its leading
    punctuation is the pause after what came before (espeak-ng drops it at the start of a text,
    and reads a lone "!" as "exclamation")."""
    start, end = run
    lead = start
    while lead < end and (text[lead].isspace() or unicodedata.category(text[lead]).startswith("P")):
        lead += 1
    mark = next((c for c in text[start:lead] if c in _PAUSE_MARKS and c in config.phoneme_id_map), None)
    if mark is not None and phonemes:
        phonemes.append(mark)
        if found:  # the pause goes with the word before it, as alignment gives it
            found[-1] = Word(found[-1].span, (*found[-1].phonemes, len(phonemes) - 1), found[-1].sounds)
    own = sentence_phonemes(text[lead:end], config.espeak_voice) if lead < end else []
    if not own:
        return
    _space_at(text, lead, phonemes)
    offset = len(phonemes)
    phonemes.extend(own)
    if words:
        voice = config.espeak_voice
        for word in align(text, (lead, end), own, lambda w: cached_word_phonemes(w, voice, phonemize)):
            found.append(Word(word.span, tuple(i + offset for i in word.phonemes), word.sounds))


def _space_at(text: str, position: int, phonemes: list[str]) -> None:
    """A word separator before what starts at `position` when the text has whitespace there."""
    if phonemes and phonemes[-1] != " " and (text[position - 1].isspace()
                                             or (position < len(text) and text[position].isspace())):
        phonemes.append(" ")


def _spelled(groups: tuple[str, ...], voice: str) -> list[str]:
    """Characters read one at a time, a space between them, a pause between groups."""
    out: list[str] = []
    for group in groups:
        if out:
            out.extend(", ")
        letters = [cached_word_phonemes(char, voice, phonemize) for char in group]
        out.extend(" ".join(p for p in letters if p))
    return out


def _placed(segment: Segment, document: Document, style: Style, length_scale: float) -> Segment:
    """A segment of a document's spoken text with the request's spans and the span's style."""
    words: list[Word] = []
    for word in segment.words:
        span = document.request_span(word.span)
        if words and words[-1].span == span:  # the words of one alias or say-as: one word of the request
            last = words[-1]
            words[-1] = Word(span, last.phonemes + word.phonemes, len(last.phonemes) + word.sounds)
        else:
            words.append(Word(span, word.phonemes, word.sounds))
    return dataclasses.replace(segment, span=document.request_span(segment.span), words=tuple(words),
                               length_scale=length_scale if style.speed != 1.0 else None, gain=style.gain)


def _with_words(segments: list[Segment], words: list[Word]) -> list[Segment]:
    """Each segment with the words whose first phoneme it holds, indices made its own."""
    result, offset = [], 0
    for segment in segments:
        end = offset + len(segment.phonemes)
        own = []
        for word in words:
            if offset <= word.phonemes[0] < end:
                kept = [i - offset for i in word.phonemes if i < end]
                sounds = sum(1 for i in word.phonemes[:word.sounds] if i < end)
                own.append(Word(word.span, tuple(kept), sounds))
        result.append(dataclasses.replace(segment, words=tuple(own)))
        offset = end
    return result


def cut_phonemes(phonemes: list[str], first_limit: int, limit: int, clause_first: bool = False) -> list[list[str]]:
    """Cut a sentence's phonemes into pieces: the first at most `first_limit`, the rest `limit`.

    Cuts fall after a clause mark when one is in the second half of the
    window, else after the last word boundary in it, else at the limit.
    With `clause_first`, the first piece ends at the first clause mark within
    `first_limit` (at least _MIN_CLAUSE phonemes in) even when the sentence fits:
    a turn's first audio then waits for the encoder of "Sure," only, and the cut
    falls where the speaker pauses anyway.
    """
    pieces, rest, window = [], phonemes, first_limit
    if clause_first and (cut := _first_clause(rest, first_limit)):
        pieces.append(rest[:cut])
        rest, window = rest[cut:], limit
    while len(rest) > window:
        cut = _cut_point(rest, window)
        pieces.append(rest[:cut])
        rest = rest[cut:]
        window = limit
    if rest:
        pieces.append(rest)
    return pieces


def _first_clause(phonemes: list[str], window: int) -> int:
    """The index after the first clause mark (and its space) at _MIN_CLAUSE..window
    phonemes in that has words after it, or 0."""
    for i in range(_MIN_CLAUSE, min(window, len(phonemes) - 2) + 1):
        if phonemes[i - 1] in _CLAUSE_MARKS and phonemes[i] == " ":
            return i + 1
    return 0


def _cut_point(phonemes: list[str], window: int) -> int:
    """Where to cut `phonemes` (longer than `window`): an index in 1..window."""
    word_cut = 0
    for i in range(window, window // 2, -1):
        if phonemes[i - 1] in _CLAUSE_MARKS and (i == len(phonemes) or phonemes[i] == " "):
            return i + 1 if i < len(phonemes) else i  # keep the space with the clause
    for i in range(window, 0, -1):
        if phonemes[i - 1] == " ":
            word_cut = i
            break
    return word_cut or window


def _split_span(text, span, lengths, pieces) -> list[tuple[int, int]]:
    """Give each piece of a sentence a sub-span of the sentence's text.

    espeak-ng does not report text positions, so a cut is placed in the text
    at the same fraction of the sentence as in the phonemes, then moved to
    the nearest whitespace so a span never splits a word.
    """
    start, end = span
    if len(lengths) == 1:
        return [span]
    total, spans, done, cursor = sum(lengths), [], 0, start
    for length in lengths[:-1]:
        done += length
        cut = _snap_to_space(text, start + round((end - start) * done / total), cursor, end)
        spans.append((cursor, cut))
        cursor = cut
    spans.append((cursor, end))
    return spans


def _snap_to_space(text: str, pos: int, low: int, high: int) -> int:
    for delta in range(0, high - low):
        for candidate in (pos + delta, pos - delta):
            if low < candidate < high and text[candidate - 1].isspace():
                return candidate
    return min(max(pos, low), high)
