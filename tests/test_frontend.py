"""The frontend speaks to the model as Piper's training-time frontend did."""

import pytest
from piper_phonemize import phonemize_espeak

from server.frontend import (
    IGNORED,
    MAX_COMBINING_MARKS,
    Frontend,
    cut_phonemes,
    normalize,
    phoneme_ids,
    phonemize,
    sentence_phonemes,
    speakable,
    split_sentences,
)
from server.voices import bundled_voice


@pytest.fixture(scope="module")
def voice_config():
    return bundled_voice().config


def _uncut_frontend() -> Frontend:
    return Frontend(max_phonemes_per_chunk=100_000, first_chunk_phonemes=100_000)


def test_phonemize_reproduces_every_reference_vector(phoneme_vectors, voice_config):
    assert len(phoneme_vectors["cases"]) >= 20
    for case in phoneme_vectors["cases"]:
        sentences = phonemize(normalize(case["text"]), voice_config.espeak_voice)
        assert ["".join(s) for s in sentences] == [s["phonemes"] for s in case["sentences"]], case["text"]
        assert [list(phoneme_ids(s, voice_config.phoneme_id_map)) for s in sentences] == \
            [s["ids"] for s in case["sentences"]], case["text"]


# Reference sentences the abbreviation rule keeps in one span (case text ->
# groups of sentence numbers): "Dr." before a name is not an end here.
_JOINED_BY_ABBREVIATION = {"Dr. Smith lives at 221B Baker St. in London.": [(0, 1)]}


def _joined(sentences: list[dict], groups) -> list[dict]:
    """Reference sentences joined as Piper's training preprocessing joined an
    utterance's sentences: phonemes concatenated, one ^ ... $ around them."""
    out, grouped = [], {i for group in groups for i in group}
    for i, sentence in enumerate(sentences):
        group = next((g for g in groups if g[0] == i), None)
        if group:
            parts = [sentences[j] for j in group]
            ids = parts[0]["ids"][:-1] + [x for p in parts[1:] for x in p["ids"][2:]]  # drop $ and ^ _
            out.append({"phonemes": "".join(p["phonemes"] for p in parts), "ids": ids})
        elif i not in grouped:
            out.append(sentence)
    return out


def test_frontend_segments_reproduce_every_reference_vector(phoneme_vectors, voice_config):
    frontend = _uncut_frontend()
    for case in phoneme_vectors["cases"]:
        expected = _joined(case["sentences"], _JOINED_BY_ABBREVIATION.get(case["text"], []))
        segments = list(frontend.segments(case["text"], voice_config))
        assert [s.phonemes for s in segments] == [s["phonemes"] for s in expected], case["text"]
        assert [list(s.ids) for s in segments] == [s["ids"] for s in expected], case["text"]
        assert [s.sentence_index for s in segments] == list(range(len(expected)))
    dr = list(frontend.segments("Dr. Smith lives at 221B Baker St. in London.", voice_config))
    assert len(dr) == 1 and dr[0].ids.count(1) == 1 and dr[0].ids.count(2) == 1  # one ^, one $


@pytest.mark.parametrize("text", [
    "Yes! no way.", "Hello\n\nWorld again", "Hello\nWorld", "It is 3. Then go.",
    'He said "Stop." Then left.', "End.) Next one.", "Really?! Yes.", "Mr. smith is here",
    "I saw U.S. Army troops.", "Go!!! Now.", "Hi.\tThere", "one\u2026 Two", "Wait... What now?",
    "e.g. this one. And that.", "Stop.\n\n\nGo on", "It's 5 p.m. Then we go.",
])
def test_sentence_split_agrees_with_espeak_on_the_whole_text(text, voice_config):
    whole = ["".join(s) for s in phonemize_espeak(text, "en-us") if s]
    pieces = [s.phonemes for s in _uncut_frontend().segments(text, voice_config)]
    assert pieces == whole


# The documented exception to agreeing with espeak-ng: a title before a name,
# a number word before a digit, "vs" before anything. espeak-ng ends a
# sentence there; speakstream keeps one span and phonemizes it as one input.
@pytest.mark.parametrize("text", [
    "Dr. Smith paid $3.50.", "Mr. Jones and Mrs. Brown met Prof. X.", "See No. 5 and Fig. 3 today.",
    "It was Lakers vs. Celtics.", "We climbed Mt. Everest near St. Louis.", "(Dr. Who) is on.",
])
def test_abbreviation_keeps_one_span_where_espeak_ends_a_sentence(text, voice_config):
    espeak = [s for s in phonemize_espeak(text, "en-us") if s]
    assert len(espeak) > 1
    assert split_sentences(text) == [(0, len(text))]
    segments = list(_uncut_frontend().segments(text, voice_config))
    assert [s.phonemes for s in segments] == ["".join("".join(s) for s in espeak)]
    assert segments[0].span == (0, len(text)) and segments[0].sentence_index == 0


@pytest.mark.parametrize("text, first", [
    ("Dr. smith is here. Then", "Dr. smith is here. "),  # lowercase: espeak-ng's own call
    ("I said no. Then left.", "I said no. "),  # "no" is not "No." before a digit
    ("See No. Then", "See No. "),  # "No." before a word is the answer no
    ("John Smith Jr. Then", "John Smith Jr. "),  # Jr. and Sr. follow a name
    ("Call Dr.\n\nSmith", "Call Dr.\n\n"),  # a blank line always ends a sentence
    ('He saw the Dr." Then', 'He saw the Dr." '),  # a closing quote: an end
    ("Ask Dr. 5 times", "Ask Dr. "),  # a title before a digit is an end
    ("The U.S.Dr. Then", "The U.S.Dr. "),  # not a whole word
    ("A BDr. Then", "A BDr. "),
])
def test_abbreviation_rule_is_narrow(text, first):
    start, end = split_sentences(text)[0]
    assert text[start:end] == first


def test_api_doc_lists_exactly_the_abbreviations(repo_root):
    from server.frontend import ANY_NEXT, NUMBER_WORDS, TITLES

    rows = {}
    for line in (repo_root / "docs" / "API.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| a title") or line.startswith("| a number word"):
            rows[cells[0]] = set(cells[2].split())
        elif line.startswith("| vs, Vs"):
            rows["vs"] = set(cells[0].split(", "))
    assert rows == {"a title": TITLES, "a number word": NUMBER_WORDS, "vs": ANY_NEXT}


def test_a_format_character_inside_the_title_does_not_hide_it():
    text = normalize("D\u200br. Smith paid.")
    assert split_sentences(text) == [(0, len(text))]


def test_sentence_phonemes_joins_espeaks_sentences_without_a_separator(voice_config):
    parts = phonemize("Dr. Smith paid.", voice_config.espeak_voice)
    assert len(parts) == 2
    assert sentence_phonemes("Dr. Smith paid.", voice_config.espeak_voice) == parts[0] + parts[1]


def test_sentence_spans_cover_the_text_without_gaps():
    text = "One two. Three four!  Five six?\n\nSeven."
    spans = split_sentences(text)
    assert [text[a:b].strip() for a, b in spans] == ["One two.", "Three four!", "Five six?", "Seven."]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_normalize_keeps_length_and_replaces_controls():
    text = "a\x00b\u200bc\rd\te\nf \u200b.\u00a0\ue000"
    out = normalize(text)
    assert len(out) == len(text)
    assert out == f"a b{IGNORED}c\nd\te\nf  .  "


def test_format_characters_inside_a_word_do_not_split_it(voice_config):
    plain = phonemize("hello world", voice_config.espeak_voice)
    for text in ("hel\u200blo world", "hel\u00adlo wor\u200d\u2060ld", "\u202ehello\u202c world\u200f"):
        out = normalize(text)
        assert len(out) == len(text)
        assert phonemize(out, voice_config.espeak_voice) == plain, repr(text)


def test_a_flood_of_combining_marks_is_cut_to_the_stream_safe_limit():
    text = "a" + "\u0301" * 5000 + " b\u0301"
    out = normalize(text)
    assert len(out) == len(text)
    assert out.count("\u0301") == MAX_COMBINING_MARKS + 1
    assert out.endswith(" b\u0301")


def test_normalize_is_linear_in_a_flood_of_format_characters():
    text = "a" + "\u200b" * 200_000 + "b"
    assert normalize(text) == "a" + IGNORED * 200_000 + "b"  # would take minutes if quadratic


@pytest.mark.parametrize("text, expected", [
    ("...!!!", False), ("\u0301\u0302", False), ("\x00\u200b\ue000", False), (" - , ;", False),
    ("a", True), ("7", True), ("😀", True), ("你好", True), ("+", True),
])
def test_speakable_needs_a_letter_digit_or_symbol(text, expected):
    assert speakable(normalize(text)) is expected


def test_phoneme_ids_follow_pipers_rule(voice_config):
    id_map = voice_config.phoneme_id_map
    ids = phoneme_ids(["h", "ə"], id_map)
    assert ids == (1, 0, *id_map["h"], 0, *id_map["ə"], 0, 2)


def test_first_piece_is_cut_at_a_clause_mark_within_the_window():
    phonemes = list("aaaa bbbb, cccc dddd eeee ffff.")
    pieces = cut_phonemes(phonemes, first_limit=16, limit=100)
    assert "".join(pieces[0]) == "aaaa bbbb, "
    assert sum(pieces, []) == phonemes


def test_a_first_clause_is_cut_off_even_when_the_sentence_fits():
    phonemes = list("ʃˈʊɹ, aɪ kæn hˈɛlp, wɪð ðˈæt.")
    pieces = cut_phonemes(phonemes, first_limit=100, limit=100, clause_first=True)
    assert ["".join(p) for p in pieces] == ["ʃˈʊɹ, ", "aɪ kæn hˈɛlp, wɪð ðˈæt."]  # the first mark only
    assert cut_phonemes(phonemes, first_limit=100, limit=100) == [phonemes]  # off: cut by size alone


@pytest.mark.parametrize("text", ["ˈoʊ, nˈoʊ.",  # a clause shorter than _MIN_CLAUSE stays with its sentence
                                  "jˈɛs ɪt ɪz,",  # a mark at the end leaves nothing to say after it
                                  "ðɪs ɪz ɐ lˈɔŋ, lˈɔŋ sˈɛntəns."])  # a mark beyond first_limit
def test_no_first_clause_cut_where_none_is_worth_it(text):
    phonemes = list(text)
    assert cut_phonemes(phonemes, 12, 100, clause_first=True) == cut_phonemes(phonemes, 12, 100)


def test_only_a_turns_first_sentence_gets_the_clause_cut(voice_config):
    text = "Sure, I can help with that. Well, here it is."
    frontend = Frontend(max_phonemes_per_chunk=100, first_chunk_phonemes=30, first_clause_cut=True)
    spans = [text[s.span[0]:s.span[1]] for s in frontend.segments(text, voice_config)]
    assert spans == ["Sure, ", "I can help with that. ", "Well, here it is."]
    segments = list(frontend.segments(text, voice_config))
    assert [s.ends_sentence for s in segments] == [False, True, True]
    assert [s.sentence_index for s in segments] == [0, 0, 1]


def test_cut_falls_back_to_a_word_boundary_then_a_hard_cut():
    words = list("aaaa bbbb cccc dddd")
    pieces = cut_phonemes(words, first_limit=12, limit=12)
    assert "".join(pieces[0]) == "aaaa bbbb "
    assert sum(pieces, []) == words
    solid = list("x" * 30)
    assert [len(p) for p in cut_phonemes(solid, 10, 10)] == [10, 10, 10]


def test_long_sentence_is_cut_into_capped_segments_with_ordered_spans(voice_config):
    text = " ".join(["word"] * 300) + "."
    frontend = Frontend(max_phonemes_per_chunk=120, first_chunk_phonemes=40)
    segments = list(frontend.segments(text, voice_config))
    assert len(segments) > 3
    assert len(segments[0].phonemes) <= 40
    assert all(len(s.phonemes) <= 120 for s in segments)
    assert "".join(s.phonemes for s in segments) == "".join(phonemize_espeak(text, "en-us")[0])
    assert [s.span for s in segments] == sorted(s.span for s in segments)
    assert segments[0].span[0] == 0 and segments[-1].span[1] == len(text)
    assert all(a.span[1] == b.span[0] for a, b in zip(segments, segments[1:]))
    assert [s.ends_sentence for s in segments] == [False] * (len(segments) - 1) + [True]


def test_a_long_span_with_an_abbreviation_is_cut_like_any_sentence(voice_config):
    text = "Dr. Smith said " + " ".join(["word"] * 120) + "."
    frontend = Frontend(max_phonemes_per_chunk=120, first_chunk_phonemes=40)
    segments = list(frontend.segments(text, voice_config))
    assert len(segments) > 3 and len(segments[0].phonemes) <= 40
    assert all(len(s.phonemes) <= 120 for s in segments)
    assert "".join(s.phonemes for s in segments) == "".join(sentence_phonemes(text, voice_config.espeak_voice))
    assert {s.sentence_index for s in segments} == {0}
    assert segments[0].span[0] == 0 and segments[-1].span[1] == len(text)
    assert [s.ends_sentence for s in segments] == [False] * (len(segments) - 1) + [True]


def test_slower_speech_gets_shorter_segments(voice_config):
    text = " ".join(["word"] * 100) + "."
    frontend = Frontend(max_phonemes_per_chunk=100, first_chunk_phonemes=40)
    normal = list(frontend.segments(text, voice_config, length_scale=1.0))
    slow = list(frontend.segments(text, voice_config, length_scale=2.0))
    assert max(len(s.phonemes) for s in slow) <= 50 < max(len(s.phonemes) for s in normal)
    assert "".join(s.phonemes for s in slow) == "".join(s.phonemes for s in normal)
