"""Lexicons: lookup (whole words, longest first, case), the ids an entry gives, the request's
bounds, the --lexicon file and a server started with one."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest
from servers import serving

from server.config import Settings
from server.errors import InvalidArgument
from server.frontend import Frontend, phoneme_ids, sentence_phonemes, split_sentences
from server.lexicon import (
    MAX_ENTRIES,
    Entry,
    Lexicon,
    LexiconFile,
    LexiconFileError,
    find,
    make_entry,
    request_lexicon,
)
from server.voices import bundled_voice
from speakstream.v1 import synthesizer_pb2 as pb

_VOICE = bundled_voice()
_CONFIG = _VOICE.config
_MAP = _CONFIG.phoneme_id_map
_ACME = "ˈækmi"
_TIMEOUT = 60


def _lexicon(*entries: tuple) -> Lexicon:
    return Lexicon(make_entry(text, ipa, bool(case), _MAP) for text, ipa, *case in entries)


def _found(text: str, *lexicons: Lexicon) -> list[tuple[str, str]]:
    return [(text[h.start:h.end], "".join(h.phonemes)) for h in find(text, 0, len(text), lexicons)]


def _segments(text: str, *lexicons: Lexicon, words: bool = False):
    frontend = Frontend(100_000, 100_000)
    return [s for n, span in enumerate(split_sentences(text))
            for s in frontend.span_segments(text, span, n, False, _CONFIG, words=words, lexicons=lexicons)]


# -- lookup -----------------------------------------------------------------------------------

def test_whole_words_only():
    lexicon = _lexicon(("acme", _ACME))
    assert _found("Acme, acme's ACME acmes Xacme 2acme acme2", lexicon) == [
        ("Acme", _ACME), ("acme", _ACME), ("ACME", _ACME)]


def test_the_longest_entry_wins_and_whitespace_runs_match_a_space():
    lexicon = _lexicon(("Acme", _ACME), ("Acme Corp", "ˈækmi kˈɔːɹp"), ("Acme Corp Ltd", "ˈækmi lˈɪmɪtᵻd"))
    assert _found("Acme  Corp\nLtd, Acme Corp, Acme Corporation", lexicon) == [
        ("Acme  Corp\nLtd", "ˈækmi lˈɪmɪtᵻd"), ("Acme Corp", "ˈækmi kˈɔːɹp"), ("Acme", _ACME)]


def test_case_sensitive_entries_match_only_as_written():
    lexicon = _lexicon(("US", "jˌuːˈɛs", True), ("us", "ˈʌs"))
    assert _found("US us Us", lexicon) == [("US", "jˌuːˈɛs"), ("us", "ˈʌs"), ("Us", "ˈʌs")]


def test_a_requests_entries_come_before_the_files():
    request, server = _lexicon(("Acme", "ɹˈiːkwɛst")), _lexicon(("acme", _ACME), ("Acme Corp", "kˈɔːɹp"))
    assert _found("Acme and Acme Corp", request, server) == [("Acme", "ɹˈiːkwɛst"), ("Acme Corp", "kˈɔːɹp")]


def test_entries_that_share_their_words_match_longest_first():
    """Phrases of 1 to 50 "a"s over 10,000 characters of them: 100 hits of the longest."""
    lexicon = Lexicon(make_entry(" ".join(["a"] * n), "ɐ", False, _MAP) for n in range(1, 51))
    text = "a " * 5_000
    hits = find(text, 0, len(text), [lexicon])
    assert len(hits) == 100 and all(text[h.start:h.end].split() == ["a"] * 50 for h in hits)


# -- the ids an entry gives ------------------------------------------------------------------------

def test_an_entry_gives_exactly_its_phonemes_and_the_rest_is_espeaks():
    (segment,) = _segments("I work at Acme Corp, in town.", _lexicon(("Acme Corp", "ˈækmi kˈɔːɹp")))
    expected = "".join(sentence_phonemes("I work at", "en-us")) + " ˈækmi kˈɔːɹp, " + \
        "".join(sentence_phonemes("in town.", "en-us"))
    assert segment.phonemes == expected
    assert segment.ids == phoneme_ids(list(expected), _MAP)


def test_text_without_a_hit_gives_the_plain_ids():
    text = "Nothing here is in the lexicon. Nor here!"
    assert [s.ids for s in _segments(text, _lexicon(("Acme", _ACME)))] == [s.ids for s in _segments(text)]


def test_an_entry_is_one_word_of_the_timings():
    text = "Call Acme Corp now."
    (segment,) = _segments(text, _lexicon(("Acme Corp", "ˈækmi kˈɔːɹp")), words=True)
    assert [text[slice(*w.span)] for w in segment.words] == ["Call", "Acme Corp", "now"]


# -- a request's entries ---------------------------------------------------------------------------

def _entries(*entries: tuple) -> list:
    return [pb.LexiconEntry(text=t, ipa=i, case_sensitive=bool(c)) for t, i, *c in entries]


@pytest.mark.parametrize("entries, message", [
    (_entries(("Acme", "ˈækmi"), ("Zed", "zˈɛd g")), "lexicon[1].ipa: unknown phoneme 'g'"),
    (_entries(("", "ə")), "lexicon[0].text: must hold a word"),
    (_entries(("...", "ə")), "lexicon[0].text: must hold a word"),
    (_entries(("a" * 101, "ə")), "lexicon[0].text: is 101 characters; the limit is 100"),
    (_entries(("word", "ə" * 101)), "lexicon[0].ipa: is 101 characters; the limit is 100"),
    (_entries(("a", "ə" * 11)), "lexicon[0].ipa: has 11 phonemes for 1 characters of text; at most 10"),
    (_entries(("word", "  ")), "lexicon[0].ipa: has no phonemes"),
    (_entries(("word", "^ə$")), "lexicon[0].ipa: unknown phoneme '^'"),
    (_entries(*[("w", "ə")] * (MAX_ENTRIES + 1)), f"lexicon: has {MAX_ENTRIES + 1} entries; the limit is 256"),
    (_entries(*[("w" * 100, "ə" * 100)] * 41), "lexicon: entries hold 8200 characters together; the limit is 8192"),
])
def test_a_requests_entries_are_checked_naming_the_field(entries, message):
    with pytest.raises(InvalidArgument) as info:
        request_lexicon(entries, _MAP)
    assert str(info.value).startswith(message), str(info.value)


def test_no_entries_no_lexicon():
    assert request_lexicon([], _MAP) is None


# -- the --lexicon file ---------------------------------------------------------------------------

def _file(tmp_path, content: str):
    path = tmp_path / "lexicon.tsv"
    path.write_text(content, encoding="utf-8")
    return path


def test_the_file_has_entries_for_every_voice_and_for_one(tmp_path):
    path = _file(tmp_path, "# names\nAcme\tˈækmi\nGIF\tdʒˈɪf\tcase-sensitive\n\n[other-voice]\nroute\tɹˈaʊt\n"
                           "[*]\nroute\tɹˈuːt\n")
    lexicons = LexiconFile.load(path)
    assert lexicons.voices() == {"other-voice"}
    mine = lexicons.for_voice("en_US-joe-medium", _MAP)
    assert _found("acme GIF gif route", mine) == [("acme", "ˈækmi"), ("GIF", "dʒˈɪf"), ("route", "ɹˈuːt")]
    other = lexicons.for_voice("other-voice", _MAP)
    assert _found("route", other) == [("route", "ɹˈuːt")]  # the later line of the same text wins


@pytest.mark.parametrize("content, message", [
    ("Acme ˈækmi\n", "line 1: expected a word or phrase, a tab and its IPA"),
    ("# c\nAcme\tˈækmi\tloud\n", "line 2: the third field may only be case-sensitive"),
    ("Acme\tˈækmi\n\nZed\tzˈɛd g\n", "line 3 ('Zed') for voice en_US-joe-medium: ipa: unknown phoneme 'g'"),
])
def test_a_bad_file_names_the_line(tmp_path, content, message):
    with pytest.raises(LexiconFileError) as info:
        LexiconFile.load(_file(tmp_path, content)).for_voice("en_US-joe-medium", _MAP)
    assert message in str(info.value)


def test_a_server_with_a_bad_lexicon_does_not_start(tmp_path):
    """Exit code 2 and the line named, before it listens."""
    path = _file(tmp_path, "Acme\tˈækmi\nZed\tzˈɛd g\n")
    result = subprocess.run([sys.executable, "-m", "server", "--port", "0", "--no-warm-up", "--lexicon", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"lexicon {path} line 2 ('Zed') for voice en_US-joe-medium: ipa: unknown phoneme 'g'" in result.stderr
    assert "listening" not in result.stdout


@pytest.mark.slow
async def test_a_servers_lexicon_and_a_requests_speak_as_inline_phonemes_do(tmp_path):
    """The same audio as the IPA written inline: the file's entry for every request, the
    request's own entry first."""
    path = _file(tmp_path, "Acme\tˈækmi\nWidget\twˈɪdʒɪt\n")
    settings = Settings(port=0, pool_size=1, max_queue=4, grace_s=0.5, warm_up=False, lexicon=path)

    def request(text: str, *entries) -> pb.SynthesizeRequest:
        return pb.SynthesizeRequest(text=text, noise_scale=0, noise_w=0, encoding=pb.AUDIO_ENCODING_FLOAT32,
                                    lexicon=_entries(*entries))

    async with serving(settings) as (_app, stub):
        async def audio(req) -> np.ndarray:
            response = await stub.Synthesize(req, timeout=_TIMEOUT)
            return np.frombuffer(response.audio, "<f4")

        by_file = await audio(request("Acme sells a widget."))
        inline = await audio(request("[[ ˈækmi ]] sells a [[ wˈɪdʒɪt ]]."))
        assert by_file.size and np.array_equal(by_file, inline)
        by_request = await audio(request("Acme sells a widget.", ("acme", "ˈeɪ kˈɔːɹp")))
        assert np.array_equal(by_request, await audio(request("[[ ˈeɪ kˈɔːɹp ]] sells a [[ wˈɪdʒɪt ]].")))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Synthesize(request("Hi.", ("hi", "hˈaɪ"), ("bad", "g")), timeout=_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("lexicon[1].ipa: unknown phoneme 'g'")


def test_entries_are_frozen_values():
    assert make_entry("Acme  Corp", "ˈækmi kˈɔːɹp", False, _MAP) == Entry("Acme Corp", tuple("ˈækmi kˈɔːɹp"))


async def test_a_section_for_no_voice_is_a_warning(tmp_path, caplog):
    path = _file(tmp_path, "[en_US-joe-mediun]\nAcme\tˈækmi\n")
    settings = Settings(port=0, pool_size=1, max_queue=4, grace_s=0.5, warm_up=False, lexicon=path)
    async with serving(settings):
        pass
    assert f"lexicon {path}: the section [en_US-joe-mediun] is for no voice this server has" in caplog.text
