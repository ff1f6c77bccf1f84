"""LiveSegmenter: incremental sentence spans of text arriving in pieces (server/live.py)."""

from __future__ import annotations

import pytest

from server.frontend import normalize, split_sentences
from server.live import LiveSegmenter

_TEXTS = [
    "Dr. Smith paid $3.50. Then he left! Did he? Yes.",
    "Mr. Jones vs. Mrs. Brown, No. 5 in Fig. 3. No. Then Jr. Smith.\n\nDr.\n\nWho?",
    "Hello there.  How are you?\n\nFine, thanks. Wait... what? \"Quoted.\" (Aside.) End",
    "St. in the city. Mr. Jones arrived at 5 p.m. today. The end.",
    "No punctuation at all here",
    "  Leading blanks. And trailing ones.   ",
    "Ellipsis.. continues. Exclaims!! Really?! Ok.\tTab.",
]


def _char_by_char(text, **limits):
    seg = LiveSegmenter(**{"max_pending_chars": 0, **limits})
    spans = []
    for n, char in enumerate(text):
        spans.extend(seg.feed(char, now=float(n) / 1e6))
    last = seg.flush()
    return spans + ([last] if last else [])


@pytest.mark.parametrize("text", _TEXTS)
def test_char_by_char_gives_split_sentences_spans(text):
    assert _char_by_char(text) == split_sentences(normalize(text))


@pytest.mark.parametrize("text", _TEXTS)
@pytest.mark.parametrize("size", [2, 3, 7, 1000])
def test_pieces_of_any_size_give_split_sentences_spans(text, size):
    seg = LiveSegmenter(max_pending_chars=0)
    spans = []
    for i in range(0, len(text), size):
        spans.extend(seg.feed(text[i:i + size], now=0.0))
    last = seg.flush()
    assert spans + ([last] if last else []) == split_sentences(normalize(text))


def test_dr_and_a_decimal_are_not_sentence_ends():
    text = "Dr. Smith paid $3.50. Then"
    seg = LiveSegmenter()
    spans = [span for c in text for span in seg.feed(c, now=0.0)]
    assert spans == [(0, 22)] == split_sentences(text)[:1]  # not at "Dr." nor "3."
    seg = LiveSegmenter()
    assert [seg.feed(c, now=0.0) for c in "Dr. smith paid $3.50."] == [[]] * 21
    assert seg.flush() == (0, 21)


def test_no_before_a_digit_waits_for_the_next_character():
    seg = LiveSegmenter()
    assert seg.feed("See No. ", now=0.0) == []
    assert seg.feed("5", now=0.0) == []  # a number follows: not an end
    assert seg.feed(" now. Then", now=0.0) == [(0, 15)]
    seg = LiveSegmenter()
    assert seg.feed("See No. ", now=0.0) == []
    assert seg.feed("Then", now=0.0) == [(0, 8)]  # the answer "No." ends a sentence


def test_boundary_is_decided_on_the_first_character_after_the_space():
    seg = LiveSegmenter()
    assert seg.feed("Dr. ", now=0.0) == []
    assert seg.feed("   ", now=0.0) == []  # still undecided: more whitespace
    assert seg.feed("smith is here. ", now=0.0) == []  # lowercase: not an end
    assert seg.feed("Then", now=0.0) == [(0, 22)]
    assert seg.text[0:22] == "Dr.    smith is here. "
    seg2 = LiveSegmenter()
    assert seg2.feed("He is ill. ", now=0.0) == []
    assert seg2.feed("Smith", now=0.0) == [(0, 11)]  # as split_sentences("... ill. Smith") decides
    seg3 = LiveSegmenter()
    assert seg3.feed("Dr. ", now=0.0) == []
    assert seg3.feed("Smith", now=0.0) == []  # a title before a name: not an end


def test_flush_mid_sentence_speaks_the_fragment_and_starts_a_new_region():
    seg = LiveSegmenter()
    assert seg.feed("Let me think", now=0.0) == []
    assert seg.flush() == (0, 12)
    assert seg.flush() is None
    assert seg.feed(" about it. Ok", now=1.0) == [(12, 23)]
    assert seg.pending == "Ok"


def test_clear_drops_pending_text_and_keeps_offsets():
    seg = LiveSegmenter()
    seg.feed("First one. Second half", now=0.0)
    seg.clear()
    assert seg.pending == "" and seg.pending_since is None
    assert seg.feed("New turn. X", now=1.0) == [(22, 32)]
    assert seg.text[22:32] == "New turn. "


def test_timer_forces_a_split_at_the_last_word_boundary():
    seg = LiveSegmenter(max_pending_ms=100)
    assert seg.feed("one two thr", now=0.0) == []
    assert seg.due_at() == pytest.approx(0.1)
    assert seg.force_split(now=0.05) is None  # not due yet
    assert seg.force_split(now=0.1) == (0, 8)
    assert seg.pending == "thr"
    assert seg.pending_since == 0.1
    assert seg.force_split(now=0.3) is None  # half a word is never spoken alone
    assert seg.feed("ee ", now=0.3) == []
    assert seg.force_split(now=0.3) == (8, 14)
    assert seg.pending_since is None and seg.force_split(now=99.0) is None


def test_forced_cuts_never_part_a_title_from_its_name():
    seg = LiveSegmenter(max_pending_ms=100)
    seg.feed("Ask Dr. ", now=0.0)
    assert seg.force_split(now=1.0) == (0, 4)  # before "Dr.", not after it
    assert seg.force_split(now=2.0) is None  # "Dr. " alone waits for the name
    assert seg.feed("Smith now", now=2.0) == []
    assert seg.force_split(now=3.0) == (4, 14)


def test_the_timer_waits_for_text_when_nothing_can_be_cut():
    seg = LiveSegmenter(max_pending_ms=100)
    seg.feed("Ask Dr. ", now=0.0)
    assert seg.force_split(now=1.0) == (0, 4)
    assert seg.due_at() == pytest.approx(1.1)
    assert seg.force_split(now=2.0) is None  # "Dr. " alone: no cut
    assert seg.due_at() is None  # so the timer sleeps until the next piece instead of spinning
    seg.feed("Smith", now=3.0)
    assert seg.due_at() == pytest.approx(1.1)  # due again: "Dr. Smith" has waited since 1.0
    assert seg.force_split(now=3.0) is None and seg.due_at() is None  # "Smith" is not complete
    seg.feed(" is", now=4.0)
    assert seg.force_split(now=4.0) == (4, 14)


def test_length_cuts_never_part_a_title_from_its_name():
    seg = LiveSegmenter(max_pending_chars=10)
    assert seg.feed("Go to St. Louis", now=0.0) == [(0, 6)]  # not "Go to St. "
    assert seg.pending == "St. Louis"


def test_timer_and_length_cuts_are_forced_sentences_and_flushes_are_not():
    seg = LiveSegmenter(max_pending_ms=100, max_pending_chars=12)
    spans = seg.feed("One. Two three four five", now=0.0)
    assert spans == [(0, 5), (5, 15)]  # a sentence, then a length cut
    assert not seg.is_forced(spans[0]) and seg.is_forced(spans[1])
    timed = seg.force_split(now=1.0)
    assert timed == (15, 20) and seg.is_forced(timed)
    flushed = seg.flush()
    assert flushed == (20, 24) and not seg.is_forced(flushed)


def test_the_timer_waits_while_audio_is_still_playing():
    seg = LiveSegmenter(max_pending_ms=100)
    seg.feed("a long sentence still coming", now=0.0)
    assert seg.due_at() == pytest.approx(0.1)
    assert seg.due_at(playing_until=5.0) == pytest.approx(4.9)  # 100 ms before the audio runs out
    assert seg.due_at(playing_until=0.05) == pytest.approx(0.1)  # nothing left to play: as before
    assert seg.force_split(now=1.0, playing_until=5.0) is None
    assert seg.force_split(now=4.9, playing_until=5.0) == (0, 22)


def test_format_characters_are_normalized_with_their_neighbours():
    text = "Say hel\u200blo now.\u200b Next \u200b"
    seg = LiveSegmenter()
    spans = [span for char in text for span in seg.feed(char, now=0.0)]
    assert seg.text == normalize(text)  # "hel\u2060lo" stays one word, as in SynthesizeStream
    assert spans + [seg.flush()] == split_sentences(normalize(text)) == [(0, 17), (17, len(text))]
    long_text = "word " * 300 + "hel\u200blo there"  # far past the re-normalized tail's start
    seg = LiveSegmenter(max_pending_chars=5000)
    for char in long_text:
        seg.feed(char, now=0.0)
    assert seg.text == normalize(long_text)


def test_pending_since_is_the_first_pending_character():
    seg = LiveSegmenter(max_pending_ms=100)
    seg.feed("   ", now=1.0)
    assert seg.pending_since is None
    seg.feed("a", now=2.0)
    seg.feed("b", now=3.0)
    assert seg.pending_since == 2.0
    seg.feed(". C", now=4.0)
    assert seg.pending_since == 4.0  # the sentence went out; "C" waits from now


def test_max_pending_chars_cuts_a_run_on_at_word_boundaries():
    words = " ".join(["word"] * 400)
    seg = LiveSegmenter(max_pending_chars=50)
    spans = []
    for c in words:
        spans.extend(seg.feed(c, now=0.0))
        assert len(seg.pending) <= 50
    spans.append(seg.flush())
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert spans[-1][1] == len(words)
    for start, end in spans[:-1]:
        assert end - start <= 50 and words[end - 1] == " "


def test_max_pending_chars_cuts_a_word_longer_than_the_limit_at_the_limit():
    seg = LiveSegmenter(max_pending_chars=10)
    assert seg.feed("x" * 25, now=0.0) == [(0, 10), (10, 20)]
    assert seg.pending == "x" * 5


def test_offsets_count_code_points_and_normalize_keeps_lengths():
    seg = LiveSegmenter()
    assert seg.feed("Héllo 👋. \u200bNext", now=0.0) == [(0, 10)]
    assert seg.offset == len("Héllo 👋. \u200bNext")


def test_random_texts_in_random_pieces_give_split_sentences_spans():
    import random
    rng = random.Random(9)
    alphabet = ["a", "b", "A", "B", " ", " ", ".", "!", "?", "..", '"', "'", ")", "]", "\n", "\t", "3", ",",
                "Dr", "No", "vs", "\u200b"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        seg, spans, i = LiveSegmenter(max_pending_chars=0), [], 0
        while i < len(text):
            size = rng.randint(1, 5)
            spans.extend(seg.feed(text[i:i + size], now=0.0))
            i += size
        last = seg.flush()
        assert seg.text == normalize(text), repr(text)
        assert spans + ([last] if last else []) == split_sentences(normalize(text)), repr(text)


def test_a_timer_cut_after_a_sentence_end_waiting_for_its_next_character_is_a_sentence_end():
    """ "Hello there. " and a pause: the timer speaks it as a sentence (silence
    follows, the next text is a new sentence), not as a forced mid-sentence cut."""
    seg = LiveSegmenter(max_pending_ms=100)
    assert seg.feed("Hello there. ", now=0.0) == []  # undecided: the next character has not come
    cut = seg.force_split(now=0.1)
    assert cut == (0, 13) and not seg.is_forced(cut)
    assert seg.feed("How are you? Fine", now=5.0) == [(13, 26)]
    for text, span in (("Wow!\" ", (0, 6)), ("Done?) ", (0, 7)), ("Para one\n\n", (0, 10))):
        seg = LiveSegmenter(max_pending_ms=100)
        seg.feed(text, now=0.0)
        cut = seg.force_split(now=1.0)
        assert cut == span and not seg.is_forced(cut), text


def test_a_timer_cut_elsewhere_stays_forced():
    for text, span in (("Wait... ", (0, 8)),  # an ellipsis goes on
                       ("one two ", (0, 8)),  # no sentence mark
                       ("It is 5 p.m. and", (0, 13))):  # decided: "." before a lowercase word
        seg = LiveSegmenter(max_pending_ms=100)
        seg.feed(text, now=0.0)
        cut = seg.force_split(now=1.0)
        assert cut == span and seg.is_forced(cut), text


def test_a_title_and_a_pause_still_wait_for_the_name():
    seg = LiveSegmenter(max_pending_ms=100)
    assert seg.feed("Dr. ", now=0.0) == []
    assert seg.force_split(now=1.0) is None  # "Dr. " alone is not spoken, as a sentence or otherwise
    assert seg.feed("Smith is in. Then", now=2.0) == [(0, 17)]  # one sentence: "Dr. Smith is in. "
    seg = LiveSegmenter(max_pending_ms=100)
    seg.feed("Ask Dr. ", now=0.0)
    cut = seg.force_split(now=1.0)
    assert cut == (0, 4) and seg.is_forced(cut)  # before the title, and no sentence end
