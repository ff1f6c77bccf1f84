# Declarations of fastaudio's extension types; _fastaudio.pyx implements them.
#
# Byte counts are Py_ssize_t (what the buffer protocol speaks) except the ring
# buffer's two cursors, which are size_t so they may wrap around modulo 2**64
# without undefined behaviour.


# Compile-time constants (a cdef enum: DEF is deprecated in Cython 3).
cdef enum:
    # Copies and conversions at least this large release the GIL. Smaller ones
    # keep it: handing the GIL to a busy thread can stall the caller for a
    # whole switch interval (5 ms), a thousand times longer than the copy, and
    # the PortAudio callback must not wait that long.
    _NOGIL_MIN_BYTES = 65536

    # Longest single sleep of a blocked RingBuffer.write(), in microseconds.
    # Between sleeps the writer re-checks its deadline and pending signals, so
    # Ctrl-C and close() are never ignored for longer than this.
    _WAIT_SLICE_US = 50000

    # Blocks in the private pool of a Chunker created without one: the frame
    # being assembled, the frame last handed out, and room for a few frames
    # the caller is still holding.
    _CHUNKER_OWN_BLOCKS = 8


cdef class Block:
    cdef:
        # Start of this block's memory, owned by the block (PyMem_Calloc) so
        # a live view keeps the memory alive through its reference to us.
        char *_data

        # Size of the block in bytes, fixed at creation.
        Py_ssize_t _nbytes

        # Position of this block in its pool's block list; the pool checks
        # identity at this index before accepting the block back.
        Py_ssize_t _index

        # Number of buffer views of this block currently alive.
        Py_ssize_t _exports

        # True between BufferPool.acquire() and BufferPool.release().
        bint _acquired


cdef class BufferPool:
    cdef:
        # Every block of the pool, created once; index i is the block whose
        # _index is i. Holding them here is what makes acquire() allocate
        # nothing: it only hands out an existing object.
        list _blocks

        # Stack of indices of free blocks (LIFO, so the most recently
        # released block, still warm in cache, is reused first).
        Py_ssize_t *_free

        # Number of valid entries on the _free stack.
        Py_ssize_t _nfree

        # Number of blocks, fixed at creation.
        Py_ssize_t _count

        # Size of every block in bytes.
        Py_ssize_t _block_size

        # Most blocks ever in use at once.
        Py_ssize_t _high_water

    cdef Block _acquire(self)
    cdef int _release(self, Block block) except -1
    cdef bint _owns(self, Block block)


cdef class RingBuffer:
    cdef:
        # Storage, capacity_bytes long, allocated once in __cinit__.
        char *_buf

        # Capacity in bytes (capacity_frames * bytes_per_frame).
        size_t _capacity_bytes

        # Bytes per frame (one sample of every channel), and frames per second
        # (0 when unknown; fill_seconds then refuses to answer).
        Py_ssize_t _bytes_per_frame
        Py_ssize_t _sample_rate

        # Total bytes ever written / read. Only the producer stores _head and
        # only the consumer stores _tail; each publishes with a release store
        # and reads the other's with an acquire load. Fill is _head - _tail;
        # the position in _buf is the counter modulo _capacity_bytes.
        size_t _head
        size_t _tail

        # Set once by close(); producer done. Atomic int.
        int _closed

        # 1 while a write() sleeps for room. The consumer swaps it to 0 and, if
        # it was 1, releases _wakeup. Paired with _tail in a Dekker-style
        # handshake (both sides sequentially consistent) so no wake-up is lost.
        int _writer_waiting

        # 1 while a write() / read_into() runs: a second concurrent writer or
        # reader breaks the single-producer single-consumer contract and is
        # refused instead of corrupting the stream.
        int _writing
        int _reading

        # Binary semaphore the consumer and close() release to wake a sleeping
        # writer. A PyThread lock: any thread may release it, it can be waited
        # on with a timeout without the GIL, and it exists wherever CPython does.
        void *_wakeup

        # Statistics, written by one side, read by anyone (relaxed atomics).
        size_t _underruns
        size_t _underrun_bytes
        size_t _high_water_bytes

        # The last int returned by write() / read_into() and its value: the
        # steady state returns the same count every call, and reusing the
        # object keeps the audio callback free of allocations.
        object _write_result
        Py_ssize_t _write_result_value
        object _read_result
        Py_ssize_t _read_result_value

    cdef int _check_write_size(self, size_t nbytes) except -1
    cdef int _write(self, const char *src, size_t nbytes, object timeout) except -1
    cdef int _wait_for_room(self, size_t nbytes, object timeout) except -1
    cdef void _sleep_until_woken(self, size_t nbytes, long long slice_us) noexcept
    cdef str _full_message(self, size_t nbytes)
    cdef void _copy_in(self, const char *src, size_t nbytes) noexcept nogil
    cdef size_t _read_fill(self, char *dst, size_t nbytes) noexcept nogil
    cdef size_t _copy_out(self, char *dst, size_t nbytes) noexcept nogil
    cdef void _wake_writer(self) noexcept nogil
    cdef size_t _fill_bytes(self) noexcept nogil


cdef class Chunker:
    cdef:
        # Size of every frame handed out, in bytes.
        Py_ssize_t _frame_bytes

        # Pool that supplies blocks for frames spanning two inputs.
        BufferPool _pool

        # Block gathering the start of a frame whose end has not arrived yet,
        # or None; _pending bytes of it are filled.
        Block _partial
        Py_ssize_t _pending

        # Block behind the boundary frame most recently handed out, or None.
        # Recycled at the next feed()/flush() unless the caller still holds a
        # view of it, in which case it moves to _held.
        Block _emitted

        # Blocks still viewed by the caller; retried at every feed()/flush().
        list _held

    cdef _recycle(self)
    cdef _recycle_held(self)
    cdef _emit(self, Py_ssize_t nbytes)
    cdef int _stash(self, const char *src, Py_ssize_t nbytes) except -1
