# cython: embedsignature=True, boundscheck=False, wraparound=False, initializedcheck=False
"""C-speed audio path of the playback client: buffer pool, SPSC ring buffer,
zero-copy chunker and PCM conversion.

Hot paths (RingBuffer.write / read_into, Chunker.feed, the conversions with
``out=``) allocate no memory for audio data; read_into and write allocate no
Python object at all once the frame size is steady. Samples are native-endian.
"""

cimport cython
from cpython.buffer cimport (
    PyBUF_FORMAT,
    PyBUF_ND,
    PyBUF_SIMPLE,
    PyBUF_STRIDES,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.bytearray cimport PyByteArray_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from cpython.memoryview cimport PyMemoryView_FromObject
from cpython.pythread cimport (
    NOWAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.float cimport FLT_MAX
from libc.math cimport fabs
from libc.stdint cimport SIZE_MAX
from libc.string cimport memcpy, memset

from time import monotonic as _monotonic

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


cdef extern from "pythread.h":
    # Not in Cython's pythread.pxd. PY_TIMEOUT_T is long long; intr_flag=0
    # means signals do not interrupt the wait (the writer checks them itself).
    int PyThread_acquire_lock_timed(
        PyThread_type_lock lock, long long microseconds, int intr_flag) nogil


cdef extern from *:
    """
    /* ---- SPSC memory ordering (GCC/Clang __atomic builtins). ---- */
    #if !defined(__GNUC__) && !defined(__clang__)
    #error "fastaudio needs the GCC/Clang __atomic builtins"
    #endif
    static inline size_t fa_load_acquire(const size_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline size_t fa_load_seq_cst(const size_t *p) {
        return __atomic_load_n(p, __ATOMIC_SEQ_CST);
    }
    static inline size_t fa_load_relaxed(const size_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void fa_store_release(size_t *p, size_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline void fa_store_seq_cst(size_t *p, size_t v) {
        __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
    }
    static inline void fa_store_relaxed(size_t *p, size_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
    }
    static inline int fa_flag_load(const int *p) {
        return __atomic_load_n(p, __ATOMIC_SEQ_CST);
    }
    static inline void fa_flag_store(int *p, int v) {
        __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
    }
    static inline int fa_flag_swap(int *p, int v) {
        return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
    }

    /* ---- Buffer formats. ---- */
    static inline int fa_little_endian(void) {
        const unsigned short one = 1;
        return *(const unsigned char *)&one == 1;
    }
    /* 1 if a buffer of struct format `fmt` may be read as native samples of
       type `code`: it is that type (bare, '@', '=' or, on little-endian
       hosts, '<') or raw bytes ('B', 'c'; NULL means 'B'). Signed 'b' is
       int8 samples, not raw bytes, so it is refused. */
    static int fa_format_ok(const char *fmt, char code) {
        if (fmt == NULL) return 1;
        if (fmt[0] == '@' || fmt[0] == '=' || (fmt[0] == '<' && fa_little_endian())) fmt++;
        if (fmt[0] == 0 || fmt[1] != 0) return 0;
        return fmt[0] == code || fmt[0] == 'B' || fmt[0] == 'c';
    }

    /* ---- PCM kernels. ----
       float32 -> int16 is, bit for bit, numpy's
         rint(clip(nan_to_num(x * gain, nan=0, posinf=1, neginf=-1) * 32767,
                   -32768, 32767))
       in float32 arithmetic with round-half-even (the default FP mode).
       Loads and stores go through memcpy: callers may pass buffers at any
       byte offset, and a misaligned float* would be undefined behaviour. */
    #include <stdint.h>
    #include <string.h>
    static inline int16_t fa_f2i(float x, float gain) {
        float v = x * gain;
        v = (v != v) ? 0.0f : v;
        v = (v == __builtin_inff()) ? 1.0f : v;
        v = (v == -__builtin_inff()) ? -1.0f : v;
        v = v * 32767.0f;
        v = (v > 32767.0f) ? 32767.0f : v;
        v = (v < -32768.0f) ? -32768.0f : v;
        /* Adding then subtracting 1.5 * 2**23 rounds to the nearest integer,
           ties to even, for |v| < 2**22 (exact since v is clipped), without
           the libm call lrintf costs when errno handling is on. */
        v = (v + 12582912.0f) - 12582912.0f;
        return (int16_t)(int32_t)v;
    }
    #if defined(__SSE2__) && (!defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD == 0)
    #include <emmintrin.h>
    /* Four lanes of fa_f2i before rounding. GCC will not vectorize the scalar
       version without -fno-trapping-math, so SSE2 (baseline on x86-64) is
       spelled out: 4x faster on a 441-sample frame. */
    static inline __m128 fa_f2i_lanes(__m128 v) {
        const __m128 one = _mm_set1_ps(1.0f), minus_one = _mm_set1_ps(-1.0f);
        const __m128 pinf = _mm_set1_ps(__builtin_inff());
        const __m128 ninf = _mm_set1_ps(-__builtin_inff());
        __m128 is_pinf, is_ninf;
        v = _mm_and_ps(v, _mm_cmpord_ps(v, v));                 /* NaN -> 0 */
        is_pinf = _mm_cmpeq_ps(v, pinf);
        v = _mm_or_ps(_mm_andnot_ps(is_pinf, v), _mm_and_ps(is_pinf, one));
        is_ninf = _mm_cmpeq_ps(v, ninf);
        v = _mm_or_ps(_mm_andnot_ps(is_ninf, v), _mm_and_ps(is_ninf, minus_one));
        v = _mm_mul_ps(v, _mm_set1_ps(32767.0f));
        v = _mm_min_ps(v, _mm_set1_ps(32767.0f));
        return _mm_max_ps(v, _mm_set1_ps(-32768.0f));
    }
    #define FA_HAVE_SSE2 1
    #endif
    static void fa_f32_to_i16(const char *src, char *dst, Py_ssize_t n, float gain) {
        Py_ssize_t i = 0;
    #ifdef FA_HAVE_SSE2
        const __m128 g = _mm_set1_ps(gain);
        for (; i + 8 <= n; i += 8) {
            __m128 a = fa_f2i_lanes(_mm_mul_ps(_mm_loadu_ps((const float *)(src + 4 * i)), g));
            __m128 b = fa_f2i_lanes(_mm_mul_ps(_mm_loadu_ps((const float *)(src + 4 * i + 16)), g));
            /* cvtps rounds ties to even in the default mode; values are
               already inside int16, so the saturating pack never clips. */
            __m128i r = _mm_packs_epi32(_mm_cvtps_epi32(a), _mm_cvtps_epi32(b));
            _mm_storeu_si128((__m128i *)(dst + 2 * i), r);
        }
    #endif
        for (; i < n; i++) {
            float x;
            int16_t y;
            memcpy(&x, src + 4 * i, 4);
            y = fa_f2i(x, gain);
            memcpy(dst + 2 * i, &y, 2);
        }
    }
    /* int16 -> float32: one float32 multiply by scale = float32(gain / 32767),
       so int16 -> float32 -> int16 is the identity at gain 1. */
    static void fa_i16_to_f32(const char *src, char *dst, Py_ssize_t n, float scale) {
        Py_ssize_t i;
        for (i = 0; i < n; i++) {
            int16_t x;
            float y;
            memcpy(&x, src + 2 * i, 2);
            y = (float)x * scale;
            memcpy(dst + 4 * i, &y, 4);
        }
    }
    """
    size_t fa_load_acquire(const size_t *p) nogil
    size_t fa_load_seq_cst(const size_t *p) nogil
    size_t fa_load_relaxed(const size_t *p) nogil
    void fa_store_release(size_t *p, size_t v) nogil
    void fa_store_seq_cst(size_t *p, size_t v) nogil
    void fa_store_relaxed(size_t *p, size_t v) nogil
    int fa_flag_load(const int *p) nogil
    void fa_flag_store(int *p, int v) nogil
    int fa_flag_swap(int *p, int v) nogil
    int fa_format_ok(const char *fmt, char code) nogil
    void fa_f32_to_i16(const char *src, char *dst, Py_ssize_t n, float gain) nogil
    void fa_i16_to_f32(const char *src, char *dst, Py_ssize_t n, float scale) nogil


# --------------------------------------------------------------------------
# Buffer pool
# --------------------------------------------------------------------------

@cython.final
cdef class Block:
    """A fixed-size block of a BufferPool, exposed through the buffer protocol.

    ``memoryview(block)`` is a writable, 1-D, unsigned-byte view of the whole
    block, available only while the block is acquired. The pool counts such
    views and refuses to take the block back while one is alive, so a view
    can never outlive its block's turn and alias someone else's data.
    """

    def __init__(self):
        raise TypeError("Block objects come from BufferPool.acquire()")

    def __dealloc__(self):
        PyMem_Free(self._data)

    def __getbuffer__(self, Py_buffer *view, int flags):
        if not self._acquired:
            raise BufferError("the block was released to its pool; acquire() one first")
        view.buf = self._data
        view.obj = self
        view.len = self._nbytes
        view.readonly = 0
        view.itemsize = 1
        view.format = NULL
        if flags & PyBUF_FORMAT:
            view.format = b"B"
        view.ndim = 1
        # As PyBuffer_FillInfo does: the shape of a 1-D byte buffer is its
        # length and its stride is its item size, both already in the view.
        view.shape = &view.len if flags & PyBUF_ND else NULL
        view.strides = &view.itemsize if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
        view.suboffsets = NULL
        view.internal = NULL
        self._exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self._exports -= 1

    def __len__(self):
        return self._nbytes

    @property
    def nbytes(self) -> int:
        """Size of the block in bytes (the pool's block_size)."""
        return self._nbytes

    @property
    def acquired(self) -> bool:
        """True between BufferPool.acquire() and BufferPool.release()."""
        return self._acquired

    def __repr__(self):
        state = "acquired" if self._acquired else "free"
        return f"<fastaudio.Block {self._nbytes} bytes, {state}>"


cdef Block _new_block(Py_ssize_t nbytes, Py_ssize_t index):
    """A zeroed block of nbytes; the caller owns it (used at pool creation only)."""
    cdef Block block = Block.__new__(Block)
    block._data = <char *>PyMem_Calloc(<size_t>nbytes, 1)
    if block._data == NULL:
        raise MemoryError(f"cannot allocate a {nbytes}-byte block")
    block._nbytes = nbytes
    block._index = index
    return block


@cython.final
cdef class BufferPool:
    """``count`` blocks of ``block_size`` bytes, allocated once at creation.

    acquire() and release() only move a block index on a stack: no malloc,
    no new Python object. Not thread-safe by itself, but every method runs
    entirely under the GIL, so calls from several Python threads do not
    interleave.

    :param block_size: bytes per block, > 0.
    :param count: number of blocks, > 0.
    """

    def __cinit__(self, Py_ssize_t block_size, Py_ssize_t count):
        cdef Py_ssize_t i
        if block_size <= 0 or count <= 0:
            raise ValueError(f"block_size and count must be > 0, got {block_size} and {count}")
        self._free = <Py_ssize_t *>PyMem_Malloc(<size_t>count * sizeof(Py_ssize_t))
        if self._free == NULL:
            raise MemoryError(f"cannot allocate a pool of {count} blocks")
        self._block_size = block_size
        self._count = count
        self._blocks = [_new_block(block_size, i) for i in range(count)]
        # Index 0 on top, so blocks are handed out in creation order.
        for i in range(count):
            self._free[i] = count - 1 - i
        self._nfree = count

    def __dealloc__(self):
        PyMem_Free(self._free)

    def acquire(self) -> Block:
        """Take a free block (zero-filled at creation, otherwise as last left).

        :raises PoolExhausted: every block is in use.
        """
        return self._acquire()

    def release(self, Block block not None) -> None:
        """Give ``block`` back to the pool.

        :raises BufferError: a view of the block is still alive (release the
            memoryview, or drop every reference to it, first).
        :raises ValueError: the block is not this pool's, or already released.
        """
        self._release(block)

    cdef Block _acquire(self):
        cdef Block block
        if self._nfree == 0:
            raise PoolExhausted(
                f"all {self._count} blocks of {self._block_size} bytes are in use")
        self._nfree -= 1
        block = <Block>self._blocks[self._free[self._nfree]]
        block._acquired = True
        if self._count - self._nfree > self._high_water:
            self._high_water = self._count - self._nfree
        return block

    cdef int _release(self, Block block) except -1:
        if not self._owns(block):
            raise ValueError("the block does not belong to this pool")
        if not block._acquired:
            raise ValueError("the block was already released")
        if block._exports:
            raise BufferError(
                f"cannot release a block while {block._exports} view(s) of it are alive")
        block._acquired = False
        self._free[self._nfree] = block._index
        self._nfree += 1
        return 0

    cdef bint _owns(self, Block block):
        # Identity at the block's index, not just a matching index: a block of
        # another pool (or of a dead pool) can carry the same index.
        return 0 <= block._index < self._count and self._blocks[block._index] is block

    @property
    def block_size(self) -> int:
        """Bytes per block."""
        return self._block_size

    @property
    def capacity(self) -> int:
        """Number of blocks in the pool."""
        return self._count

    @property
    def in_use(self) -> int:
        """Blocks currently acquired."""
        return self._count - self._nfree

    @property
    def available(self) -> int:
        """Blocks acquire() can still hand out."""
        return self._nfree

    @property
    def high_water(self) -> int:
        """Most blocks ever acquired at the same time."""
        return self._high_water

    def __repr__(self):
        return (f"<fastaudio.BufferPool {self.in_use}/{self._count} blocks of "
                f"{self._block_size} bytes in use, high water {self._high_water}>")


# --------------------------------------------------------------------------
# Ring buffer
# --------------------------------------------------------------------------

@cython.final
cdef class RingBuffer:
    """Single-producer, single-consumer byte ring of whole audio frames.

    One thread writes (the network receiver), one reads (the PortAudio
    callback); neither takes a lock on the data path. The cursors are
    published with release/acquire atomics, so the copies need no GIL: a
    copy of ``_NOGIL_MIN_BYTES`` (64 KiB) or more runs with the GIL released.
    Shorter copies keep it, because giving the GIL to a busy thread can stall
    the audio callback for a 5 ms switch interval.

    A *frame* is one sample of every channel (PortAudio's meaning), so
    ``bytes_per_frame`` is channels * sample width.

    Overflow policy, never silent loss: write() is all-or-nothing. It either
    copies all of ``data`` and returns its length, or copies nothing and
    raises RingFull (no room within ``timeout``), RingClosed (close() was
    called) or ValueError (``data`` can never fit: longer than the capacity
    or not whole frames).

    Underrun policy: read_into() always fills all of ``out``; what the ring
    lacks is zero-filled and counted as an underrun, unless close() was
    called first (the stream ended, silence is expected).

    :param capacity_frames: capacity in frames, > 0, fixed.
    :param bytes_per_frame: bytes per frame, > 0.
    :param sample_rate: frames per second, used only by fill_seconds
        (0 = unknown).
    """

    def __cinit__(self, Py_ssize_t capacity_frames, Py_ssize_t bytes_per_frame,
                  Py_ssize_t sample_rate=0):
        if capacity_frames <= 0 or bytes_per_frame <= 0:
            raise ValueError(
                "capacity_frames and bytes_per_frame must be > 0, "
                f"got {capacity_frames} and {bytes_per_frame}")
        if sample_rate < 0:
            raise ValueError(f"sample_rate must be >= 0, got {sample_rate}")
        if capacity_frames > (<Py_ssize_t>(SIZE_MAX >> 2)) // bytes_per_frame:
            raise ValueError("capacity_frames * bytes_per_frame is too large")
        self._capacity_bytes = <size_t>(capacity_frames * bytes_per_frame)
        self._bytes_per_frame = bytes_per_frame
        self._sample_rate = sample_rate
        self._buf = <char *>PyMem_Malloc(self._capacity_bytes)
        if self._buf == NULL:
            raise MemoryError(f"cannot allocate a {self._capacity_bytes}-byte ring")
        self._wakeup = PyThread_allocate_lock()
        if self._wakeup == NULL:
            raise MemoryError("cannot allocate the ring's wake-up lock")
        # Held = no wake-up pending; the consumer releases it to wake a writer.
        PyThread_acquire_lock(self._wakeup, NOWAIT_LOCK)
        self._write_result = 0
        self._read_result = 0

    def __dealloc__(self):
        PyMem_Free(self._buf)
        if self._wakeup != NULL:
            # Free it unlocked, as CPython's own lock_dealloc does: whatever
            # state it is in, take it (if free) and release it once.
            PyThread_acquire_lock(self._wakeup, NOWAIT_LOCK)
            PyThread_release_lock(self._wakeup)
            PyThread_free_lock(self._wakeup)

    # ---- producer ----------------------------------------------------------

    def write(self, data, timeout=0.0) -> int:
        """Copy all of ``data`` (any C-contiguous buffer of whole frames) in.

        :param timeout: seconds to wait for room; 0 (default) never waits,
            None waits as long as it takes (close() still wakes it).
        :returns: the number of bytes written, always ``len(data)`` in bytes.
        :raises RingFull: no room for all of it within ``timeout``; nothing
            was written.
        :raises RingClosed: close() was called; nothing was written.
        :raises ValueError: not whole frames, longer than the capacity, or a
            negative timeout.
        :raises RuntimeError: another write() is running (single producer).
        """
        cdef Py_buffer view
        cdef size_t nbytes
        if timeout is not None and not timeout >= 0:  # also refuses NaN
            raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            nbytes = <size_t>view.len
            self._check_write_size(nbytes)
            if fa_flag_swap(&self._writing, 1):
                raise RuntimeError("another write() is running: a RingBuffer has one producer")
            try:
                self._write(<const char *>view.buf, nbytes, timeout)
            finally:
                fa_flag_store(&self._writing, 0)
        finally:
            PyBuffer_Release(&view)
        if <Py_ssize_t>nbytes != self._write_result_value:
            self._write_result = <Py_ssize_t>nbytes
            self._write_result_value = <Py_ssize_t>nbytes
        return self._write_result

    cdef int _check_write_size(self, size_t nbytes) except -1:
        if nbytes % <size_t>self._bytes_per_frame:
            raise ValueError(
                f"write() takes whole frames of {self._bytes_per_frame} bytes, got {nbytes} bytes")
        if nbytes > self._capacity_bytes:
            raise ValueError(
                f"{nbytes} bytes can never fit a ring of {self._capacity_bytes} bytes")
        return 0

    cdef int _write(self, const char *src, size_t nbytes, object timeout) except -1:
        if fa_flag_load(&self._closed):
            raise RingClosed("write() after close()")
        if self._capacity_bytes - self._fill_bytes() < nbytes:
            self._wait_for_room(nbytes, timeout)
        if nbytes >= _NOGIL_MIN_BYTES:
            with nogil:
                self._copy_in(src, nbytes)
        else:
            self._copy_in(src, nbytes)
        return 0

    cdef int _wait_for_room(self, size_t nbytes, object timeout) except -1:
        """Sleep, without the GIL, until nbytes fit; raise on deadline or close."""
        cdef bint forever = timeout is None
        cdef double deadline = 0.0, remaining
        cdef long long slice_us = _WAIT_SLICE_US
        if not forever:
            if timeout == 0:
                raise RingFull(self._full_message(nbytes))
            deadline = _monotonic() + <double>timeout
        while True:
            if fa_flag_load(&self._closed):
                raise RingClosed("the ring was closed while write() waited for room")
            if self._capacity_bytes - self._fill_bytes() >= nbytes:
                return 0
            if not forever:
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    raise RingFull(self._full_message(nbytes))
                # Clamp as a double: a huge timeout must not overflow the cast.
                slice_us = <long long>min(remaining * 1e6 + 1.0, <double>_WAIT_SLICE_US)
            self._sleep_until_woken(nbytes, slice_us)
            PyErr_CheckSignals()

    cdef void _sleep_until_woken(self, size_t nbytes, long long slice_us) noexcept:
        # Announce the wait, then look again: the consumer stores its cursor
        # before it reads the flag, we store the flag before we read the
        # cursor (all seq_cst), so at least one of us sees the other and a
        # wake-up cannot fall between our check and our sleep.
        fa_flag_store(&self._writer_waiting, 1)
        if (self._capacity_bytes - self._fill_bytes() < nbytes
                and not fa_flag_load(&self._closed)):
            with nogil:
                PyThread_acquire_lock_timed(self._wakeup, slice_us, 0)
        fa_flag_store(&self._writer_waiting, 0)

    cdef str _full_message(self, size_t nbytes):
        return (f"no room for {nbytes} bytes: {self._fill_bytes()} of "
                f"{self._capacity_bytes} bytes are buffered")

    cdef void _copy_in(self, const char *src, size_t nbytes) noexcept nogil:
        cdef size_t head = fa_load_relaxed(&self._head)  # only we store it
        cdef size_t pos = head % self._capacity_bytes
        cdef size_t first = min(nbytes, self._capacity_bytes - pos)
        cdef size_t fill
        memcpy(self._buf + pos, src, first)
        memcpy(self._buf, src + first, nbytes - first)
        # Release: the consumer that sees the new head also sees the bytes.
        fa_store_release(&self._head, head + nbytes)
        fill = head + nbytes - fa_load_seq_cst(&self._tail)
        if fill > fa_load_relaxed(&self._high_water_bytes):
            fa_store_relaxed(&self._high_water_bytes, fill)

    def close(self) -> None:
        """Mark the stream finished: later writes raise RingClosed, a blocked
        write() wakes and raises it, and reads that run dry are no longer
        counted as underruns. Buffered data can still be read."""
        fa_flag_store(&self._closed, 1)
        self._wake_writer()

    # ---- consumer ----------------------------------------------------------

    def read_into(self, out) -> int:
        """Fill all of ``out`` (a writable C-contiguous buffer of whole frames).

        Buffered frames come first, zeros fill the rest. A short read while
        the ring is open counts one underrun and the missing frames.
        Allocates nothing once the read size is steady (safe in the audio
        callback) and never blocks.

        :returns: the number of real (not zero-filled) bytes.
        :raises ValueError: ``out`` is not whole frames.
        :raises RuntimeError: another read_into() is running (single consumer).
        """
        cdef Py_buffer view
        cdef size_t got = 0
        PyObject_GetBuffer(out, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            if view.len % self._bytes_per_frame:
                raise ValueError(
                    f"read_into() fills whole frames of {self._bytes_per_frame} bytes, "
                    f"got {view.len} bytes")
            if fa_flag_swap(&self._reading, 1):
                raise RuntimeError("another read_into() is running: a RingBuffer has one consumer")
            if view.len >= _NOGIL_MIN_BYTES:
                with nogil:
                    got = self._read_fill(<char *>view.buf, <size_t>view.len)
            else:
                got = self._read_fill(<char *>view.buf, <size_t>view.len)
            fa_flag_store(&self._reading, 0)
        finally:
            PyBuffer_Release(&view)
        if <Py_ssize_t>got != self._read_result_value:
            self._read_result = <Py_ssize_t>got
            self._read_result_value = <Py_ssize_t>got
        return self._read_result

    cdef size_t _read_fill(self, char *dst, size_t nbytes) noexcept nogil:
        cdef size_t got = self._copy_out(dst, nbytes)
        if got < nbytes:
            memset(dst + got, 0, nbytes - got)
            if not fa_flag_load(&self._closed):
                fa_store_relaxed(&self._underruns, fa_load_relaxed(&self._underruns) + 1)
                fa_store_relaxed(&self._underrun_bytes,
                                 fa_load_relaxed(&self._underrun_bytes) + nbytes - got)
        return got

    cdef size_t _copy_out(self, char *dst, size_t nbytes) noexcept nogil:
        cdef size_t tail = fa_load_relaxed(&self._tail)  # only we store it
        # Acquire: every byte written before this head was published is visible.
        cdef size_t take = min(nbytes, fa_load_acquire(&self._head) - tail)
        cdef size_t pos = tail % self._capacity_bytes
        cdef size_t first = min(take, self._capacity_bytes - pos)
        memcpy(dst, self._buf + pos, first)
        memcpy(dst + first, self._buf, take - first)
        if take:
            fa_store_seq_cst(&self._tail, tail + take)
            self._wake_writer()
        return take

    cdef void _wake_writer(self) noexcept nogil:
        # Swap so that one announced wait gets at most one release.
        if fa_flag_load(&self._writer_waiting) and fa_flag_swap(&self._writer_waiting, 0):
            PyThread_release_lock(self._wakeup)

    cdef size_t _fill_bytes(self) noexcept nogil:
        # Tail first: it never passes the head loaded after it, so the
        # difference cannot wrap below zero, whichever thread asks.
        cdef size_t tail = fa_load_seq_cst(&self._tail)
        cdef size_t fill = fa_load_acquire(&self._head) - tail
        return min(fill, self._capacity_bytes)

    # ---- both / neither -----------------------------------------------------

    def reset(self) -> None:
        """Drop buffered data, zero the statistics and reopen the ring.

        Call only while neither side is inside write() or read_into().

        :raises RuntimeError: a write() or read_into() is running.
        """
        if fa_flag_load(&self._writing) or fa_flag_load(&self._reading):
            raise RuntimeError("reset() while a write() or read_into() is running")
        fa_store_seq_cst(&self._head, 0)
        fa_store_seq_cst(&self._tail, 0)
        fa_store_relaxed(&self._underruns, 0)
        fa_store_relaxed(&self._underrun_bytes, 0)
        fa_store_relaxed(&self._high_water_bytes, 0)
        fa_flag_store(&self._writer_waiting, 0)
        fa_flag_store(&self._closed, 0)
        # Consume a wake-up left over from the previous stream.
        PyThread_acquire_lock(self._wakeup, NOWAIT_LOCK)

    @property
    def capacity_frames(self) -> int:
        """Capacity in frames, fixed at creation."""
        return <Py_ssize_t>self._capacity_bytes // self._bytes_per_frame

    @property
    def capacity_bytes(self) -> int:
        """Capacity in bytes."""
        return <Py_ssize_t>self._capacity_bytes

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
        """Frames buffered now (a snapshot when the other side is running)."""
        return <Py_ssize_t>self._fill_bytes() // self._bytes_per_frame

    @property
    def free_frames(self) -> int:
        """Frames a write() could add now without waiting."""
        return <Py_ssize_t>(self._capacity_bytes - self._fill_bytes()) // self._bytes_per_frame

    @property
    def fill_seconds(self) -> float:
        """Seconds of audio buffered now.

        :raises ValueError: the ring was created without a sample_rate.
        """
        if self._sample_rate == 0:
            raise ValueError("fill_seconds needs the RingBuffer's sample_rate")
        return <double>(<Py_ssize_t>self._fill_bytes() // self._bytes_per_frame) / self._sample_rate

    @property
    def underruns(self) -> int:
        """read_into() calls that had to zero-fill while the ring was open."""
        return <Py_ssize_t>fa_load_relaxed(&self._underruns)

    @property
    def underrun_frames(self) -> int:
        """Frames zero-filled by those underruns."""
        return <Py_ssize_t>fa_load_relaxed(&self._underrun_bytes) // self._bytes_per_frame

    @property
    def high_water_frames(self) -> int:
        """Most frames ever buffered at once, as the producer saw it."""
        return <Py_ssize_t>fa_load_relaxed(&self._high_water_bytes) // self._bytes_per_frame

    @property
    def closed(self) -> bool:
        """True once close() was called (until reset())."""
        return fa_flag_load(&self._closed) != 0

    @property
    def writer_waiting(self) -> bool:
        """True while a write() sleeps for room (the producer is ahead)."""
        return fa_flag_load(&self._writer_waiting) != 0

    def __repr__(self):
        return (f"<fastaudio.RingBuffer {self.fill_frames}/{self.capacity_frames} frames "
                f"of {self._bytes_per_frame} bytes, underruns={self.underruns}, "
                f"closed={self.closed}>")


# --------------------------------------------------------------------------
# Chunker
# --------------------------------------------------------------------------

cdef memoryview _byte_view(object data):
    """A 1-D unsigned-byte memoryview over all of data (C-contiguous)."""
    cdef memoryview view = PyMemoryView_FromObject(data)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


@cython.final
@cython.no_gc_clear  # __dealloc__ hands blocks back to _pool, so keep it set
cdef class Chunker:
    """Cuts a stream of arbitrarily sized byte chunks into fixed-size frames.

    feed() returns frames as memoryviews. A frame that lies inside one input
    is a view of that input: zero-copy, so it aliases the caller's object
    (and keeps it alive). A frame that spans two inputs is assembled in a
    block of ``pool``; only those bytes, fewer than a frame per feed(), are
    ever copied.

    Lifetime of a pooled frame: valid until the next feed(), flush() or
    reset(), which give its block back to the pool. A caller that still holds
    the view at that point keeps the block out of the pool (BufferPool refuses
    to recycle a viewed block) until the view is released; the Chunker takes
    it back at a later call. Holding many such views can exhaust a small pool
    (PoolExhausted).

    :param frame_bytes: bytes per frame, > 0.
    :param pool: where boundary frames are assembled; its block_size must be
        >= frame_bytes. By default the Chunker makes a private pool of 8.
    """

    def __cinit__(self, Py_ssize_t frame_bytes, BufferPool pool=None):
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be > 0, got {frame_bytes}")
        if pool is None:
            pool = BufferPool(frame_bytes, _CHUNKER_OWN_BLOCKS)
        elif pool._block_size < frame_bytes:
            raise ValueError(
                f"the pool's {pool._block_size}-byte blocks cannot hold {frame_bytes}-byte frames")
        self._frame_bytes = frame_bytes
        self._pool = pool
        self._held = []

    def __dealloc__(self):
        # Hand back what can be; a block still viewed stays checked out.
        cdef Block block
        if self._pool is None:
            return
        for block in [self._partial, self._emitted] + self._held:
            if block is not None and block._acquired and block._exports == 0:
                self._pool._release(block)

    def feed(self, data) -> list:
        """Add ``data`` (any C-contiguous buffer) to the stream.

        :returns: a list of the frames completed, each a memoryview of
            exactly frame_bytes bytes, in stream order (possibly empty).
        :raises PoolExhausted: a block was needed for the remainder and the
            pool had none; the Chunker's state is unchanged.
        """
        cdef Py_buffer view
        cdef Py_ssize_t nbytes, pos = 0, take = 0, whole, leftover, i
        cdef memoryview data_view = None
        cdef Block spare = None
        cdef list frames = []
        self._recycle()
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            nbytes = view.len
            if self._pending:
                take = min(self._frame_bytes - self._pending, nbytes)
            whole = (nbytes - take) // self._frame_bytes
            leftover = (nbytes - take) % self._frame_bytes
            # Everything that can fail happens before any state changes.
            if whole:
                data_view = _byte_view(data)
            if leftover:
                spare = self._pool._acquire()
            if take:
                memcpy(self._partial._data + self._pending, view.buf, take)
                self._pending += take
                if self._pending == self._frame_bytes:
                    frames.append(self._emit(self._frame_bytes))
            pos = take
            for i in range(whole):
                frames.append(data_view[pos:pos + self._frame_bytes])
                pos += self._frame_bytes
            if leftover:
                self._partial = spare
                self._stash(<const char *>view.buf + pos, leftover)
        finally:
            PyBuffer_Release(&view)
        return frames

    def flush(self, bint pad=True):
        """End the stream: return the last partial frame, or None if there is none.

        :param pad: True (default) zero-fills it to frame_bytes; False
            returns just the pending bytes.
        """
        self._recycle()
        if not self._pending:
            return None
        if pad:
            memset(self._partial._data + self._pending, 0, self._frame_bytes - self._pending)
            return self._emit(self._frame_bytes)
        return self._emit(self._pending)

    def reset(self) -> None:
        """Drop the pending partial frame and give back the blocks that can be."""
        self._recycle()
        if self._partial is not None:
            self._pool._release(self._partial)
            self._partial = None
        self._pending = 0

    cdef _recycle(self):
        """Return to the pool every block whose frame the caller let go of."""
        cdef Block block = self._emitted
        if block is not None:
            self._emitted = None
            if block._exports:
                self._held.append(block)
            else:
                self._pool._release(block)
        if self._held:
            self._recycle_held()

    cdef _recycle_held(self):
        """Slow path: retry blocks whose frames were held past a feed()."""
        cdef Block block
        still_viewed = []
        for block in self._held:
            if block._exports:
                still_viewed.append(block)
            else:
                self._pool._release(block)
        self._held = still_viewed

    cdef _emit(self, Py_ssize_t nbytes):
        """Hand out the first nbytes of the partial block as a frame."""
        cdef Block block = self._partial
        cdef memoryview frame = PyMemoryView_FromObject(block)
        self._partial = None
        self._pending = 0
        self._emitted = block
        return frame if nbytes == block._nbytes else frame[:nbytes]

    cdef int _stash(self, const char *src, Py_ssize_t nbytes) except -1:
        """Keep the start of the next frame in the (fresh) partial block."""
        memcpy(self._partial._data, src, nbytes)
        self._pending = nbytes
        return 0

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

    def __repr__(self):
        return (f"<fastaudio.Chunker frames of {self._frame_bytes} bytes, "
                f"{self._pending} bytes pending>")


# --------------------------------------------------------------------------
# PCM conversion
# --------------------------------------------------------------------------

cdef int _check_gain(double gain) except -1:
    if not fabs(gain) <= FLT_MAX:  # also false for NaN
        raise ValueError(f"gain must be a finite float32 value, got {gain!r}")
    return 0


cdef int _check_format(Py_buffer *view, char code, str role) except -1:
    cdef str name = "float32" if code == b"f" else "int16"
    if not fa_format_ok(view.format, code):
        raise TypeError(
            f"{role} must hold {name} samples or raw bytes, "
            f"not buffer format {(<bytes>view.format).decode()!r}")
    return 0


cdef object _convert(object src, object out, Py_ssize_t src_width, char src_code,
                     Py_ssize_t out_width, char out_code, float factor):
    """Shared frame of both conversions: buffers, checks, kernel, GIL policy."""
    cdef Py_buffer sview, oview
    cdef Py_ssize_t nsamples
    # ND, not SIMPLE: a memoryview refuses FORMAT without a shape. Asking for
    # a shape but no strides still requires a C-contiguous exporter.
    PyObject_GetBuffer(src, &sview, PyBUF_ND | PyBUF_FORMAT)
    try:
        _check_format(&sview, src_code, "src")
        if sview.len % src_width:
            raise ValueError(f"src holds {sview.len} bytes, not whole {src_width}-byte samples")
        nsamples = sview.len // src_width
        if out is None:
            out = PyByteArray_FromStringAndSize(NULL, nsamples * out_width)
        PyObject_GetBuffer(out, &oview, PyBUF_ND | PyBUF_FORMAT | PyBUF_WRITABLE)
        try:
            _check_format(&oview, out_code, "out")
            if oview.len != nsamples * out_width:
                raise ValueError(
                    f"out holds {oview.len} bytes; {nsamples} samples need {nsamples * out_width}")
            if sview.len >= _NOGIL_MIN_BYTES:
                with nogil:
                    _run_kernel(&sview, &oview, nsamples, src_code, factor)
            else:
                _run_kernel(&sview, &oview, nsamples, src_code, factor)
        finally:
            PyBuffer_Release(&oview)
    finally:
        PyBuffer_Release(&sview)
    return out


cdef inline void _run_kernel(Py_buffer *sview, Py_buffer *oview, Py_ssize_t nsamples,
                             char src_code, float factor) noexcept nogil:
    if src_code == b"f":
        fa_f32_to_i16(<const char *>sview.buf, <char *>oview.buf, nsamples, factor)
    else:
        fa_i16_to_f32(<const char *>sview.buf, <char *>oview.buf, nsamples, factor)


def float32_to_int16(src, out=None, double gain=1.0):
    """Convert float32 samples to int16: scale by gain * 32767, clip, round.

    Bit for bit ``rint(clip(nan_to_num(x * gain, nan=0, posinf=1, neginf=-1)
    * 32767, -32768, 32767))`` in float32 (numpy's reference, ties to even):
    NaN -> 0, +inf -> 32767, -inf -> -32767, anything beyond +-1 clips.

    :param src: C-contiguous float32 samples (array('f'), numpy float32,
        or raw native-endian bytes).
    :param out: writable buffer of exactly 2 bytes per sample, int16 or raw
        bytes; must not overlap src. None allocates a new bytearray.
    :param gain: finite linear gain applied before clipping.
    :returns: ``out``, or the new bytearray.
    """
    _check_gain(gain)
    return _convert(src, out, 4, b"f", 2, b"h", <float>gain)


def int16_to_float32(src, out=None, double gain=1.0):
    """Convert int16 samples to float32: ``x * float32(gain / 32767)``.

    Dividing by 32767 (not 32768) makes int16 -> float32 -> int16 the
    identity at gain 1; -32768 maps to slightly below -1.0.

    :param src: C-contiguous int16 samples (array('h'), numpy int16, or raw
        native-endian bytes).
    :param out: writable buffer of exactly 4 bytes per sample, float32 or
        raw bytes; must not overlap src. None allocates a new bytearray.
    :param gain: finite linear gain.
    :returns: ``out``, or the new bytearray.
    """
    _check_gain(gain)
    return _convert(src, out, 2, b"h", 4, b"f", <float>(gain / 32767.0))
