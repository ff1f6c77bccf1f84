"""speakstream-say: speak text with a speakstream server: aloud, into a file (WAV, FLAC, Ogg/Opus, G.711) or as raw PCM."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Optional, Sequence

import grpc

from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

from clients.channel import Connection, add_connection_flags, connection_from_args, open_channel
from clients.outputs import EncodedOutput, RawOutput, WavOutput
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

_PROG = "speakstream-say"
EXIT_OK = 0
EXIT_LOCAL_IO = 1
EXIT_USAGE = 2
EXIT_SERVER = 3
EXIT_NO_AUDIO = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
_AUTO_PROGRESS_CHARS = 300  # a bar by default only for text longer than a few sentences
_LIVE_READ_BYTES = 4096

_EPILOG = f"""\
outputs:
  with neither -o nor --raw the audio is played; -o alone writes only the WAV
  (no sound card needed); --play with -o or --raw also plays it. With
  --encoding flac, ogg_opus, mulaw or alaw, -o gets the server's encoded
  stream as it is.

live:
  --live speaks standard input as it arrives (SynthesizeLive), each sentence
  as soon as it is complete: some-llm | {_PROG} --live
  End of input speaks what is left and ends the call.

exit codes:
  {EXIT_OK}    done
  {EXIT_LOCAL_IO}    cannot read --file or write the output file
  {EXIT_USAGE}    bad arguments, or the server refused the request (INVALID_ARGUMENT,
       NOT_FOUND: unknown voice or speaker, a knob out of range, --rate
       outside 8000-48000)
  {EXIT_SERVER}    server unreachable, or it failed (UNAVAILABLE, DEADLINE_EXCEEDED,
       RESOURCE_EXHAUSTED, INTERNAL, ...)
  {EXIT_NO_AUDIO}    no audio output: PyAudio missing, no device, --device not found,
       or the device failed (write a file with -o instead)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C): the call was cancelled, playback stopped
  {EXIT_BROKEN_PIPE}  --raw: the reading end of the pipe closed early
"""


# --encoding: the AudioEncoding the server is asked for when writing -o (wav: LINEAR16, written by WavOutput).
_FILE_ENCODINGS = {
    "wav": pb.AUDIO_ENCODING_LINEAR16,
    "flac": pb.AUDIO_ENCODING_FLAC,
    "ogg_opus": pb.AUDIO_ENCODING_OGG_OPUS,
    "mulaw": pb.AUDIO_ENCODING_MULAW,
    "alaw": pb.AUDIO_ENCODING_ALAW,
}


def build_parser() -> argparse.ArgumentParser:
    """The command line of speakstream-say."""
    p = argparse.ArgumentParser(
        prog=_PROG, description="Speak text with a speakstream server.", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", help="text to speak (default: --file, else standard input)")
    p.add_argument("-f", "--file", help="read the text from this file")
    add_connection_flags(p)
    p.add_argument("--timeout", type=float, default=300.0,
                   help="deadline of the synthesis call in seconds (default %(default)s)")
    p.add_argument("--live", action="store_true",
                   help="read standard input as it arrives and speak each sentence once complete "
                        "(SynthesizeLive), e.g. some-llm | speakstream-say --live")
    req = p.add_argument_group("request")
    req.add_argument("--voice", default="", help="voice name (default: the server's default)")
    req.add_argument("--speaker", help="speaker of a multi-speaker voice: its id (a number) or its name")
    req.add_argument("--speed", type=float, help="speaking rate, 1.0 = normal")
    req.add_argument("--noise-scale", type=float, help="voice variation, 0 = deterministic")
    req.add_argument("--noise-w", type=float, help="timing variation, 0 = deterministic")
    req.add_argument("--rate", type=int, default=0, help="sample rate in Hz (default: the voice's own)")
    req.add_argument("--chunk-ms", type=int, default=0, help="largest chunk the server sends, in ms")
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", help="write the audio to this file (a WAV unless --encoding says otherwise)")
    out.add_argument("--encoding", choices=sorted(_FILE_ENCODINGS), default="wav",
                     help="format of the -o file: the server encodes, the file is the stream's bytes "
                          "(mulaw/alaw: raw G.711, no header); other than wav needs -o and neither "
                          "--play nor --raw (default %(default)s)")
    out.add_argument("--raw", action="store_true", help="write raw 16-bit mono PCM to standard output")
    out.add_argument("--play", action="store_true", help="play as well as writing -o / --raw")
    out.add_argument("--device", help="output device: index or part of its name (see --list-devices)")
    out.add_argument("--list-devices", action="store_true", help="list the output devices and exit")
    out.add_argument("--prebuffer-ms", type=float, default=DEFAULT_PREBUFFER_MS,
                     help="audio to buffer before playing (default %(default)s)")
    out.add_argument("--max-prebuffer-ms", type=float, default=DEFAULT_MAX_PREBUFFER_MS,
                     help="the prebuffer doubles on each underrun up to this (default %(default)s)")
    rep = p.add_argument_group("reporting")
    rep.add_argument("--stats", action="store_true", help="print timing and buffer statistics at the end")
    rep.add_argument("--stats-json", action="store_true",
                     help="print the statistics as one JSON line on standard error")
    rep.add_argument("--progress", action="store_true", default=None,
                     help="show a progress bar (default: for long text when standard error is a terminal)")
    rep.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")
    rep.add_argument("-v", "--verbose", action="store_true", help="show what the sound libraries print")
    return p


@dataclass(frozen=True)
class SayOptions:
    """What to do with the audio, checked and settled from the command line."""

    play: bool
    wav_path: Optional[str]
    raw: bool
    encoded: bool
    """-o gets the server's bytes as they are (--encoding other than wav)."""
    player: PlayerConfig
    progress: Optional[bool]
    """None: a bar when stderr is a terminal and the text is long."""
    stats: bool
    stats_json: bool
    verbose: bool
    server: str
    timeout: float
    connection: Connection


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
    encoded = args.encoding != "wav"
    if encoded and (args.output is None or args.play or args.raw):
        parser.error(f"--encoding {args.encoding}: writes -o only (playing and --raw need PCM)")
    if args.live and (args.text is not None or args.file not in (None, "-")):
        parser.error("--live reads standard input: give no text argument and no --file")
    if args.live and args.progress:
        parser.error("--progress needs the text's length, unknown with --live")
    return SayOptions(play=play, wav_path=args.output, raw=args.raw, encoded=encoded, player=player,
                      progress=args.progress, stats=args.stats, stats_json=args.stats_json,
                      verbose=args.verbose, server=args.server, timeout=args.timeout,
                      connection=connection_from_args(args, parser))


def read_text(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The text from the argument, --file or standard input.

    :raises OSError: --file cannot be read.
    """
    if args.text is not None and args.file is not None:
        parser.error("give the text as an argument or with --file, not both")
    if args.text is not None:
        text = args.text
    elif args.file is not None and args.file != "-":
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    else:
        if sys.stdin.isatty():
            print(f"{_PROG}: reading the text from standard input (end it with Ctrl-D)", file=sys.stderr)
        text = sys.stdin.read()
    if not text.strip():
        parser.error("no text to speak: give it as an argument, with --file, or on standard input")
    return text


def live_requests(config: pb.SynthesizeRequest, stream: BinaryIO,
                  read_bytes: int = _LIVE_READ_BYTES) -> Iterator[pb.LiveRequest]:
    """The SynthesizeLive requests: the config, then each piece of `stream` as it
    arrives (one read, not a line or a full buffer), until end of input.

    Ending the requests closes the send side, which makes the server speak
    what is pending and end the stream. Runs on gRPC's request thread.
    """
    yield pb.LiveRequest(config=pb.LiveConfig(settings=config))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = stream.fileno()
    while True:
        data = os.read(fd, read_bytes)  # returns as soon as any bytes are there
        text = decoder.decode(data, final=not data)
        if text:
            yield pb.LiveRequest(text=text)
        if not data:
            return


def request_from_args(args: argparse.Namespace, text: str) -> pb.SynthesizeRequest:
    """A SynthesizeRequest carrying the flags that were given."""
    request = pb.SynthesizeRequest(text=text, voice=args.voice, encoding=_FILE_ENCODINGS[args.encoding],
                                   sample_rate_hz=args.rate, chunk_ms=args.chunk_ms)
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
    """What one call delivered, with monotonic timestamps (None = never)."""

    started_at: float
    cpu_started_s: float
    first_chunk_at: Optional[float] = None
    finished_at: Optional[float] = None
    cpu_s: float = 0.0
    chunks: int = 0
    samples: int = 0
    sample_rate: int = 0
    sentences: int = 0
    playback: Optional[PlaybackStats] = None

    @property
    def audio_s(self) -> float:
        """Seconds of audio received."""
        return self.samples / self.sample_rate if self.sample_rate else 0.0


def speak(stub, request: pb.SynthesizeRequest, outputs: list, *, timeout: float,
          progress: Optional[Progress] = None, player: Optional[Player] = None) -> SayResult:
    """Stream `request` into `outputs` (the player first, if any); play to the end.

    :raises grpc.RpcError: the call failed; the outputs are aborted.
    :raises KeyboardInterrupt: the call is cancelled first.
    """
    return receive(lambda: stub.SynthesizeStream(request, timeout=timeout), outputs,
                   progress=progress, player=player)


def speak_live(stub, config: pb.SynthesizeRequest, stream: BinaryIO, outputs: list, *, timeout: float,
               player: Optional[Player] = None) -> SayResult:
    """Speak `stream` (standard input) as it arrives through SynthesizeLive; as `speak`."""
    return receive(lambda: stub.SynthesizeLive(live_requests(config, stream), timeout=timeout),
                   outputs, player=player)


def receive(start_call, outputs: list, *, progress: Optional[Progress] = None,
            player: Optional[Player] = None) -> SayResult:
    """Play / write the chunks of the call `start_call()` makes; as `speak`."""
    sinks = ([player] if player is not None else []) + outputs
    result = SayResult(started_at=time.monotonic(), cpu_started_s=time.process_time())
    call = start_call()
    try:
        for chunk in call:
            if result.first_chunk_at is None:
                result.first_chunk_at = time.monotonic()
                result.sample_rate = chunk.sample_rate_hz
                for sink in sinks:
                    sink.open(chunk.sample_rate_hz)
            for sink in sinks:
                sink.write(chunk.audio)
            result.chunks += 1
            result.samples += chunk.num_samples
            result.sentences = chunk.sentence_index + 1
            if progress is not None:
                progress.update(chunk)
                progress.show(player.frames_played() if player is not None else None)
    except BaseException:
        call.cancel()
        for sink in outputs:
            sink.abort()
        raise
    for sink in outputs:
        sink.finish()
    if player is not None and result.first_chunk_at is not None:
        on_wait = (lambda: progress.show(player.frames_played())) if progress is not None else None
        result.playback = player.finish(on_wait)
    result.finished_at = time.monotonic()
    result.cpu_s = time.process_time() - result.cpu_started_s
    return result


def stats_dict(result: SayResult) -> dict:
    """The --stats figures; times in ms from the start of the call."""
    def ms(t: Optional[float], since: Optional[float] = result.started_at) -> Optional[float]:
        return None if t is None or since is None else round(1000 * (t - since), 2)

    stats: dict[str, Any] = {
        "time_to_first_chunk_ms": ms(result.first_chunk_at),
        "audio_s": round(result.audio_s, 3),
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
                               f"{stats['sentences']} sentences"))
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
    if args.live:
        if sys.stdin.isatty():
            print(f"{_PROG}: speaking standard input as you type (end it with Ctrl-D)", file=sys.stderr)
        return _run(options, request_from_args(args, ""), 0, live_input=sys.stdin.buffer)
    try:
        text = read_text(args, parser)
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror or exc}", EXIT_LOCAL_IO)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    return _run(options, request_from_args(args, text), len(text))


def _run(options: SayOptions, request: pb.SynthesizeRequest, text_chars: int,
         live_input: Optional[BinaryIO] = None) -> int:
    """:param live_input: speak this stream as it arrives (--live); `request` is the config."""
    outputs: list = []
    if options.wav_path:
        outputs.append(EncodedOutput(options.wav_path) if options.encoded else WavOutput(options.wav_path))
    if options.raw:
        outputs.append(RawOutput(sys.stdout.buffer))
    show_progress = options.progress
    if show_progress is None:
        show_progress = sys.stderr.isatty() and text_chars >= _AUTO_PROGRESS_CHARS
    show_progress = show_progress and live_input is None  # the length of live text is unknown
    progress = Progress(text_chars, sys.stderr) if show_progress else None
    player = Player(options.player) if options.play else None
    if player is not None:
        # The feeder and PortAudio's callback wait for the GIL whenever the
        # receiver holds it; a 1 ms switch interval (not 5) bounds that wait.
        sys.setswitchinterval(0.001)
    try:
        with contextlib.ExitStack() as stack:
            if player is not None:
                # The device is checked before the call, so a missing one costs no synthesis.
                stack.enter_context(player)
                if options.verbose:
                    stack.callback(lambda: sys.stderr.write(player.device_log))
            channel = stack.enter_context(open_channel(options.connection))
            stub = pb_grpc.SynthesizerStub(channel)
            if live_input is not None:
                result = speak_live(stub, request, live_input, outputs, timeout=options.timeout,
                                    player=player)
            else:
                result = speak(stub, request, outputs, timeout=options.timeout, progress=progress,
                               player=player)
    except grpc.RpcError as exc:
        return _fail_after(progress, _rpc_message(exc, options.server), _rpc_exit_code(exc))
    except AudioUnavailable as exc:
        return _fail_after(progress, f"{exc}; to write a file instead, use -o out.wav", EXIT_NO_AUDIO)
    except KeyboardInterrupt:
        return _fail_after(progress, "interrupted: call cancelled, playback stopped", EXIT_INTERRUPTED)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        return _fail_after(progress, f"cannot write {exc.filename or 'the output'}: "
                           f"{exc.strerror or exc}", EXIT_LOCAL_IO)
    if progress is not None:
        progress.close()
    _report(options, result)
    return EXIT_OK


def _report(options: SayOptions, result: SayResult) -> None:
    stats = stats_dict(result)
    if options.wav_path:
        print(f"wrote {options.wav_path}: {result.samples} samples ({result.audio_s:.2f} s)", file=sys.stderr)
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


def _rpc_exit_code(exc: grpc.RpcError) -> int:
    code = exc.code()
    return EXIT_USAGE if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) else EXIT_SERVER


def _rpc_message(exc: grpc.RpcError, server: str) -> str:
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the server at {server}: {exc.details()}"
    return f"{exc.code().name}: {exc.details()}"


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
