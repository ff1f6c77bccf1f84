"""The OpenAI speech API's request and response shapes: POST /v1/audio/speech, GET /v1/models.

`parse_speech` checks a request body field by field (each error names the
OpenAI field: `input`, `voice`, `response_format`, ...) and resolves OpenAI's
voice names through the --openai-voices table. Every response format is
sent at 24 kHz, the rate the API defines for `pcm` (16-bit little-endian,
no header), so a client gets the same rate whatever it asks for.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Optional

from server.calls import CallContext
from server.config import Settings
from server.doors import calls
from server.encoding import Encoding
from server.errors import InvalidArgument, NotFound, SpeakstreamError, VoiceLoadError
from server.options import SynthesisOptions
from server.voices import Voice, VoiceRegistry

OPENAI_RATE = 24_000
# The API's voices (the SDK's list); each is the default voice unless --openai-voices says otherwise.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
                 "marin", "cedar")
# The models /v1/models lists. `model` is required, as in the API, but every value runs the same engine.
MODELS = ("speakstream", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
# response_format -> (encoding, Content-Type)
FORMATS = {
    "mp3": (Encoding.MP3, "audio/mpeg"),
    "opus": (Encoding.OGG_OPUS, "audio/ogg"),
    "aac": (Encoding.AAC, "audio/aac"),
    "flac": (Encoding.FLAC, "audio/flac"),
    "wav": (Encoding.WAV, "audio/wav"),
    "pcm": (Encoding.LINEAR16, "audio/pcm"),
}
DEFAULT_FORMAT = "mp3"
STREAM_FORMATS = ("audio", "sse")
SSE_CONTENT_TYPE = "text/event-stream"


def parse_voice_table(text: str) -> dict[str, tuple[str, str]]:
    """--openai-voices: "NAME=VOICE[:SPEAKER],..." -> {NAME: (VOICE, SPEAKER or "")}."""
    table: dict[str, tuple[str, str]] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, target = (part.strip() for part in entry.partition("="))
        voice, _, speaker = (part.strip() for part in target.partition(":"))
        if not sep or not name or not voice:
            raise ValueError(f"{entry!r} is not NAME=VOICE or NAME=VOICE:SPEAKER")
        if name in table:
            raise ValueError(f"{name!r} is given twice")
        table[name] = (voice, speaker)
    return table


class VoiceTable:
    """OpenAI voice names -> (voice, speaker name), from --openai-voices over the defaults."""

    def __init__(self, voices: VoiceRegistry, setting: str = ""):
        """VoiceLoadError names --openai-voices when it is malformed or names an unknown voice or speaker."""
        try:
            given = parse_voice_table(setting)
        except ValueError as exc:
            raise VoiceLoadError(f"--openai-voices: {exc}") from None
        self._voices = voices
        self.names: dict[str, tuple[Voice, str]] = {name: (voices.default, "") for name in OPENAI_VOICES}
        for name, (voice_name, speaker) in given.items():
            if voice_name not in {v.name for v in voices}:
                raise VoiceLoadError(f"--openai-voices: {name}={voice_name}: no such voice "
                                     f"(voices: {', '.join(v.name for v in voices)})")
            voice = voices.get(voice_name)
            if speaker and speaker not in voice.config.speaker_id_map:
                raise VoiceLoadError(f"--openai-voices: {name}={voice_name}:{speaker}: voice {voice_name} has no "
                                     f"speaker {speaker!r}")
            self.names[name] = (voice, speaker)

    def resolve(self, name: str) -> tuple[Voice, str]:
        """(voice, speaker) of an OpenAI voice name or of a speakstream voice's own name."""
        if name in self.names:
            return self.names[name]
        if name in {v.name for v in self._voices}:
            return self._voices.get(name), ""
        known = ", ".join([*self.names, *(v.name for v in self._voices)])
        raise NotFound("voice", f"unknown voice {name!r}; known: {known} (GET /v1/audio/voices)")

    def listing(self) -> dict[str, dict[str, str]]:
        """{OpenAI name: {"voice": ..., "speaker": ...}} for GET /v1/audio/voices."""
        return {name: {"voice": voice.name, "speaker": speaker} for name, (voice, speaker) in self.names.items()}


@dataclass(frozen=True)
class SpeechRequest:
    """A checked POST /v1/audio/speech."""

    options: SynthesisOptions
    response_format: str
    stream_format: str

    @property
    def content_type(self) -> str:
        """The response's Content-Type."""
        return SSE_CONTENT_TYPE if self.stream_format == "sse" else FORMATS[self.response_format][1]


def parse_speech(body: bytes, ctx: CallContext, table: VoiceTable) -> SpeechRequest:
    """Check every field of a request body; InvalidArgument / NotFound / TextTooLong name the field."""
    data = _json_object(body)
    model = calls.string(data, "model")
    if not model:
        raise InvalidArgument("model", f"is required: one of {', '.join(MODELS)} (all the same engine)")
    text = calls.string(data, "input")
    if text is None:
        raise InvalidArgument("input", "is required: the text to speak")
    calls.check_length("input", text, ctx.settings.max_chars)
    calls.string(data, "instructions")  # accepted and ignored: Piper voices take no instructions
    response_format = _choice(data, "response_format", tuple(FORMATS), DEFAULT_FORMAT)
    stream_format = _choice(data, "stream_format", STREAM_FORMATS, "audio")
    voice, speaker = table.resolve(_voice_name(data))
    knobs = calls.Knobs(
        text=text, voice=voice, speaker=calls.string(data, "speaker", speaker),
        speed=calls.number(data, "speed"), noise_scale=calls.number(data, "noise_scale"),
        noise_w=calls.number(data, "noise_w"), sentence_silence_s=calls.number(data, "sentence_silence_s"),
        encoding=FORMATS[response_format][0], sample_rate=OPENAI_RATE)
    try:
        options = calls.synthesis_options(ctx, knobs)
    except InvalidArgument as exc:
        raise _renamed(exc) from None
    return SpeechRequest(options, response_format, stream_format)


def _json_object(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument("body", f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidArgument("body", "must be a JSON object with model, input and voice")
    return data


def _choice(data: dict, field: str, choices: tuple[str, ...], default: str) -> str:
    value = calls.string(data, field, default)
    if value not in choices:
        raise InvalidArgument(field, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _voice_name(data: dict) -> str:
    """`voice` as a name, or the API's custom-voice object {"id": name}."""
    value = data.get("voice")
    if isinstance(value, dict):
        value = value.get("id")
    if value is None:
        raise InvalidArgument("voice", f"is required: one of {', '.join(OPENAI_VOICES)} or a voice's name")
    if not isinstance(value, str):
        raise InvalidArgument("voice", "must be a string or {\"id\": string}")
    return value


def _renamed(exc: InvalidArgument) -> InvalidArgument:
    """The engine calls the text `text` and the rate `sample_rate_hz`; the API `input` and its fixed 24 kHz."""
    if exc.field == "text":
        return InvalidArgument("input", str(exc).split(": ", 1)[1])
    return exc


# -- responses --------------------------------------------------------------------------------


def error_body(exc: SpeakstreamError, status: int) -> bytes:
    """The API's error shape: {"error": {"message", "type", "param", "code"}}."""
    kind = ("invalid_request_error" if status < 429 else "rate_limit_error" if status == 429
            else "server_error")
    return json.dumps({"error": {"message": str(exc), "type": kind, "param": getattr(exc, "field", None),
                                 "code": exc.code.name.lower()}}).encode()


def sse_delta(audio: bytes) -> bytes:
    """One `speech.audio.delta` event: a chunk of the encoded audio, base64."""
    return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode("ascii")})


def sse_done(characters: int) -> bytes:
    """The `speech.audio.done` event; usage counts characters as input tokens (there are no tokens here)."""
    usage = {"input_tokens": characters, "output_tokens": 0, "total_tokens": characters}
    return _sse({"type": "speech.audio.done", "usage": usage})


def sse_error(exc: SpeakstreamError, status: int) -> bytes:
    """An `error` event, for an error after the stream has begun."""
    return _sse({"type": "error", "error": json.loads(error_body(exc, status))["error"]})


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def models() -> dict[str, Any]:
    """GET /v1/models."""
    return {"object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "speakstream"} for m in MODELS]}


def voices_listing(voices: VoiceRegistry, table: VoiceTable, settings: Optional[Settings] = None) -> dict[str, Any]:
    """GET /v1/audio/voices: every voice with its speakers, and the OpenAI names' table."""
    default = voices.default.name
    listed = []
    for v in voices:
        cfg = v.config
        speakers = [{"id": i, "name": n} for n, i in sorted(cfg.speaker_id_map.items(), key=lambda kv: kv[1])]
        listed.append({"name": v.name, "language": cfg.language, "sample_rate": cfg.sample_rate,
                       "num_speakers": cfg.num_speakers, "quality": cfg.quality, "default": v.name == default,
                       "speakers": speakers})
    out: dict[str, Any] = {"voices": listed, "openai_voices": table.listing()}
    if settings is not None:
        out["max_chars"] = settings.max_chars
    return out
