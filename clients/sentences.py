"""Where speakstream-say cuts a text into calls: at sentence ends, by the server's rule.

The server takes at most --max-chars characters per call, so a longer text is
spoken in several calls. Cut at a sentence end, the calls sound as one text
when the client puts the server's sentence silence between them. The rule is
the server's (docs/API.md, "Sentences"), written again here because clients
do not import the server: a sentence ends at . ! ? (with closing quotes or
brackets) followed by whitespace, or at a blank line; not at an ellipsis, not
at a "." before a lowercase word, and not after an abbreviation before a name
or number ("Dr. Smith", "No. 5").
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass

_SENTENCE_END = re.compile(r"""(?:[.!?]+["'”’)\]]*(?P<ws>\s+)(?P<next>\S)?)|(?:\n[ \t\r\f\v]*\n\s*)""")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_TITLES = frozenset({"Mr", "Mrs", "Ms", "Mx", "Dr", "Prof", "Rev", "Fr", "St", "Mt", "Gen", "Capt", "Lt", "Col",
                     "Sgt", "Gov", "Sen", "Rep", "Hon", "Pres"})
_NUMBER_WORDS = frozenset({"No", "Nos", "Vol", "vol", "Fig", "fig", "pp", "Ch", "Art", "Sec"})
_ANY_NEXT = frozenset({"vs", "Vs"})
_ABBREVIATIONS = _TITLES | _NUMBER_WORDS | _ANY_NEXT


@dataclass(frozen=True)
class Piece:
    """The text of one call: text[start:end]."""

    start: int
    end: int
    ends_sentence: bool
    """False when a sentence longer than a call was cut at a space: no silence follows."""
    last_sentence: int
    """Offset (in the whole text) where the piece's last sentence begins."""


def sentence_ends(text: str) -> list[int]:
    """Offsets where a sentence ends (after its whitespace), each decided by the
    character that follows it; the end of `text` itself is not listed."""
    ends, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end("ws") if match.group("ws") is not None else match.end()
        if end >= len(text):
            break  # the deciding character has not come (yet)
        if match.group("ws") is None or _is_end(match, start):
            if text[start:end].strip():
                ends.append(end)
            start = end
    return ends


def _is_end(match: re.Match, low: int) -> bool:
    """Whether marks + whitespace + the next character end a sentence (the server's is_sentence_end)."""
    marks = match.group(0)[: match.start("ws") - match.start()]
    bare = marks.rstrip("\"'”’)]")
    nxt = match.group("next")
    if bare.endswith(".."):
        return False  # an ellipsis continues the sentence
    if bare.endswith(".") and nxt.islower():
        return False  # "5 p.m. today"
    if marks == "." and not _BLANK_LINE.search(match.group("ws")):
        word = _word_before(match.string, match.start(), low)
        if word in _TITLES:
            return not nxt.isupper()
        if word in _NUMBER_WORDS:
            return not nxt.isdigit()
        return word not in _ANY_NEXT
    return True


def _word_before(text: str, end: int, low: int) -> str:
    """The run of letters ending at `end`, or "" when it is part of a longer token ("U.S.Dr", "A1Dr")."""
    start = end
    while start > low and text[start - 1].isalpha():
        start -= 1
    if start > low and (text[start - 1].isalnum() or text[start - 1] == "."):
        return ""
    return text[start:end]


def split_text(text: str, max_chars: int) -> list[Piece]:
    """`text` in consecutive pieces of at most `max_chars` characters: as many
    whole sentences as fit, a longer sentence cut at its last space within the
    limit (at the limit when it has none). Pieces with nothing to speak are left out."""
    ends = sentence_ends(text) + [len(text)]
    pieces, start = [], 0
    while start < len(text):
        fit = bisect.bisect_right(ends, start + max_chars) - 1
        if fit >= 0 and ends[fit] > start:
            end, ends_sentence = ends[fit], True
        else:
            end, ends_sentence = _space_cut(text, start + 1, start + max_chars), False
        if speakable(text[start:end]):
            before = bisect.bisect_left(ends, end) - 1  # the end of the sentence before the last one
            last = ends[before] if before >= 0 and ends[before] > start else start
            pieces.append(Piece(start, end, ends_sentence, last))
        start = end
    return pieces


def _space_cut(text: str, low: int, limit: int) -> int:
    """The largest cut in [low, limit] right after whitespace, not after an
    abbreviation ("Dr. " keeps its name), else `limit` (inside a word)."""
    for i in range(limit, low - 1, -1):
        if text[i - 1].isspace() and not _after_abbreviation(text, i):
            return i
    return limit


def _after_abbreviation(text: str, end: int) -> bool:
    """Whether text[:end] ends with an abbreviation, its "." and whitespace."""
    dot = end - 1
    while dot >= 0 and text[dot].isspace():
        dot -= 1
    return dot >= 0 and text[dot] == "." and _word_before(text, dot, max(0, dot - 8)) in _ABBREVIATIONS


def speakable(text: str) -> bool:
    """Whether `text` has a letter, digit or symbol: the server refuses a call with none."""
    return any(unicodedata.category(c)[0] in "LNS" for c in text)


def live_cut(text: str, sent: int, soft: int, hard: int) -> tuple[int, bool] | None:
    """Where a live call's text should end, as (offset, at a sentence end), or None to go on.

    `text` is the call's text with a new piece appended at `sent` (what was
    sent before). From `soft` characters on, the call ends at the first
    sentence end the new piece decides; past `hard` (the limit) it ends at
    the last space within it, a cut inside a sentence.
    """
    for end in sentence_ends(text):
        if end >= max(sent, soft) and end <= hard:
            return end, True
    if len(text) <= hard:
        return None
    return _space_cut(text, max(sent, 1), hard), False
