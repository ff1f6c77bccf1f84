"""Plays a stream of 16-bit PCM through PyAudio as it arrives, with a jitter buffer.

Three threads meet here, each with one job:

- the caller (the gRPC receiver) hands over network chunks with write(); it
  never blocks, so a call ends as fast as the server synthesizes;
- the feeder thread cuts them into frames with a fastaudio Chunker and writes
  them into a fastaudio RingBuffer (the ring's only producer), and decides
  when playback starts and resumes;
- PortAudio's callback reads the ring (its only consumer). While audio
  flows it allocates no Python object: it fills a preallocated buffer and
  returns a preallocated tuple. (PyAudio's C wrapper still builds the
  arguments of each call, a frame count and a time-info dict; that is
  PyAudio's, beyond reach from Python.)

Jitter buffer: the device starts once ``prebuffer_ms`` of audio is in the
ring, or the input has ended. If the ring runs dry while the input is still
open, the callback plays the partial block padded with zeros, then silence
(never repeated or stale samples) until the ring again holds the prebuffer,
which doubles on every underrun up to ``max_prebuffer_ms``. At the end the
ring is drained to the last sample before the device stops.

When is a frame heard? Not when the callback takes it: the device's own
buffers hold it a while (on ALSA, PortAudio's buffer plus whatever the
device keeps that nobody reports). The player keeps the device's clock
instead: a sound card plays at its sample rate from the moment it starts,
and PortAudio's ALSA backend starts it with its whole buffer (the output
latency plus one block) primed with silence, so the first block is heard
that long after the start, unless PortAudio reports a later DAC time for
it (a sound server's own buffering). Every later device frame follows at
the sample rate; the silence played during underruns is recorded by the
callback (``heard_at``, ``frames_heard``).

PyAudio is imported lazily: writing WAV files or raw PCM needs no sound stack.
"""

from __future__ import annotations

import ctypes
import math
import os
import queue
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from fastaudio import Chunker, RingBuffer, RingClosed, RingFull

# Measured with bench/playback.py (docs/BENCHMARKS.md, "Playback client").
DEFAULT_PREBUFFER_MS = 100.0
DEFAULT_MAX_PREBUFFER_MS = 2000.0

_BYTES_PER_FRAME = 2  # mono int16
# Callback states. Only the callback moves PLAYING -> UNDERRUN; only the
# feeder moves UNDERRUN -> BUFFERING -> PLAYING. With one writer per
# transition, the GIL's atomic attribute stores are enough: no lock.
_PLAYING, _UNDERRUN, _BUFFERING = 0, 1, 2
_END = object()  # end of input, in the feeder's queue
_WRITE_SLICE_S = 0.25  # how often a feeder blocked on a full ring looks around
_POLL_S = 0.1  # how often finish() looks for progress (and lets Ctrl-C in)
_STALL_S = 10.0  # a device that takes nothing for this long has failed


class AudioUnavailable(Exception):
    """No way to play sound: PyAudio missing, no output device, or it failed."""


@dataclass(frozen=True)
class PlayerConfig:
    """How the player buffers and which device it uses."""

    prebuffer_ms: float = DEFAULT_PREBUFFER_MS
    """Audio buffered before the device starts (and, grown, after an underrun)."""

    max_prebuffer_ms: float = DEFAULT_MAX_PREBUFFER_MS
    """Cap on the prebuffer after it grows on underruns."""

    block_ms: float = 20.0
    """Audio per PortAudio callback (frames_per_buffer)."""

    frame_ms: float = 20.0
    """Audio per ring write (the Chunker's frame)."""

    ring_ms: float = 5000.0
    """Ring capacity; the feeder waits for room beyond it."""

    device: Optional[str] = None
    """Output device: an index or part of a name (see list_output_devices); None = default."""

    quiet: bool = True
    """Keep PortAudio's and ALSA's start-up chatter off stderr (kept in Player.device_log)."""

    def __post_init__(self):
        if not 0 <= self.prebuffer_ms <= self.max_prebuffer_ms:
            raise ValueError("prebuffer_ms: must be between 0 and max_prebuffer_ms, "
                             f"got {self.prebuffer_ms} and {self.max_prebuffer_ms}")
        if not 1 <= self.block_ms <= 500 or not 1 <= self.frame_ms <= 500:
            raise ValueError("block_ms and frame_ms: must be between 1 and 500")
        # Room for the largest prebuffer plus a frame, so a write never waits
        # for a device that is not started yet.
        if self.ring_ms < self.max_prebuffer_ms + 2 * self.frame_ms:
            raise ValueError(f"ring_ms: must exceed max_prebuffer_ms + 2 frames, got {self.ring_ms}")


@dataclass(frozen=True)
class PlaybackStats:
    """What one playback did; times are time.monotonic() values (None = never)."""

    sample_rate: int
    frames: int
    """Frames of audio handed to the ring for the device."""
    underruns: int
    """Times the ring ran dry while more audio was still to come."""
    silence_frames: int
    """Frames of silence played because of those underruns."""
    max_fill_frames: int
    """Most frames ever buffered in the ring."""
    capacity_frames: int
    prebuffer_ms: float
    """The prebuffer at the end (grown by underruns)."""
    device_name: str
    output_latency_s: float
    """PortAudio's estimate of the device's own buffering."""
    opened_at: Optional[float]
    started_at: Optional[float]
    first_sound_at: Optional[float]
    """When the callback first handed real audio to PortAudio."""
    finished_at: Optional[float]

    @property
    def audio_s(self) -> float:
        """Seconds of audio played."""
        return self.frames / self.sample_rate if self.sample_rate else 0.0


@dataclass(frozen=True)
class OutputDevice:
    """An output device as PortAudio lists it."""

    index: int
    name: str
    host_api: str
    max_output_channels: int
    default_sample_rate: float
    is_default: bool


def list_output_devices(pyaudio_module: Any = None) -> list[OutputDevice]:
    """The devices that can play sound.

    :raises AudioUnavailable: PyAudio is not installed.
    """
    pyaudio = pyaudio_module or _import_pyaudio()
    pa, _ = _init_pyaudio(pyaudio, quiet=True)
    try:
        return _output_devices(pa)
    finally:
        pa.terminate()


class Player:
    """Plays int16 mono PCM through PyAudio as it arrives; a context manager.

    ``with Player(config) as player:`` initializes PortAudio and resolves the
    device (AudioUnavailable if there is none). Then open(sample_rate),
    write(pcm) for each chunk, and finish() to play to the last sample. Leaving
    the block early (an exception, Ctrl-C) aborts playback at once.

    :param pyaudio_module: stands in for the ``pyaudio`` module (tests).
    :param clock: stands in for time.monotonic (tests).
    """

    # Made by open(); _opened says whether it ran.
    _ring: RingBuffer
    _chunker: Chunker

    def __init__(self, config: PlayerConfig = PlayerConfig(), *, pyaudio_module: Any = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self.device_log = ""
        self._pyaudio_module = pyaudio_module
        self._pyaudio: Any = None
        self._pa: Any = None
        self._device: Optional[OutputDevice] = None
        self._stream: Any = None
        self._opened = False
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._feeder: Optional[threading.Thread] = None
        self._idle = threading.Condition()
        self._submitted = 0
        self._consumed = 0
        self._error: Optional[BaseException] = None
        self._done = threading.Event()
        self._aborted = False
        self._ended = False
        self._finished = False
        self._sample_rate = 0
        self._block_bytes = 0
        self._frames_written = 0
        self._target_frames = 0
        self._max_target_frames = 0
        self._state = _BUFFERING
        self._silent_blocks = 0
        self._block_frames = 0
        self._output_latency_s = 0.0
        self._opened_at: Optional[float] = None
        self._started_at: Optional[float] = None
        self._first_sound_at: Optional[float] = None
        self._finished_at: Optional[float] = None
        # The device's clock (see the module docstring): when device frame 0,
        # the first callback's first frame, is heard; set at start, refined by
        # the first callback; and when playback was cut off (abort).
        self._heard_from: Optional[float] = None
        self._refine_clock = False
        self._stopped_at: Optional[float] = None
        # Silence the device played between audio frames (underruns): per gap,
        # (audio frames taken before it, silence frames played in all so far).
        self._gaps: list[tuple[int, int]] = []
        self._changes = 0
        self._changed = threading.Condition()
        # The callback's preallocated answers (see _make_buffers).
        self._out: bytes = b""
        self._out_view: Optional[memoryview] = None
        self._playing: tuple = ()
        self._last: tuple = ()
        self._silence: tuple = ()

    # ---- availability ---------------------------------------------------------

    @staticmethod
    def is_available(device: Optional[str] = None, pyaudio_module: Any = None) -> bool:
        """True if PyAudio is installed and can see the output device."""
        try:
            with Player(PlayerConfig(device=device), pyaudio_module=pyaudio_module):
                return True
        except AudioUnavailable:
            return False

    def __enter__(self) -> Player:
        self._pyaudio = self._pyaudio_module or _import_pyaudio()
        self._pa, self.device_log = _init_pyaudio(self._pyaudio, self.config.quiet)
        try:
            self._device = _resolve_device(self._pa, self.config.device)
        except BaseException:
            self._pa.terminate()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._finished:
            self.abort()
        self._pa.terminate()

    @property
    def device(self) -> OutputDevice:
        """The output device in use (after entering the context)."""
        assert self._device is not None, "use Player as a context manager"
        return self._device

    # ---- the caller's side ------------------------------------------------------

    def open(self, sample_rate: int) -> None:
        """Open the device stream (not started yet) and the feeder for `sample_rate` Hz.

        :raises AudioUnavailable: the device refused the stream.
        """
        cfg = self.config
        self._sample_rate = sample_rate
        block_frames = max(1, round(sample_rate * cfg.block_ms / 1000))
        self._block_frames = block_frames
        self._block_bytes = block_frames * _BYTES_PER_FRAME
        self._target_frames = _frames(sample_rate, cfg.prebuffer_ms)
        self._max_target_frames = _frames(sample_rate, cfg.max_prebuffer_ms)
        self._ring = RingBuffer(_frames(sample_rate, cfg.ring_ms), _BYTES_PER_FRAME, sample_rate)
        self._chunker = Chunker(_frames(sample_rate, cfg.frame_ms) * _BYTES_PER_FRAME)
        self._make_buffers()
        self._opened = True
        try:
            with _captured_stderr(cfg.quiet) as log:
                self._stream = self._pa.open(
                    format=self._pyaudio.paInt16, channels=1, rate=sample_rate, output=True,
                    output_device_index=self.device.index, frames_per_buffer=block_frames,
                    stream_callback=self._callback, start=False)
        except (OSError, ValueError) as exc:
            raise AudioUnavailable(f"cannot open {self.device.name!r} at {sample_rate} Hz: "
                                   f"{_pa_message(exc)}") from exc
        finally:
            self.device_log += log.text
        self._output_latency_s = self._stream.get_output_latency()
        self._opened_at = time.monotonic()
        self._feeder = threading.Thread(target=self._feed, name="speakstream-feeder", daemon=True)
        self._feeder.start()

    def write(self, pcm: bytes) -> None:
        """Queue int16 PCM for playback; never blocks.

        :raises AudioUnavailable: the device failed earlier.
        """
        self._raise_if_failed()
        if pcm:
            with self._idle:
                self._submitted += 1
            self._pending.put(pcm)

    def end(self) -> None:
        """No more input: play what is buffered to the end."""
        if not self._ended:
            self._ended = True
            with self._idle:
                self._submitted += 1
            self._pending.put(_END)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until everything written so far is in the ring (or was refused)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._consumed >= self._submitted, timeout)

    def wait_done(self, timeout: Optional[float] = None) -> bool:
        """Wait until the callback has handed the last sample to PortAudio."""
        return self._done.wait(timeout)

    def frames_played(self) -> int:
        """Frames the callback has taken from the ring so far (the device has not necessarily played them yet)."""
        return self._frames_written - self._ring.fill_frames if self._opened else 0

    def heard_at(self, frame: int) -> Optional[float]:
        """When audio frame `frame` (from 0) reaches the listener, on the clock (time.monotonic).

        None while that is unknown: the device has not started, the frame
        is not in the ring yet, or playback waits to resume after an
        underrun (the silence before the frame is still growing). Once
        known, a later underrun before the frame moves it later: ask again
        at the time given.
        """
        start = self._heard_from
        if start is None or self._stopped_at is not None or frame >= self._frames_written:
            return None
        if frame >= self.frames_played() and self._state != _PLAYING:
            return None
        return start + (frame + self._silence_before(frame)) / self._sample_rate

    def frames_heard(self, at: Optional[float] = None) -> int:
        """Audio frames the listener has heard by `at` (default now; at most until playback was cut off)."""
        start = self._heard_from
        if start is None:
            return 0
        now = self._clock() if at is None else at
        if self._stopped_at is not None:
            now = min(now, self._stopped_at)
        if now < start:
            return 0
        device_frames = math.floor((now - start) * self._sample_rate) + 1  # those begun by `now`
        silence = 0
        for taken, silence_after in list(self._gaps):
            if device_frames <= taken + silence:
                break
            if device_frames <= taken + silence_after:
                return taken  # in that gap's silence
            silence = silence_after
        return min(device_frames - silence, self.frames_played())

    @property
    def changes(self) -> int:
        """A count that grows whenever audio enters the ring or playback starts, resumes, ends or stops."""
        return self._changes

    def wait_change(self, seen: int, timeout: Optional[float] = None) -> int:
        """Wait until `changes` is no longer `seen` (or `timeout` passes); its value."""
        with self._changed:
            self._changed.wait_for(lambda: self._changes != seen, timeout)
            return self._changes

    def wake(self) -> None:
        """Count a change: wakes everyone in wait_change (also a caller that wants to stop waiting)."""
        with self._changed:
            self._changes += 1
            self._changed.notify_all()

    def _silence_before(self, frame: int) -> int:
        """Silence frames the device played before audio frame `frame`."""
        silence = 0
        for taken, silence_after in list(self._gaps):
            if taken > frame:
                break
            silence = silence_after
        return silence

    def finish(self, on_wait: Optional[Callable[[], None]] = None) -> PlaybackStats:
        """End the input, play to the last sample, stop the device; the stats.

        :param on_wait: called every 0.1 s while the audio plays out (progress).
        :raises AudioUnavailable: the device stopped taking audio.
        """
        self.end()
        if self._stream is not None:
            self._wait_played(on_wait)
            with _captured_stderr(self.config.quiet):
                _quietly(self._stream.stop_stream)  # returns once PortAudio's buffers are played
                _quietly(self._stream.close)
        self._finished = True
        self._finished_at = time.monotonic()
        return self.stats()

    def _wait_played(self, on_wait: Optional[Callable[[], None]]) -> None:
        """Wait for the callback's last block, failing if nothing moves for _STALL_S."""
        last, still_s = None, 0.0
        while not self._done.wait(_POLL_S):
            self._raise_if_failed()
            if on_wait is not None:
                on_wait()
            mark = (self._frames_written, self._ring.fill_frames, self._silent_blocks)
            still_s = still_s + _POLL_S if mark == last else 0.0
            last = mark
            if still_s >= _STALL_S:
                raise AudioUnavailable(f"the device {self.device.name!r} stopped taking audio")
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop at once, dropping what is buffered (Ctrl-C)."""
        if self._stopped_at is None and not self._finished:
            self._stopped_at = self._clock()  # what the device held from here on is never heard
        self._aborted = True
        if self._opened:
            self._ring.close()  # wakes a feeder waiting for room
        self.end()
        # The feeder may be inside Pa_StartStream: closing the stream under it
        # trips PortAudio's mutex assertion (SIGABRT), so it must stop first.
        if self._feeder is not None:
            self._feeder.join(timeout=2.0)
        if self._stream is not None:
            _quietly(self._stream.close)  # Pa_CloseStream discards pending buffers
        self._finished = True
        self.wake()

    def stats(self) -> PlaybackStats:
        """A snapshot of what the player did so far."""
        ring = self._ring if self._opened else None
        return PlaybackStats(
            sample_rate=self._sample_rate,
            frames=self._frames_written,
            underruns=ring.underruns if ring else 0,
            silence_frames=(ring.underrun_frames if ring else 0)
            + self._silent_blocks * self._block_bytes // _BYTES_PER_FRAME,
            max_fill_frames=ring.high_water_frames if ring else 0,
            capacity_frames=ring.capacity_frames if ring else 0,
            prebuffer_ms=1000.0 * self._target_frames / self._sample_rate if self._sample_rate else 0.0,
            device_name=self._device.name if self._device else "",
            output_latency_s=self._output_latency_s,
            opened_at=self._opened_at,
            started_at=self._started_at,
            first_sound_at=self._first_sound_at,
            finished_at=self._finished_at,
        )

    # ---- the feeder thread (the ring's producer) ---------------------------------

    def _feed(self) -> None:
        try:
            while True:
                item = self._pending.get()
                if item is _END:
                    self._drain_input()
                    return
                for frame in self._chunker.feed(item):
                    self._put(frame)
                if self._pending.empty():
                    # Nothing else has arrived: hand over the partial frame too,
                    # or a pause in the stream would hold back its last samples.
                    tail = self._chunker.flush(pad=False)
                    if tail is not None:
                        self._put(tail)
                self._consumed_one()
        except RingClosed:
            pass  # aborted
        except BaseException as exc:  # noqa: BLE001 - surfaced to the caller by write()/finish()
            self._error = exc
            self._done.set()
        finally:
            with self._idle:
                self._consumed = self._submitted
                self._idle.notify_all()

    def _consumed_one(self) -> None:
        with self._idle:
            self._consumed += 1
            self._idle.notify_all()

    def _put(self, frame: memoryview) -> None:
        """Write one frame into the ring, waiting for room; then start or resume."""
        waited = 0.0
        while True:
            try:
                self._ring.write(frame, timeout=_WRITE_SLICE_S)
                break
            except RingFull:
                waited += _WRITE_SLICE_S
                if waited >= _STALL_S:
                    raise AudioUnavailable(
                        f"the device {self.device.name!r} took no audio for {_STALL_S:.0f} s") from None
        self._frames_written += len(frame) // _BYTES_PER_FRAME
        if self._state != _PLAYING:
            self._rebuffer()
        self.wake()

    def _rebuffer(self) -> None:
        if self._state == _UNDERRUN:
            self._target_frames = min(2 * max(self._target_frames, 1), self._max_target_frames)
            self._state = _BUFFERING
        if self._ring.fill_frames >= self._target_frames:
            self._play()

    def _drain_input(self) -> None:
        tail = self._chunker.flush(pad=False)  # whole samples: no padding needed
        if tail is not None:
            self._put(tail)
        self._ring.close()
        self._consumed_one()
        if self._frames_written:
            self._play()
        else:
            self._done.set()
        self.wake()

    def _play(self) -> None:
        self._state = _PLAYING
        if self._started_at is None and not self._aborted:
            self._started_at = time.monotonic()
            # PortAudio's ALSA backend primes its whole buffer (the latency plus
            # one block) with silence before the first block.
            self._heard_from = (self._clock() + self._output_latency_s
                                + self._block_frames / self._sample_rate)
            self._refine_clock = True
            try:
                self._stream.start_stream()
            except OSError as exc:
                if not self._aborted:
                    raise AudioUnavailable(
                        f"cannot start {self.device.name!r}: {_pa_message(exc)}") from exc

    # ---- PortAudio's callback (the ring's consumer) -------------------------------

    def _make_buffers(self) -> None:
        """Preallocate everything the callback returns.

        PyAudio copies the callback's audio out of a ``bytes`` object (it
        refuses bytearray and memoryview), so a fresh bytes per call would be
        an allocation per block. Instead the ring reads into the storage of
        one preallocated bytes object (CPython only; see _writable_bytes).
        """
        out, view = _writable_bytes(self._block_bytes)
        self._out, self._out_view = out, view
        cont, complete = self._pyaudio.paContinue, self._pyaudio.paComplete
        self._playing = (out, cont)
        self._last = (out, complete)
        self._silence = (bytes(self._block_bytes), cont)

    def _callback(self, in_data, frame_count, time_info, status):
        if self._refine_clock:
            self._set_clock(time_info)
        if self._state != _PLAYING:
            self._silent_blocks += 1
            self._mark_gap()
            return self._silence
        if self._out_view is None or frame_count != self._block_frames:
            return self._callback_copying(frame_count)
        closed = self._ring.closed  # before the read: once closed, no more data comes
        got = self._ring.read_into(self._out_view)
        if got == self._block_bytes:
            if self._first_sound_at is None:
                self._first_sound_at = time.monotonic()
            return self._playing
        return self._short_read(closed, got)

    def _short_read(self, closed: bool, got: int):
        """The ring ran dry; read_into zero-filled the rest of the block."""
        if got and self._first_sound_at is None:
            self._first_sound_at = time.monotonic()
        if closed:
            self._done.set()
            return self._last
        self._state = _UNDERRUN
        self._mark_gap()
        return self._playing

    def _callback_copying(self, frame_count: int):
        """Slow path (not CPython, or an odd block size): a new bytes per block."""
        buf = bytearray(frame_count * _BYTES_PER_FRAME)
        closed = self._ring.closed
        got = self._ring.read_into(buf)
        if got and self._first_sound_at is None:
            self._first_sound_at = time.monotonic()
        flag = self._pyaudio.paContinue
        if got < len(buf):
            if closed:
                self._done.set()
                flag = self._pyaudio.paComplete
            else:
                self._state = _UNDERRUN
                self._mark_gap()
        return bytes(buf), flag

    def _set_clock(self, time_info: dict) -> None:
        """The first block: believe PortAudio's DAC time for it when it is later than the priming."""
        self._refine_clock = False
        now = self._clock()
        dac, current = time_info.get("output_buffer_dac_time"), time_info.get("current_time")
        if dac is not None and current is not None and now + (dac - current) > self._heard_from:
            self._heard_from = now + (dac - current)

    def _mark_gap(self) -> None:
        """Record the silence played so far after the frames taken (underruns only: it allocates)."""
        taken = self.frames_played()
        silence = self._ring.underrun_frames + self._silent_blocks * self._block_frames
        if self._gaps and self._gaps[-1][0] == taken:
            self._gaps[-1] = (taken, silence)
        else:
            self._gaps.append((taken, silence))

    # ---- helpers --------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            if isinstance(self._error, AudioUnavailable):
                raise self._error
            raise AudioUnavailable(f"playback failed: {self._error!r}") from self._error


def _frames(sample_rate: int, ms: float) -> int:
    return round(sample_rate * ms / 1000)


def _writable_bytes(nbytes: int) -> tuple[bytes, Optional[memoryview]]:
    """A new bytes object of `nbytes` zeros and a writable view of its storage.

    CPython keeps a bytes object's data inline at offset ``basicsize - 1``
    (ob_sval). Writing there is safe for an object nobody else holds or
    hashes: this one is private to the player and only PyAudio reads it,
    with a memcpy, right after the callback returns. Elsewhere (or if the
    layout check fails) the view is None and the callback copies instead.
    """
    out = bytes(nbytes)  # nbytes >= 2: a fresh object, never a cached singleton
    if sys.implementation.name != "cpython" or nbytes < 2:
        return out, None
    storage = (ctypes.c_char * nbytes).from_address(id(out) + bytes.__basicsize__ - 1)
    view = memoryview(storage).cast("B")
    view[0], view[-1] = 0x5A, 0xA5
    if out[0] != 0x5A or out[-1] != 0xA5:
        return bytes(nbytes), None
    view[0] = view[-1] = 0
    return out, view


def _import_pyaudio():
    os.environ.setdefault("JACK_NO_START_SERVER", "1")  # do not spawn jackd to list devices
    try:
        import pyaudio
    except ImportError as exc:
        raise AudioUnavailable(
            "PyAudio is not installed (pip install 'speakstream[playback]')") from exc
    return pyaudio


def _init_pyaudio(pyaudio, quiet: bool):
    with _captured_stderr(quiet) as log:
        pa = pyaudio.PyAudio()
    return pa, log.text


def _output_devices(pa) -> list[OutputDevice]:
    try:
        default = pa.get_default_output_device_info()["index"]
    except OSError:
        default = -1
    devices = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        if info["maxOutputChannels"] < 1:
            continue
        host_api = pa.get_host_api_info_by_index(info["hostApi"])["name"]
        devices.append(OutputDevice(index, info["name"], host_api, info["maxOutputChannels"],
                                    info["defaultSampleRate"], index == default))
    return devices


def _resolve_device(pa, wanted: Optional[str]) -> OutputDevice:
    devices = _output_devices(pa)
    if not devices:
        raise AudioUnavailable("no audio output device found")
    if wanted is None:
        for device in devices:
            if device.is_default:
                return device
        raise AudioUnavailable("no default audio output device; pick one with --device")
    if wanted.isdigit():
        matches = [d for d in devices if d.index == int(wanted)]
    else:
        matches = [d for d in devices if wanted.lower() in d.name.lower()]
    if len(matches) != 1:
        what = "no output device matches" if not matches else f"{len(matches)} output devices match"
        raise AudioUnavailable(f"{what} {wanted!r} (see --list-devices)")
    return matches[0]


def _pa_message(exc: BaseException) -> str:
    # PyAudio raises OSError(code, text).
    return exc.args[1] if len(exc.args) == 2 and isinstance(exc.args[1], str) else str(exc)


def _quietly(call) -> None:
    try:
        call()
    except OSError:
        pass  # already stopped or closed


class _Log:
    text = ""


@contextmanager
def _captured_stderr(enabled: bool) -> Iterator[_Log]:
    """Collect what C libraries print on file descriptor 2 (JACK and ALSA probing)."""
    log = _Log()
    if not enabled:
        yield log
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            log.text = capture.read().decode(errors="replace")
