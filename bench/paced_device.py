"""A sound card for machines without one: ALSA's `file` PCM into a FIFO read at real time.

The whole real stack runs (PyAudio -> PortAudio -> ALSA -> the `file` PCM
plugin); only the last step differs from a sound card. ALSA's own `null`
device has no clock (it swallows an hour of audio in milliseconds), so the
`file` plugin writes into a FIFO that a reader thread drains at exactly the
sample rate: a blocked write() is what a full hardware buffer would be, and
PortAudio's callback runs at the pace it would on a card. Every byte that
reached the "device" is kept for comparison.

Used by the playback tests and by bench/playback.py:

    with PacedFileDevice(tmp_dir, sample_rate=22050) as device:
        env = device.env()           # HOME with the .asoundrc; for a subprocess
        ... play ...
        device.wait_closed(timeout)  # the player closed the device
        device.data                  # the bytes, PortAudio's priming silence included
        device.reads                 # when they arrived: (time.monotonic(), bytes so far) per read

In-process players must set HOME to ``device.home`` before PyAudio
initializes (ALSA reads ~/.asoundrc then; Pa_Terminate makes it read again).
"""

from __future__ import annotations

import fcntl
import os
import select
import threading
import time
from pathlib import Path
from typing import Optional

_F_SETPIPE_SZ = 1031  # Linux fcntl: pipe capacity
_PIPE_BYTES = 4096  # the smallest pipe, ~93 ms of 22,050 Hz int16: little slack
_READ_BYTES = 512  # drained in small steps, like a DMA period
_REALTIME_PRIORITY = 10  # low among real-time priorities: above every ordinary thread
_ASOUNDRC = """\
pcm.!default {{
    type file
    slave.pcm "null"
    file "{fifo}"
    format "raw"
}}
"""


class PacedFileDevice:
    """An ALSA default device whose output is paced at `sample_rate` and recorded.

    :param directory: where HOME (with .asoundrc) and the FIFO are made.
    :param sample_rate: frames per second the reader drains.
    :param bytes_per_frame: 2 for mono int16.
    :param prioritized: the reader thread asks for a higher priority (raise_priority), so that other
        work on the machine delays its reads, and its record of them, less.
    """

    def __init__(self, directory: Path, sample_rate: int = 22050, bytes_per_frame: int = 2,
                 prioritized: bool = False):
        self.home = Path(directory) / "alsa-home"
        self.fifo = self.home / "device.fifo"
        self.bytes_per_s = sample_rate * bytes_per_frame
        self._prioritized = prioritized
        self._data = bytearray()
        self._reads: list[tuple[float, int]] = []
        self._cond = threading.Condition()
        self._sessions = 0  # writer sessions that delivered data and ended
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> PacedFileDevice:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.fifo.exists():
            os.mkfifo(self.fifo)
        (self.home / ".asoundrc").write_text(_ASOUNDRC.format(fifo=self.fifo))
        self._thread = threading.Thread(target=self._drain, name="paced-device", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def env(self, base: Optional[dict] = None) -> dict:
        """Environment for a subprocess that should play into this device."""
        env = dict(os.environ if base is None else base)
        env["HOME"] = str(self.home)
        env["JACK_NO_START_SERVER"] = "1"
        return env

    @property
    def data(self) -> bytes:
        """Every byte the device received so far."""
        with self._cond:
            return bytes(self._data)

    @property
    def reads(self) -> list[tuple[float, int]]:
        """Each read so far: (time.monotonic() as it returned, bytes received in all by then)."""
        with self._cond:
            return list(self._reads)

    def wait_bytes(self, nbytes: int, timeout: float) -> bool:
        """Wait until the device has received at least `nbytes`."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._data) >= nbytes, timeout)

    def wait_closed(self, timeout: float, sessions: int = 1) -> bool:
        """Wait until `sessions` players have played into the device and closed it."""
        with self._cond:
            return self._cond.wait_for(lambda: self._sessions >= sessions, timeout)

    # ---- the reader thread --------------------------------------------------------

    def _drain(self) -> None:
        if self._prioritized:
            raise_priority(threading.get_native_id())
        while not self._stop.is_set():
            # Non-blocking open: returns at once, so the pipe is shrunk
            # before any writer can fill it.
            fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
            try:
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
                got = self._session(fd)
            finally:
                os.close(fd)
            if got:
                with self._cond:
                    self._sessions += 1
                    self._cond.notify_all()

    def _session(self, fd: int) -> int:
        """Read one writer's data at the device's pace; the bytes read."""
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        got, started = 0, 0.0
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            try:
                chunk = os.read(fd, _READ_BYTES)
            except BlockingIOError:
                continue
            now = time.monotonic()
            if not chunk:  # every writer has gone (POLLHUP)
                return got
            if not got:
                started = now
            got += len(chunk)
            with self._cond:
                self._data += chunk
                self._reads.append((now, len(self._data)))
                self._cond.notify_all()
            # The clock: byte n may leave no earlier than n / rate after the first.
            ahead = started + got / self.bytes_per_s - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        return got


def raise_priority(tid: int) -> str:
    """Real-time (SCHED_FIFO) scheduling for thread `tid` (threads it starts inherit it), else nice -10;
    what it got: "realtime", "nice" or "none" (without the privilege).

    On a machine whose cores other jobs keep busy, a plain thread can wait tens of milliseconds
    to run; timing measurements that must not include that ask for this.
    """
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(_REALTIME_PRIORITY))
        return "realtime"
    except PermissionError:
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, -10)
        return "nice"
    except PermissionError:
        return "none"
