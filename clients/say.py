"""speakstream-say: speak text through a speakstream server and write the audio to a WAV file."""

from __future__ import annotations

import argparse
import sys
import wave
from typing import Optional, Sequence

import grpc

from speakstream.v1 import synthesizer_pb2 as pb
from speakstream.v1 import synthesizer_pb2_grpc as pb_grpc

_EXIT_USAGE = 2
_EXIT_SERVER = 3
_EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The command line of speakstream-say."""
    p = argparse.ArgumentParser(prog="speakstream-say", description="Speak text with a speakstream server.")
    p.add_argument("text", nargs="?", help="text to speak (default: read standard input)")
    p.add_argument("--server", default="127.0.0.1:50051", help="server address host:port (default %(default)s)")
    p.add_argument("--voice", default="", help="voice name (default: the server's default)")
    p.add_argument("--speaker", type=int, help="speaker id of a multi-speaker voice")
    p.add_argument("--speed", type=float, help="speaking rate, 1.0 = normal")
    p.add_argument("--noise-scale", type=float, help="voice variation, 0 = deterministic")
    p.add_argument("--noise-w", type=float, help="timing variation, 0 = deterministic")
    p.add_argument("-o", "--output", required=True, help="WAV file to write")
    p.add_argument("--timeout", type=float, default=300.0, help="call deadline in seconds (default %(default)s)")
    return p


def request_from_args(args: argparse.Namespace, text: str) -> pb.SynthesizeRequest:
    """A SynthesizeRequest carrying the flags that were given."""
    request = pb.SynthesizeRequest(text=text, voice=args.voice, encoding=pb.AUDIO_ENCODING_LINEAR16)
    for field, value in (("speaker_id", args.speaker), ("speed", args.speed),
                         ("noise_scale", args.noise_scale), ("noise_w", args.noise_w)):
        if value is not None:
            setattr(request, field, value)
    return request


def stream_to_wav(stub, request: pb.SynthesizeRequest, path: str, timeout: float) -> int:
    """Write the streamed audio to `path` as it arrives; returns the number of samples.

    The file is created with the first chunk, so a failed call leaves none.
    """
    samples, wav = 0, None
    try:
        for chunk in stub.SynthesizeStream(request, timeout=timeout):
            if wav is None:
                wav = _open_wav(path, chunk.sample_rate_hz)
            wav.writeframes(chunk.audio)
            samples += chunk.num_samples
    finally:
        if wav is not None:
            wav.close()
    return samples


def _open_wav(path: str, sample_rate: int) -> wave.Wave_write:
    wav = wave.open(path, "wb")
    wav.setnchannels(1)
    wav.setsampwidth(2)
    wav.setframerate(sample_rate)
    return wav


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of speakstream-say."""
    args = build_parser().parse_args(argv)
    text = args.text if args.text is not None else sys.stdin.read()
    try:
        with grpc.insecure_channel(args.server) as channel:
            stub = pb_grpc.SynthesizerStub(channel)
            samples = stream_to_wav(stub, request_from_args(args, text), args.output, args.timeout)
    except grpc.RpcError as exc:
        return _report(exc, args.server)
    except KeyboardInterrupt:
        return _EXIT_INTERRUPTED
    print(f"wrote {args.output}: {samples} samples", file=sys.stderr)
    return 0


def _report(exc: grpc.RpcError, server: str) -> int:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        print(f"speakstream-say: cannot reach the server at {server}: {exc.details()}", file=sys.stderr)
        return _EXIT_SERVER
    print(f"speakstream-say: {code.name}: {exc.details()}", file=sys.stderr)
    return _EXIT_USAGE if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) else _EXIT_SERVER


if __name__ == "__main__":
    sys.exit(main())
