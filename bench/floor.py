"""The floor: bare ONNX Runtime on the server's own phoneme ids, the hardware's best."""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

from bench.texts import TEXTS
from server.frontend import Frontend
from server.voices import bundled_voice

FLOOR_MAX_PHONEMES = 100
FLOOR_FIRST_PHONEMES = 40


class Floor:
    """Bare ONNX Runtime on the server's own phoneme ids: the hardware's best."""

    def __init__(self):
        self.voice = bundled_voice()
        # The floor's segments stay those of the first-generation engine (100-phoneme
        # segments, a 40-phoneme first one), so ratios compare across runs whatever the
        # server's own cuts become.
        self.frontend = Frontend(FLOOR_MAX_PHONEMES, FLOOR_FIRST_PHONEMES)
        self.whole = Frontend(100_000, 100_000)
        cfg = self.voice.config
        self.scales = np.array([cfg.noise_scale, cfg.length_scale, cfg.noise_w], dtype=np.float32)
        path = str(self.voice.model_path)
        self.default = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.single_thread = single_thread_session(path)

    def segments(self, text: str):
        """The server's segments of `text` (same cuts, same ids)."""
        return list(self.frontend.segments(text, self.voice.config))

    def first_sentence_ids(self, text: str):
        """Ids of the whole first sentence, uncut."""
        return next(iter(self.whole.segments(text, self.voice.config))).ids

    def run(self, ids, session=None) -> tuple[float, float]:
        """(seconds, audio seconds) of one inference."""
        session = session or self.default
        feeds = {"input": np.asarray(ids, dtype=np.int64)[None, :],
                 "input_lengths": np.array([len(ids)], dtype=np.int64), "scales": self.scales}
        start = time.perf_counter()
        audio = session.run(None, feeds)[0]
        return time.perf_counter() - start, audio.size / self.voice.config.sample_rate

    def sequential(self, ids, repeats: int = 7) -> float:
        """Median seconds of one inference of `ids`."""
        self.run(ids)
        return statistics.median(self.run(ids)[0] for _ in range(repeats))

    def parallel(self, ids_list, threads: int, seconds: float, session=None) -> dict:
        """Audio-s per wall-s with `threads` callers on one single-threaded-op session
        (the voice's own, unless `session` is given)."""
        session = session or self.single_thread
        stop = time.perf_counter() + seconds
        audio = [0.0] * threads

        def worker(i):
            n = i
            while time.perf_counter() < stop:
                audio[i] += self.run(ids_list[n % len(ids_list)], session)[1]
                n += 1

        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(worker, range(threads)))
        return {"threads": threads, "audio_s_per_s": sum(audio) / (time.perf_counter() - start)}


def single_thread_session(path: str) -> ort.InferenceSession:
    """A CPU session whose runs use one thread each, without spinning: for parallel callers."""
    single = ort.SessionOptions()
    single.intra_op_num_threads = 1
    single.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, single, providers=["CPUExecutionProvider"])


def bench_floor(floor: Floor, seconds: float) -> dict:
    """Sequential times for the pieces the other sections compare with, and parallel throughput."""
    out = {}
    for name, text in TEXTS.items():
        segments = floor.segments(text)
        out[name] = {
            "first_segment_s": floor.sequential(segments[0].ids),
            "first_sentence_s": floor.sequential(floor.first_sentence_ids(text)),
            "all_segments_s": sum(floor.sequential(s.ids, 3) for s in segments),
            "first_segment_phonemes": len(segments[0].phonemes),
        }
    medium_ids = [s.ids for s in floor.segments(TEXTS["medium"])]
    cores = os.cpu_count() or 1
    out["parallel"] = max((floor.parallel(medium_ids, n, seconds) for n in sorted({1, cores, 2 * cores})),
                          key=lambda r: r["audio_s_per_s"])
    return out
