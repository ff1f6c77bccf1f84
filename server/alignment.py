"""Which words of the text each phoneme speaks.

espeak-ng gives a sentence's phonemes as words separated by spaces, but does
not say which text they came from, and one text token can become several
spoken words ("$3.50" is "dollar three point five zero", "1990s" is three).
So each token of the text is phonemized on its own as well, and the
sentence's phoneme words are aligned to the tokens' phoneme words in order
(an edit-distance alignment over whole phoneme words, stress marks and
punctuation ignored). Every token with letters, digits or symbols gets the
phoneme words aligned to it; a token espeak-ng merged into its neighbour is
given to that neighbour's timing (its text span grows), so every word of the
text is covered once. Punctuation gets no phonemes of its own here.

Only requests that ask for timestamps pay for this (a few hundred
microseconds per token on the frontend thread, less for repeated words).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

_TOKEN = re.compile(r"\S+")
_STRESS_AND_PUNCTUATION = re.compile(r"[ˈˌ.,;:!?¡¿\"'“”‘’()\[\]{}…—–-]")
PUNCTUATION_PHONEMES = frozenset(".,;:!?¡¿\"“”()—–…")
# Marks espeak-ng never speaks: a token of only these is no word. Other
# punctuation alone ("&", "#", "@") is read out and stays a word.
_SILENT_MARKS = frozenset(".,;:!?¡¿\"'“”‘’()[]{}…—–-/")
_GAP = 1.0
_MERGE = 3
_MERGE_COST = 0.5  # per extra word joined: a merge must match well to beat word-for-word
_RESYNC = 6  # words looked ahead, on each side, for the next word both sides agree on
_MISMATCH = 1.2  # two unrelated words side by side: cheaper than leaving both unmatched (2 x _GAP)


@dataclass(frozen=True)
class Word:
    """A word of the text and the phonemes (indices into a sentence's phoneme list) that speak it.

    `phonemes` also holds the punctuation after the word (its pause), so the
    words' phonemes together are every phoneme but the spaces; `sounds` is
    how many of them, from the first, are the word itself.
    """

    span: tuple[int, int]
    phonemes: tuple[int, ...]
    sounds: int


def tokens(text: str, span: tuple[int, int]) -> list[tuple[int, int]]:
    """Spans of the words of text[span] that can be spoken: whitespace-separated, leading and
    trailing punctuation trimmed (symbols such as $ and % stay), with a letter, digit or
    symbol, or punctuation that is read out ("&")."""
    found = []
    for match in _TOKEN.finditer(text, span[0], span[1]):
        start, end = match.span()
        while start < end and unicodedata.category(text[start]).startswith("P"):
            start += 1
        while end > start and unicodedata.category(text[end - 1]).startswith("P"):
            end -= 1
        if any(unicodedata.category(c)[0] in "LNS" for c in text[start:end]):
            found.append((start, end))
        elif any(c not in _SILENT_MARKS for c in match.group()):
            found.append(match.span())
    return found


def align(text: str, span: tuple[int, int], phonemes: Sequence[str],
          phonemize_word: Callable[[str], str]) -> list[Word]:
    """The words of text[span] with the indices of `phonemes` (the span's phonemes as one
    list, words separated by " ") that speak each; words in text order, each once.

    :param phonemize_word: a token's phonemes on its own, as one string.
    """
    spoken = _phoneme_words(phonemes)
    if not spoken:
        return []
    token_spans = tokens(text, span)
    labels: list[int] = []  # the token of each of the tokens' own phoneme words
    reference: list[str] = []
    for n, (start, end) in enumerate(token_spans):
        for word in phonemize_word(text[start:end]).split():
            if _bare(word):
                reference.append(_bare(word))
                labels.append(n)
    owners = _align([_bare(_join(phonemes, w)) for w in spoken], reference, labels)
    return _with_pauses(_words(token_spans, spoken, owners, phonemes), phonemes)


def _phoneme_words(phonemes: Sequence[str]) -> list[list[int]]:
    """Indices of each word of `phonemes` that has a sound (not bare punctuation). Words are
    separated by spaces, and by punctuation followed by a sound: espeak-ng's own sentences
    inside one span ("Dr." "Smith") are joined without a space."""
    words: list[list[int]] = []
    current: list[int] = []
    for i, phoneme in enumerate(phonemes):
        if phoneme == " " or (current and phonemes[i - 1] in PUNCTUATION_PHONEMES
                              and phoneme not in PUNCTUATION_PHONEMES):
            if current:
                words.append(current)
            current = []
        if phoneme != " ":
            current.append(i)
    if current:
        words.append(current)
    return [w for w in words if _bare(_join(phonemes, w))]


def _join(phonemes: Sequence[str], indices: list[int]) -> str:
    return "".join(phonemes[i] for i in indices)


def _bare(word: str) -> str:
    return _STRESS_AND_PUNCTUATION.sub("", word)


def _align(spoken: list[str], reference: list[str], labels: list[int]) -> list[list[tuple[int, float]]]:
    """For each spoken word, the tokens it belongs to, each with the fraction of the word
    (from its start) where that token ends.

    Words the two sides agree on are matched in order; each stretch between
    two agreements is aligned by edit distance (_align_stretch). Unmatched
    spoken words go with the token before them (the next one at the start).
    """
    owners: list[Optional[list[tuple[int, float]]]] = [None] * len(spoken)
    i = j = 0
    while i < len(spoken) and j < len(reference):
        if spoken[i] == reference[j]:
            owners[i] = [(labels[j], 1.0)]
            i, j = i + 1, j + 1
            continue
        di, dj = _next_agreement(spoken, reference, i, j)
        owners[i:i + di] = _align_stretch(spoken[i:i + di], reference[j:j + dj], labels[j:j + dj])
        i, j = i + di, j + dj
    return _fill(owners)


def _next_agreement(spoken: list[str], reference: list[str], i: int, j: int) -> tuple[int, int]:
    """How far (di, dj) to the next word both sides agree on, nearest first; the rest of
    both when there is none within _RESYNC words."""
    for distance in range(1, 2 * _RESYNC + 1):
        for di in range(max(0, distance - _RESYNC), min(distance, _RESYNC) + 1):
            dj = distance - di
            if i + di < len(spoken) and j + dj < len(reference) and spoken[i + di] == reference[j + dj]:
                return di, dj
    return len(spoken) - i, len(reference) - j


def _align_stretch(spoken: list[str], reference: list[str], labels: list[int]) -> list[Optional[list]]:
    """An edit-distance alignment of a stretch of spoken words to the tokens' own words:
    equal words cost nothing, unequal ones by how much they differ, a word on one side
    only costs one; a spoken word may also match up to _MERGE consecutive token words at
    once (espeak-ng runs "for the" into one word, and "Hello... world" into one with no
    space at all), and is then shared between them in proportion to their lengths."""
    m, n = len(spoken), len(reference)
    owners: list[Optional[list[tuple[int, float]]]] = [None] * m
    if not m or not n:
        return owners
    cost = [[0.0] * (n + 1) for _ in range(m + 1)]
    step: list[list[tuple[int, int]]] = [[(0, 0)] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        cost[i][0], step[i][0] = i * _GAP, (1, 0)
    for j in range(1, n + 1):
        cost[0][j], step[0][j] = j * _GAP, (0, 1)
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            options = [(cost[i - 1][j] + _GAP, (1, 0)), (cost[i][j - 1] + _GAP, (0, 1))]
            for k in range(1, min(_MERGE, j) + 1):
                joined = "".join(reference[j - k:j])
                options.append((cost[i - 1][j - k] + _difference(spoken[i - 1], joined) + _MERGE_COST * (k - 1),
                                (1, k)))
            cost[i][j], step[i][j] = min(options, key=lambda option: option[0])
    i, j = m, n
    while i or j:
        di, dj = step[i][j]
        if di and dj:
            owners[i - 1] = _shares(reference[j - dj:j], labels[j - dj:j])
        i, j = i - di, j - dj
    return owners


def _shares(words: list[str], labels: list[int]) -> list[tuple[int, float]]:
    """(token, fraction of the joined word where it ends) for consecutive token words."""
    total, done = sum(len(w) for w in words) or 1, 0
    shares: list[tuple[int, float]] = []
    for word, label in zip(words, labels):
        done += len(word)
        if shares and shares[-1][0] == label:
            shares[-1] = (label, done / total)
        else:
            shares.append((label, done / total))
    return shares


def _difference(a: str, b: str) -> float:
    """0 for equal words, more the less their ends agree, at most _MISMATCH ("a" read as
    "ɐ" in a sentence is "eɪ" on its own)."""
    if a == b:
        return 0.0
    common = len(_common_prefix(a, b)) + len(_common_prefix(a[::-1], b[::-1]))
    return min(_MISMATCH, 2.0 * (1.0 - min(1.0, common / max(len(a), len(b)))))


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _fill(owners: list[Optional[list[tuple[int, float]]]]) -> list[list[tuple[int, float]]]:
    """Unmatched words take the last token before them (the first one after, at the start)."""
    first = next((o for o in owners if o), [])
    last = [(first[0][0], 1.0)] if first else []
    filled = []
    for owner in owners:
        if owner:
            last = [(owner[-1][0], 1.0)]
        filled.append(owner or last)
    return filled


def _words(token_spans: list[tuple[int, int]], spoken: list[list[int]],
           owners: list[list[tuple[int, float]]], phonemes: Sequence[str]) -> list[Word]:
    """One Word per token that got phonemes; a token that got none joins the word before
    it (or after it, at the start), so every token is covered by exactly one Word."""
    by_token: dict[int, list[int]] = {}
    for indices, shares in zip(spoken, owners):
        for token, part in _split(indices, shares, phonemes):
            by_token.setdefault(token, []).extend(part)
    if not by_token:
        return []
    words: list[tuple[list[int], list[int]]] = []  # (span as [start, end], phonemes)
    pending_start: Optional[int] = None
    for n, (start, end) in enumerate(token_spans):
        found = by_token.get(n)
        if found:
            words.append(([pending_start if pending_start is not None else start, end], found))
            pending_start = None
        elif words:
            words[-1][0][1] = end
        elif pending_start is None:
            pending_start = start
    return [Word((s, e), tuple(indices), 0) for (s, e), indices in words]


def _split(indices: list[int], shares: list[tuple[int, float]],
           phonemes: Sequence[str]) -> list[tuple[int, list[int]]]:
    """A spoken word's phoneme indices cut between its tokens at their fractions of its
    sounds; stress marks go with the sound after them, punctuation with the sound before."""
    sounds = [k for k, i in enumerate(indices) if _bare(phonemes[i])]
    parts, begin, used = [], 0, 0
    for n, (token, fraction) in enumerate(shares):
        last = n == len(shares) - 1
        stop = len(sounds) if last else max(used, round(fraction * len(sounds)))
        if stop > used:
            end = len(indices) if last else sounds[stop - 1] + 1
            parts.append((token, indices[begin:end]))
            begin, used = end, stop
    return parts


def _with_pauses(words: list[Word], phonemes: Sequence[str]) -> list[Word]:
    """Every phoneme but the spaces given to a word: punctuation (and anything unaligned) to
    the word before it, or to the first word; `sounds` counts each word's own phonemes."""
    if not words:
        return []
    owner_of = {i: n for n, word in enumerate(words) for i in word.phonemes}
    extra: list[list[int]] = [[] for _ in words]
    current = 0
    for i, phoneme in enumerate(phonemes):
        if i in owner_of:
            current = owner_of[i]
        elif phoneme != " ":
            extra[current].append(i)
    result = []
    for word, more in zip(words, extra):
        indices = sorted(set(word.phonemes) | set(more))
        last_sound = max((k for k, i in enumerate(indices) if phonemes[i] not in PUNCTUATION_PHONEMES
                          and i in word.phonemes), default=len(indices) - 1)
        result.append(Word(word.span, tuple(indices), last_sound + 1))
    return result


@functools.lru_cache(maxsize=16_384)
def cached_word_phonemes(word: str, espeak_voice: str, phonemize) -> str:
    """A token's phonemes on its own (joined), cached: common words repeat across requests."""
    return " ".join("".join(sentence) for sentence in phonemize(word, espeak_voice))
