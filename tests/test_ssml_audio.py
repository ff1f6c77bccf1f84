"""SSML through the real server, measured on the audio: breaks, prosody, phoneme, sub, spans,
the ignored tags, and SSML through SynthesizeLive in pieces split inside tags."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from speakstream.v1 import synthesizer_pb2 as pb

_TIMEOUT = 60
_RATE = 22_050
_FRAME = 256  # samples of one latent frame: the model's unit of duration


def _request(text: str, ssml: bool = True, **fields) -> pb.SynthesizeRequest:
    fields = {"noise_scale": 0.0, "noise_w": 0.0, "encoding": pb.AUDIO_ENCODING_FLOAT32, **fields}
    return pb.SynthesizeRequest(text=text, text_format=pb.TEXT_FORMAT_SSML if ssml else 0, **fields)


async def _stream(stub, text: str, ssml: bool = True, **fields) -> list[pb.AudioChunk]:
    return [c async for c in stub.SynthesizeStream(_request(text, ssml, **fields), timeout=_TIMEOUT)]


def _audio(chunks) -> np.ndarray:
    return np.frombuffer(b"".join(c.audio for c in chunks), "<f4")


def _zero_runs(audio: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of every run of exact zeros."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], (audio == 0).astype(np.int8), [0]))))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


def _within(chunks, text: str, inside: str) -> list[pb.AudioChunk]:
    """The chunks whose span lies within the first `inside` of `text`."""
    start = text.index(inside)
    end = start + len(inside)
    return [c for c in chunks if start <= c.text_span.start < c.text_span.end <= end]


def _samples_of(chunks, text: str, inside: str) -> int:
    return sum(c.num_samples for c in _within(chunks, text, inside))


async def test_a_break_of_500_ms_is_500_ms_of_exact_silence(stub):
    text = '<speak>Hello there <break time="500ms"/>my friend.</speak>'
    chunks = await _stream(stub, text)
    audio = _audio(chunks)
    longest = max(_zero_runs(audio), key=lambda run: run[1])
    assert abs(longest[1] - 0.5 * _RATE) <= _FRAME, longest
    silent = [c for c in chunks if c.text_span.start == c.text_span.end and c.num_samples]
    assert [(c.num_samples, c.text_span.start) for c in silent] == [(11_025, text.index("<break"))]
    # Against a break of 100 ms, everything else the same: 400 ms more, to the sample.
    shorter = _audio(await _stream(stub, text.replace("500ms", "100ms")))
    assert audio.size - shorter.size == round(0.4 * _RATE)


async def test_a_break_at_a_sentence_end_replaces_the_sentence_silence(stub):
    text = '<speak><s>One.</s><break time="1s"/><s>Two.</s></speak>'
    chunks = await _stream(stub, text, sentence_silence_s=0.3)
    pauses = [c.num_samples for c in chunks if c.text_span.start == c.text_span.end and c.num_samples]
    assert pauses == [_RATE]
    plain = await _stream(stub, "<speak><s>One.</s><s>Two.</s></speak>", sentence_silence_s=0.3)
    assert [c.num_samples for c in plain if c.text_span.start == c.text_span.end and c.num_samples] == \
        [round(0.3 * _RATE)]


@pytest.mark.parametrize("rate, factor", [("50%", 2.0), ("x-fast", 1 / 1.5)])
async def test_prosody_rate_scales_that_spans_duration(stub, rate, factor):
    body = "<speak><s>This stays as it is.</s><s><prosody rate='{}'>How are you today, my friend?</prosody></s></speak>"
    inside, first = "How are you today, my friend?", "This stays as it is."
    texts = [body.format(r) for r in ("100%", rate)]
    normal, changed = [await _stream(stub, text) for text in texts]
    ratio = _samples_of(changed, texts[1], inside) / _samples_of(normal, texts[0], inside)
    assert abs(ratio / factor - 1) < 0.05, ratio
    assert _samples_of(changed, texts[1], first) == _samples_of(normal, texts[0], first)


async def test_prosody_volume_is_a_gain_on_that_span(stub):
    body = "<speak><s>Same.</s><s><prosody volume='{}'>Quieter now.</prosody></s></speak>"
    texts = [body.format(v) for v in ("medium", "-6dB")]
    normal, soft = [await _stream(stub, text) for text in texts]
    for inside, gain in (("Same.", 1.0), ("Quieter now.", 10 ** (-6 / 20))):
        loud, quiet = (_audio(_within(chunks, text, inside)) for chunks, text in zip((normal, soft), texts))
        assert loud.size and np.allclose(quiet, loud * gain, atol=1e-6)


async def test_phoneme_and_inline_phonemes_speak_the_same_audio(stub):
    ssml = '<speak>Say <phoneme alphabet="ipa" ph="təmˈɑːtoʊ">tomato</phoneme>, please.</speak>'
    inline = "Say [[ təmˈɑːtoʊ ]], please."
    espeak = "Say tomato, please."
    a, b, c = _audio(await _stream(stub, ssml)), _audio(await _stream(stub, inline, False)), \
        _audio(await _stream(stub, espeak, False))
    assert np.array_equal(a, b)
    assert a.size != c.size or not np.array_equal(a, c)


async def test_sub_speaks_its_alias(stub):
    sub = _audio(await _stream(stub, '<speak><sub alias="World Health Organization">WHO</sub></speak>'))
    plain = _audio(await _stream(stub, "World Health Organization", False))
    assert np.array_equal(sub, plain)


async def test_spans_and_words_of_an_ssml_request_point_at_its_characters(stub):
    text = ('<speak>\n  <p>Hi &amp; welcome, <sub alias="Doctor">Dr.</sub> Lee.</p>\n  '
            '<p><prosody rate="slow">Say <say-as interpret-as="characters">AB</say-as>.</prosody></p>\n</speak>')
    chunks = await _stream(stub, text, timestamps=pb.TIMESTAMPS_WORDS)
    words = [text[w.text_span.start:w.text_span.end] for c in chunks for w in c.words]
    assert words == ["Hi", "&amp;", "welcome", "Dr.", "Lee", "Say", "AB"]
    spoken = {text[c.text_span.start:c.text_span.end] for c in chunks if c.text_span.start < c.text_span.end}
    # The first sentence is spoken in two segments, cut after its comma (--first-clause-cut); the
    # second starts at the first character that speaks ("Dr.", the alias's source).
    assert spoken == {"Hi &amp; welcome, ", "Dr.</sub> Lee.", 'Say <say-as interpret-as="characters">AB</say-as>.'}
    response = await stub.Synthesize(_request(text), timeout=_TIMEOUT)
    assert [text[s.start:s.end] for s in response.sentences] == [
        "Hi &amp; welcome, <sub alias=\"Doctor\">Dr.</sub> Lee.", 'Say <say-as interpret-as="characters">AB</say-as>.']


async def test_ignored_tags_come_with_the_first_chunk_and_the_response(stub):
    text = "<speak><emphasis>Very</emphasis> <prosody pitch='+2st' rate='fast'>good</prosody>.</speak>"
    chunks = await _stream(stub, text)
    assert list(chunks[0].ignored_tags) == ["emphasis", "prosody@pitch"]
    assert not any(c.ignored_tags for c in chunks[1:])
    response = await stub.Synthesize(_request(text), timeout=_TIMEOUT)
    assert list(response.ignored_tags) == ["emphasis", "prosody@pitch"]
    assert not (await stub.Synthesize(_request("<speak>Fine.</speak>"), timeout=_TIMEOUT)).ignored_tags


# -- SynthesizeLive --------------------------------------------------------------------------

_LIVE = ('<speak>Dr. Smith said <break time="300ms"/>hi. <prosody rate="slow">Take <say-as '
         'interpret-as="characters">AB</say-as> &amp; <sub alias="C D">cd</sub>.</prosody> '
         '<s>Caf\u00e9 <phoneme ph="tˈuː">to</phoneme></s> <emphasis>Done!</emphasis></speak>')


async def _live(stub, pieces: list[str], **settings) -> list[pb.AudioChunk]:
    call = stub.SynthesizeLive(timeout=_TIMEOUT)
    config = pb.SynthesizeRequest(noise_scale=0.0, noise_w=0.0, encoding=pb.AUDIO_ENCODING_FLOAT32,
                                  text_format=pb.TEXT_FORMAT_SSML, **settings)
    await call.write(pb.LiveRequest(config=pb.LiveConfig(settings=config, max_pending_ms=10_000,
                                                         max_pending_chars=10_000)))
    for piece in pieces:
        await call.write(pb.LiveRequest(text=piece))
    await call.done_writing()
    return [c async for c in call]


@pytest.mark.slow
@pytest.mark.parametrize("size", [3, 11])
async def test_ssml_in_pieces_split_inside_tags_speaks_as_the_whole(stub, size):
    whole = await _stream(stub, _LIVE, timestamps=pb.TIMESTAMPS_WORDS)
    pieces = [_LIVE[i:i + size] for i in range(0, len(_LIVE), size)]
    assert any("<" in p and ">" not in p for p in pieces)  # tags really are split
    live = await _live(stub, pieces, timestamps=pb.TIMESTAMPS_WORDS)
    assert np.array_equal(_audio(live), _audio(whole))

    def spans(chunks):
        return [(c.text_span.start, c.text_span.end, c.sentence_index) for c in chunks if c.num_samples]

    assert sorted(set(spans(live))) == sorted(set(spans(whole)))
    assert [(w.text_span.start, w.text_span.end) for c in live for w in c.words] == \
        [(w.text_span.start, w.text_span.end) for c in whole for w in c.words]
    assert [t for c in live for t in c.ignored_tags] == ["emphasis"]


async def test_bad_ssml_in_a_live_call_is_invalid_argument(stub):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _live(stub, ["<speak>Hello <phoneme ph='g'>", "go</phoneme></speak>"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("text: ssml line 1, column 14: <phoneme> ph: unknown phoneme 'g'")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _live(stub, ["<speak>Never", " closed"])
    assert info.value.details().startswith("text: ssml line 1, column 20: no element found")


async def test_live_plain_text_takes_inline_phonemes_split_across_pieces(stub):
    call = stub.SynthesizeLive(timeout=_TIMEOUT)
    config = pb.SynthesizeRequest(noise_scale=0.0, noise_w=0.0, encoding=pb.AUDIO_ENCODING_FLOAT32)
    await call.write(pb.LiveRequest(config=pb.LiveConfig(settings=config)))
    for piece in ["Say [", "[ təmˈɑː", "toʊ ]", "], please."]:
        await call.write(pb.LiveRequest(text=piece))
    await call.done_writing()
    live = _audio([c async for c in call])
    assert np.array_equal(live, _audio(await _stream(stub, "Say [[ təmˈɑːtoʊ ]], please.", False)))


async def test_a_break_alone_is_silence(stub):
    response = await stub.Synthesize(_request('<speak><break time="250ms"/></speak>'), timeout=_TIMEOUT)
    audio = np.frombuffer(response.audio, "<f4")
    assert audio.size == round(0.25 * _RATE) and not audio.any()


async def test_the_cache_keeps_rates_apart(app, stub):
    body = "<speak><prosody rate='{}'>The cache must not mix these up.</prosody></speak>"
    first = [_audio(await _stream(stub, body.format(r))) for r in ("100%", "50%")]
    again = [_audio(await _stream(stub, body.format(r))) for r in ("100%", "50%")]
    assert first[1].size > 1.8 * first[0].size
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)
