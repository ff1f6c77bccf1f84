"""Request knobs: their ranges, defaults and validation.

Everything a client can set is checked here, before any work, and a bad
value raises InvalidArgument/NotFound naming the proto field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

from server.document import Document, InlineReader, TextFormat, inline_document
from server.encoding import Encoding, output_rate
from server.errors import InvalidArgument, NotFound
from server.frontend import speakable
from server.inference import Scales
from server.lexicon import Lexicon
from server.ssml import SsmlReader, read_ssml
from server.timings import Timestamps
from server.voices import Voice

SPEED_RANGE = (0.25, 4.0)
NOISE_RANGE = (0.0, 2.0)
SILENCE_RANGE_S = (0.0, 5.0)
CHUNK_MS_RANGE = (20, 10_000)
SAMPLE_RATE_RANGE = (8000, 48000)
DEFAULT_SENTENCE_SILENCE_S = 0.2


@dataclass(frozen=True)
class SynthesisOptions:
    """A validated request: what to say, with which voice and settings."""

    text: str
    voice: Voice
    speaker_id: int
    scales: Scales
    sentence_silence_s: float
    encoding: Encoding
    chunk_ms: int
    output_rate: int = 0
    """Rate the client gets, in Hz; 0 = the voice's own rate."""
    timestamps: Timestamps = Timestamps.NONE
    """Which timings to send with the audio."""
    document: Optional[Document] = None
    """What the markup of `text` says (SSML, [[ ]]; server/document.py); None: plain text, spoken as ever."""
    lexicon: Optional[Lexicon] = None
    """The request's own lexicon entries (before the server's --lexicon)."""

    @property
    def sample_rate(self) -> int:
        """The voice's rate in Hz: what the model produces, before any resampling."""
        return self.voice.config.sample_rate

    @property
    def client_rate(self) -> int:
        """The rate audio is sent at (after resampling)."""
        return self.output_rate or self.sample_rate

    @property
    def deterministic(self) -> bool:
        """True when both noise scales are 0: the same text gives the same audio."""
        return self.scales.noise_scale == 0 and self.scales.noise_w == 0


def check_text(text: str, max_chars: int) -> str:
    """The text if it is within the size limit and has something speakable in it.

    Only whitespace, punctuation, combining marks, control, format or
    private-use characters: nothing to say, INVALID_ARGUMENT rather than
    silence (the frontend would produce no segment at all).
    """
    if not text or not text.strip():
        raise InvalidArgument("text", "must contain something to speak")
    if len(text) > max_chars:
        raise InvalidArgument("text", f"is {len(text)} characters; the limit is {max_chars}")
    if not speakable(text):  # normalize changes no letter, digit or symbol: no need to run it here
        raise InvalidArgument("text", "contains nothing speakable (no letter, digit or symbol)")
    return text


def check_range(field: str, value: float, bounds: tuple[float, float]) -> float:
    """`value` if it lies within bounds (NaN never does)."""
    low, high = bounds
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low} and {high}, got {value}")
    return value


def check_speaker(voice: Voice, speaker_id: int | None, speaker: str = "") -> int:
    """The speaker id from `speaker_id` or the name `speaker` (0 when neither is set).

    NotFound when the voice has no such speaker; InvalidArgument when the two
    name different speakers.
    """
    if speaker:
        by_name = voice.config.speaker_id_map.get(speaker)
        if by_name is None:
            names = ", ".join(sorted(voice.config.speaker_id_map)) or "none (single speaker)"
            raise NotFound("speaker", f"voice {voice.name} has no speaker {speaker!r}; its speakers: {names}")
        if speaker_id is not None and speaker_id != by_name:
            raise InvalidArgument("speaker", f"{speaker!r} is speaker {by_name} but speaker_id is "
                                  f"{speaker_id}; set one of them")
        speaker_id = by_name
    if speaker_id is None:
        return 0
    if not 0 <= speaker_id < voice.config.num_speakers:
        raise NotFound("speaker_id", f"voice {voice.name} has speakers 0 to "
                       f"{voice.config.num_speakers - 1}, not {speaker_id}")
    return speaker_id


def check_sample_rate(voice: Voice, encoding: Encoding, requested: int) -> int:
    """The rate to send audio at: `requested` (0 = the voice's), as the encoding can carry it."""
    if requested:
        low, high = SAMPLE_RATE_RANGE
        if not low <= requested <= high:
            raise InvalidArgument("sample_rate_hz", f"must be 0 (the voice's rate) or between {low} "
                                  f"and {high} Hz, got {requested}")
    return output_rate(encoding, requested or voice.config.sample_rate)


def scales_for(voice: Voice, speed: float | None, noise_scale: float | None,
               noise_w: float | None) -> Scales:
    """Model scales from the request, falling back to the voice's defaults."""
    cfg = voice.config
    speed = 1.0 if speed is None else check_range("speed", speed, SPEED_RANGE)
    noise_scale = cfg.noise_scale if noise_scale is None else check_range("noise_scale", noise_scale, NOISE_RANGE)
    noise_w = cfg.noise_w if noise_w is None else check_range("noise_w", noise_w, NOISE_RANGE)
    return Scales(noise_scale=noise_scale, length_scale=cfg.length_scale / speed, noise_w=noise_w)


def check_chunk_ms(chunk_ms: int) -> int:
    """0 (one chunk per segment) or a duration within CHUNK_MS_RANGE."""
    if chunk_ms:
        check_range("chunk_ms", chunk_ms, CHUNK_MS_RANGE)
    return chunk_ms


def document_for(text: str, voice: Voice, text_format: TextFormat, speed: float) -> Optional[Document]:
    """The document of a request's `text` (checked, after check_text): its SSML, or its [[ ]]
    blocks; None for plain text without any (the plain path). InvalidArgument names the position."""
    document: Optional[Document]
    if text_format is TextFormat.SSML:
        document = read_ssml(text, voice.config, speed, SPEED_RANGE)
    else:
        document = inline_document(text, voice.config.phoneme_id_map)
    if document is not None and not document.speakable():
        raise InvalidArgument("text", "contains nothing speakable (markup only)")
    return document


MarkupReader = Union[SsmlReader, InlineReader]


def live_markup(voice: Voice, text_format: TextFormat, speed: float) -> Callable[[], MarkupReader]:
    """For SynthesizeLive: what reads a context's text pieces into a document of its own."""
    if text_format is TextFormat.SSML:
        return lambda: SsmlReader(Document(), voice.config, speed, SPEED_RANGE, several=True)
    return lambda: InlineReader(Document(mapped=False), voice.config.phoneme_id_map)
