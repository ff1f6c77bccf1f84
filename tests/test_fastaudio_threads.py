"""fastaudio's RingBuffer across two threads: throughput, blocking, wake-ups.

No sleeps as synchronization: a test that needs a writer to be blocked waits
for RingBuffer.writer_waiting, and every join has a timeout.
"""

import hashlib
import statistics
import threading
import time

import numpy as np
import pytest
from fastaudio_impls import IMPLEMENTATIONS, load

_JOIN_TIMEOUT = 30.0


@pytest.fixture(scope="module", params=sorted(IMPLEMENTATIONS))
def fa(request):
    """The implementation module under test."""
    return load(request.param)


class _Thread(threading.Thread):
    """A thread that keeps its target's result or exception for the test to check."""

    def __init__(self, target, *args):
        super().__init__(daemon=True)
        self._target_fn, self._args = target, args
        self.result = self.error = None

    def run(self):
        try:
            self.result = self._target_fn(*self._args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread by outcome()
            self.error = exc

    def outcome(self):
        self.join(_JOIN_TIMEOUT)
        assert not self.is_alive(), "thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def _wait_until(predicate, what, timeout=_JOIN_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"


def _blocked_writer(ring, data, timeout):
    writer = _Thread(ring.write, data, timeout)
    writer.start()
    _wait_until(lambda: ring.writer_waiting or not writer.is_alive(), "the writer blocks")
    assert writer.is_alive(), "write() returned instead of blocking"
    return writer


# (ring capacity in frames, write sizes in frames): a large ring with copies
# of 64 KiB and more (the extension copies those without the GIL), and a
# 200 ms ring at 22,050 Hz that keeps the writer blocking and being woken.
_THROUGHPUT_CASES = {
    "large-ring-large-copies": (128 * 1024, [441, 1000, 4093, 40_000, 100_000]),
    "small-ring-constant-blocking": (4410, [1, 441, 882, 2000, 4410]),
}


@pytest.mark.parametrize("case", sorted(_THROUGHPUT_CASES))
def test_two_threads_move_over_10_mb_with_equal_checksums(fa, case):
    capacity_frames, write_frames = _THROUGHPUT_CASES[case]
    bytes_per_frame = 2
    ring = fa.RingBuffer(capacity_frames, bytes_per_frame)
    rng = np.random.default_rng(1)
    sizes = rng.choice(write_frames, size=200_000) * bytes_per_frame
    sizes = sizes[np.cumsum(sizes) <= 12_000_000]
    payload = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8).tobytes()

    def produce():
        digest, pos = hashlib.sha256(), 0
        view = memoryview(payload)
        for size in sizes:
            chunk = view[pos:pos + size]
            ring.write(chunk, timeout=_JOIN_TIMEOUT)
            digest.update(chunk)
            pos += size
        ring.close()
        return pos, digest.hexdigest()

    def consume():
        digest, total = hashlib.sha256(), 0
        buffers = [bytearray(882), bytearray(131_072), bytearray(3_000), bytearray(2)]
        for turn in range(10**9):
            out = buffers[turn % len(buffers)]
            done = ring.closed  # sampled before the read: then empty means finished
            got = ring.read_into(out)
            digest.update(memoryview(out)[:got])
            total += got
            if done and got == 0:
                return total, digest.hexdigest()

    consumer, producer = _Thread(consume), _Thread(produce)
    consumer.start()
    producer.start()
    written, consumed = producer.outcome(), consumer.outcome()
    assert written[0] >= 10_000_000
    assert consumed == written
    assert ring.high_water_frames <= ring.capacity_frames
    assert ring.underruns > 0  # the reader did outrun the writer: both sides raced


@pytest.mark.parametrize("timeout", [None, _JOIN_TIMEOUT, 1e300, float("inf")])
def test_a_blocked_writer_wakes_when_the_reader_frees_room(fa, timeout):
    ring = fa.RingBuffer(4, 1)
    ring.write(b"abcd")
    writer = _blocked_writer(ring, b"ef", timeout)
    out = bytearray(2)
    ring.read_into(out)
    assert writer.outcome() == 2
    rest = bytearray(4)
    assert ring.read_into(rest) == 4
    assert out + rest == b"abcdef"


def test_a_blocked_writer_is_woken_by_the_read_not_by_polling(fa):
    # A blocked write() also re-checks every 50 ms; a lost wake-up would show
    # as ~50 ms of latency. The median over several trials resists noise.
    latencies = []
    for _ in range(15):
        ring = fa.RingBuffer(2, 1)
        ring.write(b"ab")
        finished = []
        writer = _Thread(lambda ring=ring, finished=finished:
                         finished.append((ring.write(b"c", None), time.monotonic())))
        writer.start()
        _wait_until(lambda ring=ring: ring.writer_waiting, "the writer blocks")
        read_at = time.monotonic()
        ring.read_into(bytearray(1))
        writer.outcome()
        latencies.append(finished[0][1] - read_at)
    assert statistics.median(latencies) < 0.02, latencies


def test_a_blocked_writer_waits_for_enough_room_not_just_some(fa):
    ring = fa.RingBuffer(4, 1)
    ring.write(b"abcd")
    writer = _blocked_writer(ring, b"xyz", _JOIN_TIMEOUT)
    ring.read_into(bytearray(1))  # 1 byte free: not enough for 3
    _wait_until(lambda: ring.writer_waiting or not writer.is_alive(), "the writer waits again")
    assert writer.is_alive() and ring.fill_frames == 3
    ring.read_into(bytearray(2))
    assert writer.outcome() == 3
    out = bytearray(4)
    ring.read_into(out)
    assert out == b"dxyz"


def test_close_wakes_a_blocked_writer_with_ring_closed(fa):
    ring = fa.RingBuffer(2, 1)
    ring.write(b"ab")
    writer = _blocked_writer(ring, b"c", None)
    ring.close()
    with pytest.raises(fa.RingClosed):
        writer.outcome()
    assert ring.fill_frames == 2


def test_a_blocked_writer_times_out_with_ring_full_and_writes_nothing(fa):
    ring = fa.RingBuffer(2, 1)
    ring.write(b"ab")
    writer = _blocked_writer(ring, b"c", 0.2)
    with pytest.raises(fa.RingFull):
        writer.outcome()
    assert ring.fill_frames == 2 and not ring.writer_waiting


def test_a_second_writer_while_one_waits_raises_runtime_error(fa):
    ring = fa.RingBuffer(2, 1)
    ring.write(b"ab")
    writer = _blocked_writer(ring, b"c", _JOIN_TIMEOUT)
    with pytest.raises(RuntimeError, match="one producer"):
        ring.write(b"d", timeout=0)
    ring.read_into(bytearray(1))
    assert writer.outcome() == 1


def test_reset_while_a_writer_waits_raises_runtime_error(fa):
    ring = fa.RingBuffer(2, 1)
    ring.write(b"ab")
    writer = _blocked_writer(ring, b"c", _JOIN_TIMEOUT)
    with pytest.raises(RuntimeError, match="reset"):
        ring.reset()
    ring.close()
    with pytest.raises(fa.RingClosed):
        writer.outcome()
