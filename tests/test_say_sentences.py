"""clients/sentences.py: where speakstream-say cuts a text into calls, by the server's sentence rule."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from clients.sentences import live_cut, sentence_ends, split_text
from server.frontend import split_sentences

_CHAPTER = Path(__file__).resolve().parents[1] / "clients" / "samples" / "chapter.txt"
_TEXTS = [
    "Dr. Smith paid $3.50. Then he left! Did he? Yes.",
    "Mr. Jones vs. Mrs. Brown, No. 5 in Fig. 3. No. Then Jr. Smith.\n\nDr.\n\nWho?",
    "Hello there.  How are you?\n\nFine, thanks. Wait... what? \"Quoted.\" (Aside.) End",
    "St. in the city. Mr. Jones arrived at 5 p.m. today. The end.",
    "No punctuation at all here",
    "  Leading blanks. And trailing ones.   ",
]


def _server_ends(text: str) -> list[int]:
    """split_sentences's sentence ends that the next character decides (not the text's own end)."""
    return [end for _, end in split_sentences(text) if end < len(text)]


@pytest.mark.parametrize("text", _TEXTS + [_CHAPTER.read_text(encoding="utf-8")])
def test_sentence_ends_are_the_servers(text):
    assert sentence_ends(text) == _server_ends(text)


def test_sentence_ends_of_random_texts_are_the_servers():
    rng = random.Random(14)
    alphabet = ["a", "b", "A", "B", " ", " ", ".", "!", "?", "..", '"', "'", ")", "]", "\n", "\t", "3", ",",
                "Dr", "No", "vs", "St"]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert sentence_ends(text) == _server_ends(text), repr(text)


def _check_pieces(text: str, max_chars: int):
    pieces = split_text(text, max_chars)
    assert pieces[0].start == 0 and pieces[-1].end == len(text)
    for a, b in zip(pieces, pieces[1:]):
        assert a.end == b.start
    for piece in pieces:
        assert 0 < piece.end - piece.start <= max_chars
        assert piece.start <= piece.last_sentence < piece.end
    return pieces


def test_a_long_text_is_cut_at_sentence_ends_into_pieces_within_the_limit():
    chapter = _CHAPTER.read_text(encoding="utf-8")
    assert 13_000 <= len(chapter) <= 15_000
    text = (chapter + "\n\n") * 4  # ~56,000 characters
    pieces = _check_pieces(text, 2000)
    ends = sentence_ends(text) + [len(text)]
    assert all(p.ends_sentence and p.end in set(ends) for p in pieces)
    # As many whole sentences as fit: the next sentence end lies past the limit.
    for piece in pieces[:-1]:
        following = min(end for end in ends if end > piece.end)
        assert following - piece.start > 2000
    assert len(pieces) == pytest.approx(len(text) / 2000, rel=0.1)
    # Each piece's last sentence starts at the last sentence end inside it.
    for piece in pieces:
        inside = [end for end in ends if piece.start < end < piece.end]
        assert piece.last_sentence == (inside[-1] if inside else piece.start)


def test_a_sentence_longer_than_the_limit_is_cut_at_a_space_not_after_a_title():
    text = "It went on " + "and on " * 40 + "to Dr. Smith at last. Short one."
    pieces = _check_pieces(text, 100)
    assert [p.ends_sentence for p in pieces] == [False] * (len(pieces) - 1) + [True]
    for piece in pieces[:-1]:
        assert text[piece.end - 1] == " " and not text[:piece.end].endswith("Dr. ")
    assert "Dr. Smith" in "".join(text[p.start:p.end] for p in pieces if "Dr." in text[p.start:p.end])


def test_a_word_longer_than_the_limit_is_cut_at_the_limit_and_silent_pieces_are_left_out():
    assert [(p.start, p.end) for p in split_text("x" * 25, 10)] == [(0, 10), (10, 20), (20, 25)]
    text = "Hi. " + "- " * 30 + "Bye."
    assert [text[p.start:p.end] for p in split_text(text, 20)] == ["Hi. ", "Bye."]


def test_four_and_a_half_megabytes_split_into_pieces_a_call_can_carry():
    text = ("Ça coûte 5 €. " * 20 + "Ünïcödé wörds go on and on without end ") * 12000  # ~4.8 MB of UTF-8
    assert len(text.encode()) > 4_500_000
    pieces = split_text(text, 2000)
    assert max(len(text[p.start:p.end].encode()) for p in pieces) <= 4 * 2000
    assert max(p.end - p.start for p in pieces) <= 2000 and pieces[-1].end == len(text)


def test_a_live_call_ends_at_the_first_sentence_end_past_half_the_limit():
    call = "One. " * 10  # 50 characters sent so far
    assert live_cut(call + "Two", 50, soft=40, hard=80) == (50, True)  # "T" decides the end at 50
    assert live_cut("One. " * 5 + "Two", 25, soft=40, hard=80) is None  # not yet half the limit
    assert live_cut("a b c " * 6 + "d. e", 36, soft=10, hard=80) is None  # "e": not an end
    assert live_cut("Ask Dr. Who", 8, soft=2, hard=80) is None  # a title before a name
    # Past the limit without a sentence end: the last space within the limit, a cut inside a sentence.
    assert live_cut("word " * 30, 70, soft=40, hard=80) == (80, False)
    assert live_cut("word " * 15 + "x" * 20, 70, soft=40, hard=80) == (75, False)
