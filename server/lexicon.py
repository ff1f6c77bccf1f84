"""Lexicons: words and phrases whose phonemes are given, looked up before espeak-ng reads the text.

Two sources, looked up together: the server's file (`--lexicon`, loaded
once; entries for every voice or for one voice) and a request's own entries
(SynthesizeRequest.lexicon, bounded). A match is a whole word or phrase
(neither a letter nor a digit on either side), any run of whitespace in the
text matching the single spaces of a phrase, case-insensitive unless the
entry says otherwise. At each word start the longest entry wins; between
equally long ones the request's, then a case-sensitive one. Lookup walks
one trie per source from each word start, so its cost is bounded by the
text's length times the longest entry, whatever the entries.

The file (docs/API.md, Lexicons), UTF-8, one entry per line:

    # comment
    Nguyen<TAB>ŋwˈɪn
    Acme Corp<TAB>ˈækmi kˈɔːɹp
    GIF<TAB>dʒˈɪf<TAB>case-sensitive
    [en_US-joe-medium]
    route<TAB>ɹˈuːt

A `[voice]` line makes the entries after it that voice's only; `[*]` makes
them every voice's again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from server.errors import InvalidArgument, VoiceLoadError
from server.pronunciation import PhonemeError, ipa_phonemes

# A request's entries: bounded so that a lexicon fits the request's share of the
# gRPC receive limit (4 bytes per code point at worst: 8,192 of them are 32 KiB
# of the 64 KiB allowed besides the text) and so that no entry multiplies the
# text by more than plain text can (espeak-ng reads "$1,000,000.00" as ~40
# phonemes from 13 characters).
MAX_ENTRIES = 256
MAX_TEXT_CHARS = 100
MAX_IPA_CHARS = 100
MAX_TOTAL_CHARS = 8_192
MAX_IPA_PER_CHAR = 10
_CASE_SENSITIVE = "case-sensitive"
_SECTION = re.compile(r"\[(.+)\]")
_ALL = "*"
_END = ""  # trie key of a node's entry: no character is empty


class LexiconFileError(VoiceLoadError):
    """The --lexicon file cannot be used (a start-up error, reported like a voice's broken file)."""


@dataclass(frozen=True)
class Entry:
    """A word or phrase and its phonemes."""

    text: str
    """As written, whitespace runs made single spaces."""
    phonemes: tuple[str, ...]
    case_sensitive: bool = False


@dataclass(frozen=True)
class Hit:
    """An entry found in a text: [start, end) and its phonemes."""

    start: int
    end: int
    phonemes: tuple[str, ...]


class Lexicon:
    """Entries from one source, in two tries (exact and lowercased) for lookup."""

    def __init__(self, entries: Iterable[Entry]):
        self._exact: dict = {}
        self._folded: dict = {}
        self.size = 0
        for entry in entries:
            trie, key = (self._exact, entry.text) if entry.case_sensitive else (self._folded, entry.text.lower())
            node = trie
            for char in key:
                node = node.setdefault(char, {})
            node[_END] = entry  # a later entry for the same text replaces an earlier one
            self.size += 1

    def longest_at(self, text: str, start: int, end: int) -> Optional[tuple[int, Entry]]:
        """(end, entry) of the longest entry matching text[start:] as whole words within `end`."""
        exact = _walk(self._exact, text, start, end, fold=False)
        folded = _walk(self._folded, text, start, end, fold=True)
        if exact is None or (folded is not None and folded[0] > exact[0]):
            return folded
        return exact


def find(text: str, start: int, end: int, lexicons: Sequence[Lexicon]) -> list[Hit]:
    """Entries of `lexicons` (the first ones first on a tie) found in text[start:end], in order."""
    hits, i = [], start
    while i < end:
        if _word_start(text, i):
            best = None
            for lexicon in lexicons:
                found = lexicon.longest_at(text, i, end)
                if found is not None and (best is None or found[0] > best[0]):
                    best = found
            if best is not None:
                hits.append(Hit(i, best[0], best[1].phonemes))
                i = best[0]
                continue
        i += 1
    return hits


def _word_start(text: str, i: int) -> bool:
    return not text[i].isspace() and (i == 0 or not text[i - 1].isalnum())


def _walk(trie: dict, text: str, start: int, end: int, fold: bool) -> Optional[tuple[int, Entry]]:
    """The longest entry of `trie` that text[start:end] begins with and that ends a word."""
    node: Optional[dict] = trie
    best, i = None, start
    while i < end and node:
        char = text[i]
        if char.isspace():  # a run of whitespace matches one space of a phrase
            while i < end and text[i].isspace():
                i += 1
            node = node.get(" ")
            continue
        for key in (char.lower() if fold else char):
            node = node.get(key) if node else None
        i += 1
        entry = node.get(_END) if node else None
        if entry is not None and (i == len(text) or not text[i].isalnum()):
            best = (i, entry)
    return best


# -- a request's entries -----------------------------------------------------------

def request_lexicon(entries: Sequence, id_map: Mapping[str, Sequence[int]]) -> Optional[Lexicon]:
    """A request's lexicon (messages with text, ipa, case_sensitive), checked; None when empty.

    InvalidArgument names the entry's field: `lexicon[3].ipa: unknown phoneme ...`.
    """
    if not entries:
        return None
    if len(entries) > MAX_ENTRIES:
        raise InvalidArgument("lexicon", f"has {len(entries)} entries; the limit is {MAX_ENTRIES}")
    total = sum(len(e.text) + len(e.ipa) for e in entries)
    if total > MAX_TOTAL_CHARS:
        raise InvalidArgument("lexicon", f"entries hold {total} characters together; the limit is {MAX_TOTAL_CHARS}")
    checked = []
    for n, entry in enumerate(entries):
        try:
            checked.append(make_entry(entry.text, entry.ipa, entry.case_sensitive, id_map))
        except EntryError as exc:
            raise InvalidArgument(f"lexicon[{n}].{exc.field}", str(exc)) from None
    return Lexicon(checked)


class EntryError(ValueError):
    """An entry that cannot be used; `field` is "text" or "ipa"."""

    def __init__(self, field: str, problem: str):
        super().__init__(problem)
        self.field = field


def make_entry(text: str, ipa: str, case_sensitive: bool, id_map: Mapping[str, Sequence[int]]) -> Entry:
    """An entry, checked: a word or phrase with a letter or digit, IPA the voice can speak."""
    words = text.split()
    if not words or not any(c.isalnum() for c in text):
        raise EntryError("text", "must hold a word (a letter or a digit)")
    if len(text) > MAX_TEXT_CHARS:
        raise EntryError("text", f"is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    if len(ipa) > MAX_IPA_CHARS:
        raise EntryError("ipa", f"is {len(ipa)} characters; the limit is {MAX_IPA_CHARS}")
    try:
        phonemes = ipa_phonemes(ipa, id_map)
    except PhonemeError as exc:
        raise EntryError("ipa", str(exc)) from None
    joined = " ".join(words)
    if len(phonemes) > MAX_IPA_PER_CHAR * len(joined):
        raise EntryError("ipa", f"has {len(phonemes)} phonemes for {len(joined)} characters of text; "
                                f"at most {MAX_IPA_PER_CHAR} per character")
    return Entry(joined, phonemes, case_sensitive)


# -- the --lexicon file -------------------------------------------------------------

@dataclass(frozen=True)
class _Line:
    number: int
    voice: str
    text: str
    ipa: str
    case_sensitive: bool


class LexiconFile:
    """The --lexicon file's entries, each voice's checked and built once."""

    def __init__(self, path: Path, lines: list[_Line]):
        self.path = path
        self._lines = lines
        self._built: dict[str, Optional[Lexicon]] = {}

    @classmethod
    def load(cls, path: Path) -> LexiconFile:
        """Read and parse `path`; LexiconFileError names the line."""
        try:
            content = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LexiconFileError(f"lexicon {path}: cannot read it: {exc}") from None
        lines, voice = [], _ALL
        for number, raw in enumerate(content.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            section = _SECTION.fullmatch(line)
            if section:
                voice = section.group(1).strip()
                continue
            lines.append(_parse_line(path, number, raw, voice))
        return cls(path, lines)

    def voices(self) -> set[str]:
        """The voices named in [voice] lines."""
        return {line.voice for line in self._lines} - {_ALL}

    def for_voice(self, name: str, id_map: Mapping[str, Sequence[int]]) -> Optional[Lexicon]:
        """The entries for voice `name` (every voice's, then its own), checked against its phonemes;
        None when there are none. LexiconFileError names the line."""
        if name not in self._built:
            entries = []
            for line in self._lines:
                if line.voice not in (_ALL, name):
                    continue
                try:
                    entries.append(make_entry(line.text, line.ipa, line.case_sensitive, id_map))
                except EntryError as exc:
                    raise LexiconFileError(f"lexicon {self.path} line {line.number} ({line.text!r}) for voice "
                                           f"{name}: {exc.field}: {exc}") from None
            self._built[name] = Lexicon(entries) if entries else None
        return self._built[name]


def _parse_line(path: Path, number: int, raw: str, voice: str) -> _Line:
    fields = [f.strip() for f in raw.split("\t")]
    if len(fields) not in (2, 3) or not fields[0] or not fields[1]:
        raise LexiconFileError(f"lexicon {path} line {number}: expected a word or phrase, a tab and its IPA "
                               f"(then optionally a tab and {_CASE_SENSITIVE}), got {raw.strip()!r}")
    if len(fields) == 3 and fields[2] != _CASE_SENSITIVE:
        raise LexiconFileError(f"lexicon {path} line {number}: the third field may only be {_CASE_SENSITIVE}, "
                               f"got {fields[2]!r}")
    return _Line(number, voice, fields[0], fields[1], len(fields) == 3)
