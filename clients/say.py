"""speakstream-say: speak text with a speakstream server.

Aloud, into a file (WAV, FLAC, Ogg/Opus, G.711) or as raw PCM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, Optional, Sequence, Union

import grpc

from clients.calls import Call, InputError, LiveCalls, TextCalls
from clients.captions import Captions, write_timestamps
from clients.channel import ADDRESS_ENV, Connection, add_connection_flags, connection_from_args, open_channel
from clients.heard import Transcript
from clients.outputs import RawOutput, SoundFileOutput, WavOutput
from clients.player import (
    DEFAULT_MAX_PREBUFFER_MS,
    DEFAULT_PREBUFFER_MS,
    AudioUnavailable,
    PlaybackStats,
    Player,
    PlayerConfig,
    list_output_devices,
)
from clients.progress import Progress
from clients.sentences import speakable, split_text
from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_PROG = "speakstream-say"
EXIT_OK = 0
EXIT_LOCAL_IO = 1
EXIT_USAGE = 2
EXIT_SERVER = 3
EXIT_NO_AUDIO = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
_AUTO_PROGRESS_CHARS = 300  # a bar by default only for text longer than a few sentences
# Text per call: well under the server's --max-chars (10,000 by default), so a
# call's audio (~2 minutes) is made long before its deadline, and a long text
# starts its next call often enough to keep the memory a player holds small.
DEFAULT_MAX_CHARS_PER_CALL = 2000
# The server's default sentence_silence_s, sent explicitly: the client puts
# the same silence between two calls cut at a sentence end.
SENTENCE_SILENCE_S = 0.2
# Playing a long text: the next call starts only once the audio waiting for
# the device is this short, so a book is not held in memory (the next call's
# first audio takes well under a second).
_PLAYER_LEAD_S = 10.0
_PLAYER_POLL_S = 0.1
_PLAYER_STALL_S = 10.0

_EPILOG = f"""\
outputs:
  with neither -o nor --raw the audio is played; -o alone writes only the file
  (no sound card needed); --play with -o or --raw also plays it. The format of
  -o follows its name (.wav, .flac, .ogg or .opus, .ulaw or .mulaw, .alaw; a
  WAV for any other name) unless --encoding says it. The file is encoded here
  from the server's PCM; a regular file gets its true length in its header,
  also when interrupted. --raw writes 16-bit mono PCM to a pipe or a file, not
  to a terminal.

long texts:
  a text of any length is spoken. Longer than --max-chars-per-call (default
  {DEFAULT_MAX_CHARS_PER_CALL}; a server takes at most its --max-chars, 10,000 by default, per
  call), it is cut at sentence ends into consecutive calls, heard as one text:
  one file, the usual sentence silence between calls, one progress bar. Each
  next call starts while the audio before it still plays, so there is no gap.
  --progress writes a line per tenth of the text when standard error is not
  a terminal.
    {_PROG} --file chapter.txt -o chapter.flac --progress

live:
  --live speaks standard input as it arrives (SynthesizeLive), each sentence
  as soon as it is complete: some-llm | {_PROG} --live
  End of input speaks what is left and ends the call. Past half of
  --max-chars-per-call, a call ends at the next sentence end and the input
  goes on in a new call, without a gap.

words:
  playing asks the server for word timings, so that after Ctrl-C {_PROG}
  prints what was heard ("heard: ..." on standard error). --captions prints
  each word on standard output, one a line, when the sound card plays its
  first sample: it needs playback (not -o or --raw alone). --timestamps FILE
  writes every word as JSON once the text is spoken (interrupted: the words
  received so far):
    [{{"word": "Hello", "start": 0.0, "end": 0.29, "start_sample": 0,
      "end_sample": 6400, "text_start": 0, "text_end": 5}}, ...]
  start and end in seconds, start_sample and end_sample at the audio's rate,
  counted in the whole audio (the silence between calls included);
  text_start and text_end: the word's code points in the whole text (--live:
  all of standard input).
    {_PROG} --captions "Hello there. How are you?"

server:
  --server defaults to ${ADDRESS_ENV} when it is set; --list-voices shows
  the server's voices (names for --voice, speakers for --speaker).

exit codes:
  {EXIT_OK}    done
  {EXIT_LOCAL_IO}    cannot read --file (or --live's standard input), or write the output
       file or the --timestamps file
  {EXIT_USAGE}    bad arguments, a text that cannot be sent, or the server refused the
       request (INVALID_ARGUMENT, NOT_FOUND: unknown voice or speaker, a knob
       out of range, --rate outside 8000-48000)
  {EXIT_SERVER}    server unreachable, or it failed (UNAVAILABLE, DEADLINE_EXCEEDED,
       RESOURCE_EXHAUSTED, INTERNAL, ...)
  {EXIT_NO_AUDIO}    no audio output: PyAudio missing, no device, --device not found,
       or the device failed (write a file with -o instead)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C): the call was cancelled, playback stopped (what was
       heard is printed); a -o file holds the audio up to there
  {EXIT_BROKEN_PIPE}  --raw: the reading end of the pipe closed early
"""

# --encoding: libsndfile's (format, subtype) of the -o file; None: a WAV (WavOutput).
_FILE_FORMATS: dict[str, Optional[tuple[str, str]]] = {
    "wav": None,
    "flac": ("FLAC", "PCM_16"),
    "ogg_opus": ("OGG", "OPUS"),
    "mulaw": ("RAW", "ULAW"),
    "alaw": ("RAW", "ALAW"),
}
# The --encoding a name of -o implies.
_EXTENSIONS = {".wav": "wav", ".flac": "flac", ".ogg": "ogg_opus", ".opus": "ogg_opus",
               ".ulaw": "mulaw", ".mulaw": "mulaw", ".alaw": "alaw"}
# The rates Opus encodes at: an Ogg/Opus file is asked at the first of these
# at or above the voice's rate (or --rate), as the server's Ogg/Opus is.
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the synopsis is in --help)."""

    def error(self, message: str) -> NoReturn:
        """Print `message` on one line and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line of speakstream-say."""
    p = _Parser(
        prog=_PROG, description="Speak text of any length with a speakstream server.", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", help="text to speak (default: --file, else standard input)")
    p.add_argument("-f", "--file", help="read the text from this file (UTF-8)")
    add_connection_flags(p)
    p.add_argument("--timeout", type=float, default=300.0,
                   help="deadline of each synthesis call in seconds (default %(default)s)")
    p.add_argument("--max-chars-per-call", type=int, default=DEFAULT_MAX_CHARS_PER_CALL, metavar="N",
                   help="most text sent in one call; longer text goes in consecutive calls cut at sentence "
                        "ends. At most the server's --max-chars (default %(default)s)")
    p.add_argument("--live", action="store_true",
                   help="read standard input as it arrives and speak each sentence once complete "
                        "(SynthesizeLive), e.g. some-llm | speakstream-say --live")
    p.add_argument("--list-voices", action="store_true", help="list the server's voices and exit")
    req = p.add_argument_group("request")
    req.add_argument("--voice", default="", help="voice name (default: the server's default; see --list-voices)")
    req.add_argument("--speaker", help="speaker of a multi-speaker voice: its id (a number) or its name")
    req.add_argument("--speed", type=float, help="speaking rate, 1.0 = normal")
    req.add_argument("--noise-scale", type=float, help="voice variation, 0 = deterministic")
    req.add_argument("--noise-w", type=float, help="timing variation, 0 = deterministic")
    req.add_argument("--rate", type=int, default=0, help="sample rate in Hz (default: the voice's own)")
    req.add_argument("--chunk-ms", type=int, default=0, help="largest chunk the server sends, in ms")
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", help="write the audio to this file, in the format its name says "
                                            "(see outputs below)")
    out.add_argument("--encoding", choices=sorted(_FILE_FORMATS),
                     help="format of the -o file (default: from its name, else wav); mulaw/alaw: raw G.711, "
                          "no header; other than wav needs -o and neither --play nor --raw")
    out.add_argument("--raw", action="store_true",
                     help="write raw 16-bit mono PCM to standard output (a pipe or a file)")
    out.add_argument("--play", action="store_true", help="play as well as writing -o / --raw")
    out.add_argument("--device", help="output device: index or part of its name (see --list-devices)")
    out.add_argument("--list-devices", action="store_true", help="list the output devices and exit")
    out.add_argument("--prebuffer-ms", type=float, default=DEFAULT_PREBUFFER_MS,
                     help="audio to buffer before playing (default %(default)s)")
    out.add_argument("--max-prebuffer-ms", type=float, default=DEFAULT_MAX_PREBUFFER_MS,
                     help="the prebuffer doubles on each underrun up to this (default %(default)s)")
    words = p.add_argument_group("words")
    words.add_argument("--captions", action="store_true",
                       help="print each word on standard output when the sound card plays it (needs playback)")
    words.add_argument("--timestamps", metavar="FILE",
                       help="write every word's start and end to FILE as JSON (see words below)")
    rep = p.add_argument_group("reporting")
    rep.add_argument("--stats", action="store_true", help="print timing and buffer statistics at the end")
    rep.add_argument("--stats-json", action="store_true",
                     help="print the statistics as one JSON line on standard error")
    rep.add_argument("--progress", action="store_true", default=None,
                     help="show progress over the whole text (default: for long text when standard error "
                          "is a terminal; a line per tenth of the text when it is not)")
    rep.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")
    rep.add_argument("-v", "--verbose", action="store_true", help="show what the sound libraries print")
    return p


@dataclass(frozen=True)
class SayOptions:
    """What to do with the audio, checked and settled from the command line."""

    play: bool
    output_path: Optional[str]
    output_format: Optional[tuple[str, str]]
    """libsndfile's (format, subtype) of -o; None: a WAV."""
    raw: bool
    player: PlayerConfig
    progress: Optional[bool]
    """None: a bar when stderr is a terminal and the text is long."""
    stats: bool
    stats_json: bool
    verbose: bool
    server: str
    timeout: float
    max_chars_per_call: int
    connection: Connection
    captions: bool = False
    timestamps_path: Optional[str] = None


def options_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> SayOptions:
    """Settle the flags (parser.error on nonsense, before any connection)."""
    play = args.play or (args.output is None and not args.raw)
    try:
        player = PlayerConfig(prebuffer_ms=args.prebuffer_ms, max_prebuffer_ms=args.max_prebuffer_ms,
                              ring_ms=max(5000.0, 2 * args.max_prebuffer_ms),
                              device=args.device, quiet=not args.verbose)
    except ValueError as exc:
        parser.error(str(exc))
    if args.timeout <= 0:
        parser.error("--timeout: must be > 0")
    if args.max_chars_per_call < 1:
        parser.error("--max-chars-per-call: must be at least 1")
    encoding = file_encoding(args.encoding, args.output, parser)
    if encoding != "wav" and (args.output is None or args.play or args.raw):
        parser.error(f"--encoding {encoding}: writes -o only (playing and --raw need PCM)")
    if args.raw and sys.stdout.isatty():
        parser.error("--raw: standard output is a terminal; pipe it (| aplay -f S16_LE -r 22050) "
                     "or redirect it (> out.pcm)")
    if args.live and (args.text is not None or args.file not in (None, "-")):
        parser.error("--live reads standard input: give no text argument and no --file")
    if args.live and args.progress:
        parser.error("--progress needs the text's length, unknown with --live")
    if args.captions and args.raw:
        parser.error("--captions prints on standard output, which --raw fills with audio; "
                     "use --timestamps FILE")
    if args.captions and not play:
        parser.error("--captions prints each word when the sound card plays it: it needs playback "
                     "(drop -o, or add --play); --timestamps FILE writes the words of a file")
    return SayOptions(play=play, output_path=args.output, output_format=_FILE_FORMATS[encoding], raw=args.raw,
                      player=player, progress=args.progress, stats=args.stats, stats_json=args.stats_json,
                      verbose=args.verbose, server=args.server, timeout=args.timeout,
                      max_chars_per_call=args.max_chars_per_call,
                      connection=connection_from_args(args, parser),
                      captions=args.captions, timestamps_path=args.timestamps)


def file_encoding(encoding: Optional[str], output: Optional[str], parser: argparse.ArgumentParser) -> str:
    """--encoding, else what the name of -o implies, else wav; a contradiction is a usage error."""
    implied = _EXTENSIONS.get(Path(output).suffix.lower()) if output else None
    if encoding is not None and implied is not None and encoding != implied:
        parser.error(f"--encoding {encoding} contradicts -o {output} (a {implied} name); drop one")
    return encoding or implied or "wav"


def read_text(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The text from the argument, --file or standard input.

    :raises OSError: --file cannot be read.
    """
    if args.text is not None and args.file is not None:
        parser.error("give the text as an argument or with --file, not both")
    source = "--file" if args.file not in (None, "-") else "standard input"
    try:
        if args.text is not None:
            text = args.text
        elif args.file is not None and args.file != "-":
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        else:
            if sys.stdin.isatty():
                print(f"{_PROG}: reading the text from standard input (end it with Ctrl-D)", file=sys.stderr)
            text = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        parser.error(f"{source}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})")
    if not text.strip():
        parser.error("no text to speak: give it as an argument, with --file, or on standard input")
    return text


def request_from_args(args: argparse.Namespace) -> pb.SynthesizeRequest:
    """A SynthesizeRequest (without its text) carrying the flags that were given; PCM,
    which speakstream-say plays or writes into the -o file's format itself."""
    request = pb.SynthesizeRequest(voice=args.voice, encoding=pb.AUDIO_ENCODING_LINEAR16,
                                   sample_rate_hz=args.rate, chunk_ms=args.chunk_ms,
                                   sentence_silence_s=SENTENCE_SILENCE_S)
    if args.speaker is not None:
        if args.speaker.isdigit():
            request.speaker_id = int(args.speaker)
        else:
            request.speaker = args.speaker
    for field_name, value in (("speed", args.speed),
                              ("noise_scale", args.noise_scale), ("noise_w", args.noise_w)):
        if value is not None:
            setattr(request, field_name, value)
    return request


@dataclass
class SayResult:
    """What the calls delivered, with monotonic timestamps (None = never)."""

    started_at: float
    cpu_started_s: float
    first_chunk_at: Optional[float] = None
    finished_at: Optional[float] = None
    cpu_s: float = 0.0
    calls: int = 0
    chunks: int = 0
    samples: int = 0
    """Samples written, the silence between calls included."""
    sample_rate: int = 0
    sentences: int = 0
    playback: Optional[PlaybackStats] = None

    @property
    def audio_s(self) -> float:
        """Seconds of audio received."""
        return self.samples / self.sample_rate if self.sample_rate else 0.0


@dataclass(frozen=True)
class _Span:
    end: int


@dataclass(frozen=True)
class _Placed:
    """An AudioChunk's place in the whole output, across calls (what Progress reads)."""

    sample_offset: int
    num_samples: int
    sentence_index: int
    text_span: _Span
    final: bool


def speak(stub, request: pb.SynthesizeRequest, text: str, outputs: list, *, timeout: float,
          max_chars_per_call: int, progress: Optional[Progress] = None,
          player: Optional[Player] = None, transcript: Optional[Transcript] = None,
          captions: Optional[Captions] = None) -> SayResult:
    """Speak `text` through SynthesizeStream calls of at most `max_chars_per_call`
    characters into `outputs` (the player first, if any); play to the end.
    The calls' word timings (if the request asks for them) go into
    `transcript`, placed in the whole text and audio; `captions` hears of them.

    :raises grpc.RpcError: a call failed; the outputs are aborted.
    :raises KeyboardInterrupt: the calls are cancelled first.
    """
    def start_call(piece: str):
        piece_request = pb.SynthesizeRequest()
        piece_request.CopyFrom(request)
        piece_request.text = piece
        return stub.SynthesizeStream(piece_request, timeout=timeout)

    calls = TextCalls(start_call, text, split_text(text, max_chars_per_call))
    return receive(calls, outputs, progress=progress, player=player, transcript=transcript, captions=captions)


def speak_live(stub, config: pb.SynthesizeRequest, stream: BinaryIO, outputs: list, *, timeout: float,
               max_chars_per_call: int, player: Optional[Player] = None, transcript: Optional[Transcript] = None,
               captions: Optional[Captions] = None) -> SayResult:
    """Speak `stream` (standard input) as it arrives through SynthesizeLive calls; as `speak`
    (the transcript's text is all the input sent)."""
    calls = LiveCalls(lambda requests: stub.SynthesizeLive(requests, timeout=timeout),
                      pb.LiveRequest(config=pb.LiveConfig(settings=config)), stream, max_chars_per_call)
    calls.start()
    return receive(calls, outputs, player=player, transcript=transcript, captions=captions)


def receive(calls: Union[TextCalls, LiveCalls], outputs: list, *, progress: Optional[Progress] = None,
            player: Optional[Player] = None, transcript: Optional[Transcript] = None,
            captions: Optional[Captions] = None) -> SayResult:
    """Play / write the chunks of each call in turn, with sentence silence between
    calls cut at a sentence end; as `speak`."""
    receiver = _Receiver(outputs, progress, player, transcript, captions)
    try:
        while True:
            receiver.wait_for_the_player()
            call = calls.next()
            if call is None:
                break
            receiver.take(call, calls)
    except BaseException:
        calls.cancel()
        for sink in outputs:
            sink.abort()
        raise
    return receiver.finish()


class _Receiver:
    """Writes the calls' chunks one after the other as one stream: sample offsets,
    sentence indices and text offsets carried across calls."""

    def __init__(self, outputs: list, progress: Optional[Progress], player: Optional[Player],
                 transcript: Optional[Transcript] = None, captions: Optional[Captions] = None):
        self._outputs, self._progress, self._player = outputs, progress, player
        self._transcript, self._captions = transcript, captions
        self._sinks = ([player] if player is not None else []) + outputs
        self.result = SayResult(started_at=time.monotonic(), cpu_started_s=time.process_time())
        self._sentence_base = 0  # sentences of the calls before
        self._silence_due = False  # the call before ended at a sentence end

    def take(self, call: Call, calls: Union[TextCalls, LiveCalls]) -> None:
        """Write `call`'s chunks; start the next call when it is time (calls.prefetch)."""
        self.result.calls += 1
        last_index = None
        for chunk in call.responses:
            self._write_chunk(call, chunk, calls)
            last_index = chunk.sentence_index
            if not self._player_is_ahead():
                calls.prefetch(call, chunk)
        if last_index is not None:
            # A call cut inside a sentence leaves the rest of that sentence to the next one.
            self._sentence_base += last_index + 1 if call.ends_sentence else last_index
            self._silence_due = call.ends_sentence

    def _write_chunk(self, call: Call, chunk, calls: Union[TextCalls, LiveCalls]) -> None:
        result = self.result
        if result.first_chunk_at is None:
            result.first_chunk_at = time.monotonic()
            result.sample_rate = chunk.sample_rate_hz
            for sink in self._sinks:
                sink.open(chunk.sample_rate_hz)
        if self._silence_due and chunk.num_samples:
            # The server ends a call's audio without the silence it puts after a sentence.
            self._write(bytes(2 * round(SENTENCE_SILENCE_S * result.sample_rate)))
            self._silence_due = False
        if chunk.words and self._transcript is not None:
            # Before the audio: captions wait for the words.
            self._add_words(self._transcript, call, chunk, calls.text)
        offset = result.samples
        self._write(chunk.audio)
        result.chunks += 1
        result.sentences = self._sentence_base + chunk.sentence_index + 1
        if self._progress is not None:
            self._progress.update(_Placed(offset, chunk.num_samples, self._sentence_base + chunk.sentence_index,
                                          _Span(call.text_start + chunk.text_span.end), chunk.final and call.last))
            self._progress.show(self._player.frames_played() if self._player is not None else None)

    def _add_words(self, transcript: Transcript, call: Call, chunk, text: str) -> None:
        """The chunk's words, placed in the whole text and in the whole audio written so far."""
        transcript.text = text
        transcript.add(chunk, text_offset=call.text_start,
                       sample_offset=self.result.samples - chunk.sample_offset)
        if self._captions is not None:
            self._captions.update()

    def _write(self, pcm: bytes) -> None:
        for sink in self._sinks:
            sink.write(pcm)
        self.result.samples += len(pcm) // 2

    def finish(self) -> SayResult:
        """Close the outputs, play to the end; the result."""
        result, player, progress = self.result, self._player, self._progress
        for sink in self._outputs:
            sink.finish()
        if player is not None and result.first_chunk_at is not None:
            on_wait = (lambda: progress.show(player.frames_played())) if progress is not None else None
            result.playback = player.finish(on_wait)
        if self._captions is not None:
            self._captions.finish()
        result.finished_at = time.monotonic()
        result.cpu_s = time.process_time() - result.cpu_started_s
        return result

    def _player_is_ahead(self) -> bool:
        """Whether more than _PLAYER_LEAD_S of audio waits for the device."""
        player, result = self._player, self.result
        return (player is not None and result.sample_rate > 0
                and result.samples - player.frames_played() > _PLAYER_LEAD_S * result.sample_rate)

    def wait_for_the_player(self) -> None:
        """Before a call: wait while the player is far ahead (see _PLAYER_LEAD_S).

        :raises AudioUnavailable: the device failed, or took nothing for _PLAYER_STALL_S.
        """
        player = self._player
        if player is None:
            return  # nothing plays, so nothing is ahead
        still_s, last = 0.0, None
        while self._player_is_ahead():
            player.write(b"")  # raises if the device has failed
            played = player.frames_played()
            still_s = still_s + _PLAYER_POLL_S if played == last else 0.0
            if still_s >= _PLAYER_STALL_S:
                raise AudioUnavailable(f"the device {player.device.name!r} stopped taking audio")
            last = played
            if self._progress is not None:
                self._progress.show(played)
            time.sleep(_PLAYER_POLL_S)


def stats_dict(result: SayResult) -> dict:
    """The --stats figures; times in ms from the start of the first call."""
    def ms(t: Optional[float], since: Optional[float] = result.started_at) -> Optional[float]:
        return None if t is None or since is None else round(1000 * (t - since), 2)

    stats: dict[str, Any] = {
        "time_to_first_chunk_ms": ms(result.first_chunk_at),
        "audio_s": round(result.audio_s, 3),
        "calls": result.calls,
        "chunks": result.chunks,
        "sentences": result.sentences,
        "wall_s": round(result.finished_at - result.started_at, 3) if result.finished_at else None,
        "cpu_s": round(result.cpu_s, 4),
        "cpu_per_audio_s": round(result.cpu_s / result.audio_s, 5) if result.audio_s else None,
    }
    pb_stats = result.playback
    if pb_stats is not None:
        rate = pb_stats.sample_rate
        stats.update({
            "time_to_first_sound_ms": ms(pb_stats.first_sound_at),
            "first_chunk_to_first_sound_ms": ms(pb_stats.first_sound_at, result.first_chunk_at),
            "first_chunk_to_device_start_ms": ms(pb_stats.started_at, result.first_chunk_at),
            "underruns": pb_stats.underruns,
            "silence_ms": round(1000 * pb_stats.silence_frames / rate, 1),
            "max_buffer_fill_ms": round(1000 * pb_stats.max_fill_frames / rate, 1),
            "buffer_capacity_ms": round(1000 * pb_stats.capacity_frames / rate, 1),
            "prebuffer_ms": round(pb_stats.prebuffer_ms, 1),
            "device": pb_stats.device_name,
            "device_latency_ms": round(1000 * pb_stats.output_latency_s, 1),
        })
    return stats


def format_stats(stats: dict) -> str:
    """The --stats report, one figure per line."""
    def line(label, value):
        return f"  {label:<24} {value}"

    lines = [f"{_PROG}: stats",
             line("time to first chunk", f"{stats['time_to_first_chunk_ms']} ms")]
    if "underruns" in stats:
        lines += [
            line("time to first sound", f"{stats['time_to_first_sound_ms']} ms "
                 f"({stats['first_chunk_to_first_sound_ms']} ms after the first chunk)"),
        ]
    lines.append(line("audio", f"{stats['audio_s']} s in {stats['chunks']} chunks, "
                               f"{stats['sentences']} sentences, {stats['calls']} calls"))
    if "underruns" in stats:
        lines += [
            line("underruns", f"{stats['underruns']} ({stats['silence_ms']} ms of silence)"),
            line("max buffer fill", f"{stats['max_buffer_fill_ms']} ms of {stats['buffer_capacity_ms']} ms"),
            line("prebuffer at the end", f"{stats['prebuffer_ms']} ms"),
            line("device", f"{stats['device']} ({stats['device_latency_ms']} ms latency)"),
        ]
    lines.append(line("client CPU", f"{stats['cpu_s']} s ({stats['cpu_per_audio_s']} s per audio second)"))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of speakstream-say."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_devices:
        return _list_devices()
    options = options_from_args(args, parser)
    if args.list_voices:
        return _list_voices(options)
    if args.live:
        if sys.stdin.isatty():
            print(f"{_PROG}: speaking standard input as you type (end it with Ctrl-D)", file=sys.stderr)
        return _run(options, request_from_args(args), None)
    try:
        text = read_text(args, parser)
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror or exc}", EXIT_LOCAL_IO)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    if not speakable(text):
        parser.error("nothing to speak: the text has no letter, digit or symbol")
    return _run(options, request_from_args(args), text)


def _run(options: SayOptions, request: pb.SynthesizeRequest, text: Optional[str]) -> int:
    """Speak `text`, or standard input as it arrives (--live) when it is None; write --timestamps."""
    # Word timings: to print what was heard after Ctrl-C, for --captions and --timestamps.
    transcript = Transcript(text or "") if options.play or options.timestamps_path else None
    if transcript is not None:
        request.timestamps = pb.TIMESTAMPS_WORDS
    try:
        # Opened first, so an unwritable path costs no synthesis.
        timestamps = open(options.timestamps_path, "w", encoding="utf-8") if options.timestamps_path else None
    except OSError as exc:
        return _fail(f"cannot write {options.timestamps_path}: {exc.strerror or exc}", EXIT_LOCAL_IO)
    try:
        code, result = _speak(options, request, text, transcript)
    finally:  # also when interrupted or failed: the words received so far
        written = True
        if timestamps is not None:
            assert transcript is not None  # --timestamps asks for the words (above)
            written = _write_timestamps(timestamps, transcript)
    if code != EXIT_OK:
        return code
    assert result is not None  # _speak gives the result with EXIT_OK
    if not written:
        return EXIT_LOCAL_IO
    _report(options, result, transcript)
    return EXIT_OK


def _write_timestamps(file, transcript: Transcript) -> bool:
    """Write and close the --timestamps file; False (said on stderr) if that failed."""
    try:
        with file:
            write_timestamps(file, transcript)
        return True
    except OSError as exc:
        _fail(f"cannot write {file.name}: {exc.strerror or exc}", EXIT_LOCAL_IO)
        return False


def _speak(options: SayOptions, request: pb.SynthesizeRequest, text: Optional[str],
           transcript: Optional[Transcript]) -> tuple[int, Optional[SayResult]]:
    """The calls, the outputs and the player; the exit code, and what the calls delivered if they succeeded."""
    file_output = None
    if options.output_path:
        file_output = (SoundFileOutput(options.output_path, options.output_format) if options.output_format
                       else WavOutput(options.output_path))
    outputs: list = [file_output] if file_output is not None else []
    if options.raw:
        outputs.append(RawOutput(sys.stdout.buffer))
    text_chars = len(text) if text is not None else 0
    show_progress = options.progress
    if show_progress is None:
        show_progress = sys.stderr.isatty() and text_chars >= _AUTO_PROGRESS_CHARS
    show_progress = show_progress and text is not None  # the length of live text is unknown
    progress = Progress(text_chars, sys.stderr) if show_progress else None
    player = Player(options.player) if options.play else None
    if player is not None:
        # The feeder and PortAudio's callback wait for the GIL whenever the
        # receiver holds it; a 1 ms switch interval (not 5) bounds that wait.
        sys.setswitchinterval(0.001)
    try:
        with contextlib.ExitStack() as stack:
            captions = None
            if player is not None:
                # The device is checked before the call, so a missing one costs no synthesis.
                stack.enter_context(player)
                if options.verbose:
                    stack.callback(lambda: sys.stderr.write(player.device_log))
                if options.captions:
                    assert transcript is not None  # playing asks for the words (_run)
                    captions = Captions(transcript, player, sys.stdout, _silence_stdout)
                    stack.callback(captions.stop)
            channel = stack.enter_context(open_channel(options.connection))
            stub = pb_grpc.SynthesizerStub(channel)
            if options.output_format is not None and options.output_format[0] == "OGG":
                request.sample_rate_hz = _opus_rate(stub, request, options.timeout)
            if text is None:
                result = speak_live(stub, request, sys.stdin.buffer, outputs, timeout=options.timeout,
                                    max_chars_per_call=options.max_chars_per_call, player=player,
                                    transcript=transcript, captions=captions)
            else:
                result = speak(stub, request, text, outputs, timeout=options.timeout,
                               max_chars_per_call=options.max_chars_per_call, progress=progress, player=player,
                               transcript=transcript, captions=captions)
    except grpc.RpcError as exc:
        return _fail_after(progress, _rpc_message(exc, options), _rpc_exit_code(exc)), None
    except AudioUnavailable as exc:
        return _fail_after(progress, f"{exc}; to write a file instead, use -o out.wav", EXIT_NO_AUDIO), None
    except KeyboardInterrupt:
        code = _fail_after(progress, _interrupted_message(player, file_output), EXIT_INTERRUPTED)
        if player is not None:
            # The player has stopped: what its device played until then.
            assert transcript is not None  # playing asks for the words (_run)
            print(f"heard: {transcript.heard(player.frames_heard()) or '(nothing)'}", file=sys.stderr)
        return code, None
    except InputError as exc:
        return _fail_after(progress, str(exc), EXIT_LOCAL_IO), None
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE, None
    except OSError as exc:
        return _fail_after(progress, f"cannot write {exc.filename or 'the output'}: "
                           f"{exc.strerror or exc}", EXIT_LOCAL_IO), None
    if progress is not None:
        progress.close()
    return EXIT_OK, result


def _opus_rate(stub, request: pb.SynthesizeRequest, timeout: float) -> int:
    """The rate to ask for an Ogg/Opus file: the first Opus rate at or above
    --rate or the voice's own (0, and the call's NOT_FOUND, for an unknown voice)."""
    rate = request.sample_rate_hz
    if not rate:
        voices = stub.ListVoices(pb.ListVoicesRequest(), timeout=timeout).voices
        voice = next((v for v in voices if v.name == request.voice or (not request.voice and v.is_default)), None)
        if voice is None:
            return 0
        rate = voice.sample_rate_hz
    return next((r for r in _OPUS_RATES if r >= rate), _OPUS_RATES[-1])


def _interrupted_message(player: Optional[Player], file_output) -> str:
    parts = ["interrupted: call cancelled"]
    if player is not None:
        parts.append("playback stopped")
    if file_output is not None:
        parts.append(f"{file_output.path} holds the audio up to here" if file_output.created
                     else f"no audio yet, {file_output.path} not written")
    return "; ".join(parts)


def _report(options: SayOptions, result: SayResult, transcript: Optional[Transcript]) -> None:
    stats = stats_dict(result)
    if options.output_path:
        print(f"wrote {options.output_path}: {result.samples} samples ({result.audio_s:.2f} s)", file=sys.stderr)
    if options.timestamps_path:
        assert transcript is not None  # --timestamps asks for the words (_run)
        print(f"wrote {options.timestamps_path}: {len(transcript.words)} words", file=sys.stderr)
    if options.stats:
        print(format_stats(stats), file=sys.stderr)
    elif result.playback is not None and result.playback.underruns:
        pb_stats = result.playback
        print(f"{_PROG}: playback paused {pb_stats.underruns} time(s) waiting for the server "
              f"({stats['silence_ms']} ms of silence); the prebuffer grew to "
              f"{pb_stats.prebuffer_ms:.0f} ms", file=sys.stderr)
    if options.stats_json:
        print(json.dumps(stats), file=sys.stderr)


def _list_devices() -> int:
    try:
        devices = list_output_devices()
    except AudioUnavailable as exc:
        return _fail(str(exc), EXIT_NO_AUDIO)
    if not devices:
        return _fail("no audio output device found", EXIT_NO_AUDIO)
    for d in devices:
        mark = "*" if d.is_default else " "
        print(f"{mark} {d.index:3d}  {d.name}  ({d.host_api}, {d.max_output_channels} ch, "
              f"{d.default_sample_rate:.0f} Hz)")
    return EXIT_OK


def _list_voices(options: SayOptions) -> int:
    """Print the server's voices, the default marked with *."""
    try:
        with open_channel(options.connection) as channel:
            voices = pb_grpc.SynthesizerStub(channel).ListVoices(pb.ListVoicesRequest(), timeout=options.timeout).voices
    except grpc.RpcError as exc:
        return _fail(_rpc_message(exc, options), _rpc_exit_code(exc))
    for line in format_voices(voices):
        print(line)
    return EXIT_OK


def format_voices(voices) -> list[str]:
    """One line per voice: default mark, name, language, rate, speakers (their names), quality."""
    width = max((len(v.name) for v in voices), default=0)
    lines = []
    for v in voices:
        speakers = f"{v.num_speakers} speaker{'' if v.num_speakers == 1 else 's'}"
        if v.speakers:
            speakers += " (" + ", ".join(f"{s.id} {s.name}" for s in v.speakers) + ")"
        lines.append(f"{'*' if v.is_default else ' '} {v.name:<{width}}  {v.language:<6} "
                     f"{v.sample_rate_hz:>5} Hz  {v.quality:<6}  {speakers}")
    return lines


def _rpc_exit_code(exc: grpc.RpcError) -> int:
    code = exc.code()
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) or _too_large(exc):
        return EXIT_USAGE
    return EXIT_SERVER


def _too_large(exc: grpc.RpcError) -> bool:
    """gRPC's own refusal of a request message over the server's receive limit: the input's fault."""
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in (exc.details() or "")


def _rpc_message(exc: grpc.RpcError, options: SayOptions) -> str:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the server at {options.server}: {details}"
    if _too_large(exc) or (code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("text:")
                           and "limit" in details):
        return (f"the server takes less text per call than --max-chars-per-call {options.max_chars_per_call}: "
                f"set it to the server's --max-chars or less ({details})")
    if code == grpc.StatusCode.NOT_FOUND:
        return f"{code.name}: {details} ({_PROG} --list-voices shows the voices and speakers)"
    return f"{code.name}: {details}"


def _fail_after(progress: Optional[Progress], message: str, code: int) -> int:
    if progress is not None:
        progress.close(redraw=False)
    return _fail(message, code)


def _fail(message: str, code: int) -> int:
    print(f"{_PROG}: {message}", file=sys.stderr)
    return code


def _silence_stdout() -> None:
    # Python flushes stdout at exit; a closed pipe would raise again there.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
