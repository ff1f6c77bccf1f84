"""Benchmark of fastaudio: ns per 20 ms frame, Cython extension vs numpy fallback.

One run measures both implementations side by side, interleaved (every repeat
times each operation of each implementation in turn), so machine noise hits
both alike; figures are medians over the repeats.

Operations, per 20 ms frame of 22,050 Hz mono int16 (441 samples, 882 bytes):

- convert: float32_to_int16 of one frame into a caller's buffer;
- chunk: Chunker.feed of network-sized chunks (1 to 4 frames, never aligned),
  per frame produced;
- ring: RingBuffer.write of one frame plus read_into of one frame;
- total: the client's whole path: float32 network chunks converted to int16,
  chunked into frames, each frame written to and read from the ring.

    python -m bench.fastaudio [--budget SECONDS] [--json]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import statistics
import sys
import time
from types import ModuleType
from typing import Callable

import numpy as np

SAMPLE_RATE = 22_050
FRAME_SAMPLES = 441  # 20 ms
FRAME_BYTES = 2 * FRAME_SAMPLES
OPS = ("convert", "chunk", "ring", "total")
IMPLEMENTATIONS = {"cython": "fastaudio._fastaudio", "numpy": "fastaudio._fallback"}

# Targets from the issue: the extension >= 3x faster per frame than the
# fallback, and <= 2 us per frame for the ring write + read.
TARGET_TOTAL_SPEEDUP = 3.0
TARGET_RING_NS = 2_000.0

_BATCH_FRAMES = 200  # frames per timed sample: long enough for perf_counter_ns
_MIN_REPEATS = 5
_SEED = 20_050


def _network_chunks(total_frames: int) -> list[np.ndarray]:
    """float32 chunks of 1 to 4 frames of samples, never frame-aligned."""
    rng = np.random.default_rng(_SEED)
    chunks, samples = [], 0
    while samples < total_frames * FRAME_SAMPLES:
        size = int(rng.integers(FRAME_SAMPLES // 2, 4 * FRAME_SAMPLES))
        chunks.append((rng.standard_normal(size) * 0.3).astype(np.float32))
        samples += size
    return chunks


def _workloads(fa: ModuleType) -> dict[str, Callable[[], int]]:
    """One callable per operation; each runs a batch and returns frames processed."""
    frame = (np.random.default_rng(_SEED).standard_normal(FRAME_SAMPLES) * 0.3).astype(np.float32)
    pcm_frame = bytearray(FRAME_BYTES)
    device = bytearray(FRAME_BYTES)
    ring = fa.RingBuffer(50 * FRAME_SAMPLES, 2, SAMPLE_RATE)
    chunks = _network_chunks(_BATCH_FRAMES)
    pcm_chunks = [bytearray(fa.float32_to_int16(c)) for c in chunks]
    chunk_out = [bytearray(2 * c.size) for c in chunks]
    chunker = fa.Chunker(FRAME_BYTES)
    float32_to_int16, write, read_into, feed = (
        fa.float32_to_int16, ring.write, ring.read_into, chunker.feed)

    def convert() -> int:
        for _ in range(_BATCH_FRAMES):
            float32_to_int16(frame, pcm_frame)
        return _BATCH_FRAMES

    def chunk() -> int:
        frames = 0
        for pcm in pcm_chunks:
            frames += len(feed(pcm))
        return frames

    def ring_write_read() -> int:
        for _ in range(_BATCH_FRAMES):
            write(pcm_frame)
            read_into(device)
        return _BATCH_FRAMES

    def total() -> int:
        frames = 0
        for samples, pcm in zip(chunks, chunk_out):
            float32_to_int16(samples, pcm)
            for f in feed(pcm):
                write(f)
                read_into(device)
                frames += 1
        return frames

    return {"convert": convert, "chunk": chunk, "ring": ring_write_read, "total": total}


def _time_ns_per_frame(workload: Callable[[], int]) -> float:
    start = time.perf_counter_ns()
    frames = workload()
    return (time.perf_counter_ns() - start) / frames


def _load_implementations() -> dict[str, ModuleType]:
    loaded: dict[str, ModuleType] = {}
    for name, module in IMPLEMENTATIONS.items():
        try:
            loaded[name] = importlib.import_module(module)
        except ImportError:
            pass  # extension not built: reported as missing
    return loaded


def _measure(loaded: dict[str, ModuleType],
             seconds_budget: float) -> tuple[dict[str, dict[str, list[float]]], int]:
    """Interleaved repeats until the budget is spent; samples[impl][op] -> [ns/frame]."""
    workloads = {name: _workloads(fa) for name, fa in loaded.items()}
    for per_op in workloads.values():  # warm up caches, pools and lazy state
        for workload in per_op.values():
            workload()
    samples: dict[str, dict[str, list[float]]] = {name: {op: [] for op in OPS} for name in loaded}
    deadline = time.monotonic() + seconds_budget
    repeats = 0
    was_enabled = gc.isenabled()
    gc.disable()  # a collection in one sample would be noise, not fastaudio
    try:
        while repeats < _MIN_REPEATS or time.monotonic() < deadline:
            for op in OPS:
                for name in loaded:
                    samples[name][op].append(_time_ns_per_frame(workloads[name][op]))
            repeats += 1
    finally:
        if was_enabled:
            gc.enable()
    return samples, repeats


def _summarize(samples: dict, repeats: int, seconds_budget: float) -> dict:
    def median(name: str, op: str) -> float | None:
        values = samples.get(name, {}).get(op)
        return round(statistics.median(values), 1) if values else None

    ops = {}
    for op in OPS:
        ext, fallback = median("cython", op), median("numpy", op)
        ratio = speedup = None
        if ext is not None and fallback is not None:
            ratio, speedup = round(ext / fallback, 4), round(fallback / ext, 2)
        ops[op] = {
            "cython_ns": ext,
            "numpy_ns": fallback,
            "ratio_extension_to_fallback": ratio,
            "speedup": speedup,
        }
    total, ring = ops["total"], ops["ring"]
    return {
        "sample_rate": SAMPLE_RATE,
        "frame_samples": FRAME_SAMPLES,
        "frame_ms": 1000 * FRAME_SAMPLES / SAMPLE_RATE,
        "implementations": sorted(samples),
        "repeats": repeats,
        "seconds_budget": seconds_budget,
        "ops": ops,
        "targets": {
            "total_speedup_min": TARGET_TOTAL_SPEEDUP,
            "ring_ns_max": TARGET_RING_NS,
            "total_speedup_met": (total["speedup"] >= TARGET_TOTAL_SPEEDUP
                                  if total["speedup"] is not None else None),
            "ring_ns_met": (ring["cython_ns"] <= TARGET_RING_NS
                            if ring["cython_ns"] is not None else None),
        },
    }


def run(seconds_budget: float = 10.0) -> dict:
    """Benchmark both implementations, interleaved, within about seconds_budget.

    :returns: a JSON-able dict: per operation the median ns per 20 ms frame of
        each implementation, the ratio extension/fallback and the speedup;
        plus whether the issue's targets are met. An implementation that
        cannot be imported (extension not built) is left out (None figures).
    """
    loaded = _load_implementations()
    samples, repeats = _measure(loaded, seconds_budget)
    return _summarize(samples, repeats, seconds_budget)


_LABELS = {"convert": "convert f32->i16", "chunk": "chunker feed",
           "ring": "ring write+read", "total": "total (pipeline)"}


def _format_ns(value: float | None) -> str:
    return "missing" if value is None else f"{value:,.0f}"


def format_table(result: dict) -> str:
    """The result of run() as a plain-text table."""
    lines = [
        f"fastaudio: ns per {result['frame_ms']:.0f} ms frame "
        f"({result['frame_samples']} samples at {result['sample_rate']:,} Hz), "
        f"median of {result['repeats']} interleaved repeats",
        f"{'operation':<18}{'cython':>10}{'numpy':>10}{'ext/fallback':>14}{'speedup':>9}",
    ]
    for op, row in result["ops"].items():
        ratio = "-" if row["ratio_extension_to_fallback"] is None else (
            f"{row['ratio_extension_to_fallback']:.3f}")
        speedup = "-" if row["speedup"] is None else f"{row['speedup']:.1f}x"
        lines.append(f"{_LABELS[op]:<18}{_format_ns(row['cython_ns']):>10}"
                     f"{_format_ns(row['numpy_ns']):>10}{ratio:>14}{speedup:>9}")
    targets = result["targets"]

    def verdict(met: bool | None) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[met]

    lines.append(f"target: total >= {targets['total_speedup_min']:.0f}x faster: "
                 f"{verdict(targets['total_speedup_met'])}; ring write+read <= "
                 f"{targets['ring_ns_max']:,.0f} ns: {verdict(targets['ring_ns_met'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark table (or JSON); exit 1 if the extension is missing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=10.0,
                        help="seconds to spend measuring (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error("--budget must be > 0")
    result = run(args.budget)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0 if "cython" in result["implementations"] else 1


if __name__ == "__main__":
    sys.exit(main())
