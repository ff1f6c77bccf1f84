"""Property tests of fastaudio against numpy and byte-stream references.

Both implementations (extension and numpy fallback) run every property.
"""

import importlib

import numpy as np
import pytest
from fastaudio_impls import IMPLEMENTATIONS, load
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


@pytest.fixture(scope="module", params=sorted(IMPLEMENTATIONS))
def fa(request):
    """The implementation module under test."""
    return load(request.param)


# Deadlines off: CI machines are noisy and these are correctness properties.
_settings = settings(max_examples=300, deadline=None)

# Any float32 at all: NaN, +-inf, subnormals, values far beyond +-1.
_any_float32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
_float32_arrays = hnp.arrays(np.float32, st.integers(0, 300), elements=_any_float32)
_gains = st.one_of(st.just(1.0), st.floats(-8.0, 8.0, width=32), st.floats(-1e30, 1e30))


def _reference_float32_to_int16(x: np.ndarray, gain: float) -> np.ndarray:
    """The issue's numpy reference, rounded half to even (np.rint)."""
    with np.errstate(all="ignore"):
        scaled = np.nan_to_num(x * np.float32(gain), nan=0.0, posinf=1.0, neginf=-1.0) * 32767
        return np.rint(np.clip(scaled, -32768, 32767)).astype(np.int16)


@_settings
@given(x=_float32_arrays, gain=_gains)
def test_float32_to_int16_equals_the_numpy_reference_bit_for_bit(fa, x, gain):
    out = np.full(x.size, 12345, dtype=np.int16)
    fa.float32_to_int16(x, out=out, gain=gain)
    np.testing.assert_array_equal(out, _reference_float32_to_int16(x, gain))


@_settings
@given(x=hnp.arrays(np.int16, st.integers(0, 300)), gain=_gains)
def test_int16_to_float32_equals_the_numpy_reference_bit_for_bit(fa, x, gain):
    out = np.frombuffer(fa.int16_to_float32(x, gain=gain), dtype=np.float32)
    expected = x.astype(np.float32) * np.float32(gain / 32767.0)
    assert out.tobytes() == expected.tobytes()  # bytes: NaN-free, and -0.0 counts


@_settings
@given(x=_float32_arrays, gain=_gains)
def test_both_implementations_convert_identically(x, gain):
    extension = load("cython")
    fallback = importlib.import_module(IMPLEMENTATIONS["numpy"])
    assert (extension.float32_to_int16(x, gain=gain)
            == fallback.float32_to_int16(x, gain=gain))


_chunk_sizes = st.lists(st.integers(0, 200), max_size=40)


def _stream(sizes, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]


@_settings
@given(frame_bytes=st.integers(1, 64), sizes=_chunk_sizes, seed=st.integers(0, 2**32 - 1))
def test_chunker_reassembles_the_exact_byte_stream(fa, frame_bytes, sizes, seed):
    chunks = _stream(sizes, seed)
    chunker = fa.Chunker(frame_bytes)
    out = bytearray()
    for chunk in chunks:
        frames = chunker.feed(chunk)
        assert all(f.nbytes == frame_bytes for f in frames)
        # Zero-copy: at most the first frame of a feed is assembled in a block.
        assert all(f.obj is chunk for f in frames[1:])
        out += b"".join(frames)
        del frames
    tail = chunker.flush(pad=False)
    if tail is not None:
        out += tail
    assert out == b"".join(chunks)
    assert len(out) % frame_bytes == (0 if tail is None else len(tail))


@_settings
@given(frame_bytes=st.integers(1, 32), sizes=_chunk_sizes, seed=st.integers(0, 2**32 - 1))
def test_chunker_frames_held_to_the_end_are_never_overwritten(fa, frame_bytes, sizes, seed):
    chunks = _stream(sizes, seed)
    # Enough blocks for every boundary frame to stay pinned at once.
    pool = fa.BufferPool(frame_bytes, len(chunks) + 2)
    chunker = fa.Chunker(frame_bytes, pool)
    held = [f for chunk in chunks for f in chunker.feed(chunk)]
    tail = chunker.flush()
    if tail is not None:
        held.append(tail)
    padded = b"".join(chunks)
    padded += bytes(-len(padded) % frame_bytes)
    assert b"".join(held) == padded
    assert pool.in_use <= len(chunks) + 1


_ring_ops = st.lists(
    st.tuples(st.sampled_from(["write", "read"]), st.integers(0, 12)), max_size=60)


@_settings
@given(capacity=st.integers(1, 10), bytes_per_frame=st.integers(1, 3), ops=_ring_ops,
       seed=st.integers(0, 2**32 - 1))
def test_ring_buffer_behaves_like_a_bounded_fifo(fa, capacity, bytes_per_frame, ops, seed):
    """Model check: a bytes FIFO with all-or-nothing writes and zero-filled reads."""
    ring = fa.RingBuffer(capacity, bytes_per_frame)
    rng = np.random.default_rng(seed)
    model = bytearray()
    underruns = underrun_frames = high_water = 0
    for op, nframes in ops:
        nbytes = nframes * bytes_per_frame
        if op == "write":
            data = rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()
            if nframes > capacity:
                with pytest.raises(ValueError):
                    ring.write(data)
            elif len(model) + nbytes > capacity * bytes_per_frame:
                with pytest.raises(fa.RingFull):
                    ring.write(data)
            else:
                assert ring.write(data) == nbytes
                model += data
                high_water = max(high_water, len(model) // bytes_per_frame)
        else:
            out = bytearray(b"\xaa" * nbytes)
            got = ring.read_into(out)
            expected = bytes(model[:nbytes])
            del model[:nbytes]
            assert got == len(expected)
            assert out == expected + bytes(nbytes - got)
            if got < nbytes:
                underruns += 1
                underrun_frames += (nbytes - got) // bytes_per_frame
        assert ring.fill_frames == len(model) // bytes_per_frame
    assert (ring.underruns, ring.underrun_frames) == (underruns, underrun_frames)
    assert ring.high_water_frames == high_water
