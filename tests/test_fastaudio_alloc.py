"""fastaudio's steady state allocates nothing and retains nothing.

tracemalloc traces every allocation made through Python's allocators (which
is all the extension uses). Two promises are checked:

- the extension's write / read_into / conversions with ``out=`` allocate
  nothing at all, not even transiently: the traced peak during 10,000
  cycles equals that of an empty loop;
- the whole client pipeline (convert, chunk, ring write, ring read) retains
  no memory over 10,000 cycles of 20 ms frames, for both implementations.

Buffers here are bytearrays: numpy's own __getbuffer__ allocates (and frees)
a small buffer-info record on each export, which is numpy's cost, not ours.
"""

import itertools
import tracemalloc

import numpy as np
import pytest
from fastaudio_impls import IMPLEMENTATIONS, load

_CYCLES = 10_000
_SAMPLE_RATE = 22_050
_FRAME_SAMPLES = 441  # 20 ms at 22,050 Hz
_FRAME_BYTES = 2 * _FRAME_SAMPLES
# A leak of even one small object per cycle retains >= 10,000 * 16 bytes.
_MAX_GROWTH_BYTES = 8 * 1024


@pytest.fixture(scope="module", params=sorted(IMPLEMENTATIONS))
def fa(request):
    """The implementation module under test."""
    return load(request.param)


def _traced(cycle, cycles=_CYCLES):
    """(bytes retained, peak bytes above the start) over `cycles` calls of cycle()."""
    for _ in range(100):  # warm up: cached result ints, lazy module state
        cycle()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in itertools.repeat(None, cycles):  # the loop itself allocates no ints
            cycle()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return end - start, peak - start


def _audio(samples, seed=0):
    rng = np.random.default_rng(seed)
    return bytearray((rng.standard_normal(samples) * 0.4).astype(np.float32).tobytes())


def test_extension_ring_and_conversions_allocate_nothing_per_frame():
    fa = load("cython")
    src = _audio(_FRAME_SAMPLES)
    pcm, device, floats = bytearray(_FRAME_BYTES), bytearray(_FRAME_BYTES), bytearray(len(src))
    ring = fa.RingBuffer(10 * _FRAME_SAMPLES, 2, _SAMPLE_RATE)

    def cycle():
        fa.float32_to_int16(src, out=pcm, gain=0.8)
        ring.write(pcm)
        ring.read_into(device)
        fa.int16_to_float32(device, out=floats)

    def empty_cycle():
        pass

    _, empty_peak = _traced(empty_cycle)
    retained, peak = _traced(cycle)
    assert retained == 0
    assert peak == empty_peak, f"{peak - empty_peak} bytes allocated transiently"
    assert ring.underruns == 0 and bytes(device) == bytes(pcm)


def test_extension_read_into_on_underrun_allocates_nothing():
    fa = load("cython")
    ring = fa.RingBuffer(4 * _FRAME_SAMPLES, 2, _SAMPLE_RATE)
    device = bytearray(_FRAME_BYTES)
    _, empty_peak = _traced(lambda: None)
    _, peak = _traced(lambda: ring.read_into(device))
    assert peak == empty_peak
    assert ring.underruns == _CYCLES + 100


def test_client_pipeline_retains_no_memory_over_10000_frames(fa):
    # The network delivers float32 chunks that do not line up with 20 ms
    # frames, so the chunker keeps assembling frames across chunk boundaries.
    chunk_samples = 500
    src = _audio(chunk_samples)
    pcm = bytearray(2 * chunk_samples)
    device = bytearray(_FRAME_BYTES)
    ring = fa.RingBuffer(10 * _FRAME_SAMPLES, 2, _SAMPLE_RATE)
    pool = fa.BufferPool(_FRAME_BYTES, 4)
    chunker = fa.Chunker(_FRAME_BYTES, pool)
    played = [0]

    def cycle():
        fa.float32_to_int16(src, out=pcm)
        for frame in chunker.feed(pcm):
            ring.write(frame)
            played[0] += ring.read_into(device)

    retained, _ = _traced(cycle)
    assert retained < _MAX_GROWTH_BYTES
    assert played[0] == (_CYCLES + 100) * 2 * chunk_samples - chunker.pending_bytes
    assert ring.underruns == 0
    assert pool.high_water <= 3
