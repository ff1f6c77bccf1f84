"""Phonemes given by the client: IPA checked against a voice's phoneme map, Piper's inline [[ ]] blocks.

A Piper voice knows a fixed set of phonemes (its phoneme_id_map: one
Unicode code point each, as espeak-ng writes IPA). Phonemes a client gives
(SSML `<phoneme ph>`, `[[ ]]` in plain text, a lexicon entry) are read as
Piper reads `[[ ]]`: every code point is one phoneme, and whitespace is the
word separator (the " " phoneme), so `[[ həlˈoʊ wˈɜːld ]]` is two words. A
code point the voice does not know is refused, naming it, rather than
dropped as Piper drops it: a dropped phoneme is a mispronunciation nobody
asked for.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Mapping, Sequence

# Piper's start, end and pad symbols: in every phoneme map, never a phoneme of the text.
RESERVED = frozenset("^$_")
# Letters that look like an IPA symbol the voices use instead.
_LOOKALIKES = {"g": "ɡ"}
# Piper's inline phoneme blocks (piper.voice._PHONEME_BLOCK_PATTERN): no line break inside.
INLINE = re.compile(r"\[\[(.*?)\]\]")
# Marks that can end a sentence (server/frontend.py): never inside a part's placeholder text.
_SENTENCE_MARKS = frozenset(".!?")


class PhonemeError(ValueError):
    """Phonemes a voice cannot speak; the message says which and why."""


@dataclass(frozen=True)
class Part:
    """A range of the spoken text that espeak-ng does not read as written.

    Exactly one of `phonemes` and `spell` is set.
    """

    start: int
    end: int
    phonemes: tuple[str, ...] = ()
    """Given phonemes (IPA of `<phoneme>`, `[[ ]]` or a lexicon entry), " " between words."""
    spell: tuple[str, ...] = ()
    """Groups of characters read one at a time (say-as characters, digits, telephone); a pause
    between groups."""


def ipa_phonemes(ipa: str, id_map: Mapping[str, Sequence[int]]) -> tuple[str, ...]:
    """The phonemes of `ipa`, one per code point, whitespace runs as one " ".

    PhonemeError when it is blank or has a code point the voice does not know.
    """
    words = ipa.split()
    if not words:
        raise PhonemeError("has no phonemes")
    for char in "".join(words):
        if char in RESERVED or char not in id_map:
            raise PhonemeError(_unknown(char))
    return tuple(" ".join(words))


def _unknown(char: str) -> str:
    name = unicodedata.name(char, "unnamed")
    problem = f"unknown phoneme {char!r} (U+{ord(char):04X} {name})"
    if char in RESERVED:
        return f"{problem}: it is Piper's start, end or pad symbol"
    hint = _LOOKALIKES.get(char)
    if hint:
        return f"{problem}; did you mean {hint!r} (U+{ord(hint):04X})?"
    return f"{problem}; the voice's phonemes are the keys of its phoneme_id_map"


def placeholder(text: str) -> str:
    """Text of the same length to stand for a part in the spoken text: no whitespace and
    no sentence mark, so neither a sentence end nor a cut can fall inside it."""
    return "".join("_" if c.isspace() or c in _SENTENCE_MARKS else c for c in text)

