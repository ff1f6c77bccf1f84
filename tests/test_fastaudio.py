"""fastaudio behaviour: buffer pool, ring buffer, chunker, PCM conversion.

Every test runs against both implementations (the `fa` fixture imports
`fastaudio._fastaudio` and `fastaudio._fallback` directly). Self-contained:
no shared conftest, so run with ``pytest --noconftest tests/test_fastaudio*.py``.
"""

import array
import importlib
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
from fastaudio_impls import IMPLEMENTATIONS, is_extension, load

import fastaudio
from fastaudio import _errors


@pytest.fixture(scope="module", params=sorted(IMPLEMENTATIONS))
def fa(request):
    """The implementation module under test."""
    return load(request.param)




# --------------------------------------------------------------------------
# Package surface
# --------------------------------------------------------------------------

def test_implementation_names_the_module_whose_classes_are_exported():
    module = importlib.import_module(IMPLEMENTATIONS[fastaudio.IMPLEMENTATION])
    assert fastaudio.RingBuffer is module.RingBuffer
    assert fastaudio.float32_to_int16 is module.float32_to_int16


def test_purepython_environment_variable_selects_the_numpy_fallback():
    env = dict(os.environ, FASTAUDIO_PUREPYTHON="1")
    code = "import fastaudio; print(fastaudio.IMPLEMENTATION, fastaudio.RingBuffer.__module__)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.stdout.split() == ["numpy", "fastaudio._fallback"]


def test_both_implementations_raise_the_same_exception_classes(fa):
    for name in ("FastAudioError", "PoolExhausted", "RingFull", "RingClosed"):
        assert getattr(fa, name) is getattr(_errors, name) is getattr(fastaudio, name)


def test_both_implementations_expose_the_same_public_api():
    extension = load("cython")
    fallback = importlib.import_module(IMPLEMENTATIONS["numpy"])
    assert sorted(extension.__all__) == sorted(fallback.__all__)
    for name in ("Block", "BufferPool", "RingBuffer", "Chunker"):
        def public(cls):
            return {a for a in dir(cls) if not a.startswith("_")} - set(dir(bytearray))
        assert public(getattr(extension, name)) == public(getattr(fallback, name)), name


def test_every_public_callable_has_a_docstring(fa):
    for name in fa.__all__:
        obj = getattr(fa, name)
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for attr, member in vars(obj).items():
                if not attr.startswith("_"):
                    assert inspect.getdoc(member), f"{name}.{attr}"


# --------------------------------------------------------------------------
# BufferPool and Block
# --------------------------------------------------------------------------

def test_acquire_hands_out_distinct_zeroed_blocks_of_block_size(fa):
    pool = fa.BufferPool(16, 3)
    blocks = [pool.acquire() for _ in range(3)]
    assert len({id(b) for b in blocks}) == 3
    for block in blocks:
        assert block.nbytes == len(block) == 16
        assert bytes(block) == bytes(16)
        assert block.acquired


def test_block_views_are_writable_and_share_the_block_memory(fa):
    pool = fa.BufferPool(8, 1)
    block = pool.acquire()
    with memoryview(block) as writer:
        assert not writer.readonly
        writer[2:5] = b"abc"
    with memoryview(block) as reader:
        assert bytes(reader[2:5]) == b"abc"


def test_release_refuses_while_a_view_is_alive_and_accepts_once_it_is_released(fa):
    pool = fa.BufferPool(8, 1)
    block = pool.acquire()
    view = memoryview(block)
    with pytest.raises(BufferError):
        pool.release(block)
    assert pool.in_use == 1 and block.acquired
    view.release()
    pool.release(block)
    assert pool.in_use == 0 and not block.acquired


def test_release_accepts_once_the_last_view_is_garbage(fa):
    pool = fa.BufferPool(8, 1)
    block = pool.acquire()
    view = memoryview(block)
    with pytest.raises(BufferError):
        pool.release(block)
    del view
    pool.release(block)
    assert pool.available == 1


def test_a_slice_of_a_view_keeps_the_block_pinned(fa):
    pool = fa.BufferPool(8, 1)
    block = pool.acquire()
    sliced = memoryview(block)[2:4]
    with pytest.raises(BufferError):
        pool.release(block)
    del sliced
    pool.release(block)


def test_numpy_array_over_a_block_keeps_it_pinned(fa):
    pool = fa.BufferPool(8, 1)
    block = pool.acquire()
    samples = np.frombuffer(block, dtype=np.int16)
    samples[:] = [1, 2, 3, 4]
    with pytest.raises(BufferError):
        pool.release(block)
    del samples
    pool.release(block)


def test_acquire_on_an_exhausted_pool_raises_pool_exhausted(fa):
    pool = fa.BufferPool(4, 2)
    pool.acquire(), pool.acquire()
    with pytest.raises(fa.PoolExhausted, match="all 2 blocks"):
        pool.acquire()
    assert pool.in_use == 2


def test_in_use_available_and_high_water_follow_acquire_and_release(fa):
    pool = fa.BufferPool(4, 3)
    a, b = pool.acquire(), pool.acquire()
    assert (pool.in_use, pool.available, pool.high_water, pool.capacity) == (2, 1, 2, 3)
    pool.release(a)
    pool.release(b)
    assert (pool.in_use, pool.available, pool.high_water) == (0, 3, 2)
    pool.acquire()
    assert pool.high_water == 2


def test_most_recently_released_block_is_reused_first(fa):
    pool = fa.BufferPool(4, 3)
    a, b = pool.acquire(), pool.acquire()
    pool.release(a)
    pool.release(b)
    assert pool.acquire() is b
    assert pool.acquire() is a


def test_releasing_twice_raises_value_error(fa):
    pool = fa.BufferPool(4, 1)
    block = pool.acquire()
    pool.release(block)
    with pytest.raises(ValueError, match="already released"):
        pool.release(block)
    assert pool.available == 1


def test_releasing_another_pools_block_raises_value_error(fa):
    mine, theirs = fa.BufferPool(4, 1), fa.BufferPool(4, 1)
    block = theirs.acquire()
    with pytest.raises(ValueError, match="does not belong"):
        mine.release(block)
    assert mine.available == 1 and theirs.in_use == 1


@pytest.mark.parametrize("block_size, count", [(0, 1), (1, 0), (-4, 2)])
def test_pool_rejects_non_positive_sizes(fa, block_size, count):
    with pytest.raises(ValueError):
        fa.BufferPool(block_size, count)


def test_blocks_cannot_be_created_outside_a_pool(fa):
    with pytest.raises(TypeError):
        fa.Block()


def test_a_released_block_refuses_new_views(fa):
    if not is_extension(fa):
        pytest.skip("pure Python before 3.12 cannot refuse a buffer export (PEP 688)")
    pool = fa.BufferPool(4, 1)
    block = pool.acquire()
    pool.release(block)
    with pytest.raises(BufferError, match="released"):
        memoryview(block)


# --------------------------------------------------------------------------
# RingBuffer
# --------------------------------------------------------------------------

def _pattern(nbytes, start=0):
    return bytes((start + i) % 251 for i in range(nbytes))


def test_read_returns_exactly_what_was_written(fa):
    ring = fa.RingBuffer(16, 2)
    assert ring.write(b"\x01\x02\x03\x04") == 4
    out = bytearray(4)
    assert ring.read_into(out) == 4
    assert out == b"\x01\x02\x03\x04"
    assert ring.fill_frames == 0 and ring.underruns == 0


@pytest.mark.parametrize("bytes_per_frame", [1, 2, 3])
def test_wraparound_at_every_offset_and_length_preserves_bytes(fa, bytes_per_frame):
    capacity = 7
    ring = fa.RingBuffer(capacity, bytes_per_frame)
    frame = bytes_per_frame
    for offset in range(capacity):
        for nframes in range(1, capacity + 1):
            ring.reset()
            ring.write(bytes(offset * frame))
            ring.read_into(bytearray(offset * frame))
            data = _pattern(nframes * frame, start=offset + nframes)
            ring.write(data)
            out = bytearray(nframes * frame)
            assert ring.read_into(out) == len(data)
            assert out == data, (offset, nframes)
            assert ring.underruns == 0


def test_reads_smaller_than_writes_cross_the_wrap_in_pieces(fa):
    ring = fa.RingBuffer(5, 1)
    ring.write(b"abc")
    ring.read_into(bytearray(3))
    ring.write(b"defgh")  # wraps after "de"
    out = [bytearray(2), bytearray(2), bytearray(1)]
    assert [ring.read_into(o) for o in out] == [2, 2, 1]
    assert b"".join(out) == b"defgh"


def test_underrun_zero_fills_the_rest_and_counts_missing_frames(fa):
    ring = fa.RingBuffer(8, 2)
    ring.write(b"\x11\x22" * 2)
    out = bytearray(b"\xff" * 10)
    assert ring.read_into(out) == 4
    assert out == b"\x11\x22" * 2 + bytes(6)
    assert (ring.underruns, ring.underrun_frames) == (1, 3)


def test_reading_an_empty_open_ring_is_an_underrun_of_every_frame(fa):
    ring = fa.RingBuffer(8, 4)
    out = bytearray(b"\xff" * 12)
    assert ring.read_into(out) == 0
    assert out == bytes(12)
    assert (ring.underruns, ring.underrun_frames) == (1, 3)
    ring.read_into(out)
    assert (ring.underruns, ring.underrun_frames) == (2, 6)


def test_a_full_read_is_not_an_underrun(fa):
    ring = fa.RingBuffer(8, 2)
    ring.write(bytes(8))
    ring.read_into(bytearray(8))
    ring.read_into(bytearray(0))
    assert ring.underruns == 0


def test_after_close_buffered_data_is_still_read_and_running_dry_is_not_an_underrun(fa):
    ring = fa.RingBuffer(8, 1)
    ring.write(b"tail")
    ring.close()
    out = bytearray(b"\xff" * 6)
    assert ring.read_into(out) == 4
    assert out == b"tail\x00\x00"
    assert ring.read_into(out) == 0
    assert ring.underruns == 0 and ring.closed


def test_write_after_close_raises_ring_closed_and_writes_nothing(fa):
    ring = fa.RingBuffer(8, 1)
    ring.close()
    with pytest.raises(fa.RingClosed):
        ring.write(b"x")
    assert ring.fill_frames == 0


def test_write_that_does_not_fit_raises_ring_full_and_writes_nothing(fa):
    ring = fa.RingBuffer(4, 2)
    ring.write(b"aabbcc")
    with pytest.raises(fa.RingFull, match="no room for 4 bytes"):
        ring.write(b"ddee")
    assert ring.fill_frames == 3
    out = bytearray(8)
    assert ring.read_into(out) == 6 and out[:6] == b"aabbcc"


def test_write_with_a_timeout_waits_that_long_then_raises_ring_full(fa):
    import time

    ring = fa.RingBuffer(2, 1)
    ring.write(b"ab")
    started = time.monotonic()
    with pytest.raises(fa.RingFull):
        ring.write(b"c", timeout=0.05)
    assert time.monotonic() - started >= 0.05
    assert ring.fill_frames == 2 and not ring.writer_waiting


def test_write_with_a_timeout_succeeds_at_once_when_there_is_room(fa):
    ring = fa.RingBuffer(4, 1)
    assert ring.write(b"ab", timeout=5.0) == 2
    assert ring.write(b"cd", timeout=None) == 2


def test_write_longer_than_the_capacity_is_a_value_error_even_when_blocking(fa):
    ring = fa.RingBuffer(4, 1)
    with pytest.raises(ValueError, match="never fit"):
        ring.write(b"12345", timeout=None)


def test_write_of_a_partial_frame_is_a_value_error(fa):
    ring = fa.RingBuffer(4, 4)
    with pytest.raises(ValueError, match="whole frames"):
        ring.write(b"123")
    assert ring.fill_frames == 0


def test_read_into_a_partial_frame_is_a_value_error(fa):
    ring = fa.RingBuffer(4, 4)
    ring.write(b"1234")
    with pytest.raises(ValueError, match="whole frames"):
        ring.read_into(bytearray(6))
    assert ring.fill_frames == 1


def test_read_into_a_read_only_buffer_raises_buffer_error(fa):
    ring = fa.RingBuffer(4, 1)
    with pytest.raises(BufferError):
        ring.read_into(b"1234")


@pytest.mark.parametrize("timeout", [-1, -0.5, float("nan")])
def test_negative_or_nan_timeout_is_rejected(fa, timeout):
    with pytest.raises(ValueError, match="timeout"):
        fa.RingBuffer(4, 1).write(b"a", timeout=timeout)


def test_write_and_read_accept_any_contiguous_buffer(fa):
    ring = fa.RingBuffer(64, 2)
    samples = np.arange(6, dtype=np.int16)
    ring.write(samples)
    ring.write(array.array("h", [6, 7]))
    ring.write(memoryview(np.arange(8, 10, dtype=np.int16).tobytes()))
    ring.write(bytearray(np.arange(10, 12, dtype=np.int16).tobytes()))
    out = np.zeros(12, dtype=np.int16)
    assert ring.read_into(out) == 24
    np.testing.assert_array_equal(out, np.arange(12))


def test_fill_frames_seconds_free_frames_and_high_water(fa):
    ring = fa.RingBuffer(10, 2, sample_rate=4)
    ring.write(bytes(12))
    assert (ring.fill_frames, ring.free_frames, ring.fill_seconds) == (6, 4, 1.5)
    ring.read_into(bytearray(8))
    ring.write(bytes(2))
    assert (ring.fill_frames, ring.high_water_frames) == (3, 6)
    assert (ring.capacity_frames, ring.capacity_bytes, ring.bytes_per_frame) == (10, 20, 2)
    assert ring.sample_rate == 4


def test_fill_seconds_without_a_sample_rate_raises_value_error(fa):
    with pytest.raises(ValueError, match="sample_rate"):
        _ = fa.RingBuffer(4, 1).fill_seconds


def test_reset_drops_data_zeroes_statistics_and_reopens(fa):
    ring = fa.RingBuffer(4, 1)
    ring.write(b"abc")
    ring.read_into(bytearray(4))
    ring.close()
    ring.reset()
    assert (ring.fill_frames, ring.underruns, ring.underrun_frames, ring.high_water_frames) == (
        0, 0, 0, 0)
    assert not ring.closed
    ring.write(b"wxyz")
    out = bytearray(4)
    assert ring.read_into(out) == 4 and out == b"wxyz"


@pytest.mark.parametrize("args", [(0, 1), (1, 0), (4, 2, -1)])
def test_ring_rejects_bad_sizes(fa, args):
    with pytest.raises(ValueError):
        fa.RingBuffer(*args)


# --------------------------------------------------------------------------
# Chunker
# --------------------------------------------------------------------------

def test_frames_inside_one_input_are_views_of_that_input(fa):
    chunker = fa.Chunker(4)
    data = bytearray(b"abcdefghij")
    frames = chunker.feed(data)
    assert [bytes(f) for f in frames] == [b"abcd", b"efgh"]
    assert all(f.obj is data for f in frames)
    data[0:1] = b"A"  # zero-copy: the frame sees the caller's change
    assert bytes(frames[0]) == b"Abcd"
    assert chunker.pending_bytes == 2


def test_a_frame_spanning_two_inputs_is_assembled_in_a_pooled_block(fa):
    pool = fa.BufferPool(4, 4)
    chunker = fa.Chunker(4, pool)
    chunker.feed(b"abcdef")
    data = b"ghijklmn"
    frames = chunker.feed(data)
    assert [bytes(f) for f in frames] == [b"efgh", b"ijkl"]
    assert isinstance(frames[0].obj, fa.Block)
    assert frames[1].obj is data
    assert all(len(f) == f.nbytes == 4 for f in frames)
    assert chunker.pending_bytes == 2


def test_frames_come_out_in_stream_order_with_the_remainder_held_back(fa):
    chunker = fa.Chunker(3)
    out = []
    for piece in (b"a", b"bcdef", b"", b"gh", b"ijklmno"):
        out += [bytes(f) for f in chunker.feed(piece)]
    assert out == [b"abc", b"def", b"ghi", b"jkl", b"mno"]
    assert chunker.pending_bytes == 0
    assert chunker.flush() is None


def test_a_frame_larger_than_every_input_is_gathered_across_many(fa):
    chunker = fa.Chunker(10)
    for piece in (b"ab", b"cd", b"ef", b"gh"):
        assert chunker.feed(piece) == []
    (frame,) = chunker.feed(b"ijkl")
    assert bytes(frame) == b"abcdefghij" and chunker.pending_bytes == 2


def test_flush_returns_the_partial_frame_zero_padded(fa):
    chunker = fa.Chunker(6)
    chunker.feed(b"abcdefgh")
    frame = chunker.flush()
    assert bytes(frame) == b"gh\x00\x00\x00\x00"
    assert chunker.pending_bytes == 0 and chunker.flush() is None


def test_flush_without_pad_returns_just_the_pending_bytes(fa):
    chunker = fa.Chunker(6)
    chunker.feed(b"abcdefgh")
    assert bytes(chunker.flush(pad=False)) == b"gh"


def test_padding_overwrites_stale_bytes_of_a_recycled_block(fa):
    pool = fa.BufferPool(4, 2)
    chunker = fa.Chunker(4, pool)
    chunker.feed(b"ab")
    frames = chunker.feed(b"cdxy")  # "abcd" in one block, "xy" starts the other
    assert [bytes(f) for f in frames] == [b"abcd"]
    del frames
    chunker.reset()  # both blocks back; the last released ("xy..") is reused first
    chunker.feed(b"z")
    assert bytes(chunker.flush()) == b"z\x00\x00\x00"


def test_a_pooled_frame_goes_back_to_the_pool_at_the_next_feed(fa):
    pool = fa.BufferPool(4, 4)
    chunker = fa.Chunker(4, pool)
    chunker.feed(b"ab")
    assert pool.in_use == 1
    frames = chunker.feed(b"cdef")  # "abcd" pooled, "ef" starts a new block
    assert pool.in_use == 2
    del frames
    chunker.feed(b"")
    assert pool.in_use == 1


def test_a_held_pooled_frame_stays_valid_and_out_of_the_pool_until_released(fa):
    pool = fa.BufferPool(4, 4)
    chunker = fa.Chunker(4, pool)
    chunker.feed(b"ab")
    (held,) = chunker.feed(b"cd")
    for _ in range(3):  # more boundary frames while `held` is alive
        chunker.feed(b"wx")
        chunker.feed(b"yz")
    assert bytes(held) == b"abcd"
    in_use_while_held = pool.in_use
    held.release()
    chunker.feed(b"")
    assert pool.in_use < in_use_while_held


def test_an_exhausted_pool_raises_and_leaves_the_chunker_unchanged(fa):
    pool = fa.BufferPool(4, 2)
    chunker = fa.Chunker(4, pool)
    chunker.feed(b"ab")
    held = chunker.feed(b"cdef")  # pins the block holding "abcd"
    with pytest.raises(fa.PoolExhausted):
        chunker.feed(b"ghij")  # completes "efgh", needs a block for "ij"
    assert chunker.pending_bytes == 2
    del held
    assert [bytes(f) for f in chunker.feed(b"ghij")] == [b"efgh"]
    assert bytes(chunker.flush(pad=False)) == b"ij"


def test_feed_cuts_numpy_samples_by_bytes(fa):
    chunker = fa.Chunker(4)
    frames = chunker.feed(np.arange(5, dtype=np.int16))
    assert [f.format for f in frames] == ["B", "B"]
    assert b"".join(bytes(f) for f in frames) == np.arange(4, dtype=np.int16).tobytes()
    assert chunker.pending_bytes == 2


def test_reset_drops_the_pending_bytes(fa):
    pool = fa.BufferPool(4, 2)
    chunker = fa.Chunker(4, pool)
    chunker.feed(b"abc")
    chunker.reset()
    assert chunker.pending_bytes == 0 and pool.in_use == 0
    assert [bytes(f) for f in chunker.feed(b"wxyz")] == [b"wxyz"]


def test_chunker_rejects_a_pool_with_blocks_smaller_than_a_frame(fa):
    with pytest.raises(ValueError, match="cannot hold"):
        fa.Chunker(8, fa.BufferPool(4, 2))


def test_chunker_rejects_a_non_positive_frame_size(fa):
    with pytest.raises(ValueError):
        fa.Chunker(0)


def test_chunker_without_a_pool_makes_its_own(fa):
    chunker = fa.Chunker(6)
    assert chunker.pool.block_size == 6 and chunker.frame_bytes == 6


# --------------------------------------------------------------------------
# PCM conversion
# --------------------------------------------------------------------------

def _i16(buf):
    return np.frombuffer(buf, dtype=np.int16)


def test_float32_to_int16_maps_specials_and_clips(fa):
    x = np.array([0.0, 1.0, -1.0, 2.0, -2.0, np.nan, np.inf, -np.inf, -0.0], np.float32)
    assert _i16(fa.float32_to_int16(x)).tolist() == [
        0, 32767, -32767, 32767, -32768, 0, 32767, -32767, 0]


def test_float32_to_int16_rounds_half_to_even(fa):
    # 0.5 * 32767 = 16383.5 exactly: half-even gives 16384, truncation 16383.
    x = np.array([0.5, -0.5, 0.25], np.float32)
    assert _i16(fa.float32_to_int16(x)).tolist() == [16384, -16384, 8192]


def test_gain_scales_before_clipping(fa):
    x = np.array([0.25, 0.5, -0.75], np.float32)
    assert _i16(fa.float32_to_int16(x, gain=2.0)).tolist() == [16384, 32767, -32768]


def test_conversion_fills_the_callers_buffer_and_returns_it(fa):
    out = np.full(3, 7, dtype=np.int16)
    result = fa.float32_to_int16(np.array([0.0, 1.0, -1.0], np.float32), out=out)
    assert result is out
    assert out.tolist() == [0, 32767, -32767]


def test_conversion_without_out_returns_a_new_bytearray(fa):
    result = fa.float32_to_int16(np.zeros(3, np.float32))
    assert type(result) is bytearray and len(result) == 6
    result = fa.int16_to_float32(np.zeros(3, np.int16))
    assert type(result) is bytearray and len(result) == 12


def test_empty_input_gives_empty_output(fa):
    assert fa.float32_to_int16(b"") == bytearray()
    assert fa.int16_to_float32(b"", out=bytearray()) == bytearray()


def test_out_of_the_wrong_size_is_a_value_error(fa):
    with pytest.raises(ValueError, match="need 6"):
        fa.float32_to_int16(np.zeros(3, np.float32), out=bytearray(7))
    with pytest.raises(ValueError, match="need 12"):
        fa.int16_to_float32(np.zeros(3, np.int16), out=np.zeros(4, np.float32))


def test_src_that_is_not_whole_samples_is_a_value_error(fa):
    with pytest.raises(ValueError, match="whole 4-byte samples"):
        fa.float32_to_int16(b"12345")
    with pytest.raises(ValueError, match="whole 2-byte samples"):
        fa.int16_to_float32(b"123")


def test_src_of_another_sample_type_is_a_type_error(fa):
    with pytest.raises(TypeError, match="float32"):
        fa.float32_to_int16(np.zeros(4, np.float64))
    with pytest.raises(TypeError, match="int16"):
        fa.int16_to_float32(np.zeros(4, np.int32))
    with pytest.raises(TypeError, match="int16"):
        fa.float32_to_int16(np.zeros(4, np.float32), out=np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="float32"):  # int8 samples are not raw bytes
        fa.float32_to_int16(np.zeros(8, np.int8))


def test_byte_buffers_of_either_endianness_prefix_are_read_natively(fa):
    native = np.array([0.5, -1.0], np.float32)
    little = native.astype("<f4") if sys.byteorder == "little" else native
    expected = [16384, -32767]
    assert _i16(fa.float32_to_int16(little)).tolist() == expected
    assert _i16(fa.float32_to_int16(memoryview(native.tobytes()).cast("c"))).tolist() == expected
    with pytest.raises(TypeError):  # byte-swapped samples are refused, not misread
        fa.float32_to_int16(native.astype(">f4" if sys.byteorder == "little" else "<f4"))


def test_read_only_out_raises_buffer_error(fa):
    with pytest.raises(BufferError):
        fa.float32_to_int16(np.zeros(2, np.float32), out=bytes(4))


def test_non_contiguous_src_is_refused(fa):
    with pytest.raises((ValueError, BufferError)):
        fa.float32_to_int16(memoryview(np.zeros(8, np.float32))[::2])


@pytest.mark.parametrize("gain", [float("nan"), float("inf"), -float("inf"), 1e39])
def test_gain_must_be_a_finite_float32(fa, gain):
    with pytest.raises(ValueError, match="gain"):
        fa.float32_to_int16(np.zeros(2, np.float32), gain=gain)
    with pytest.raises(ValueError, match="gain"):
        fa.int16_to_float32(np.zeros(2, np.int16), gain=gain)


def test_int16_to_float32_then_back_is_the_identity_for_every_value(fa):
    every = np.arange(-32768, 32768, dtype=np.int16)
    floats = np.frombuffer(fa.int16_to_float32(every), np.float32)
    assert floats.max() == 1.0 and floats.min() < -1.0
    np.testing.assert_array_equal(_i16(fa.float32_to_int16(floats)), every)


def test_conversion_accepts_raw_bytes_array_module_and_misaligned_buffers(fa):
    x = (np.linspace(-1.2, 1.2, 37)).astype(np.float32)
    expected = _i16(fa.float32_to_int16(x)).tolist()
    assert _i16(fa.float32_to_int16(x.tobytes())).tolist() == expected
    assert _i16(fa.float32_to_int16(array.array("f", x.tolist()))).tolist() == expected
    shifted = bytearray(1 + x.nbytes)
    shifted[1:] = x.tobytes()
    out = bytearray(1 + 2 * x.size)
    fa.float32_to_int16(memoryview(shifted)[1:], out=memoryview(out)[1:])
    assert _i16(bytes(out[1:])).tolist() == expected


def test_large_conversions_match_small_ones(fa):
    # Crosses the size at which the extension releases the GIL.
    x = np.sin(np.arange(100_000, dtype=np.float32) / 7) * np.float32(1.3)
    whole = _i16(fa.float32_to_int16(x, gain=0.9))
    pieces = np.concatenate([_i16(fa.float32_to_int16(x[i:i + 441], gain=0.9))
                             for i in range(0, x.size, 441)])
    np.testing.assert_array_equal(whole, pieces)
