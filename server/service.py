"""The Synthesizer servicer: protobuf in and out, domain errors to gRPC status codes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from typing import AsyncIterator, Optional

import grpc

from server import live, transport
from server import options as opts
from server.calls import CallContext, live_chunks, logged_ignored, text_chunks
from server.document import TextFormat
from server.encoding import Encoding
from server.errors import InvalidArgument, SpeakstreamError, TooLarge
from server.lexicon import request_lexicon
from server.metrics import CallRecord
from server.output import OutputChunk, encode_pieces, stream_words
from server.synthesis import AudioPiece, Synthesizer
from server.timings import Timestamps, WordTiming
from server.voices import VoiceRegistry
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_LOGGER = logging.getLogger(__name__)

_ENCODINGS: dict[pb.AudioEncoding, Encoding] = {
    pb.AUDIO_ENCODING_UNSPECIFIED: Encoding.LINEAR16,
    pb.AUDIO_ENCODING_LINEAR16: Encoding.LINEAR16,
    pb.AUDIO_ENCODING_FLOAT32: Encoding.FLOAT32,
    pb.AUDIO_ENCODING_WAV: Encoding.WAV,
    pb.AUDIO_ENCODING_MULAW: Encoding.MULAW,
    pb.AUDIO_ENCODING_ALAW: Encoding.ALAW,
    pb.AUDIO_ENCODING_OGG_OPUS: Encoding.OGG_OPUS,
    pb.AUDIO_ENCODING_FLAC: Encoding.FLAC,
}
_PROTO_ENCODINGS = {e: p for p, e in _ENCODINGS.items() if p != pb.AUDIO_ENCODING_UNSPECIFIED}


class SynthesizerServicer(pb_grpc.SynthesizerServicer):
    """speakstream.v1.Synthesizer on top of the Synthesizer pipeline."""

    def __init__(self, ctx: CallContext):
        self._ctx = ctx
        self._settings = ctx.settings
        self._voices = ctx.voices
        self._synth = ctx.synthesizer
        self._scheduler = ctx.scheduler
        self._metrics = ctx.metrics
        _check_lexicon(ctx.synthesizer, ctx.voices)

    async def Synthesize(self, request: pb.SynthesizeRequest, context) -> pb.SynthesizeResponse:
        """Whole audio in one message, in any encoding."""
        async with self._metrics.track("Synthesize", context) as call, _status_on_error(context):
            request_id = call.request_id = await _start_call(context, unary=True)
            options = await _with_markup(self._options(request, call), request)
            with self._scheduler.admit():
                pieces = []
                async for piece in self._synth.stream(options, _deadline(context), request_id):
                    call.audio(piece.audio.size, options.sample_rate)
                    pieces.append(piece)
            # Resampling and encoding the whole text is CPU work of up to ~1 s (Opus): off the loop.
            audio, encoded = await asyncio.get_running_loop().run_in_executor(None, encode_pieces, pieces, options)
            limit = transport.max_response_bytes(self._settings)
            if len(encoded) > limit:
                raise TooLarge("audio", f"{len(encoded)} bytes is more than one response may carry "
                               f"({limit}, --max-response-mb); use SynthesizeStream for long texts")
            return await _answer(context, request_id, pb.SynthesizeResponse(
                audio=encoded,
                encoding=_PROTO_ENCODINGS[options.encoding],
                sample_rate_hz=options.client_rate,
                num_samples=audio.size,
                sentences=_sentence_spans(pieces),
                words=[_word_proto(w) for w in stream_words(pieces, options)],
                ignored_tags=_ignored(options, request_id),
            ))

    async def SynthesizeStream(self, request: pb.SynthesizeRequest, context) -> AsyncIterator[pb.AudioChunk]:
        """Audio chunks as they are synthesized."""
        async with self._metrics.track("SynthesizeStream", context) as call, _status_on_error(context):
            request_id = call.request_id = await _start_call(context)
            options = await _with_markup(self._options(request, call), request)
            stream = text_chunks(self._ctx, options, request_id, call, _deadline(context))
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    yield _chunk_proto(chunk, options)

    async def SynthesizeLive(self, request_iterator, context) -> AsyncIterator[pb.AudioChunk]:
        """Text in pieces in, audio chunks out (server/live.py)."""
        async with self._metrics.track("SynthesizeLive", context) as call, _status_on_error(context):
            request_id = call.request_id = await _start_call(context)
            requests = request_iterator.__aiter__()
            first = await anext(requests, None)
            if first is None or first.WhichOneof("kind") != "config":
                raise InvalidArgument("config", "the first message must carry the config")
            config = first.config
            options = self._options(config.settings, call, live=True)
            max_ms = config.max_pending_ms or live.DEFAULT_MAX_PENDING_MS
            opts.check_range("config.max_pending_ms", max_ms, live.MAX_PENDING_MS_RANGE)
            max_chars = config.max_pending_chars or live.DEFAULT_MAX_PENDING_CHARS
            opts.check_range("config.max_pending_chars", max_chars, live.MAX_PENDING_CHARS_RANGE)
            markup = opts.live_markup(options.voice, _text_format(config.settings.text_format),
                                      _speed(config.settings))
            stream = live_chunks(self._ctx, options, lambda: live.LiveSegmenter(max_ms, max_chars), requests,
                                 request_id, call, _deadline(context), markup)
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    yield _chunk_proto(chunk, options)

    async def ListVoices(self, request: pb.ListVoicesRequest, context) -> pb.ListVoicesResponse:
        """Every voice with its language, rate, speakers and quality."""
        async with self._metrics.track("ListVoices", context) as call:
            request_id = call.request_id = await _start_call(context, unary=True)
            default = self._voices.default.name
            voices = list(self._voices)
            timestamps = await asyncio.get_running_loop().run_in_executor(
                None, lambda: [self._synth.pool.timestamps(v) for v in voices])
            return await _answer(context, request_id, pb.ListVoicesResponse(
                voices=[_voice_proto(v, v.name == default, t) for v, t in zip(voices, timestamps)]))

    def _options(self, request: pb.SynthesizeRequest, call: CallRecord,
                 live: bool = False) -> opts.SynthesisOptions:
        """:param live: SynthesizeLive's settings: text must be empty (it comes later)."""
        call.characters, call.voice = len(request.text), request.voice
        if live:
            if request.text:
                raise InvalidArgument("config.settings.text", "must be empty; send text in LiveRequest.text")
            text = ""
        else:
            text = opts.check_text(request.text, self._settings.max_chars)
        voice = self._voices.get(request.voice)
        call.voice = voice.name
        encoding = _encoding(request.encoding)
        _text_format(request.text_format)  # checked with the other fields; _with_markup reads the markup
        return opts.SynthesisOptions(
            text=text,
            voice=voice,
            speaker_id=opts.check_speaker(voice, _optional(request, "speaker_id"), request.speaker),
            scales=opts.scales_for(voice, _optional(request, "speed"),
                                   _optional(request, "noise_scale"), _optional(request, "noise_w")),
            sentence_silence_s=_silence(request),
            encoding=encoding,
            chunk_ms=opts.check_chunk_ms(request.chunk_ms),
            output_rate=opts.check_sample_rate(voice, encoding, request.sample_rate_hz),
            timestamps=_timestamps(request.timestamps),
            lexicon=request_lexicon(request.lexicon, voice.config.phoneme_id_map),
        )


def _check_lexicon(synthesizer: Synthesizer, voices: VoiceRegistry) -> None:
    """Every voice's --lexicon entries, checked now: a bad one stops the start-up, not a call
    (LexiconFileError); a [voice] section for no voice is a warning (a misspelt name)."""
    lexicon = synthesizer.frontend.lexicon
    if lexicon is None:
        return
    for voice in voices:
        synthesizer.frontend.lexicons(voice)
    for name in sorted(lexicon.voices() - {voice.name for voice in voices}):
        _LOGGER.warning("lexicon %s: the section [%s] is for no voice this server has", lexicon.path, name)


async def _with_markup(options: opts.SynthesisOptions, request: pb.SynthesizeRequest) -> opts.SynthesisOptions:
    """`options` with the document of their text's markup (SSML, [[ ]]), read and checked off the
    loop (10,000 characters of SSML tags take ~10 ms); plain text has none, at no cost."""
    text_format = _text_format(request.text_format)
    if text_format is TextFormat.PLAIN and "[[" not in options.text:
        return options
    document = await asyncio.get_running_loop().run_in_executor(
        None, opts.document_for, options.text, options.voice, text_format, _speed(request))
    return dataclasses.replace(options, document=document)


@contextlib.asynccontextmanager
async def _status_on_error(context):
    """Abort the call with the error's status code; unexpected errors become INTERNAL."""
    try:
        yield
    except SpeakstreamError as exc:
        await context.abort(exc.code, str(exc))
    except Exception:
        _LOGGER.exception("unexpected error in call")
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")


async def _start_call(context, unary: bool = False) -> str:
    """The call's request id (the client's x-request-id, else a new one), sent back: a
    stream's at once in its headers; a unary call's in its trailers, and in its headers
    only with the response (_answer), so until it answers a balancer may still retry it
    elsewhere (headers sent mean the call has started, for nginx and gRPC retries alike)."""
    request_id = dict(context.invocation_metadata() or ()).get("x-request-id") or uuid.uuid4().hex[:16]
    if unary:
        context.set_trailing_metadata((("x-request-id", request_id),))
    else:
        await context.send_initial_metadata((("x-request-id", request_id),))
    return request_id


async def _answer(context, request_id: str, response):
    """A unary call's response, after its headers with the request id."""
    await context.send_initial_metadata((("x-request-id", request_id),))
    return response


def _deadline(context) -> Optional[float]:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _optional(request, field: str):
    return getattr(request, field) if request.HasField(field) else None


def _silence(request) -> float:
    value = _optional(request, "sentence_silence_s")
    if value is None:
        return opts.DEFAULT_SENTENCE_SILENCE_S
    return opts.check_range("sentence_silence_s", value, opts.SILENCE_RANGE_S)


def _speed(request) -> float:
    value = _optional(request, "speed")
    return 1.0 if value is None else value


def _text_format(value: int) -> TextFormat:
    if value in (pb.TEXT_FORMAT_UNSPECIFIED, pb.TEXT_FORMAT_PLAIN):
        return TextFormat.PLAIN
    if value == pb.TEXT_FORMAT_SSML:
        return TextFormat.SSML
    raise InvalidArgument("text_format", f"unsupported value {value}")


def _ignored(options: opts.SynthesisOptions, request_id: str) -> list[str]:
    """The SSML tags and attributes a request's text has that are not acted on (logged)."""
    return logged_ignored(options.document.ignored if options.document is not None else [], request_id)


def _timestamps(value: int) -> Timestamps:
    try:
        return Timestamps(value)
    except ValueError:
        raise InvalidArgument("timestamps", f"unsupported value {value}") from None


def _encoding(value: pb.AudioEncoding) -> Encoding:
    encoding = _ENCODINGS.get(value)
    if encoding is None:
        raise InvalidArgument("encoding", f"unsupported encoding {value}")
    return encoding


def _chunk_proto(chunk: OutputChunk, options: opts.SynthesisOptions) -> pb.AudioChunk:
    return pb.AudioChunk(
        audio=chunk.audio,
        sequence=chunk.sequence,
        sample_offset=chunk.sample_offset,
        num_samples=chunk.num_samples,
        sample_rate_hz=options.client_rate,
        encoding=_PROTO_ENCODINGS[options.encoding],
        text_span=pb.TextSpan(start=chunk.span[0], end=chunk.span[1]),
        sentence_index=chunk.sentence_index,
        final=chunk.final,
        words=[_word_proto(w) for w in chunk.words],
        context_id=chunk.context_id,
        context_end=chunk.context_end,
        ignored_tags=chunk.ignored_tags,
    )


def _word_proto(word: WordTiming) -> pb.WordTiming:
    return pb.WordTiming(
        text_span=pb.TextSpan(start=word.span[0], end=word.span[1]),
        start_sample=word.start, end_sample=word.end,
        phonemes=[pb.PhonemeTiming(phoneme=p.phoneme, start_sample=p.start, end_sample=p.end)
                  for p in word.phonemes])


def _sentence_spans(pieces: list[AudioPiece]) -> list[pb.TextSpan]:
    spans: dict[int, list[int]] = {}
    for piece in pieces:
        if piece.span[0] == piece.span[1]:
            continue  # the silence between two sentences
        span = spans.setdefault(piece.sentence_index, [piece.span[0], piece.span[1]])
        span[1] = max(span[1], piece.span[1])
    return [pb.TextSpan(start=s, end=e) for s, e in spans.values()]


def _voice_proto(voice, is_default: bool, timestamps: bool) -> pb.Voice:
    cfg = voice.config
    speakers = [pb.Speaker(id=i, name=n) for n, i in sorted(cfg.speaker_id_map.items(), key=lambda kv: kv[1])]
    return pb.Voice(name=voice.name, language=cfg.language, sample_rate_hz=cfg.sample_rate,
                    num_speakers=cfg.num_speakers, quality=cfg.quality,
                    is_default=is_default, speakers=speakers, timestamps=timestamps)
