"""Pure-Python (numpy) fallback of fastaudio, used when the extension is missing.

Same API and same results as ``fastaudio._fastaudio``, bit for bit for the
conversions; see that module for the full contracts. It allocates on its hot
paths, so it is for running the client and the tests without a compiler, not
for low-latency playback. Its RingBuffer takes a lock instead of being
lock-free.

Two limits of pure Python before 3.12 (no ``__buffer__``, PEP 688):

- A Block is a ``bytearray`` subclass, so a view of a *released* block cannot
  be refused as the extension does; do not keep using a block after release.
- Whether a block is still viewed is detected by trying to resize it, which a
  bytearray refuses (BufferError) while any export is alive.
"""

from __future__ import annotations

import sys
import threading
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Buffer, TypeAlias

    BufferLike: TypeAlias = "Buffer | np.ndarray[Any, Any]"

from fastaudio._errors import FastAudioError, PoolExhausted, RingClosed, RingFull

__all__ = [
    "Block",
    "BufferPool",
    "Chunker",
    "FastAudioError",
    "PoolExhausted",
    "RingBuffer",
    "RingClosed",
    "RingFull",
    "float32_to_int16",
    "int16_to_float32",
]

# Mirror _CHUNKER_OWN_BLOCKS and _WAIT_SLICE_US in _fastaudio.pxd.
_CHUNKER_OWN_BLOCKS = 8
_WAIT_SLICE_S = 0.05
_FLT_MAX = float(np.finfo(np.float32).max)
_NATIVE_PREFIXES = ("@", "=", "<") if sys.byteorder == "little" else ("@", "=")


# --------------------------------------------------------------------------
# Buffer helpers
# --------------------------------------------------------------------------

def _memoryview(obj: BufferLike) -> memoryview:
    # An ndarray is a Buffer at run time; numpy's stubs say so only for 3.12+.
    return memoryview(obj)  # type: ignore[arg-type]


def _byte_view(obj: BufferLike, writable: bool = False) -> memoryview:
    """A 1-D unsigned-byte view of all of obj, as PyBUF_SIMPLE would give."""
    view = _memoryview(obj)
    if not view.c_contiguous:
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    if writable and view.readonly:
        raise BufferError("Object is not writable.")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _format_ok(fmt: str, code: str) -> bool:
    """True if a buffer of struct format fmt may be read as native `code` samples.

    Raw bytes are 'B' and 'c'; signed 'b' is int8 samples and is refused.
    """
    if fmt[:1] in _NATIVE_PREFIXES:
        fmt = fmt[1:]
    return fmt in (code, "B", "c")


# --------------------------------------------------------------------------
# Buffer pool
# --------------------------------------------------------------------------

def _block_size_changer(name: str):
    def refuse(self, *args, **kwargs):
        raise TypeError(f"a Block has a fixed size; {name}() is not allowed")

    refuse.__name__ = name
    refuse.__doc__ = f"Refused: a Block has a fixed size (bytearray.{name} would resize it)."
    return refuse


class Block(bytearray):
    """A fixed-size block of a BufferPool (a bytearray that must not be resized)."""

    __slots__ = ("_index", "_acquired")
    _index: int  # position in the pool's block list
    _acquired: bool  # between BufferPool.acquire() and release()

    def __init__(self, *args, **kwargs):
        raise TypeError("Block objects come from BufferPool.acquire()")

    @classmethod
    def _new(cls, nbytes: int, index: int) -> Block:
        block = bytearray.__new__(cls)
        bytearray.__init__(block, nbytes)
        block._index = index
        block._acquired = False
        return block

    # The pool's blocks must keep their size: refuse bytearray's resizers.
    append = _block_size_changer("append")
    extend = _block_size_changer("extend")
    insert = _block_size_changer("insert")
    pop = _block_size_changer("pop")
    remove = _block_size_changer("remove")
    clear = _block_size_changer("clear")
    __iadd__ = _block_size_changer("__iadd__")
    __imul__ = _block_size_changer("__imul__")
    __delitem__ = _block_size_changer("__delitem__")

    @property
    def nbytes(self) -> int:
        """Size of the block in bytes (the pool's block_size)."""
        return bytearray.__len__(self)

    @property
    def acquired(self) -> bool:
        """True between BufferPool.acquire() and BufferPool.release()."""
        return self._acquired

    def _has_views(self) -> bool:
        # A bytearray refuses to resize while any buffer export is alive; the
        # probe grows and shrinks it by one byte, moving memory only when
        # nothing views it.
        try:
            bytearray.append(self, 0)
        except BufferError:
            return True
        bytearray.__delitem__(self, -1)
        return False

    def __repr__(self) -> str:
        state = "acquired" if self._acquired else "free"
        return f"<fastaudio.Block {self.nbytes} bytes, {state}>"


class BufferPool:
    """``count`` blocks of ``block_size`` bytes, allocated once at creation.

    :param block_size: bytes per block, > 0.
    :param count: number of blocks, > 0.
    """

    def __init__(self, block_size: int, count: int) -> None:
        if block_size <= 0 or count <= 0:
            raise ValueError(f"block_size and count must be > 0, got {block_size} and {count}")
        self._block_size = block_size
        self._blocks = [Block._new(block_size, i) for i in range(count)]
        self._free = list(range(count - 1, -1, -1))
        self._high_water = 0
        self._lock = threading.Lock()

    def acquire(self) -> Block:
        """Take a free block. :raises PoolExhausted: every block is in use."""
        with self._lock:
            if not self._free:
                raise PoolExhausted(
                    f"all {len(self._blocks)} blocks of {self._block_size} bytes are in use")
            block = self._blocks[self._free.pop()]
            block._acquired = True
            self._high_water = max(self._high_water, self.in_use)
            return block

    def release(self, block: Block) -> None:
        """Give ``block`` back to the pool.

        :raises BufferError: a view of the block is still alive.
        :raises ValueError: the block is not this pool's, or already released.
        """
        if not isinstance(block, Block):
            raise TypeError(f"expected a Block, got {type(block).__name__}")
        with self._lock:
            if not self._owns(block):
                raise ValueError("the block does not belong to this pool")
            if not block._acquired:
                raise ValueError("the block was already released")
            if block._has_views():
                raise BufferError("cannot release a block while a view of it is alive")
            block._acquired = False
            self._free.append(block._index)

    def _owns(self, block: Block) -> bool:
        index = block._index
        return 0 <= index < len(self._blocks) and self._blocks[index] is block

    @property
    def block_size(self) -> int:
        """Bytes per block."""
        return self._block_size

    @property
    def capacity(self) -> int:
        """Number of blocks in the pool."""
        return len(self._blocks)

    @property
    def in_use(self) -> int:
        """Blocks currently acquired."""
        return len(self._blocks) - len(self._free)

    @property
    def available(self) -> int:
        """Blocks acquire() can still hand out."""
        return len(self._free)

    @property
    def high_water(self) -> int:
        """Most blocks ever acquired at the same time."""
        return self._high_water

    def __repr__(self) -> str:
        return (f"<fastaudio.BufferPool {self.in_use}/{self.capacity} blocks of "
                f"{self._block_size} bytes in use, high water {self._high_water}>")


# --------------------------------------------------------------------------
# Ring buffer
# --------------------------------------------------------------------------

class RingBuffer:
    """Single-producer, single-consumer byte ring of whole audio frames.

    Same contract as the extension's RingBuffer (all-or-nothing write(),
    zero-filling read_into() that counts underruns while open), guarded by
    one lock instead of atomics.
    """

    def __init__(self, capacity_frames: int, bytes_per_frame: int, sample_rate: int = 0) -> None:
        if capacity_frames <= 0 or bytes_per_frame <= 0:
            raise ValueError(
                "capacity_frames and bytes_per_frame must be > 0, "
                f"got {capacity_frames} and {bytes_per_frame}")
        if sample_rate < 0:
            raise ValueError(f"sample_rate must be >= 0, got {sample_rate}")
        self._capacity_bytes = capacity_frames * bytes_per_frame
        self._bytes_per_frame = bytes_per_frame
        self._sample_rate = sample_rate
        self._buf = memoryview(bytearray(self._capacity_bytes))
        self._cond = threading.Condition(threading.Lock())
        self._head = 0  # total bytes written
        self._tail = 0  # total bytes read
        self._closed = False
        self._writing = False
        self._writer_waiting = False
        self._underruns = 0
        self._underrun_bytes = 0
        self._high_water_bytes = 0

    # ---- producer ----------------------------------------------------------

    def write(self, data: BufferLike, timeout: float | None = 0.0) -> int:
        """Copy all of ``data`` in, or nothing (RingFull / RingClosed / ValueError)."""
        if timeout is not None and not timeout >= 0:  # also refuses NaN
            raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
        src = _byte_view(data)
        nbytes = src.nbytes
        self._check_write_size(nbytes)
        with self._cond:
            if self._writing:
                raise RuntimeError("another write() is running: a RingBuffer has one producer")
            self._writing = True
            try:
                if self._closed:
                    raise RingClosed("write() after close()")
                if self._capacity_bytes - self._fill_bytes() < nbytes:
                    self._wait_for_room(nbytes, timeout)
                self._copy_in(src, nbytes)
            finally:
                self._writing = False
        return nbytes

    def _check_write_size(self, nbytes: int) -> None:
        if nbytes % self._bytes_per_frame:
            raise ValueError(
                f"write() takes whole frames of {self._bytes_per_frame} bytes, got {nbytes} bytes")
        if nbytes > self._capacity_bytes:
            raise ValueError(
                f"{nbytes} bytes can never fit a ring of {self._capacity_bytes} bytes")

    def _wait_for_room(self, nbytes: int, timeout: float | None) -> None:
        """Wait (lock held by the caller) until nbytes fit; raise on deadline or close."""
        if timeout == 0:
            raise RingFull(self._full_message(nbytes))
        deadline = None if timeout is None else _monotonic() + timeout
        self._writer_waiting = True
        try:
            while True:
                if self._closed:
                    raise RingClosed("the ring was closed while write() waited for room")
                if self._capacity_bytes - self._fill_bytes() >= nbytes:
                    return
                remaining = None if deadline is None else deadline - _monotonic()
                if remaining is not None and remaining <= 0:
                    raise RingFull(self._full_message(nbytes))
                # Bounded slices, like the extension: Condition.wait() overflows
                # on huge timeouts, and Ctrl-C is seen between slices.
                self._cond.wait(_WAIT_SLICE_S if remaining is None
                                else min(remaining, _WAIT_SLICE_S))
        finally:
            self._writer_waiting = False

    def _full_message(self, nbytes: int) -> str:
        return (f"no room for {nbytes} bytes: {self._fill_bytes()} of "
                f"{self._capacity_bytes} bytes are buffered")

    def _copy_in(self, src: memoryview, nbytes: int) -> None:
        pos = self._head % self._capacity_bytes
        first = min(nbytes, self._capacity_bytes - pos)
        self._buf[pos:pos + first] = src[:first]
        self._buf[:nbytes - first] = src[first:]
        self._head += nbytes
        self._high_water_bytes = max(self._high_water_bytes, self._fill_bytes())

    def close(self) -> None:
        """Mark the stream finished; wakes a blocked write() (RingClosed)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ---- consumer ----------------------------------------------------------

    def read_into(self, out: BufferLike) -> int:
        """Fill all of ``out``: buffered frames first, zeros after. Returns real bytes."""
        dst = _byte_view(out, writable=True)
        nbytes = dst.nbytes
        if nbytes % self._bytes_per_frame:
            raise ValueError(
                f"read_into() fills whole frames of {self._bytes_per_frame} bytes, "
                f"got {nbytes} bytes")
        with self._cond:
            got = self._copy_out(dst, nbytes)
            if got < nbytes:
                dst[got:] = bytes(nbytes - got)
                if not self._closed:
                    self._underruns += 1
                    self._underrun_bytes += nbytes - got
        return got

    def _copy_out(self, dst: memoryview, nbytes: int) -> int:
        take = min(nbytes, self._fill_bytes())
        pos = self._tail % self._capacity_bytes
        first = min(take, self._capacity_bytes - pos)
        dst[:first] = self._buf[pos:pos + first]
        dst[first:take] = self._buf[:take - first]
        self._tail += take
        if take and self._writer_waiting:
            self._cond.notify()
        return take

    def _fill_bytes(self) -> int:
        return self._head - self._tail

    # ---- both / neither -----------------------------------------------------

    def reset(self) -> None:
        """Drop buffered data, zero the statistics and reopen the ring.

        :raises RuntimeError: a write() is running.
        """
        with self._cond:
            if self._writing:
                raise RuntimeError("reset() while a write() or read_into() is running")
            self._head = self._tail = 0
            self._underruns = self._underrun_bytes = self._high_water_bytes = 0
            self._closed = False

    @property
    def capacity_frames(self) -> int:
        """Capacity in frames, fixed at creation."""
        return self._capacity_bytes // self._bytes_per_frame

    @property
    def capacity_bytes(self) -> int:
        """Capacity in bytes."""
        return self._capacity_bytes

    @property
    def bytes_per_frame(self) -> int:
        """Bytes per frame (channels * sample width)."""
        return self._bytes_per_frame

    @property
    def sample_rate(self) -> int:
        """Frames per second given at creation (0 = unknown)."""
        return self._sample_rate

    @property
    def fill_frames(self) -> int:
        """Frames buffered now."""
        return self._fill_bytes() // self._bytes_per_frame

    @property
    def free_frames(self) -> int:
        """Frames a write() could add now without waiting."""
        return (self._capacity_bytes - self._fill_bytes()) // self._bytes_per_frame

    @property
    def fill_seconds(self) -> float:
        """Seconds of audio buffered now. :raises ValueError: no sample_rate."""
        if self._sample_rate == 0:
            raise ValueError("fill_seconds needs the RingBuffer's sample_rate")
        return self.fill_frames / self._sample_rate

    @property
    def underruns(self) -> int:
        """read_into() calls that had to zero-fill while the ring was open."""
        return self._underruns

    @property
    def underrun_frames(self) -> int:
        """Frames zero-filled by those underruns."""
        return self._underrun_bytes // self._bytes_per_frame

    @property
    def high_water_frames(self) -> int:
        """Most frames ever buffered at once."""
        return self._high_water_bytes // self._bytes_per_frame

    @property
    def closed(self) -> bool:
        """True once close() was called (until reset())."""
        return self._closed

    @property
    def writer_waiting(self) -> bool:
        """True while a write() waits for room."""
        return self._writer_waiting

    def __repr__(self) -> str:
        return (f"<fastaudio.RingBuffer {self.fill_frames}/{self.capacity_frames} frames "
                f"of {self._bytes_per_frame} bytes, underruns={self.underruns}, "
                f"closed={self.closed}>")


# --------------------------------------------------------------------------
# Chunker
# --------------------------------------------------------------------------

class Chunker:
    """Cuts a stream of arbitrarily sized byte chunks into fixed-size frames.

    Same contract as the extension's Chunker: frames inside one input are
    views of it, frames spanning inputs are assembled in a pooled block that
    goes back to the pool at the next feed()/flush()/reset() unless still viewed.
    """

    def __init__(self, frame_bytes: int, pool: BufferPool | None = None) -> None:
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be > 0, got {frame_bytes}")
        if pool is None:
            pool = BufferPool(frame_bytes, _CHUNKER_OWN_BLOCKS)
        elif not isinstance(pool, BufferPool):
            raise TypeError(f"pool must be a BufferPool, got {type(pool).__name__}")
        elif pool.block_size < frame_bytes:
            raise ValueError(
                f"the pool's {pool.block_size}-byte blocks cannot hold {frame_bytes}-byte frames")
        self._frame_bytes = frame_bytes
        self._pool = pool
        self._partial: Block | None = None
        self._pending = 0
        self._held: list[Block] = []

    def feed(self, data: BufferLike) -> list[memoryview]:
        """Add ``data``; return the completed frames (memoryviews, in order)."""
        self._recycle()
        src = _byte_view(data)
        nbytes = src.nbytes
        fb = self._frame_bytes
        take = min(fb - self._pending, nbytes) if self._pending else 0
        whole, leftover = divmod(nbytes - take, fb)
        spare = self._pool.acquire() if leftover else None  # before any state changes
        frames = []
        if take:
            partial = self._partial
            assert partial is not None  # pending bytes live in the partial block
            partial[self._pending:self._pending + take] = src[:take]
            self._pending += take
            if self._pending == fb:
                frames.append(self._emit(fb))
        pos = take
        for _ in range(whole):
            frames.append(src[pos:pos + fb])
            pos += fb
        if spare is not None:
            spare[:leftover] = src[pos:]
            self._partial, self._pending = spare, leftover
        return frames

    def flush(self, pad: bool = True) -> memoryview | None:
        """Return the last partial frame (zero-padded if pad), or None."""
        self._recycle()
        if not self._pending:
            return None
        if pad:
            partial = self._partial
            assert partial is not None  # pending bytes live in the partial block
            partial[self._pending:self._frame_bytes] = bytes(self._frame_bytes - self._pending)
            return self._emit(self._frame_bytes)
        return self._emit(self._pending)

    def reset(self) -> None:
        """Drop the pending partial frame and give back the blocks that can be."""
        self._recycle()
        if self._partial is not None:
            self._pool.release(self._partial)
            self._partial = None
        self._pending = 0

    def _recycle(self) -> None:
        still_viewed = []
        for block in self._held:
            if block._has_views():
                still_viewed.append(block)
            else:
                self._pool.release(block)
        self._held = still_viewed

    def _emit(self, nbytes: int) -> memoryview:
        block, self._partial, self._pending = self._partial, None, 0
        assert block is not None  # only called with pending bytes
        self._held.append(block)
        frame = memoryview(block)
        return frame if nbytes == block.nbytes else frame[:nbytes]

    def __del__(self) -> None:
        # Hand back what can be; a block still viewed stays checked out.
        pool = getattr(self, "_pool", None)
        if pool is None:  # __init__ failed
            return
        for block in [self._partial, *self._held]:
            if block is not None and block._acquired and not block._has_views():
                pool.release(block)

    @property
    def frame_bytes(self) -> int:
        """Bytes per frame."""
        return self._frame_bytes

    @property
    def pending_bytes(self) -> int:
        """Bytes of the next, incomplete frame held back so far."""
        return self._pending

    @property
    def pool(self) -> BufferPool:
        """The pool boundary frames are assembled in."""
        return self._pool

    def __repr__(self) -> str:
        return (f"<fastaudio.Chunker frames of {self._frame_bytes} bytes, "
                f"{self._pending} bytes pending>")


# --------------------------------------------------------------------------
# PCM conversion
# --------------------------------------------------------------------------

def _check_gain(gain: float) -> float:
    gain = float(gain)
    if not abs(gain) <= _FLT_MAX:  # also false for NaN
        raise ValueError(f"gain must be a finite float32 value, got {gain!r}")
    return gain


def _samples(obj: BufferLike, code: str, dtype: type, role: str,
             writable: bool = False) -> np.ndarray:
    """obj's bytes as a 1-D numpy array of dtype, checked like the extension does."""
    view = _memoryview(obj)
    if not _format_ok(view.format, code):
        name = "float32" if code == "f" else "int16"
        raise TypeError(f"{role} must hold {name} samples or raw bytes, "
                        f"not buffer format {view.format!r}")
    view = _byte_view(view, writable)
    width = np.dtype(dtype).itemsize
    if role == "src" and view.nbytes % width:
        raise ValueError(f"src holds {view.nbytes} bytes, not whole {width}-byte samples")
    return np.frombuffer(view, dtype=dtype, count=view.nbytes // width)


def _convert(src: BufferLike, out: BufferLike | None, src_code: str, src_dtype: type,
             out_code: str, out_dtype: type,
             kernel: Callable[[np.ndarray, np.ndarray], None]) -> BufferLike:
    x = _samples(src, src_code, src_dtype, "src")
    out_width = np.dtype(out_dtype).itemsize
    if out is None:
        out = bytearray(x.size * out_width)
    y = _samples(out, out_code, out_dtype, "out", writable=True)
    out_nbytes = _memoryview(out).nbytes
    if out_nbytes != x.size * out_width:
        raise ValueError(
            f"out holds {out_nbytes} bytes; {x.size} samples need {x.size * out_width}")
    kernel(x, y)
    return out


def float32_to_int16(src: BufferLike, out: BufferLike | None = None,
                     gain: float = 1.0) -> BufferLike:
    """Convert float32 samples to int16: scale by gain * 32767, clip, round half to even.

    NaN -> 0, +inf -> 32767, -inf -> -32767. Returns ``out``, or a new bytearray.
    """
    g = np.float32(_check_gain(gain))

    def kernel(x: np.ndarray, y: np.ndarray) -> None:
        with np.errstate(all="ignore"):
            v = x * g
            np.nan_to_num(v, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
            v *= np.float32(32767)
            np.clip(v, -32768, 32767, out=v)
            np.rint(v, out=v)
        np.copyto(y, v, casting="unsafe")

    return _convert(src, out, "f", np.float32, "h", np.int16, kernel)


def int16_to_float32(src: BufferLike, out: BufferLike | None = None,
                     gain: float = 1.0) -> BufferLike:
    """Convert int16 samples to float32: ``x * float32(gain / 32767)``.

    Returns ``out``, or a new bytearray.
    """
    scale = np.float32(_check_gain(gain) / 32767.0)

    def kernel(x: np.ndarray, y: np.ndarray) -> None:
        np.multiply(x, scale, out=y, dtype=np.float32)

    return _convert(src, out, "h", np.int16, "f", np.float32, kernel)
