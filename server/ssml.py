"""SSML, the subset speakstream speaks, read safely and piece by piece into a Document.

Parsed with the standard library's expat, which reports where every event
is in the input (so each spoken character keeps its place in the request)
and parses incrementally (SynthesizeLive's SSML may arrive split anywhere,
inside a tag too). Safe by construction: a DOCTYPE is refused at once, so
there are no entity declarations (no billion laughs), no external entities
and no DTD; parameter entities are never parsed; elements nest at most
MAX_DEPTH deep, an attribute holds at most MAX_ATTRIBUTE_CHARS, and the
text as a whole is bounded by --max-chars before it gets here.

The subset (docs/API.md, SSML): `<speak>` (the root), `<p>`, `<s>`,
`<break>`, `<prosody rate volume>`, `<phoneme alphabet="ipa" ph>`,
`<sub alias>` and `<say-as interpret-as>` (server/sayas.py). Any other tag
is left out with its text spoken; it, and any attribute not acted on, is
listed in Document.ignored. A problem is InvalidArgument naming its line and
column (code points, from 1) in the request's text.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass, field
from typing import Callable, Optional
from xml.parsers import expat

from server.document import SENTENCE, Document
from server.errors import InvalidArgument
from server.pronunciation import PhonemeError, ipa_phonemes
from server.sayas import KINDS, read_as
from server.voices import VoiceConfig

MAX_DEPTH = 32
MAX_ATTRIBUTE_CHARS = 1_000
MAX_BREAK_S = 10.0
MAX_BREAKS_S = 300.0
"""Silence a document's breaks may add up to: bounds the audio a short text can ask for."""

BREAK_STRENGTHS = {"none": 0.0, "x-weak": 0.25, "weak": 0.5, "medium": 0.75, "strong": 1.0, "x-strong": 1.25}
RATES = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "fast": 1.25, "x-fast": 1.5, "default": 1.0}
VOLUMES_DB = {"x-soft": -12.0, "soft": -6.0, "medium": 0.0, "loud": 3.0, "x-loud": 6.0, "default": 0.0}
VOLUME_DB_RANGE = (-40.0, 12.0)
_TIME = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)\s*")
_PERCENT = re.compile(r"\s*([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*%\s*")
_DECIBELS = re.compile(r"\s*([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)\s*dB\s*")
_SPEAK_ATTRIBUTES = frozenset({"version", "xmlns", "xml:lang"})  # accepted; the voice decides the language
_TEXT_ONLY = ("phoneme", "sub", "say-as")


@dataclass
class _Element:
    tag: str
    start: int
    """Where its start tag is in the request."""
    speed: float = 1.0
    gain: float = 1.0
    """The style inside it."""
    text: str = ""
    """Content of a text-only element (phoneme, sub, say-as), and each character's source."""
    sources: list[tuple[int, int]] = field(default_factory=list)
    attrs: dict[str, str] = field(default_factory=dict)


class SsmlReader:
    """Reads one context's SSML into `document`: whole (feed(text, final=True)) or in pieces."""

    def __init__(self, document: Document, config: VoiceConfig, speed: float,
                 speed_range: tuple[float, float], several: bool = False):
        """:param speed: the request's; prosody rates multiply it and must keep it in `speed_range`.
        :param several: documents may follow one another (SynthesizeLive's default context, one
            `<speak>` per turn); else text after the root element is an error."""
        self.document = document
        self._config, self._speed, self._speed_range, self._several = config, speed, speed_range, several
        self._raw = ""
        self._byte_starts: Optional[list[int]] = None  # byte offset of each character, once one is not ASCII
        self._base = 0  # where the current XML document starts in _raw (characters)
        self._stack: list[_Element] = []
        self._breaks_s = 0.0
        self._cdata = False
        self._root_done = False
        self._begun = False  # the current document has more than whitespace
        self._closed = False  # the text was ended (feed's final): more text begins another document
        self._parser = self._new_parser()

    @property
    def offset(self) -> int:
        """Code points received so far."""
        return len(self._raw)

    def feed(self, piece: str, final: bool = False) -> None:
        """Read `piece`; `final`: the text ends here, so it must be complete."""
        start = len(self._raw)
        self._append(piece)
        if self._closed and piece:
            self._base, self._root_done, self._begun, self._closed = start, False, False, False
            self._parser = self._new_parser()
        self._begun = self._begun or bool(piece.strip())
        self._parse(start, final)
        self._closed = final

    # -- parsing ---------------------------------------------------------------------

    def _parse(self, start: int, final: bool) -> None:
        try:
            if final and not self._begun and self._several:
                return  # nothing after the last document
            self._parser.Parse(self._raw[start:], final)
        except expat.ExpatError as exc:
            if (self._several and self._root_done
                    and exc.code == expat.errors.codes[expat.errors.XML_ERROR_JUNK_AFTER_DOC_ELEMENT]):
                self._next_document(self._char_at(self._parser.ErrorByteIndex), final)
                return
            raise self._error(self._char_at(self._parser.ErrorByteIndex), expat.ErrorString(exc.code)) from None
        self.document.request_end = len(self._raw)

    def _next_document(self, at: int, final: bool) -> None:
        """Start a new document at `at` (a <speak> after the last one's end) and read the rest."""
        self._base, self._root_done, self._begun = at, False, True
        self._parser = self._new_parser()
        self._parse(at, final)

    def _new_parser(self):
        parser = expat.ParserCreate()
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = self._refuse_doctype
        parser.EntityDeclHandler = self._refuse_doctype
        parser.ExternalEntityRefHandler = self._refuse_doctype
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._data
        parser.StartCdataSectionHandler = lambda: setattr(self, "_cdata", True)
        parser.EndCdataSectionHandler = lambda: setattr(self, "_cdata", False)
        return parser

    def _refuse_doctype(self, *_args):
        raise self._error(self._here(), "a DOCTYPE is not allowed (no DTD, no entity declarations)")

    # -- where things are ---------------------------------------------------------------

    def _append(self, piece: str) -> None:
        if self._byte_starts is None and not piece.isascii():
            self._byte_starts = list(range(len(self._raw)))
        if self._byte_starts is not None:
            total = self._byte_starts[-1] + len(self._raw[-1].encode()) if self._raw else 0
            lengths = (len(c.encode()) for c in piece)
            self._byte_starts.extend(itertools.accumulate(lengths, initial=total))
            self._byte_starts.pop()  # accumulate's last value is the end, not a character
        self._raw += piece

    def _char_at(self, byte_index: int) -> int:
        """The request offset of a byte index of the current document."""
        if self._byte_starts is None:
            return min(self._base + byte_index, len(self._raw))
        base_byte = self._byte_starts[self._base] if self._base < len(self._byte_starts) else 0
        return bisect.bisect_left(self._byte_starts, base_byte + byte_index)

    def _here(self) -> int:
        return self._char_at(self._parser.CurrentByteIndex)

    def _error(self, offset: int, problem: str) -> InvalidArgument:
        line = self._raw.count("\n", 0, offset) + 1
        column = offset - (self._raw.rfind("\n", 0, offset) + 1) + 1
        return InvalidArgument("text", f"ssml line {line}, column {column}: {problem}")

    def _sources(self, data: str, start: int) -> list[tuple[int, int]]:
        """The request range of each character of `data`, which expat reported at `start`: one
        character each, but an entity or character reference, or a CRLF, made one."""
        raw, sources, i = self._raw, [], start
        for _ in data:
            if raw.startswith("\r\n", i):
                end = i + 2
            elif raw.startswith("&", i) and not self._cdata:
                end = raw.find(";", i) + 1 or i + 1
            else:
                end = i + 1
            sources.append((i, min(end, len(raw))))
            i = end
        return sources

    def _tag_end(self, start: int) -> int:
        """Where the tag starting at `start` ends (after its ">")."""
        end = self._raw.find(">", start)
        return end + 1 if end >= 0 else len(self._raw)

    # -- events ------------------------------------------------------------------------

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        here = self._here()
        if self._stack and self._stack[-1].tag in _TEXT_ONLY:
            raise self._error(here, f"<{self._stack[-1].tag}> holds text only, not <{tag}>")
        if not self._stack and tag != "speak":
            raise self._error(here, f"the root element must be <speak>, not <{tag}>")
        if len(self._stack) >= MAX_DEPTH:
            raise self._error(here, f"elements nest more than {MAX_DEPTH} deep")
        for name, value in attrs.items():
            if len(value) > MAX_ATTRIBUTE_CHARS:
                raise self._error(here, f"<{tag}> attribute {name} is {len(value)} characters; "
                                        f"the limit is {MAX_ATTRIBUTE_CHARS}")
        parent = self._stack[-1] if self._stack else _Element("", 0)
        element = _Element(tag, here, parent.speed, parent.gain, attrs=attrs)
        self._stack.append(element)
        handler = self._STARTS.get(tag) if tag != "speak" or len(self._stack) == 1 else None
        if handler is None:  # an unknown tag, or a <speak> inside the root
            self.document.ignore(tag)
        else:
            handler(self, element)

    def _end(self, tag: str) -> None:
        element = self._stack.pop()
        handler = self._ENDS.get(tag)
        if handler is not None:
            handler(self, element)
        if not self._stack:  # the end of a document ends its last sentence (another may follow, live)
            self._root_done = True
            self.document.mark(SENTENCE)

    def _data(self, data: str) -> None:
        here = self._here()
        if self._stack and self._stack[-1].tag in _TEXT_ONLY:
            self._stack[-1].text += data
            self._stack[-1].sources += self._sources(data, here)
        elif self._stack:
            # Most text is written as it is: its characters are the request's, one for one ("&" may
            # be "&amp;" there).
            as_is = self._raw.startswith(data, here) and ("&" not in data or self._cdata)
            self.document.add_text(data, here if as_is else self._sources(data, here))
        # Text outside the root is whitespace (expat refuses anything else there).

    # -- the tags ------------------------------------------------------------------------

    def _start_speak(self, element: _Element) -> None:
        self._ignore_attributes(element, _SPEAK_ATTRIBUTES, prefix="xmlns:")

    def _sentence(self, element: _Element) -> None:
        self._ignore_attributes(element, frozenset())
        self.document.mark(SENTENCE)

    def _start_break(self, element: _Element) -> None:
        self._ignore_attributes(element, frozenset({"time", "strength"}))
        seconds = self._break_seconds(element)
        if self._breaks_s + seconds > MAX_BREAKS_S:
            raise self._error(element.start, f"breaks add up to more than {MAX_BREAKS_S:g} s of silence")
        self._breaks_s += seconds
        if seconds > 0:  # strength="none" or time="0ms": no break at all
            self.document.add_break(seconds, element.start)

    def _break_seconds(self, element: _Element) -> float:
        time, strength = element.attrs.get("time"), element.attrs.get("strength")
        if time is not None:
            match = _TIME.fullmatch(time)
            if match is None:
                raise self._error(element.start, f"<break> time must be like 500ms or 1.5s, got {time!r}")
            seconds = float(match.group(1)) / (1000.0 if match.group(2) == "ms" else 1.0)
            if seconds > MAX_BREAK_S:
                raise self._error(element.start, f"<break> time is {seconds:g} s; the limit is {MAX_BREAK_S:g} s")
            return seconds
        if strength is None:
            return BREAK_STRENGTHS["medium"]
        if strength not in BREAK_STRENGTHS:
            raise self._error(element.start, f"<break> strength must be one of {', '.join(BREAK_STRENGTHS)}, "
                                             f"got {strength!r}")
        return BREAK_STRENGTHS[strength]

    def _start_prosody(self, element: _Element) -> None:
        self._ignore_attributes(element, frozenset({"rate", "volume"}))
        if "rate" in element.attrs:
            element.speed *= self._rate(element)
        if "volume" in element.attrs:
            element.gain *= self._gain(element)
        self.document.set_style(element.speed, element.gain)

    def _end_prosody(self, element: _Element) -> None:
        parent = self._stack[-1]
        self.document.set_style(parent.speed, parent.gain)

    def _rate(self, element: _Element) -> float:
        value = element.attrs["rate"]
        match = _PERCENT.fullmatch(value)
        if match is not None:
            sign, number = match.groups()
            rate = 1.0 + {"+": 1, "-": -1}[sign] * float(number) / 100 if sign else float(number) / 100
        elif value.strip() in RATES:
            rate = RATES[value.strip()]
        else:
            raise self._error(element.start, f"<prosody> rate must be a percentage (50%, +20%) or one of "
                                             f"{', '.join(RATES)}, got {value!r}")
        speed = self._speed * element.speed * rate
        low, high = self._speed_range
        if not low <= speed <= high:
            raise self._error(element.start, f"<prosody> rate {value!r} makes the speed {speed:g}; "
                                             f"it must stay between {low} and {high}")
        return rate

    def _gain(self, element: _Element) -> float:
        value = element.attrs["volume"].strip()
        if value == "silent":
            return 0.0
        match = _DECIBELS.fullmatch(value)
        decibels = float(match.group(1)) if match is not None else VOLUMES_DB.get(value)
        low, high = VOLUME_DB_RANGE
        if decibels is None or not low <= decibels <= high:
            raise self._error(element.start, f"<prosody> volume must be between {low:+g}dB and {high:+g}dB "
                                             f"or one of silent, {', '.join(VOLUMES_DB)}, got {value!r}")
        return 10.0 ** (decibels / 20.0)

    def _start_phoneme(self, element: _Element) -> None:
        self._ignore_attributes(element, frozenset({"alphabet", "ph"}))
        alphabet = element.attrs.get("alphabet", "ipa")
        if alphabet != "ipa":
            raise self._error(element.start, f"<phoneme> alphabet {alphabet!r} is not supported; use ipa")
        if "ph" not in element.attrs:
            raise self._error(element.start, "<phoneme> needs a ph attribute")

    def _end_phoneme(self, element: _Element) -> None:
        try:
            phonemes = ipa_phonemes(element.attrs["ph"], self._config.phoneme_id_map)
        except PhonemeError as exc:
            raise self._error(element.start, f"<phoneme> ph: {exc}") from None
        self._around(element, lambda text, sources: self.document.add_part(text, sources, phonemes=phonemes))

    def _start_sub(self, element: _Element) -> None:
        self._ignore_attributes(element, frozenset({"alias"}))
        if not element.attrs.get("alias", "").strip():
            raise self._error(element.start, "<sub> needs a non-empty alias attribute")

    def _end_sub(self, element: _Element) -> None:
        alias = element.attrs["alias"]
        self._around(element, lambda _text, sources: self.document.add_text(alias, _spread(sources, len(alias))))

    def _start_say_as(self, element: _Element) -> None:
        self._ignore_attributes(element, frozenset({"interpret-as", "format", "detail"}))
        if "interpret-as" not in element.attrs:
            raise self._error(element.start, "<say-as> needs an interpret-as attribute")

    def _end_say_as(self, element: _Element) -> None:
        kind = element.attrs["interpret-as"]
        reading = read_as(kind, element.text, element.attrs.get("format", ""), self._config.language or
                          self._config.espeak_voice) if kind in KINDS else None
        if reading is None:  # an unknown kind, or content that is not one: read as written
            self.document.ignore(f"say-as interpret-as={kind}")
            self.document.add_text(element.text, element.sources)
        elif reading.spell:
            self._around(element, lambda text, sources: self.document.add_part(text, sources, spell=reading.spell))
        else:
            self._around(element, lambda _text, sources: self.document.add_text(
                reading.text, _spread(sources, len(reading.text))))

    def _around(self, element: _Element, emit: Callable[[str, list[tuple[int, int]]], None]) -> None:
        """Speak a text-only element: its leading and trailing whitespace as text, and `emit` its
        content (or, when it has none, a character for the element's tag)."""
        text, sources = element.text, element.sources
        lead = len(text) - len(text.lstrip())
        tail = len(text.rstrip())
        self.document.add_text(text[:lead], sources[:lead])
        if tail > lead:
            emit(text[lead:tail], sources[lead:tail])
        else:
            emit("_", [(element.start, self._tag_end(element.start))])
        self.document.add_text(text[max(tail, lead):], sources[max(tail, lead):])

    def _ignore_attributes(self, element: _Element, known: frozenset, prefix: str = "") -> None:
        for name in element.attrs:
            if name not in known and not (prefix and name.startswith(prefix)):
                self.document.ignore(f"{element.tag}@{name}")

    _STARTS = {"speak": _start_speak, "p": _sentence, "s": _sentence, "break": _start_break,
               "prosody": _start_prosody, "phoneme": _start_phoneme, "sub": _start_sub, "say-as": _start_say_as}
    _ENDS = {"p": lambda self, element: self.document.mark(SENTENCE),
             "s": lambda self, element: self.document.mark(SENTENCE),
             "prosody": _end_prosody, "phoneme": _end_phoneme, "sub": _end_sub, "say-as": _end_say_as}


def _spread(sources: list[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    """`count` characters that all come from the whole of `sources` (an alias for its element's text)."""
    whole = (sources[0][0], sources[-1][1])
    return [whole] * count


def read_ssml(text: str, config: VoiceConfig, speed: float, speed_range: tuple[float, float]) -> Document:
    """A whole request's SSML as a document; InvalidArgument names the line and column of a problem."""
    document = Document()
    SsmlReader(document, config, speed, speed_range).feed(text, final=True)
    return document
