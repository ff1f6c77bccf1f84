"""Word and phoneme timestamps (server/alignment.py, server/timings.py) through the real server."""

from __future__ import annotations

import unicodedata

import grpc
import pytest

from bench.texts import TEXTS
from server import alignment
from server.frontend import Frontend, normalize, split_sentences
from server.voices import bundled_voice
from speakstream.v1 import synthesizer_pb2 as pb

_TIMEOUT = 60
_NATIVE = 22050
_RATES = (8000, 16000, _NATIVE, 48000)
_SPEEDS = (0.5, 1.0, 2.0)


async def _stream(stub, text: str, **fields) -> list[pb.AudioChunk]:
    request = pb.SynthesizeRequest(text=text, noise_scale=0.0, noise_w=0.0,
                                   timestamps=pb.TIMESTAMPS_WORDS_AND_PHONEMES, **fields)
    return [c async for c in stub.SynthesizeStream(request, timeout=_TIMEOUT)]


def _words(chunks) -> list[pb.WordTiming]:
    return [w for c in chunks for w in c.words]


def _segment_ends(chunks) -> dict[tuple[int, int], int]:
    """Each segment's text span -> the sample where its audio ends (chunk_ms 0: one chunk per window)."""
    ends = {}
    for c in chunks:
        if c.text_span.start != c.text_span.end:
            ends[(c.text_span.start, c.text_span.end)] = c.sample_offset + c.num_samples
    return ends


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize("speed", _SPEEDS)
async def test_timings_are_ordered_inside_the_audio_and_end_each_segment_exactly(stub, name, speed):
    text = TEXTS[name]
    native = await _stream(stub, text, speed=speed)
    total = sum(c.num_samples for c in native)
    words = _words(native)
    assert words, "no timings"
    for word in words:
        assert 0 <= word.start_sample < word.end_sample <= total
        phonemes = list(word.phonemes)
        assert phonemes and phonemes[0].start_sample == word.start_sample
        assert all(a.end_sample <= b.start_sample for a, b in zip(phonemes, phonemes[1:]))
        assert all(p.start_sample <= p.end_sample for p in phonemes)
    assert all(a.phonemes[-1].end_sample <= b.start_sample for a, b in zip(words, words[1:]))
    # The last phoneme of every segment ends on its audio's last sample (segment spans
    # are estimated inside a sentence, so the ends are matched by sample, not by span).
    phoneme_ends = {p.end_sample for w in words for p in w.phonemes}
    for span, audio_end in _segment_ends(native).items():
        assert audio_end in phoneme_ends, (span, audio_end)
    # At every other rate: the same timings, scaled, within one output sample.
    for rate in _RATES:
        if rate == _NATIVE:
            continue
        resampled = _words(await _stream(stub, text, speed=speed, sample_rate_hz=rate))
        assert [w.text_span for w in resampled] == [w.text_span for w in words]
        for a, b in zip(resampled, words):
            for got, want in ((a.start_sample, b.start_sample), (a.end_sample, b.end_sample),
                              (a.phonemes[-1].end_sample, b.phonemes[-1].end_sample)):
                assert abs(got - want * rate / _NATIVE) <= 1, (rate, got, want)


@pytest.mark.parametrize("chunk_ms", [0, 20, 250])
async def test_each_word_comes_with_the_chunk_its_first_sample_is_in(stub, chunk_ms):
    text = "The quick brown fox jumps over the lazy dog. Then it rests."
    chunks = await _stream(stub, text, chunk_ms=chunk_ms, sample_rate_hz=16000)
    for chunk in chunks:
        for word in chunk.words:
            assert chunk.sample_offset <= word.start_sample < chunk.sample_offset + max(chunk.num_samples, 1) \
                or chunk.final
    whole = await stub.Synthesize(pb.SynthesizeRequest(
        text=text, noise_scale=0.0, noise_w=0.0, sample_rate_hz=16000,
        timestamps=pb.TIMESTAMPS_WORDS), timeout=_TIMEOUT)
    assert [(w.text_span, w.start_sample, w.end_sample) for w in whole.words] == \
           [(w.text_span, w.start_sample, w.end_sample) for w in _words(chunks)]
    assert not any(w.phonemes for w in whole.words)  # WORDS: no phonemes


async def test_no_timestamps_by_default_and_nothing_aligned(stub):
    before = alignment.cached_word_phonemes.cache_info()
    chunks = [c async for c in stub.SynthesizeStream(
        pb.SynthesizeRequest(text="A request that asks for no timings at all."), timeout=_TIMEOUT)]
    assert not _words(chunks)
    assert alignment.cached_word_phonemes.cache_info() == before  # the frontend did no alignment


async def test_ogg_opus_timings_count_decoded_pcm_at_the_opus_rate(stub):
    text = "Opus audio has its own rate."
    opus = await _stream(stub, text, encoding=pb.AUDIO_ENCODING_OGG_OPUS)
    native = await _stream(stub, text)
    assert opus[0].sample_rate_hz == 24000
    for a, b in zip(_words(opus), _words(native)):
        assert abs(a.start_sample - b.start_sample * 24000 / _NATIVE) <= 1


async def test_list_voices_says_the_bundled_voice_has_timestamps(stub):
    voices = (await stub.ListVoices(pb.ListVoicesRequest(), timeout=_TIMEOUT)).voices
    assert all(v.timestamps for v in voices if v.name == "en_US-joe-medium")


async def test_an_unknown_timestamps_value_is_invalid_argument(stub):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Synthesize(pb.SynthesizeRequest(text="Hi.", timestamps=7), timeout=_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("timestamps:")


# -- which text each word timing speaks ------------------------------------------

_TEXTS = [
    "Dr. Smith paid $3.50 for the 1990s records.",
    "Well-known U.S. brands, e.g. IBM & AT&T — really?! Yes!!! (Of course...) No.",
    "I'm 25% sure; it's 3:30 p.m. on 12/24/2026, No. 5 on the list.",
    "Zoë's naïve café serves crème brûlée. Ça va? Größe: 10 m².",
    "Hello... world!!! \"Quoted,\" she said -- twice; then: 'single' (brackets) [and more].",
    "Call 555-0123 or email help@example.com by 9am... Thanks!",
    "First sentence.\n\nSecond paragraph here. Third one? Fourth!",
]


def _spoken_tokens(text: str) -> list[tuple[int, int]]:
    """Words of the text that have a letter or a digit (what every timing must cover)."""
    spans = []
    for start, end in alignment.tokens(text, (0, len(text))):
        if any(unicodedata.category(c)[0] in "LN" for c in text[start:end]):
            spans.append((start, end))
    return spans


@pytest.mark.parametrize("text", _TEXTS)
def test_word_spans_cover_every_word_once_in_order(text):
    voice = bundled_voice()
    frontend = Frontend(100, 40)
    normalized = normalize(text)
    spans = []
    for index, sentence in enumerate(split_sentences(normalized)):
        for segment in frontend.span_segments(normalized, sentence, index, index == 0, voice.config, words=True):
            spans.extend(word.span for word in segment.words)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # in order, no overlap
    for start, end in _spoken_tokens(text):
        covering = [s for s in spans if s[0] <= start and end <= s[1]]
        assert len(covering) == 1, (text[start:end], spans)
    for start, end in spans:  # no timing is for punctuation alone
        assert any(unicodedata.category(c)[0] in "LNS" or c == "&" for c in text[start:end]), text[start:end]


def test_a_number_read_as_several_words_is_one_timing_spanning_its_text():
    voice = bundled_voice()
    text = "It cost $3.50 in the 1990s."
    segments = Frontend(100, 100).span_segments(text, (0, len(text)), 0, False, voice.config, words=True)
    words = [text[w.span[0]:w.span[1]] for s in segments for w in s.words]
    assert words == ["It", "cost", "$3.50", "in", "the", "1990s"]
