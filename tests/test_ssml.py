"""SSML and inline phonemes without a server: what the document says, the phoneme ids each tag gives,
and the request characters every span points at."""

from __future__ import annotations

import tracemalloc

import pytest

from server.document import Document, DocumentReader, TextFormat, document_spans, inline_document
from server.errors import InvalidArgument
from server.frontend import Frontend, phoneme_ids, sentence_phonemes
from server.live import LiveSegmenter
from server.options import SPEED_RANGE, document_for
from server.ssml import MAX_DEPTH, SsmlReader, read_ssml
from server.voices import bundled_voice

_VOICE = bundled_voice()
_CONFIG = _VOICE.config
_ESPEAK = _CONFIG.espeak_voice
_TOMATO = "təmˈɑːtoʊ"


def _ssml(body: str) -> str:
    return f"<speak>{body}</speak>"


def _read(text: str, speed: float = 1.0) -> Document:
    return read_ssml(text, _CONFIG, speed, SPEED_RANGE)


def _segments(document: Document, words: bool = False):
    """Every segment of a document, as the engine would ask for them (one frontend call per span)."""
    text, items = document_spans(document)
    frontend, segments, index = Frontend(100_000, 100_000), [], 0
    for span, ends_sentence in items:
        found = frontend.span_segments(text, span, index, False, _CONFIG, words=words, document=document)
        segments += found
        if found and ends_sentence:
            index += 1
    return segments


def _espeak(text: str) -> list[str]:
    return sentence_phonemes(text, _ESPEAK)


def _ids(phonemes) -> tuple[int, ...]:
    return phoneme_ids(list(phonemes), _CONFIG.phoneme_id_map)


# -- the ids each tag gives ------------------------------------------------------------------

def test_phoneme_gives_exactly_the_given_ids():
    (segment,) = _segments(_read(_ssml(f'<phoneme alphabet="ipa" ph="{_TOMATO}">tomato</phoneme>')))
    assert segment.ids == _ids(_TOMATO)
    assert segment.ids != _ids(_espeak("tomato"))


def test_phoneme_inside_a_sentence_joins_espeaks_phonemes_with_word_spaces():
    (segment,) = _segments(_read(_ssml(f'Say <phoneme ph="{_TOMATO}">tomato</phoneme>, please.')))
    assert segment.phonemes == "".join(_espeak("Say")) + " " + _TOMATO + ", " + "".join(_espeak("please."))


def test_inline_phonemes_are_read_as_piper_reads_them():
    """Every code point one phoneme, whitespace the word separator; the same ids as <phoneme>."""
    inline = inline_document(f"Say [[ {_TOMATO} ]], please.", _CONFIG.phoneme_id_map)
    ssml = _read(_ssml(f'Say <phoneme ph="{_TOMATO}">tomato</phoneme>, please.'))
    assert [s.ids for s in _segments(inline)] == [s.ids for s in _segments(ssml)]
    (two_words,) = _segments(inline_document("[[ həlˈoʊ  wˈɜːld ]]", _CONFIG.phoneme_id_map))
    assert two_words.ids == _ids("həlˈoʊ wˈɜːld")


def test_plain_text_without_blocks_has_no_document():
    assert inline_document("Plain text, even with [brackets] and [[ an open one.", _CONFIG.phoneme_id_map) is None
    assert document_for("Hello there.", _VOICE, TextFormat.PLAIN, 1.0) is None


def test_sub_speaks_the_alias():
    (segment,) = _segments(_read(_ssml('<sub alias="World Health Organization">WHO</sub>')))
    assert segment.ids == _ids(_espeak("World Health Organization"))


def test_say_as_characters_spells_letter_by_letter():
    (segment,) = _segments(_read(_ssml('<say-as interpret-as="characters">NASA</say-as>')))
    assert segment.phonemes == _one_by_one("NASA") == "ˈɛn ˈeɪ ˈɛs ˈeɪ"
    assert segment.phonemes != "".join(_espeak("NASA"))  # "nˈæsɐ", a word


@pytest.mark.parametrize("kind, content, fmt, read_as", [
    ("cardinal", "1990", "", "1,990"),
    ("ordinal", "22", "", "22nd"),
    ("ordinal", "13", "", "13th"),
    ("date", "12/24/2026", "", "December 24th, 2026"),
    ("date", "2026-03-01", "ymd", "March 1st, 2026"),
    ("date", "3/2026", "my", "March 2026"),
])
def test_say_as_reads_numbers_and_dates_as_asked(kind, content, fmt, read_as):
    attrs = f'interpret-as="{kind}"' + (f' format="{fmt}"' if fmt else "")
    (segment,) = _segments(_read(_ssml(f"<say-as {attrs}>{content}</say-as>")))
    assert segment.phonemes == "".join(_espeak(read_as))


def _one_by_one(chars: str) -> str:
    return " ".join("".join(_espeak(c)) for c in chars)


def test_say_as_digits_and_telephone_read_each_digit():
    (segment,) = _segments(_read(_ssml('<say-as interpret-as="digits">123</say-as>')))
    assert segment.phonemes == _one_by_one("123")
    (phone,) = _segments(_read(_ssml('<say-as interpret-as="telephone">+1 (23) 4</say-as>')))
    assert phone.phonemes == ", ".join(_one_by_one(group) for group in ("+", "1", "23", "4"))


def test_a_say_as_that_does_not_fit_is_read_as_written_and_reported():
    document = _read(_ssml('<say-as interpret-as="date">soon</say-as> <say-as interpret-as="odd">x</say-as>'))
    assert document.text == "soon x"
    assert document.ignored == ["say-as interpret-as=date", "say-as interpret-as=odd"]


def test_unknown_tags_are_spoken_and_listed_once():
    text = _ssml('<emphasis level="strong">Very</emphasis> <voice name="x">good</voice> '
                 '<emphasis>indeed</emphasis> <prosody pitch="high">up</prosody>')
    document = _read(text)
    assert document.text == "Very good indeed up"
    assert document.ignored == ["emphasis", "voice", "prosody@pitch"]


def test_speak_attributes_are_accepted_silently():
    document = _read('<speak version="1.1" xmlns="http://www.w3.org/2001/10/synthesis" '
                     'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xml:lang="en-US">Hi.</speak>')
    assert document.text == "Hi." and document.ignored == []


# -- breaks, styles, sentences ----------------------------------------------------------------

def test_break_is_a_silence_segment_of_its_time():
    segments = _segments(_read(_ssml('Hello <break time="500ms"/>world.')))
    assert [s.silence_s for s in segments] == [None, 0.5, None]
    assert segments[1].ids == () and segments[1].span == (13, 13)  # where the <break> tag is
    assert [s.sentence_index for s in segments] == [0, 0, 0]  # a break inside a sentence


@pytest.mark.parametrize("attrs, seconds", [
    ('time="1.5s"', 1.5), ('time="250ms"', 0.25), ("", 0.75), ('strength="x-strong"', 1.25),
    ('strength="weak" time="2s"', 2.0),
])
def test_break_times_and_strengths(attrs, seconds):
    document = _read(_ssml(f"One <break {attrs}/>two"))
    assert [b.seconds for b in document.breaks.values()] == [seconds]


def test_a_break_of_none_is_no_break_at_all():
    assert _read(_ssml('One <break strength="none"/>two <break time="0ms"/>three')).breaks == {}


def test_prosody_sets_the_length_scale_and_gain_of_its_span_only():
    segments = _segments(_read(_ssml('Now <prosody rate="50%" volume="-6dB">slowly</prosody> back.')), )
    assert [(s.length_scale, round(s.gain, 3)) for s in segments] == [(None, 1.0), (2.0, 0.501), (None, 1.0)]


def test_nested_prosody_multiplies_and_the_request_speed_counts():
    document = _read(_ssml('<prosody rate="200%"><prosody rate="fast">x</prosody></prosody>'), speed=1.5)
    assert document.style_at(0).speed == 2.5
    with pytest.raises(InvalidArgument, match="rate 'fast' makes the speed 4.5; it must stay between"):
        _read(_ssml('<prosody rate="200%"><prosody rate="fast">x</prosody></prosody>'), speed=1.8)


def test_s_and_p_end_sentences():
    segments = _segments(_read(_ssml("<p><s>One</s><s>two</s></p><p>three four</p>")))
    assert [(s.phonemes, s.sentence_index, s.ends_sentence) for s in segments] == [
        ("".join(_espeak(w)), n, True) for n, w in enumerate(["One", "two", "three four"])]


# -- spans ------------------------------------------------------------------------------------

def test_spans_point_at_the_request_characters_through_entities_cdata_and_tags():
    text = ('<speak>\r\nCaf\u00e9 &amp; <![CDATA[b&b]]> &#x41;. '
            '<sub alias="Doctor">Dr.</sub> <phoneme ph="h\u0259l\u02c8o\u028a">Hello</phoneme> end.</speak>')
    document = _read(text)
    segments = _segments(document, words=True)
    assert [text[slice(*s.span)] for s in segments] == [
        "\r\nCaf\u00e9 &amp; <![CDATA[b&b]]> &#x41;. ",
        'Dr.</sub> <phoneme ph="h\u0259l\u02c8o\u028a">Hello</phoneme> end.']  # an alias speaks its element's text
    words = [text[slice(*w.span)] for s in segments for w in s.words]
    assert words == ["Caf\u00e9", "&amp;", "b&b", "&#x41;", "Dr.", "Hello", "end"]


def test_a_phoneme_or_sub_without_text_spans_its_tag():
    text = _ssml('One <phoneme ph="t\u028c">x</phoneme><sub alias="two"/>.')
    (segment,) = _segments(_read(text), words=True)
    assert [text[slice(*w.span)] for w in segment.words] == ["One", "x", '<sub alias="two"/>']


# -- in pieces (SynthesizeLive) ----------------------------------------------------------------

_LIVE_TEXT = _ssml('Dr. Smith said <break time="300ms"/>hi. <prosody rate="slow">Take <say-as '
                   'interpret-as="characters">AB</say-as> &amp; <sub alias="C D">cd</sub>.</prosody> '
                   '<s>Caf\u00e9 <phoneme ph="t\u028c">to</phoneme></s>Done!')


def _items_in_pieces(text: str, size: int) -> tuple[str, list]:
    document = Document()
    reader = SsmlReader(document, _CONFIG, 1.0, SPEED_RANGE, several=True)
    spans = DocumentReader(document, LiveSegmenter(max_pending_chars=0))
    items = []
    for start in range(0, len(text), size):
        reader.feed(text[start:start + size])
        items += spans.read()
    reader.feed("", final=True)
    items += spans.flush()
    return spans.segmenter.text, items


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_ssml_in_pieces_split_inside_tags_gives_the_whole_documents_spans(size):
    whole_text, whole_items = document_spans(_read(_LIVE_TEXT))
    assert _items_in_pieces(_LIVE_TEXT, size) == (whole_text, whole_items)


def test_several_documents_follow_one_another_in_a_live_context():
    text, items = _items_in_pieces(_ssml("One.") + "\n" + _ssml("Two."), 4)
    assert [text[a:b] for (a, b), _ in items] == ["One.", "Two."]


# -- safety --------------------------------------------------------------------------------

_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
           + "".join(f'<!ENTITY lol{n} "{("&lol" + str(n - 1) + ";") * 10 if n > 1 else "&lol;" * 10}">'
                     for n in range(1, 10))
           + ']><speak>&lol9;</speak>')


@pytest.mark.parametrize("text, where, problem", [
    (_LAUGHS, "line 1, column", "DOCTYPE is not allowed"),
    ('<!DOCTYPE s [<!ENTITY x SYSTEM "file:///etc/passwd">]><speak>&x;</speak>', "line 1", "DOCTYPE"),
    ("<speak>" + "<s>" * (MAX_DEPTH + 5) + "deep", "line 1, column 101", f"nest more than {MAX_DEPTH}"),
    ("<speak>\n  <s>Open", "line 2, column 10", "no element found"),
    ("<speak><s>a</p></speak>", "line 1, column 14", "mismatched tag"),
    ('<speak><phoneme ph="\u0261o\u028a g">go</phoneme></speak>', "line 1, column 8", "unknown phoneme 'g'"),
])
def test_bad_ssml_names_the_position_and_the_problem(text, where, problem):
    with pytest.raises(InvalidArgument) as info:
        _read(text)
    message = str(info.value)
    assert message.startswith(f"text: ssml {where}") and problem in message, message


def test_reading_hostile_ssml_stays_small():
    """The billion laughs are refused at their DOCTYPE, before any expansion; a document of
    10,000 characters of tags takes a few hundred kB at most."""
    hostile = [_LAUGHS, "<speak>" + "<s>a</s>" * 1_250 + "</speak>", "<speak>" + "&amp;" * 2_000 + "</speak>"]
    tracemalloc.start()
    try:
        for text in hostile:
            try:
                document_spans(_read(text))
            except InvalidArgument:
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


def test_breaks_one_after_another_each_stay_what_they_were():
    """Read in pieces, a break is given out before the next one arrives: they are two breaks."""
    text = _ssml('One <break time="200ms"/><break time="300ms"/>two')
    whole = _segments(_read(text))
    assert [s.silence_s for s in whole] == [None, 0.2, 0.3, None]
    assert _items_in_pieces(text, 1) == document_spans(_read(text))
