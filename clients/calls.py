"""The synthesis calls speakstream-say makes for one text: consecutive calls, each within the server's limit.

The server takes at most --max-chars characters per call. A longer text is
cut at sentence ends (clients/sentences.py) and spoken by consecutive
SynthesizeStream calls (`TextCalls`); --live input goes through SynthesizeLive
calls that end at a sentence end once they near the limit, the input going on
in a new call (`LiveCalls`). The receiver (clients/say.py) takes the calls in
order and writes each one's audio after the previous one's, with the server's
sentence silence between them where the cut was a sentence end (a call's
audio ends without it). Each next call is started while the audio before it
is still arriving or playing, so its first chunks are there in time.
"""

from __future__ import annotations

import codecs
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator, Optional

from clients.sentences import Piece, live_cut
from speakstream.v1 import synthesizer_pb2 as pb

_LIVE_READ_BYTES = 4096
_CLOSE = object()  # ends a live call's requests


class InputError(Exception):
    """Reading --live input failed (the OSError is its cause)."""


@dataclass
class Call:
    """One call of a sequence: its response stream and where its text lies in the whole."""

    responses: Any
    """The gRPC call: iterates AudioChunks, cancel() stops it."""
    text_start: int
    """Offset of the call's text in the whole text (code points)."""
    ends_sentence: bool = True
    """The call's text ends at a sentence end, so sentence silence goes before the next call's audio.
    (A live call's is settled before its send side closes, so before its last chunk.)"""
    prefetch_from: int = 0
    """Once audio for the call's text from this offset on arrives, the next call may start."""
    last: bool = False
    """Known to be the last call."""


class TextCalls:
    """SynthesizeStream calls for the pieces of a known text, in order.

    The next call is started (`prefetch`) once the current one's audio has
    reached its last sentence: late enough not to compete with it for the
    server's workers, early enough for its first chunk to be there when the
    current one's audio ends.

    :param start_call: starts a SynthesizeStream call for one piece's text.
    """

    def __init__(self, start_call: Callable[[str], Any], text: str, pieces: list[Piece]):
        self._start_call, self._text, self._pieces = start_call, text, pieces
        self._next = 0
        self._ahead: Optional[Call] = None  # started, not yet handed out
        self._started: list[Call] = []

    @property
    def text(self) -> str:
        """The whole text, which Call.text_start and the calls' spans index."""
        return self._text

    def next(self) -> Optional[Call]:
        """The next call (started now unless it already was), None after the last."""
        if self._ahead is None:
            self._start_next()
        call, self._ahead = self._ahead, None
        return call

    def prefetch(self, call: Call, chunk) -> None:
        """Start the next call once `chunk` shows `call`'s last sentence under way."""
        if self._ahead is None and (chunk.final or chunk.text_span.end > call.prefetch_from):
            self._start_next()

    def cancel(self) -> None:
        """Cancel every call started."""
        for call in self._started:
            call.responses.cancel()

    def _start_next(self) -> None:
        if self._next == len(self._pieces):
            return
        piece = self._pieces[self._next]
        self._next += 1
        call = Call(self._start_call(self._text[piece.start:piece.end]), text_start=piece.start,
                    ends_sentence=piece.ends_sentence, prefetch_from=piece.last_sentence - piece.start,
                    last=self._next == len(self._pieces))
        self._started.append(call)
        self._ahead = call


class LiveCalls:
    """SynthesizeLive calls speaking `stream` as it arrives, none over `max_chars` characters.

    A reader thread forwards each piece of input at once. Once a call has
    sent half of `max_chars`, it ends at the first sentence end the input
    decides (or, nearing the limit without one, at the last space within
    it), and the input goes on in a new call, started at once: the server
    speaks the end of the old call while the new one begins.

    :param start_call: starts a SynthesizeLive call on an iterator of LiveRequests.
    :param config: the first request of every call.
    """

    def __init__(self, start_call: Callable[[Iterator], Any], config: pb.LiveRequest, stream: BinaryIO,
                 max_chars: int, read_bytes: int = _LIVE_READ_BYTES):
        self._start_call, self._config, self._stream = start_call, config, stream
        self._max_chars, self._read_bytes = max_chars, read_bytes
        self._calls: queue.Queue = queue.Queue()  # Call, then None at the end of input, or an exception
        self._open: list[tuple[Call, queue.Queue]] = []
        self._current: Optional[tuple[Call, queue.Queue]] = None
        self._call_text = ""  # the current call's text so far
        self._offset = 0  # code points sent in all calls
        self._sent: list[str] = []  # every piece sent, in order
        self._text = ""  # the pieces joined, up to _text_pieces
        self._text_pieces = 0
        self._cancelled = False
        self._reader = threading.Thread(target=self._read, name="speakstream-live-reader", daemon=True)

    @property
    def text(self) -> str:
        """All text sent so far, in all calls: what Call.text_start and the calls' spans index."""
        sent = len(self._sent)  # the reader thread appends meanwhile
        if sent != self._text_pieces:
            self._text += "".join(self._sent[self._text_pieces:sent])
            self._text_pieces = sent
        return self._text

    def start(self) -> None:
        """Open the first call and start reading."""
        self._open_call()
        self._reader.start()

    def next(self) -> Optional[Call]:
        """The next call (waiting for the input to need one), None once the input has ended.

        :raises InputError: reading the input failed.
        """
        item = self._calls.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def prefetch(self, call: Call, chunk) -> None:
        """Nothing to do: the reader starts each call when it ends the previous one."""

    def cancel(self) -> None:
        """Cancel every call and stop opening new ones."""
        self._cancelled = True
        for call, requests in self._open:
            call.responses.cancel()
            requests.put(_CLOSE)  # frees gRPC's thread waiting for the next request

    def _read(self) -> None:
        """The reader thread: each read (not a line, not a full buffer) is sent as it arrives."""
        try:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            fd = self._stream.fileno()
            while not self._cancelled:
                data = os.read(fd, self._read_bytes)  # returns as soon as any bytes are there
                text = decoder.decode(data, final=not data)
                if text:
                    self._send(text)
                if not data:
                    break
            self._close_call(ends_sentence=True)  # the server speaks what is pending and ends
            self._calls.put(None)
        except OSError as exc:
            error = InputError(f"cannot read standard input: {exc.strerror or exc}")
            error.__cause__ = exc
            self._calls.put(error)
        except Exception as exc:  # noqa: BLE001 - raised in the receiving thread
            self._calls.put(exc)

    def _send(self, text: str) -> None:
        """Forward `text`, ending calls where they must end."""
        while text and not self._cancelled:
            if self._current is None:
                self._open_call()
            sent = len(self._call_text)
            cut = live_cut(self._call_text + text, sent, self._max_chars // 2, self._max_chars)
            if cut is None:
                self._forward(text)
                return
            end, at_sentence_end = cut
            head, text = text[:end - sent], text[end - sent:]
            self._forward(head)
            self._close_call(at_sentence_end)

    def _open_call(self) -> None:
        requests: queue.Queue = queue.Queue()
        requests.put(self._config)
        call = Call(self._start_call(iter(requests.get, _CLOSE)), text_start=self._offset)
        self._current, self._call_text = (call, requests), ""
        self._open.append(self._current)
        self._calls.put(call)

    def _forward(self, text: str) -> None:
        if text:
            assert self._current is not None  # _send opens a call before it forwards
            self._sent.append(text)  # before the server can speak it
            self._current[1].put(pb.LiveRequest(text=text))
            self._call_text += text
            self._offset += len(text)

    def _close_call(self, ends_sentence: bool) -> None:
        if self._current is not None:
            call, requests = self._current
            call.ends_sentence = ends_sentence
            requests.put(_CLOSE)
            self._current = None
